"""The SQL enforcement engine on real PostgreSQL, MariaDB and SQLite."""

from __future__ import annotations

import datetime as dt
import threading
import time

import pytest
import sqlalchemy as sa

from include.retention.catalogue import ObjectLink
from include.retention.errors import RetentionError
from include.retention.lifecycle import Hooks, enforce, plan
from include.retention.runs import Control
from include.retention.sources import sql as sql_mod
from include.retention.sources.sql import SourceTimeouts, SqlAdapter
from tests.dbs import (  # noqa: F401 - fixtures
    ANONYMISE,
    AS_OF,
    Db,
    activity,
    control_fixture,
    create_db,
    ids,
    key_fixture,
    old,
    person,
    recent,
    seed,
    source_db_fixture,
)


def _mixed_people() -> list[dict]:
    return [
        person(1, old()),  # expired
        person(2, old()),  # expired
        person(3, old(), email="Held.Person@Example.com"),  # expired, subject hold
        person(4, old()),  # expired, record restriction
        person(5, recent()),  # not yet due
        person(6, None),  # anchor unknown
        person(7, old(), status="hired"),  # indefinite case: kept
        person(8, old(), status="other"),  # no case: out of scope
        person(9, dt.datetime(AS_OF.year - 2, 6, 14, 22, 0)),  # 00:00 Stockholm on the 15th: kept
        person(10, dt.datetime(AS_OF.year - 2, 6, 14, 21, 59)),  # 23:59 Stockholm on the 14th: due
    ]


def _run(db: Db, control: Control, act=None, after_lock=None, **kwargs) -> object:
    act = act or activity()
    return enforce(
        act,
        AS_OF,
        adapter=SqlAdapter(act.source, control.key, db.engine, after_lock=after_lock),
        control=control,
        catalogue_version="v1",
        **kwargs,
    )


def _seed_with_holds(source_db: Db, control: Control, held_email: str) -> None:
    """The mixed people, a legal hold on the person with ``held_email`` (as written) and a
    restriction of record 4."""
    seed(source_db.engine, _mixed_people())
    control.holds.place_subject_hold(
        held_email, kind="legal_hold", reason="dispute", placed_by="legal"
    )
    control.holds.place_record_hold(
        "ats", "people", 4, kind="restriction", reason="Art. 18 request", placed_by="dpo"
    )


def test_plan_counts_without_changing_anything(source_db: Db, control: Control) -> None:
    _seed_with_holds(source_db, control, " held.person@example.com ")
    result = plan(activity(), AS_OF, source=source_db.engine, control=control)
    assert result.counts() == {
        "total": 10,
        "expired": 5,  # 1, 2, 3, 4, 10
        "held": 1,
        "restricted": 1,
        "anchor_unknown": 1,
        "kept": 3,  # 5 and 9 (not yet due), 7 (hired: kept indefinitely)
        "out_of_scope": 1,
        "already_anonymised": 0,
        "to_apply": 3,
    }
    assert ids(source_db.engine) == set(range(1, 11))


def test_delete_with_children_holds_and_evidence(source_db: Db, control: Control) -> None:
    _seed_with_holds(source_db, control, "held.person@example.com")
    result = _run(source_db, control, batch_size=2)
    assert result.outcome == "completed"
    assert (result.applied, result.held_skipped, result.restricted_skipped) == (3, 1, 1)
    assert result.counts()["children"] == {"applications": 6, "attachments": 6}
    assert ids(source_db.engine) == {3, 4, 5, 6, 7, 8, 9}
    assert ids(source_db.engine, "applications") == {
        i * 10 + j for i in (3, 4, 5, 6, 7, 8, 9) for j in (0, 1)
    }
    assert ids(source_db.engine, "attachments") == ids(source_db.engine, "applications")
    for pk in (1, 2, 10):
        [evidence] = control.ledger.lookup("ats", "people", pk)
        assert evidence.action == "delete" and evidence.run_id == result.run_id
        assert evidence.rules[0].startswith("status: 2 years after")
    for pk in (3, 4, 5, 6, 7):
        assert control.ledger.lookup("ats", "people", pk) == []
    assert control.ledger.verify().ok
    # The evidence names each deleted record's person by keyed reference (lookup by person).
    for pk in (1, 2, 10):
        [by_person] = control.ledger.subject_batches(
            control.holds.subject_ref(f"Person{pk}@example.com")
        )
        assert by_person.run_id == result.run_id
    for pk in (3, 4, 5):
        email = person(pk, None)["email"] if pk != 3 else "held.person@example.com"
        assert control.ledger.subject_batches(control.holds.subject_ref(email)) == []


def test_null_anchor_is_never_deleted(source_db: Db, control: Control) -> None:
    seed(source_db.engine, [person(1, None), person(2, None), person(3, old())], children=False)
    result = _run(source_db, control, act=activity(children=False))
    assert result.plan.anchor_unknown == 2
    assert result.applied == 1
    assert ids(source_db.engine) == {1, 2}


# Anchor values that are no date: placeholders for "unknown" and values the column's type
# cannot read (SQLite stores them as given).
NOT_DATES = {
    "mariadb": ["0000-00-00 00:00:00", "2020-00-00 00:00:00"],  # zero date, zero month
    "postgresql": ["-infinity", "0044-03-15 00:00:00 BC"],
    "sqlite": ["", "15/03/2031", 1925078400, 2460000, "12:00"],  # epoch, Julian day, a time
}


def test_an_anchor_that_is_no_date_is_unknown_never_due(source_db: Db, control: Control) -> None:
    raws = NOT_DATES[source_db.kind]
    odd = range(2, 2 + len(raws))
    seed(source_db.engine, [person(i, old()) for i in (1, *odd)] + [person(99, recent())],
         children=False)  # fmt: skip
    with source_db.engine.begin() as conn:
        for pk, raw in zip(odd, raws, strict=True):
            conn.execute(sa.text("UPDATE people SET decided_at = :raw WHERE id = :pk"),
                         {"raw": raw, "pk": pk})  # fmt: skip
        if source_db.kind == "mariadb":  # where NOT NULL, MariaDB finds a zero date IS NULL
            conn.execute(sa.text("ALTER TABLE people MODIFY decided_at DATETIME NOT NULL"))
    act = activity(children=False)
    planned = plan(act, AS_OF, source=source_db.engine, control=control)
    assert (planned.expired, planned.anchor_unknown) == (1, len(raws))
    result = _run(source_db, control, act=act)
    assert result.applied == 1
    assert ids(source_db.engine) == {*odd, 99}


def test_second_run_finds_nothing_to_do(source_db: Db, control: Control) -> None:
    seed(source_db.engine, _mixed_people())
    first = _run(source_db, control)
    assert first.applied == 5
    second = _run(source_db, control)
    assert second.outcome == "nothing_to_do" and second.applied == 0
    assert "nothing to do" in second.message
    runs = control.ledger.runs("recruitment")
    assert [r.finished["outcome"] for r in runs] == ["completed", "nothing_to_do"]


def test_hold_placed_mid_run_protects_the_record(source_db: Db, control: Control) -> None:
    people = [person(i, old()) for i in range(1, 11)]
    seed(source_db.engine, people)
    planned = []

    def after_plan(result) -> None:  # after planning, before any batch
        planned.append(result.to_apply)
        control.holds.place_record_hold(
            "ats", "people", 2, kind="legal_hold", reason="claim", placed_by="legal"
        )

    def after_lock(batch_no: int) -> None:  # inside batch 2's transaction, rows already deleted
        if batch_no == 2:
            control.holds.place_subject_hold(
                "person7@example.com", kind="legal_hold", reason="claim", placed_by="legal"
            )

    result = _run(
        source_db, control, batch_size=4, hooks=Hooks(after_plan=after_plan), after_lock=after_lock
    )
    assert planned == [10]
    assert result.held_skipped == 2 and result.applied == 8
    assert ids(source_db.engine) == {2, 7}
    assert ids(source_db.engine, "applications") == {20, 21, 70, 71}
    assert control.ledger.lookup("ats", "people", 7) == []
    assert control.ledger.verify().ok


def test_subject_hold_while_the_next_batch_is_already_deleting(
    source_db: Db, control: Control
) -> None:
    seed(source_db.engine, [person(i, old()) for i in range(1, 11)])

    def after_lock(batch_no: int) -> None:  # on PostgreSQL batch 2 is being deleted meanwhile
        if batch_no == 1:
            control.holds.place_subject_hold(
                "person6@example.com", kind="legal_hold", reason="claim", placed_by="legal"
            )

    result = _run(source_db, control, batch_size=4, after_lock=after_lock)
    assert (result.applied, result.held_skipped) == (9, 1)
    assert ids(source_db.engine) == {6}


def _locked_by_another(engine: sa.Engine, pk: int) -> bool:
    people = sa.table("people", sa.column("id"))
    query = sa.select(people.c.id).where(people.c.id == pk).with_for_update(skip_locked=True)
    with engine.begin() as conn:
        return conn.execute(query).first() is None


def test_a_batch_redone_for_a_hold_never_waits_for_the_batch_ahead(
    source_db: Db, control: Control
) -> None:
    """Pipelined (PostgreSQL, MariaDB): batch 2 is deleted while batch 1 is finished. A hold
    found in batch 1 after its delete makes it delete again; the batch ahead is rolled back
    first (on MariaDB the redo would wait for the row past its range, which batch 2 holds
    until after batch 1 commits: the run failed on the lock timeout)."""
    seed(source_db.engine, [person(i, old()) for i in range(1, 11)])

    def after_lock(batch_no: int) -> None:
        if batch_no != 1:
            return
        deadline = time.monotonic() + 10
        while source_db.kind != "sqlite" and not _locked_by_another(source_db.engine, 5):
            assert time.monotonic() < deadline, "batch 2 never started deleting"
            time.sleep(0.02)
        control.holds.place_subject_hold(
            "person2@example.com", kind="legal_hold", reason="claim", placed_by="legal"
        )

    act = activity()
    adapter = SqlAdapter(act.source, control.key, source_db.engine, after_lock=after_lock,
                         timeouts=SourceTimeouts(lock=2))  # fmt: skip
    result = enforce(act, AS_OF, adapter=adapter, control=control, catalogue_version="v1",
                     batch_size=4)  # fmt: skip
    assert (result.outcome, result.applied, result.held_skipped) == ("completed", 9, 1)
    assert ids(source_db.engine) == {2}
    assert ids(source_db.engine, "applications") == {20, 21}
    assert control.ledger.verify().ok


def test_a_record_renewed_while_its_children_are_deleted_is_deleted_whole(
    source_db: Db, control: Control, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The application renews person 2 (a new decision) while the batch deletes person 1's
    children. The batch locked its records first, so the renewal waits for its commit and
    finds person 2 gone, with evidence. (A sub-select locking no record let the renewal
    through on PostgreSQL: person 2 lived on without its applications, without evidence.)"""
    seed(source_db.engine, [person(1, old()), person(2, old()), person(3, recent())])
    monkeypatch.setattr(sql_mod, "KEY_CHUNK", 1, raising=False)  # one record per statement
    original = sql_mod._delete_children
    renewal: list[threading.Thread] = []

    def renew() -> None:
        with source_db.engine.begin() as other:
            other.execute(sa.text("UPDATE people SET decided_at = :t WHERE id = 2"),
                          {"t": recent()})  # fmt: skip

    def delete_children(conn, child, parent_keys, counts) -> None:
        original(conn, child, parent_keys, counts)
        if child.table.name == "applications" and not renewal:
            renewal.append(threading.Thread(target=renew))
            renewal[0].start()
            renewal[0].join(0.5)

    monkeypatch.setattr(sql_mod, "_delete_children", delete_children)
    result = _run(source_db, control)
    renewal[0].join(10)
    assert not renewal[0].is_alive()
    assert result.applied == 2
    assert ids(source_db.engine) == {3}
    assert ids(source_db.engine, "applications") == {30, 31}
    assert result.counts()["children"] == {"applications": 4, "attachments": 4}
    assert [len(control.ledger.lookup("ats", "people", pk)) for pk in (1, 2)] == [1, 1]


def test_released_hold_lets_the_next_run_delete(source_db: Db, control: Control) -> None:
    seed(source_db.engine, [person(1, old()), person(2, old())], children=False)
    hold = control.holds.place_record_hold(
        "ats", "people", 1, kind="legal_hold", reason="x", placed_by="y"
    )
    assert _run(source_db, control, act=activity(children=False)).applied == 1
    control.holds.release(hold, released_by="legal")
    assert _run(source_db, control, act=activity(children=False)).applied == 1
    assert ids(source_db.engine) == set()
    with pytest.raises(RetentionError, match="already released"):
        control.holds.release(hold, released_by="legal")


def test_safety_gate_needs_approval(source_db: Db, control: Control) -> None:
    seed(
        source_db.engine,
        [person(i, old() if i <= 6 else recent()) for i in range(1, 11)],
        children=False,
    )
    gated = activity(children=False, safety={"max_rows": 100, "max_fraction": 0.5})
    result = _run(source_db, control, act=gated)
    assert result.approval_required and result.applied == 0
    assert "60.0%" in result.message and "approval" in result.message
    assert len(ids(source_db.engine)) == 10
    by_rows = activity(children=False, safety={"max_rows": 5, "max_fraction": None})
    assert _run(source_db, control, act=by_rows).approval_required
    approved = _run(source_db, control, act=gated, approved_by="dpo@company")
    assert approved.outcome == "completed" and approved.applied == 6
    header = control.ledger.runs("recruitment")[-1].header
    assert header["approved_by"] == "dpo@company"


def test_dry_run_changes_nothing(source_db: Db, control: Control) -> None:
    seed(source_db.engine, _mixed_people())
    result = _run(source_db, control, dry_run=True)
    assert result.outcome == "dry_run" and result.plan.to_apply == 5
    assert len(ids(source_db.engine)) == 10
    assert control.ledger.runs()[0].header["dry_run"] is True


def _anonymise_activity() -> object:
    return activity(
        children=False,
        action={
            "kind": "anonymise",
            "marker_column": "anonymised_at",
            "direct_identifiers": ["email", "status"],
            "quasi_identifiers": ["city", "birth_date", "decided_at", "age"],
            "k_anonymity": 2,
            "columns": {
                "email": {"strategy": "null"},
                "city": {"strategy": "fixed", "value": "anonymised"},
                "status": {"strategy": "null"},
                "birth_date": {"strategy": "year"},
                "decided_at": {"strategy": "year"},
                "age": {"strategy": "band", "width": 10},
            },
        },
        retention=[
            {
                "rule": {
                    "kind": "period",
                    "period": "P2Y",
                    "anchor": {"sv": "beslutet", "en": "the decision"},
                },
                "anchor_column": "decided_at",
            }
        ],
    )


def test_anonymise_strategies(source_db: Db, control: Control) -> None:
    born = dt.date(1990, 7, 23)
    extra = {"birth_date": born, "age": 37, "city": "Lund"}
    seed(
        source_db.engine,
        [
            person(1, old(), **extra),
            person(2, old(), **extra | {"age": -3}),
            person(3, recent(), **extra),
        ],
        children=False,
    )
    result = _run(source_db, control, act=_anonymise_activity())
    assert result.outcome == "completed" and result.applied == 2
    table = sa.Table("people", sa.MetaData(), autoload_with=source_db.engine)
    with source_db.engine.connect() as conn:
        rows = {r.id: r for r in conn.execute(sa.select(table))}
    assert rows[1].email is None
    assert rows[1].city == "anonymised" and rows[1].status is None
    assert rows[1].birth_date == dt.date(1990, 1, 1)
    assert rows[1].decided_at == dt.datetime(old().year, 1, 1)
    assert (rows[1].age, rows[2].age) == (30, -10)
    assert rows[1].anonymised_at is not None and rows[3].anonymised_at is None
    assert rows[3].email == "person3@example.com" and rows[3].age == 37
    [evidence] = control.ledger.lookup("ats", "people", 1)
    assert evidence.action == "anonymise"
    again = _run(source_db, control, act=_anonymise_activity())
    assert again.outcome == "nothing_to_do" and again.plan.already_anonymised == 2


def test_anonymise_skips_held_records(source_db: Db, control: Control) -> None:
    seed(source_db.engine, [person(1, old()), person(2, old())], children=False)
    control.holds.place_subject_hold(
        "person2@example.com", kind="restriction", reason="Art. 18", placed_by="dpo"
    )
    result = _run(source_db, control, act=_anonymise_activity())
    assert (result.applied, result.restricted_skipped) == (1, 1)
    table = sa.Table("people", sa.MetaData(), autoload_with=source_db.engine)
    with source_db.engine.connect() as conn:
        emails = dict(conn.execute(sa.select(table.c.id, table.c.email)).all())
    assert emails[2] == "person2@example.com" and emails[1] != "person1@example.com"


def test_sqlite_anonymise_keeps_other_writers_out_until_it_commits(
    tmp_path, control: Control
) -> None:
    """SELECT ... FOR UPDATE locks nothing on SQLite: between it and the UPDATE another
    writer made record 1 not due and record 2 (held) due, and the UPDATE, judging the rule
    again, anonymised record 2 while the evidence named record 1. Now the batch is the
    database's writer from before its SELECT, and updates exactly the records it judged."""
    db, cleanup = create_db("sqlite", tmp_path)
    seed(db.engine, [person(1, old()), person(2, recent())], children=False)
    control.holds.place_record_hold(
        "ats", "people", 2, kind="legal_hold", reason="dispute", placed_by="legal"
    )
    other = sa.create_engine(db.url, connect_args={"timeout": 0.1})
    refused = []

    def after_lock(batch_no: int) -> None:
        try:
            with other.begin() as conn:
                conn.execute(sa.text("UPDATE people SET decided_at = :t WHERE id = 1"),
                             {"t": recent()})  # fmt: skip
                conn.execute(sa.text("UPDATE people SET decided_at = :t WHERE id = 2"),
                             {"t": old()})  # fmt: skip
        except sa.exc.OperationalError as exc:
            refused.append("database is locked" in str(exc))

    act = activity(children=False, action=ANONYMISE)
    try:
        result = _run(db, control, act=act, after_lock=after_lock)
        with db.engine.connect() as conn:
            emails = dict(conn.execute(sa.text("SELECT id, email FROM people")).all())
    finally:
        other.dispose()
        cleanup()
    assert emails == {1: None, 2: "person2@example.com"}
    assert refused == [True] and result.applied == 1
    assert [len(control.ledger.lookup("ats", "people", pk)) for pk in (1, 2)] == [1, 0]


def test_anonymise_refuses_a_binding_made_in_code_with_linked_files(
    source_db: Db, control: Control
) -> None:
    """The catalogue refuses it; a binding built in code skips that check (the run crashed
    with an IndexError after locking)."""
    seed(source_db.engine, [person(1, old(), city="cv/1")], children=False)
    act = activity(children=False, action=ANONYMISE)
    link = ObjectLink(column="city", conn_id="retention_s3", bucket="cvs")
    act = act.model_copy(update={"source": act.source.model_copy(update={"objects": [link]})})
    with pytest.raises(RetentionError, match=r"has child tables or linked files: anonymise does"
                       r" not reach them\. Bind a dataset without them"):  # fmt: skip
        _run(source_db, control, act=act)
    with source_db.engine.connect() as conn:
        assert conn.execute(sa.text("SELECT email FROM people")).scalar() == "person1@example.com"


def test_missing_table_or_column_is_a_clear_error(source_db: Db, control: Control) -> None:
    seed(source_db.engine, [person(1, old())], children=False)
    with pytest.raises(RetentionError, match="table 'candidates' does not exist in system 'ats'"):
        plan(
            activity(table="candidates", children=False),
            AS_OF,
            source=source_db.engine,
            control=control,
        )
    with pytest.raises(
        RetentionError, match=r"lookup \(email\) column 'mail' does not exist in table 'people'"
    ):
        plan(
            activity(lookup={"email": "mail"}, children=False),
            AS_OF,
            source=source_db.engine,
            control=control,
        )
    with pytest.raises(RetentionError, match="table 'applications' does not exist"):
        plan(activity(), AS_OF, source=source_db.engine, control=control)
    bad_anchor = activity(
        children=False,
        retention=[
            {
                "rule": {"kind": "period", "period": "P1Y", "anchor": {"sv": "x y", "en": "x y"}},
                "anchor_column": "nope",
            }
        ],
    )
    with pytest.raises(RetentionError, match="anchor column 'nope' does not exist"):
        plan(bad_anchor, AS_OF, source=source_db.engine, control=control)


def _keyed_by(column: str):
    act = activity(children=False)
    return act.model_copy(update={"source": act.source.model_copy(update={"primary_key": column})})


def test_a_primary_key_that_is_not_unique_is_refused(source_db: Db, control: Control) -> None:
    """Recovery asks which keys are still present: with a key two rows share, a deleted
    record's twin made a committed deletion look rolled back (no evidence)."""
    md = sa.MetaData()
    sa.Table(
        "people", md,
        sa.Column("tenant_id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("code", sa.Integer, unique=True),  # NULL may repeat
        sa.Column("ref", sa.Integer, nullable=False, unique=True),
        sa.Column("email", sa.String(200)), sa.Column("status", sa.String(20)),
        sa.Column("decided_at", sa.DateTime),
    )  # fmt: skip
    md.create_all(source_db.engine)
    with source_db.engine.begin() as conn:
        conn.execute(md.tables["people"].insert(), [
            {"tenant_id": t, "id": 5, "ref": t, "email": f"p{t}@example.com",
             "status": "rejected", "decided_at": decided}
            for t, decided in ((1, old()), (2, recent()))
        ])  # fmt: skip
    for column in ("id", "code"):
        with pytest.raises(
            RetentionError,
            match=f"primary key column '{column}' of dataset 'people' in system 'ats' is not"
            " unique by itself: .* Set primary_key to such a column",
        ):
            plan(_keyed_by(column), AS_OF, source=source_db.engine, control=control)
    assert plan(_keyed_by("ref"), AS_OF, source=source_db.engine, control=control).expired == 1


def test_date_anchor_and_one_of_condition(source_db: Db, control: Control) -> None:
    cutoff_day = dt.date(AS_OF.year, 6, 14)  # P0D: due the day after the event
    people = [
        person(1, None, status="withdrawn", withdrawn_on=cutoff_day),
        person(2, None, status="revoked", withdrawn_on=cutoff_day + dt.timedelta(days=1)),
        person(3, None, status="active", withdrawn_on=cutoff_day),
    ]
    seed(source_db.engine, people, children=False)
    consent = activity(
        children=False,
        retention=[
            {
                "when": {"column": "status", "one_of": ["withdrawn", "revoked"]},
                "rule": {"kind": "consent"},
                "anchor_column": "withdrawn_on",
            }
        ],
    )
    result = _run(source_db, control, act=consent)
    assert (result.plan.expired, result.plan.kept, result.plan.out_of_scope) == (1, 1, 1)
    assert ids(source_db.engine) == {2, 3}


def test_a_condition_matches_its_value_exactly(source_db: Db, control: Control) -> None:
    """MariaDB's default collation ignores case and trailing spaces: 'equals: rejected'
    matched 'REJECTED ' and 'Rejected' (other codes), which PostgreSQL and SQLite leave out."""
    people = [person(1, old()), person(2, old(), status="REJECTED "), person(3, old(),
              status="Rejected"), person(4, old(), status="rejected ")]  # fmt: skip
    seed(source_db.engine, people, children=False)
    result = _run(source_db, control, act=activity(children=False))
    assert (result.applied, result.plan.out_of_scope) == (1, 3)
    assert ids(source_db.engine) == {2, 3, 4}


def test_no_personal_data_in_the_ledger(source_db: Db, control: Control) -> None:
    seed(source_db.engine, _mixed_people())
    _run(source_db, control)
    with control.ledger.engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT document, blob FROM retention_ledger")).all()
    text = " ".join(r.document for r in rows)
    assert "example.com" not in text.lower()
    for pk in ("1", "2", "10"):
        assert f'"{pk}"' not in text


def test_report_only_activity_changes_nothing(source_db: Db, control: Control) -> None:
    seed(source_db.engine, [person(1, old())], children=False)
    gap = activity(
        children=False,
        action={"kind": "report_only"},
        retention=[
            {
                "rule": {
                    "kind": "unspecified",
                    "note": {"sv": "ingen tid", "en": "no period in the policy"},
                }
            }
        ],
    )
    result = _run(source_db, control, act=gap)
    assert result.outcome == "report_only" and result.plan.kept == 1
    assert ids(source_db.engine) == {1}
