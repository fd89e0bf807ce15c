"""The controller's facts for the Art. 30 record: a catalogue-level data file, not code.

``include/policies/controller/controller.yaml`` holds Art. 30(1)(a) (the controller's name and
contact details, the data-protection contact), the catalogue's reading of the policy's words
about time, and Art. 30(1)(g) (a general description of the security measures).
"""

from __future__ import annotations

from pathlib import Path

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


class Controller(_Model):
    """Who is responsible, how to reach them, and how the policy is read and protected."""

    name: str = Field(min_length=2)
    contact: Contact
    data_protection_contact: DataProtectionContact
    supervisory_authority: Localised
    interpretations: list[Localised] = Field(min_length=1)
    security_measures: list[Localised] = Field(min_length=1)


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
