"""The app kit's properties: its commands, their timeouts, their environment."""

from __future__ import annotations

import re

from pydantic import Field, field_validator

from vigil.kits.base import KitProperties

__all__ = ["COMMAND_FIELDS", "AppProperties"]

#: the command properties, in the order their problems are reported
COMMAND_FIELDS = ("restore", "remove", "quick_check", "deep_check", "recover")

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MAX_TIMEOUT = 86400.0


def _command(description: str) -> str:
    return (
        f"{description} A shell command line, run by /bin/sh -c in its own process group. "
        "See the exit codes in the app kit's documentation."
    )


class AppProperties(KitProperties):
    """What the app kit needs to protect one application: the commands that start, stop,
    check and recover it, how long each may take, and their environment."""

    restore: str = Field(
        min_length=1,
        description=_command(
            "Starts the application (exits 0 once it runs, also when it already ran)."
        ),
    )
    remove: str = Field(
        min_length=1,
        description=_command(
            "Stops the application (exits 0 once it is stopped, also when it was not running)."
        ),
    )
    quick_check: str = Field(
        min_length=1,
        description=_command(
            "Cheap, read-only health check: exit 0 running, 7 stopped, anything else failed."
        ),
    )
    deep_check: str | None = Field(
        None,
        description=_command(
            "Thorough, read-only health check (same exit codes as quick_check); "
            "default: the quick check."
        ),
    )
    recover: str | None = Field(
        None,
        description=_command(
            "Local recovery after a failed check (exit 0 when it worked); "
            "default: remove, then restore."
        ),
    )
    restore_timeout: float = Field(60.0, gt=0, le=_MAX_TIMEOUT, description="Seconds.")
    remove_timeout: float = Field(60.0, gt=0, le=_MAX_TIMEOUT, description="Seconds.")
    quick_check_timeout: float = Field(10.0, gt=0, le=_MAX_TIMEOUT, description="Seconds.")
    deep_check_timeout: float = Field(30.0, gt=0, le=_MAX_TIMEOUT, description="Seconds.")
    recover_timeout: float = Field(60.0, gt=0, le=_MAX_TIMEOUT, description="Seconds.")
    environment: dict[str, str] = Field(
        default_factory=dict,
        description="Extra environment variables for every command (VIGIL_* are reserved).",
    )
    working_directory: str | None = Field(
        None,
        description="Absolute directory the commands run in; default: /.",
    )

    @field_validator("restore", "remove", "quick_check")
    @classmethod
    def _required_command(cls, value: str) -> str:
        value = value.strip()
        if not value:
            raise ValueError("must be a command line, not blank")
        return value

    @field_validator("deep_check", "recover")
    @classmethod
    def _optional_command(cls, value: str | None) -> str | None:
        # a blank optional command (an emptied form field) means "not set"
        return (value.strip() or None) if value is not None else None

    @field_validator("environment")
    @classmethod
    def _environment(cls, value: dict[str, str]) -> dict[str, str]:
        for name, text in value.items():
            if not _ENV_NAME.fullmatch(name):
                raise ValueError(f"{name!r} is not a valid environment variable name")
            if name.upper().startswith("VIGIL_"):
                raise ValueError(f"{name!r}: VIGIL_* variables are set by vigil itself")
            if "\0" in text:
                raise ValueError(f"the value of {name!r} contains a NUL character")
        return value

    @field_validator("working_directory")
    @classmethod
    def _working_directory(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError(f"must be an absolute path, not {value!r}")
        return value
