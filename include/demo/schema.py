"""The tables of the demo source systems: one ``MetaData`` per system.

Each table carries exactly the columns the catalogue binds (primary key, subject column,
anchor and condition columns, child foreign keys, object-key and masking columns) plus the
realistic extra columns such a system would have. Timestamps are naive UTC ``DateTime``,
``*_on`` columns are ``Date`` and flags are ``Boolean``.
"""

from __future__ import annotations

import sqlalchemy as sa

from include.retention.errors import RetentionError

SYSTEMS: tuple[str, ...] = (
    "ats",
    "accounting",
    "contracts",
    "crm",
    "access_control",
    "support_desk",
    "newsletter",
    "learning",
    "cms",
    "product_analytics",
    "booking",
    "chatbot",
    "demo_platform",
)

_NAME = 120
_EMAIL = 254


def _id() -> sa.Column:
    return sa.Column("id", sa.Integer, primary_key=True, autoincrement=False)


def _str(name: str, length: int = _NAME, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.String(length), nullable=nullable)


def _ts(name: str, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=False), nullable=nullable)


def _day(name: str, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.Date, nullable=nullable)


def _fk(name: str, target: str) -> sa.Column:
    return sa.Column(name, sa.Integer, sa.ForeignKey(target), nullable=False, index=True)


def _ats(md: sa.MetaData) -> None:
    sa.Table(
        "candidates",
        md,
        _id(),
        _str("first_name"),
        _str("last_name"),
        _str("email", _EMAIL, nullable=False),
        _str("phone", 40),
        _str("city"),
        _str("personnummer", 13),
        _str("linkedin_url", 300),
        _str("position_applied"),
        sa.Column("hired", sa.Boolean, nullable=True),
        _ts("decision_at"),
        _str("cv_object_key", 300),
        _ts("created_at", nullable=False),
        sa.Column("notes", sa.Text),
    )
    sa.Table(
        "applications",
        md,
        _id(),
        _fk("candidate_id", "candidates.id"),
        _str("job_title"),
        _ts("submitted_at", nullable=False),
        _str("status", 32),
        sa.Column("cover_letter", sa.Text),
    )
    sa.Table(
        "attachments",
        md,
        _id(),
        _fk("application_id", "applications.id"),
        _str("filename", 200),
        _str("content_type", 100),
        _ts("uploaded_at", nullable=False),
    )


def _accounting(md: sa.MetaData) -> None:
    sa.Table(
        "supplier_contacts",
        md,
        _id(),
        _str("supplier_name"),
        _str("org_number", 20),
        _str("contact_name"),
        _str("email", _EMAIL, nullable=False),
        _str("phone", 40),
        _str("bankgiro", 20),
        _day("last_transaction_on"),
        _ts("created_at", nullable=False),
    )


def _contracts(md: sa.MetaData) -> None:
    sa.Table(
        "contracts",
        md,
        _id(),
        _str("contract_number", 40),
        _str("counterparty"),
        _str("contact_name"),
        _str("contact_email", _EMAIL, nullable=False),
        _str("contact_phone", 40),
        _str("status", 20, nullable=False),
        _day("signed_on"),
        _day("ended_on"),
        sa.Column("annual_value_sek", sa.Integer),
        sa.Column("notes", sa.Text),
    )
    sa.Table(
        "contract_parties",
        md,
        _id(),
        _fk("contract_id", "contracts.id"),
        _str("party_name"),
        _str("role", 40),
        _str("email", _EMAIL),
        _str("phone", 40),
        sa.Column("signatory", sa.Boolean, nullable=False),
    )


def _crm(md: sa.MetaData) -> None:
    sa.Table(
        "contacts",
        md,
        _id(),
        _str("first_name"),
        _str("last_name"),
        _str("email", _EMAIL, nullable=False),
        _str("phone", 40),
        _str("company"),
        _str("title"),
        _day("contract_terminated_on"),
        _ts("created_at", nullable=False),
    )
    sa.Table(
        "customer_admins",
        md,
        _id(),
        _str("full_name"),
        _str("email", _EMAIL, nullable=False),
        _str("phone", 40),
        _str("company"),
        _str("customer_number", 20),
        _day("contract_terminated_on"),
        _ts("created_at", nullable=False),
    )
    sa.Table(
        "web_inquiries",
        md,
        _id(),
        _str("full_name"),
        _str("email", _EMAIL, nullable=False),
        _str("phone", 40),
        _str("company"),
        sa.Column("message", sa.Text),
        sa.Column("consent_given", sa.Boolean, nullable=False),
        _ts("received_at"),
        _ts("consent_withdrawn_at"),
    )
    sa.Table(
        "prospects",
        md,
        _id(),
        _str("full_name"),
        _str("email", _EMAIL, nullable=False),
        _str("phone", 40),
        _str("company"),
        _str("title"),
        _str("status", 20, nullable=False),
        _str("lead_source", 40),
        _ts("declined_at"),
        _ts("created_at", nullable=False),
    )


def _access_control(md: sa.MetaData) -> None:
    sa.Table(
        "badge_holders",
        md,
        _id(),
        _str("full_name"),
        _str("email", _EMAIL, nullable=False),
        _str("phone", 40),
        _str("personnummer", 13),
        _str("company"),
        _str("badge_number", 20),
        _ts("issued_at", nullable=False),
        _ts("service_ended_at"),
    )
    sa.Table(
        "entry_log",
        md,
        _id(),
        _fk("badge_holder_id", "badge_holders.id"),
        _ts("entered_at", nullable=False),
        _str("door", 60),
    )


def _support_desk(md: sa.MetaData) -> None:
    sa.Table(
        "tickets",
        md,
        _id(),
        _str("requester_name"),
        _str("requester_email", _EMAIL, nullable=False),
        _str("subject", 200),
        sa.Column("body", sa.Text),
        _str("status", 20),
        _ts("created_at"),
    )
    sa.Table(
        "phone_messages",
        md,
        _id(),
        _str("caller_name"),
        _str("caller_phone", 40, nullable=False),
        sa.Column("message", sa.Text),
        _str("taken_by"),
        _ts("received_at"),
    )


def _newsletter(md: sa.MetaData) -> None:
    sa.Table(
        "recipients",
        md,
        _id(),
        _str("email", _EMAIL, nullable=False),
        _str("first_name"),
        _str("last_name"),
        _str("list_name", 60),
        _ts("subscribed_at", nullable=False),
        _ts("last_sent_at"),
        _ts("consent_withdrawn_at"),
    )


def _learning(md: sa.MetaData) -> None:
    sa.Table(
        "certifications",
        md,
        _id(),
        _str("holder_name"),
        _str("holder_email", _EMAIL, nullable=False),
        _str("holder_personnummer", 13),
        _str("certificate", 80),
        _day("certified_on"),
        _str("customer_name"),
        sa.Column("customer_requested_deletion", sa.Boolean, nullable=False),
        _day("contract_terminated_on"),
    )
    sa.Table(
        "webinar_participants",
        md,
        _id(),
        _str("full_name"),
        _str("email", _EMAIL, nullable=False),
        _str("company"),
        _str("role", 20, nullable=False),
        _str("webinar_title", 200),
        _ts("registered_at"),
        _ts("consent_withdrawn_at"),
    )
    sa.Table(
        "portal_accounts",
        md,
        _id(),
        _str("full_name"),
        _str("email", _EMAIL, nullable=False),
        _str("username", 80),
        _ts("opened_at", nullable=False),
        _ts("last_login_at"),
        _ts("closed_at"),
    )
    sa.Table(
        "session_participants",
        md,
        _id(),
        _str("full_name"),
        _str("email", _EMAIL, nullable=False),
        _str("company"),
        _str("session_title", 200),
        _str("photo_url", 300),
        _ts("attended_at"),
    )
    sa.Table(
        "register_accounts",
        md,
        _id(),
        _str("full_name"),
        _str("email", _EMAIL, nullable=False),
        _str("phone", 40),
        _str("certification_track", 80),
        _ts("created_at"),
    )
    sa.Table(
        "registrations",
        md,
        _id(),
        _str("full_name"),
        _str("email", _EMAIL, nullable=False),
        _str("phone", 40),
        _str("company"),
        _str("course", 120),
        _str("dietary_needs", 120),
        _ts("received_at"),
    )


def _cms(md: sa.MetaData) -> None:
    sa.Table(
        "content",
        md,
        _id(),
        _str("title", 200),
        sa.Column("body", sa.Text),
        _str("author_name"),
        _str("author_email", _EMAIL, nullable=False),
        _str("photo_url", 300),
        _ts("published_at"),
        _ts("deleted_in_backoffice_at"),
    )
    sa.Table(
        "social_posts",
        md,
        _id(),
        _str("person_name"),
        _str("person_email", _EMAIL, nullable=False),
        _str("platform", 20),
        _str("post_url", 300),
        sa.Column("caption", sa.Text),
        _ts("published_at"),
        _ts("consent_withdrawn_at"),
    )
    sa.Table(
        "event_registrations",
        md,
        _id(),
        _str("full_name"),
        _str("email", _EMAIL, nullable=False),
        _str("phone", 40),
        _str("company"),
        _str("event_name", 200),
        _ts("received_at"),
    )


def _product_analytics(md: sa.MetaData) -> None:
    sa.Table(
        "users",
        md,
        _id(),
        _str("full_name"),
        _str("email", _EMAIL, nullable=False),
        _str("company"),
        _str("role", 40),
        _ts("created_at", nullable=False),
        _ts("last_active_at"),
    )
    sa.Table(
        "usage_events",
        md,
        _id(),
        _fk("user_id", "users.id"),
        _str("event_type", 40),
        _ts("occurred_at", nullable=False),
        _str("detail", 200),
    )
    sa.Table(
        "survey_responses",
        md,
        _id(),
        _str("email", _EMAIL),
        _str("full_name"),
        _day("birth_date"),
        sa.Column("age", sa.Integer),
        _str("city"),
        _str("gender", 20),
        _str("job_level", 40),
        sa.Column("answers", sa.Text),
        _ts("collected_at"),
        _ts("consent_withdrawn_at"),
        _ts("anonymised_at"),
    )


def _booking(md: sa.MetaData) -> None:
    sa.Table(
        "meetings",
        md,
        _id(),
        _str("candidate_name"),
        _str("candidate_email", _EMAIL, nullable=False),
        _str("candidate_phone", 40),
        _str("project_code", 20),
        _str("customer"),
        _ts("meeting_at", nullable=False),
        _ts("project_completed_at"),
    )


def _chatbot(md: sa.MetaData) -> None:
    sa.Table(
        "conversations",
        md,
        _id(),
        _str("visitor_name"),
        _str("visitor_email", _EMAIL),
        _str("department", 40),
        _str("channel", 20),
        _ts("started_at"),
    )
    sa.Table(
        "chat_messages",
        md,
        _id(),
        _fk("conversation_id", "conversations.id"),
        _ts("sent_at", nullable=False),
        _str("sender", 10),
        sa.Column("text", sa.Text),
    )


def _demo_platform(md: sa.MetaData) -> None:
    sa.Table(
        "demo_accounts",
        md,
        _id(),
        _str("full_name"),
        _str("email", _EMAIL, nullable=False),
        _str("company"),
        _str("plan", 20),
        _ts("created_at"),
        _ts("last_login_at"),
    )


_BUILDERS = {
    "ats": _ats,
    "accounting": _accounting,
    "contracts": _contracts,
    "crm": _crm,
    "access_control": _access_control,
    "support_desk": _support_desk,
    "newsletter": _newsletter,
    "learning": _learning,
    "cms": _cms,
    "product_analytics": _product_analytics,
    "booking": _booking,
    "chatbot": _chatbot,
    "demo_platform": _demo_platform,
}


def system_metadata(system: str) -> sa.MetaData:
    """A fresh ``MetaData`` holding the tables of one demo system."""
    builder = _BUILDERS.get(system)
    if builder is None:
        raise RetentionError(f"no demo system {system!r}; known: {', '.join(SYSTEMS)}")
    md = sa.MetaData()
    builder(md)
    return md
