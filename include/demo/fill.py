"""Realistic rows for the demo tables: Swedish names, phones, companies, free text, children.

A filler turns one designed record (its anchor and condition values) into a full row plus its
child rows. Values the design fixes always win over the filler's invented ones.
"""

from __future__ import annotations

import datetime as dt
import random
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from faker import Faker

from include.retention.identifiers import luhn_check_digit

Row = dict[str, Any]
Children = list[tuple[str, Row]]


def _ascii(text: str) -> str:
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return "".join(ch for ch in plain.lower() if ch.isalnum()) or "x"


@dataclass(frozen=True)
class Person:
    first: str
    last: str
    email: str
    phone: str
    company: str
    city: str
    personnummer: str = ""

    @property
    def full(self) -> str:
        return f"{self.first} {self.last}"


def personnummer(uid: int) -> str:
    """A fake but valid personnummer (YYYYMMDD-NNNN, check digit right), one per ``uid``:
    born 1950-1999, made from the uid alone (the Faker sequence stays as it was)."""
    born = dt.date(1950, 1, 1) + dt.timedelta(days=(uid * 7919) % 18_262)
    serial = f"{(uid * 37) % 1000:03d}"
    nine = born.strftime("%y%m%d") + serial
    return f"{born:%Y%m%d}-{serial}{luhn_check_digit(nine)}"


@dataclass
class RowContext:
    """Everything a filler needs for one record (``uid`` is unique across all datasets)."""

    fake: Faker
    rng: random.Random
    as_of: dt.datetime
    pk: int
    uid: int
    values: Row
    person: Person
    child_ids: dict[str, int] = field(default_factory=dict)

    def next_id(self, table: str) -> int:
        self.child_ids[table] = self.child_ids.get(table, 0) + 1
        return self.child_ids[table]

    @property
    def now(self) -> dt.datetime:
        return self.as_of.astimezone(dt.UTC).replace(tzinfo=None, microsecond=0)

    def ago(self, min_days: int, max_days: int) -> dt.datetime:
        seconds = self.rng.randint(min_days * 86400, max_days * 86400)
        return self.now - dt.timedelta(seconds=seconds)

    def before(self, column: str, min_days: int, max_days: int) -> dt.datetime:
        """A moment some days before the value of ``column`` (or before now if it is NULL)."""
        base = _as_datetime(self.values.get(column)) or self.now
        return base - dt.timedelta(seconds=self.rng.randint(min_days * 86400, max_days * 86400))

    def after(self, start: dt.datetime, max_days: int) -> dt.datetime:
        moment = start + dt.timedelta(seconds=self.rng.randint(600, max(max_days, 1) * 86400))
        return min(moment, self.now)

    def text(self, sentences: int = 2) -> str:
        return " ".join(self.fake.sentence() for _ in range(sentences))


def _as_datetime(value: Any) -> dt.datetime | None:
    if isinstance(value, dt.datetime):
        return value
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, 12)
    return None


def make_person(fake: Faker, uid: int) -> Person:
    first, last = fake.first_name(), fake.last_name()
    company = fake.company()
    domain = fake.free_email_domain() if uid % 3 else _ascii(company.split()[0]) + ".se"
    return Person(
        first=first,
        last=last,
        email=f"{_ascii(first)}.{_ascii(last)}{uid}@{domain}",
        phone=fake.phone_number(),
        company=company,
        city=fake.city(),
        personnummer=personnummer(uid),
    )


# ------------------------------------------------------------------------- fillers


def candidates(c: RowContext) -> tuple[Row, Children]:
    p, hired = c.person, c.values.get("hired")
    created = c.before("decision_at", 20, 90)
    cv = None if c.pk % 9 == 0 else f"candidates/{c.pk:05d}/cv-{c.rng.getrandbits(32):08x}.pdf"
    row = {
        "first_name": p.first,
        "last_name": p.last,
        "email": p.email,
        "phone": p.phone,
        "city": p.city,
        "personnummer": p.personnummer,
        "linkedin_url": f"https://www.linkedin.com/in/{_ascii(p.first)}-{c.uid}",
        "position_applied": c.fake.job(),
        "cv_object_key": cv,
        "created_at": created,
        "notes": c.text(1) if c.rng.random() < 0.5 else None,
    }
    status = "in_review" if hired is None else ("hired" if hired else "rejected")
    children: Children = []
    for _ in range(c.rng.randint(1, 2)):
        app_id = c.next_id("applications")
        children.append(
            (
                "applications",
                {
                    "id": app_id,
                    "candidate_id": c.pk,
                    "job_title": row["position_applied"],
                    "submitted_at": c.after(created, 3),
                    "status": status,
                    "cover_letter": c.text(3),
                },
            )
        )
        for name in c.rng.sample(["betyg.pdf", "portfolio.pdf", "intyg.pdf"], c.rng.randint(0, 2)):
            children.append(
                (
                    "attachments",
                    {
                        "id": c.next_id("attachments"),
                        "application_id": app_id,
                        "filename": name,
                        "content_type": "application/pdf",
                        "uploaded_at": c.after(created, 4),
                    },
                )
            )
    return row, children


def supplier_contacts(c: RowContext) -> tuple[Row, Children]:
    p = c.person
    return {
        "supplier_name": p.company,
        "org_number": c.fake.bothify("55####-####"),
        "contact_name": p.full,
        "email": p.email,
        "phone": p.phone,
        "bankgiro": c.fake.bothify("###-####"),
        "created_at": c.ago(3000, 4500),
    }, []


def contracts(c: RowContext) -> tuple[Row, Children]:
    p = c.person
    signed = c.before("ended_on", 400, 1500).date()
    row = {
        "contract_number": f"AVT-{signed.year}-{c.pk:04d}",
        "counterparty": p.company,
        "contact_name": p.full,
        "contact_email": p.email,
        "contact_phone": p.phone,
        "signed_on": signed,
        "annual_value_sek": c.rng.randrange(50_000, 2_000_000, 5_000),
        "notes": c.text(1),
    }
    children: Children = []
    for i in range(c.rng.randint(1, 3)):
        other = make_person(c.fake, 1_000_000 + c.uid * 10 + i)
        children.append(
            (
                "contract_parties",
                {
                    "id": c.next_id("contract_parties"),
                    "contract_id": c.pk,
                    "party_name": other.full,
                    "role": c.rng.choice(["signatory", "contact", "invoice recipient"]),
                    "email": other.email,
                    "phone": other.phone,
                    "signatory": i == 0,
                },
            )
        )
    return row, children


def contacts(c: RowContext) -> tuple[Row, Children]:
    p = c.person
    return {
        "first_name": p.first,
        "last_name": p.last,
        "email": p.email,
        "phone": p.phone,
        "company": p.company,
        "title": c.fake.job(),
        "created_at": c.ago(1500, 3000),
    }, []


def customer_admins(c: RowContext) -> tuple[Row, Children]:
    p = c.person
    return {
        "full_name": p.full,
        "email": p.email,
        "phone": p.phone,
        "company": p.company,
        "customer_number": f"K{10000 + c.pk}",
        "created_at": c.ago(1500, 3000),
    }, []


def web_inquiries(c: RowContext) -> tuple[Row, Children]:
    p = c.person
    return {
        "full_name": p.full,
        "email": p.email,
        "phone": p.phone,
        "company": p.company,
        "message": c.text(2),
        "consent_given": c.values.get("consent_withdrawn_at") is not None or c.rng.random() < 0.5,
    }, []


def prospects(c: RowContext) -> tuple[Row, Children]:
    p = c.person
    return {
        "full_name": p.full,
        "email": p.email,
        "phone": p.phone,
        "company": p.company,
        "title": c.fake.job(),
        "lead_source": c.rng.choice(["mässa", "webb", "tips", "LinkedIn"]),
        "created_at": c.before("declined_at", 10, 120),
    }, []


def demo_leads(c: RowContext) -> tuple[Row, Children]:
    p = c.person
    received = _as_datetime(c.values.get("received_at"))
    return {
        "full_name": p.full,
        "email": p.email,
        "phone": p.phone,
        "company": p.company,
        "employees": c.rng.choice([25, 80, 250, 1200, 5000]),
        "meeting_booked_at": c.after(received, 10) if received else None,
    }, []


def badge_holders(c: RowContext) -> tuple[Row, Children]:
    p = c.person
    issued = c.before("service_ended_at", 30, 700)
    children: Children = [
        (
            "entry_log",
            {
                "id": c.next_id("entry_log"),
                "badge_holder_id": c.pk,
                "entered_at": c.after(issued, 30),
                "door": c.rng.choice(["Huvudentré", "Garage", "Lastkaj", "Plan 4"]),
            },
        )
        for _ in range(c.rng.randint(1, 4))
    ]
    return {
        "full_name": p.full,
        "email": p.email,
        "phone": p.phone,
        "personnummer": p.personnummer,
        "company": p.company,
        "badge_number": f"B{c.uid:06d}",
        "issued_at": issued,
    }, children


def tickets(c: RowContext) -> tuple[Row, Children]:
    p = c.person
    return {
        "requester_name": p.full,
        "requester_email": p.email,
        "subject": c.fake.sentence(nb_words=5),
        "body": c.text(3),
        "status": c.rng.choice(["open", "pending", "solved", "closed"]),
    }, []


def phone_messages(c: RowContext) -> tuple[Row, Children]:
    p = c.person
    return {
        "caller_name": p.full,
        "caller_phone": p.phone,
        "message": c.text(2),
        "taken_by": c.rng.choice(["Svarservice AB", "Växeln"]),
    }, []


def recipients(c: RowContext) -> tuple[Row, Children]:
    p = c.person
    return {
        "email": p.email,
        "first_name": p.first,
        "last_name": p.last,
        "list_name": c.rng.choice(["HR-nytt", "Kundnytt", "Event"]),
        "subscribed_at": c.ago(800, 2000),
    }, []


def certifications(c: RowContext) -> tuple[Row, Children]:
    p = c.person
    return {
        "holder_name": p.full,
        "holder_email": p.email,
        "holder_personnummer": p.personnummer,
        "certificate": c.rng.choice(["MBTI Steg I", "MBTI Steg II", "Leadership Feedback"]),
        "certified_on": c.ago(400, 3000).date(),
        "customer_name": p.company,
    }, []


def webinar_participants(c: RowContext) -> tuple[Row, Children]:
    p = c.person
    return {
        "full_name": p.full,
        "email": p.email,
        "company": p.company,
        "webinar_title": "HR-hubben: " + c.fake.sentence(nb_words=4),
    }, []


def portal_accounts(c: RowContext) -> tuple[Row, Children]:
    p = c.person
    opened = c.before("closed_at", 60, 900)
    return {
        "full_name": p.full,
        "email": p.email,
        "username": f"{_ascii(p.first)}{c.uid}",
        "opened_at": opened,
        "last_login_at": c.after(opened, 50),
    }, []


def session_participants(c: RowContext) -> tuple[Row, Children]:
    p = c.person
    return {
        "full_name": p.full,
        "email": p.email,
        "company": p.company,
        "session_title": "Distansutbildning: " + c.fake.sentence(nb_words=3),
        "photo_url": f"https://cdn.example.se/deltagare/{c.uid}.jpg",
    }, []


def register_accounts(c: RowContext) -> tuple[Row, Children]:
    p = c.person
    return {
        "full_name": p.full,
        "email": p.email,
        "phone": p.phone,
        "certification_track": c.rng.choice(["MBTI", "Leadership Feedback", "Matrigma"]),
    }, []


def registrations(c: RowContext) -> tuple[Row, Children]:
    p = c.person
    return {
        "full_name": p.full,
        "email": p.email,
        "phone": p.phone,
        "company": p.company,
        "course": c.rng.choice(["MBTI Steg I", "Rekryteringsutbildning", "Matrigma"]),
        "dietary_needs": c.rng.choice([None, "vegetarisk", "laktosfri", "glutenfri"]),
    }, []


def content(c: RowContext) -> tuple[Row, Children]:
    p = c.person
    return {
        "title": c.fake.sentence(nb_words=6),
        "body": c.text(4),
        "author_name": p.full,
        "author_email": p.email,
        "photo_url": f"https://www.example.se/media/{c.uid}.jpg",
        "published_at": c.before("deleted_in_backoffice_at", 30, 900),
    }, []


def social_posts(c: RowContext) -> tuple[Row, Children]:
    p = c.person
    return {
        "person_name": p.full,
        "person_email": p.email,
        "platform": c.rng.choice(["LinkedIn", "Instagram", "Facebook"]),
        "post_url": f"https://www.linkedin.com/feed/update/urn:li:activity:{c.uid}",
        "caption": c.text(1),
    }, []


def event_registrations(c: RowContext) -> tuple[Row, Children]:
    p = c.person
    return {
        "full_name": p.full,
        "email": p.email,
        "phone": p.phone,
        "company": p.company,
        "event_name": c.rng.choice(["HR Summit", "Frukostseminarium", "Kundträff"]),
    }, []


def users(c: RowContext) -> tuple[Row, Children]:
    p = c.person
    created = c.before("last_active_at", 30, 900)
    events = [
        (
            "usage_events",
            {
                "id": c.next_id("usage_events"),
                "user_id": c.pk,
                "event_type": c.rng.choice(["login", "report_viewed", "assessment_sent", "export"]),
                "occurred_at": c.after(created, 25),
                "detail": None,
            },
        )
        for _ in range(c.rng.randint(1, 4))
    ]
    return {
        "full_name": p.full,
        "email": p.email,
        "company": p.company,
        "role": c.rng.choice(["admin", "recruiter", "hr"]),
        "created_at": created,
    }, events


def survey_responses(c: RowContext) -> tuple[Row, Children]:
    p = c.person
    birth = c.fake.date_of_birth(minimum_age=22, maximum_age=64)
    age = (c.now.date() - birth).days // 365
    row: Row = {
        "email": p.email,
        "full_name": p.full,
        "birth_date": birth,
        "age": age,
        "city": p.city,
        "gender": c.rng.choice(["kvinna", "man", "annat", None]),
        "job_level": c.rng.choice(["specialist", "chef", "ledning"]),
        "answers": c.text(2),
        "anonymised_at": None,
    }
    if c.values.get("anonymised_at") is not None:  # anonymised by an earlier run
        row.update(
            email=None,
            full_name=None,
            birth_date=dt.date(birth.year, 1, 1),
            age=age // 10 * 10,
            city="anonymised",
        )
    return row, []


def meetings(c: RowContext) -> tuple[Row, Children]:
    p = c.person
    return {
        "candidate_name": p.full,
        "candidate_email": p.email,
        "candidate_phone": p.phone,
        "project_code": f"P{c.rng.randint(1000, 9999)}",
        "customer": c.fake.company(),
        "meeting_at": c.before("project_completed_at", 5, 60),
    }, []


def conversations(c: RowContext) -> tuple[Row, Children]:
    p = c.person
    started = _as_datetime(c.values.get("started_at")) or c.ago(1, 400)
    messages: Children = []
    for i in range(c.rng.randint(2, 4)):
        messages.append(
            (
                "chat_messages",
                {
                    "id": c.next_id("chat_messages"),
                    "conversation_id": c.pk,
                    "sent_at": started + dt.timedelta(seconds=30 * (i + 1)),
                    "sender": "visitor" if i % 2 == 0 else "bot",
                    "text": c.fake.sentence(),
                },
            )
        )
    return {
        "visitor_name": p.full if c.rng.random() < 0.7 else None,
        "visitor_email": p.email,
        "department": c.rng.choice(["sälj", "support", "ekonomi"]),
        "channel": c.rng.choice(["web", "app"]),
    }, messages


def demo_accounts(c: RowContext) -> tuple[Row, Children]:
    p = c.person
    created = _as_datetime(c.values.get("created_at"))
    return {
        "full_name": p.full,
        "email": p.email,
        "company": p.company,
        "plan": c.rng.choice(["trial", "demo"]),
        "last_login_at": c.after(created, 40) if created else None,
    }, []


FILLERS: dict[str, Callable[[RowContext], tuple[Row, Children]]] = {
    f.__name__: f
    for f in (
        candidates,
        supplier_contacts,
        contracts,
        contacts,
        customer_admins,
        web_inquiries,
        prospects,
        badge_holders,
        tickets,
        phone_messages,
        recipients,
        certifications,
        webinar_participants,
        portal_accounts,
        session_participants,
        register_accounts,
        registrations,
        content,
        social_posts,
        event_registrations,
        users,
        survey_responses,
        meetings,
        conversations,
        demo_accounts,
    )
}
