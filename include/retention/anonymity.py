"""Are anonymised rows anonymous? Two checks on a SQL source after an anonymising run.

1. *Nothing links back*: no released value of an anonymised row equals an identifier of a live
   (not anonymised) row of the same table, or a keyed hash of one (HMAC-SHA256 under any key the
   product holds, as its full hex or a prefix of 16 or more characters) — the signature of
   pseudonymisation, which GDPR recital 26 still counts as personal data.
2. *k-anonymity*: anonymised rows grouped by their quasi-identifiers as released; the groups
   smaller than the catalogue's ``k_anonymity`` are counted and reported (a re-identification
   risk to review), not changed.

Counts only leave this module: no value is logged or returned.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from include.retention.catalogue import Activity, AnonymiseAction
from include.retention.errors import RetentionError
from include.retention.masking import mask_key
from include.retention.pseudonym import hmac_hex

log = logging.getLogger(__name__)
_HEX = re.compile(r"^[0-9a-fA-F]{16,64}$")
_BATCH = 5_000


@dataclass(frozen=True)
class AnonymityReport:
    """What the checks found, in counts."""

    anonymised_rows: int
    linkable_rows: int
    k_anonymity: int
    small_groups: int
    rows_in_small_groups: int

    @property
    def linkable(self) -> bool:
        return self.linkable_rows > 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class _KeyedHashes:
    """Keyed hashes of live identifiers, matched by any hex prefix of 16+ characters."""

    def __init__(self, identifiers: set[str], keys: Iterable[bytes]) -> None:
        self._digests = [hmac_hex(k, v) or "" for k in keys for v in identifiers]
        self._prefixes: dict[int, set[str]] = {}

    def __contains__(self, value: str) -> bool:
        if not _HEX.match(value):
            return False
        length = len(value)
        if length not in self._prefixes:
            self._prefixes[length] = {digest[:length] for digest in self._digests}
        return value.lower() in self._prefixes[length]


def _action(activity: Activity) -> AnonymiseAction:
    if not isinstance(activity.action, AnonymiseAction) or activity.source.kind != "sql":
        raise RetentionError(f"activity {activity.id!r} does not anonymise rows of a SQL table")
    return activity.action


def _texts(row: Iterable[Any]) -> set[str]:
    return {str(value) for value in row if value is not None}


def check_anonymity(activity: Activity, source: Engine, key: bytes) -> AnonymityReport:
    """Check every anonymised row of ``activity``'s table against its live identifiers."""
    action = _action(activity)
    table = sa.Table(activity.source.table, sa.MetaData(), autoload_with=source)  # type: ignore[union-attr]
    marker = table.c[action.marker_column]
    direct = [table.c[name] for name in action.direct_identifiers]
    released = [column for column in table.c if column is not marker]
    names = [column.name for column in released]
    quasi = [names.index(name) for name in action.quasi_identifiers]
    with source.connect() as conn:
        live: set[str] = set()
        for row in conn.execute(sa.select(*direct).where(marker.is_(None))):
            live |= _texts(row)
        hashes = _KeyedHashes(live, (key, mask_key(key)))
        groups: Counter[tuple[Any, ...]] = Counter()
        linkable = 0
        rows = conn.execution_options(yield_per=_BATCH).execute(
            sa.select(*released).where(marker.is_not(None))
        )
        for row in rows:
            values = _texts(row)
            linkable += bool(values & live or any(value in hashes for value in values))
            groups[tuple(row[i] for i in quasi)] += 1
    small = [size for size in groups.values() if size < action.k_anonymity]
    report = AnonymityReport(
        anonymised_rows=sum(groups.values()),
        linkable_rows=linkable,
        k_anonymity=action.k_anonymity,
        small_groups=len(small),
        rows_in_small_groups=sum(small),
    )
    if report.small_groups:
        log.warning(
            "%s: %d anonymised rows are in %d groups of quasi-identifiers smaller than k=%d;"
            " review the generalisation in the catalogue",
            activity.id, report.rows_in_small_groups, report.small_groups, action.k_anonymity,
        )  # fmt: skip
    return report
