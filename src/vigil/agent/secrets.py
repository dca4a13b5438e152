"""Secret properties encrypted at rest: what the store holds of a password or a TSIG key is
a sealed token, readable only with the cluster key kept outside the store.

A kit marks a property secret (``{"secret": True}``); the agent seals its value before any
write to the store and opens it when it builds a kit's context, so neither the store, its
backups nor ``etcdctl get`` show it, and the API masks it anyway. The cluster key is a
Fernet key (AES-128-CBC with HMAC-SHA256, from the ``cryptography`` library: no home-made
cryptography) in a file readable by root only, the same file on every server
(``secrets_key_file`` in the agent configuration; ``vigil lab up`` writes one per lab).

Without a key file the agent stores secrets as given and says so once in its log: an
administrator who cares about the store's contents configures one. A sealed value read
by an agent without the key (or with another key) is a configuration error the message
names.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

from vigil.errors import ConfigError

__all__ = ["SEALED_PREFIX", "SecretBox", "generate_key_file"]

log = logging.getLogger("vigil.agent")

#: how a sealed value starts in the store (and the version of the format)
SEALED_PREFIX = "vigil-sealed:v1:"


def generate_key_file(path: Path) -> None:
    """Write a new cluster key to ``path`` (mode 0600); ``ConfigError`` if it exists."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as exc:
        raise ConfigError(f"{path} exists already: keep it (it opens the stored secrets)") from exc
    with os.fdopen(fd, "wb") as handle:
        handle.write(Fernet.generate_key() + b"\n")


class SecretBox:
    """Seals and opens secret property values with the cluster key (if there is one)."""

    def __init__(self, key_file: Path | None) -> None:
        self.key_file = key_file
        self._fernet: Fernet | None = None
        if key_file is not None:
            try:
                self._fernet = Fernet(key_file.read_bytes().strip())
            except OSError as exc:
                raise ConfigError(f"cannot read the secrets key file {key_file}: {exc}") from exc
            except ValueError as exc:
                raise ConfigError(
                    f"{key_file} is not a vigil secrets key (a Fernet key, as `vigil lab up` "
                    "writes): restore the cluster's key file"
                ) from exc
        self._warned = False

    @property
    def encrypting(self) -> bool:
        return self._fernet is not None

    def seal(self, value: str) -> str:
        """``value`` sealed (or unchanged without a key; a sealed value stays as it is)."""
        if value.startswith(SEALED_PREFIX):
            return value
        if self._fernet is None:
            if not self._warned:
                log.warning(
                    "secret properties are stored unencrypted: set secrets_key_file in the "
                    "agent configuration (the same key file on every server)"
                )
                self._warned = True
            return value
        return SEALED_PREFIX + self._fernet.encrypt(value.encode()).decode()

    def open(self, value: str) -> str:
        """The plain value of a sealed one (a value that is not sealed is returned as is)."""
        if not value.startswith(SEALED_PREFIX):
            return value
        if self._fernet is None:
            raise ConfigError(
                "a secret property is encrypted in the store, and this agent has no "
                "secrets_key_file: give it the cluster's key file"
            )
        try:
            return self._fernet.decrypt(value[len(SEALED_PREFIX) :].encode()).decode()
        except InvalidToken as exc:
            raise ConfigError(
                f"a secret property cannot be opened with the key in {self.key_file}: it was "
                "sealed with another key; give every agent the same key file"
            ) from exc

    def seal_fields(self, values: Mapping[str, Any], secret: Iterable[str]) -> dict[str, Any]:
        """``values`` with every secret field that holds a string sealed."""
        names = set(secret)
        return {
            k: self.seal(v) if k in names and isinstance(v, str) else v for k, v in values.items()
        }

    def open_fields(self, values: Mapping[str, Any], secret: Iterable[str]) -> dict[str, Any]:
        """``values`` with every sealed secret field opened."""
        names = set(secret)
        return {
            k: self.open(v) if k in names and isinstance(v, str) else v for k, v in values.items()
        }
