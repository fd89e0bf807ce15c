"""The controller's facts for the Art. 30 record: a catalogue-level data file, not code.

``include/policies/controller/controller.yaml`` holds Art. 30(1)(a) (the controller's name and
contact details, the data-protection contact), the catalogue's reading of the policy's words
about time, Art. 30(1)(g) (a general description of the security measures), and how long
copies outlive a deletion in backups (``residual_copies``, shown on deletion certificates).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from include.retention.errors import RetentionError
from include.retention.texts import Localised

CONTROLLER_FILE = (
    Path(__file__).resolve().parent.parent / "policies" / "controller" / "controller.yaml"
)
_EMAIL = r"^[^@\s]+@[^@\s]+\.[a-z]{2,}$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Contact(_Model):
    email: str = Field(pattern=_EMAIL)
    role: Localised


class DataProtectionContact(_Model):
    title: Localised
    email: str = Field(pattern=_EMAIL)


DEFAULT_BACKUP_DAYS = 35  # five weekly full backups: a common default for database backups


class ResidualCopies(_Model):
    """Copies a deletion does not reach at once: backups, kept ``backup_retention_days`` and
    then destroyed (``systems`` overrides it per catalogue system; 0 = no backups kept)."""

    backup_retention_days: int = Field(default=DEFAULT_BACKUP_DAYS, ge=0, le=3650)
    systems: dict[str, Annotated[int, Field(ge=0, le=3650)]] = Field(default_factory=dict)
    statement: Localised = Localised(
        sv="Säkerhetskopior skrivs över när lagringstiden för dem har gått ut. En återläst"
        " säkerhetskopia gallras av nästa schemalagda körning.",
        en="Backups are overwritten once their retention has passed. A restored backup is"
        " enforced again by the next scheduled run.",
    )

    def days_for(self, system: str) -> int:
        """How many days backups of ``system`` are kept."""
        return self.systems.get(system, self.backup_retention_days)


class Controller(_Model):
    """Who is responsible, how to reach them, and how the policy is read and protected."""

    name: str = Field(min_length=2)
    contact: Contact
    data_protection_contact: DataProtectionContact
    supervisory_authority: Localised
    interpretations: list[Localised] = Field(min_length=1)
    security_measures: list[Localised] = Field(min_length=1)
    residual_copies: ResidualCopies = Field(default_factory=ResidualCopies)


def load_controller(path: Path = CONTROLLER_FILE) -> Controller:
    """Read and validate the controller file; a clear error names the problem."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        return Controller.model_validate(raw)
    except FileNotFoundError:
        raise RetentionError(f"{path}: the controller file is missing") from None
    except yaml.YAMLError as exc:
        raise RetentionError(f"{path.name}: not valid YAML: {exc}") from None
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}"
            for e in exc.errors()
        )
        raise RetentionError(f"{path.name}: {problems}") from None
