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

Key rotation: the key file may hold several keys, one per line; the first seals, every one
opens (``MultiFernet``), and the agent reads the file again when it changes (no restart).
``add_key`` puts a new key first; once every server has that file, ``vigil secrets
rotate`` re-seals every stored secret with it (``vigil.agent.rekey``), and ``retire_keys``
then drops the older ones. A key is named by its fingerprint (a hash: it reveals nothing).
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from vigil.errors import ConfigError

__all__ = [
    "SEALED_PREFIX",
    "SecretBox",
    "add_key",
    "fingerprint",
    "generate_key_file",
    "read_keys",
    "retire_keys",
]

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


def fingerprint(key: bytes) -> str:
    """A key's name: 16 hex digits of a hash of it (safe to show and log)."""
    return hashlib.sha256(b"vigil secrets key\0" + key.strip()).hexdigest()[:16]


def read_keys(path: Path) -> list[bytes]:
    """The keys of a key file, the sealing one first; ``ConfigError`` naming what is
    wrong (unreadable, empty, a line that is not a key)."""
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read the secrets key file {path}: {exc}") from exc
    keys = [line.strip() for line in text.splitlines() if line.strip()]
    keys = [k for k in keys if not k.startswith(b"#")]
    for number, key in enumerate(keys, 1):
        try:
            Fernet(key)
        except ValueError as exc:
            raise ConfigError(
                f"{path} is not a vigil secrets key file (line {number} is not a Fernet key, "
                "as `vigil lab up` and `vigil secrets add-key` write): restore the cluster's "
                "key file"
            ) from exc
    if not keys:
        raise ConfigError(f"{path} is not a vigil secrets key file: it holds no key")
    return keys


def _write_keys(path: Path, keys: list[bytes]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(b"".join(k + b"\n" for k in keys))
    os.replace(tmp, path)


def add_key(path: Path) -> str:
    """Put a new key first in the key file ``path`` (it seals from now on; the others
    still open); its fingerprint."""
    keys = read_keys(path)
    new = Fernet.generate_key()
    _write_keys(path, [new, *keys])
    return fingerprint(new)


def retire_keys(path: Path) -> list[str]:
    """Keep only the first (sealing) key of ``path``; the fingerprints it removed. Do it
    only after ``vigil secrets rotate``: a value still sealed with a removed key no
    longer opens."""
    keys = read_keys(path)
    _write_keys(path, keys[:1])
    return [fingerprint(k) for k in keys[1:]]


class SecretBox:
    """Seals and opens secret property values with the cluster key (if there is one).
    The key file is read again whenever it changes."""

    def __init__(self, key_file: Path | None) -> None:
        self.key_file = key_file
        self._fernet: MultiFernet | None = None
        self._keys: list[bytes] = []
        self._seen: tuple[int, int, int] | None = None
        self._reload()  # ConfigError: unusable key file
        self._warned = False

    def _reload(self) -> None:
        """Read the key file if it changed since it was read (cheap: one stat)."""
        if self.key_file is None:
            return
        try:
            stat = self.key_file.stat()
        except OSError as exc:
            if self._fernet is not None:
                return  # keep the keys it has; the file may be being replaced
            raise ConfigError(f"cannot read the secrets key file {self.key_file}: {exc}") from exc
        seen = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if seen == self._seen:
            return
        try:
            keys = read_keys(self.key_file)
        except ConfigError:
            if self._fernet is None:
                raise
            log.error("the secrets key file %s changed and cannot be used now", self.key_file)
            return
        if self._seen is not None:
            log.info(
                "secrets key file %s read again: sealing with key %s",
                self.key_file,
                fingerprint(keys[0]),
            )
        self._keys, self._seen = keys, seen
        self._fernet = MultiFernet([Fernet(k) for k in keys])

    @property
    def encrypting(self) -> bool:
        return self._fernet is not None

    def fingerprints(self) -> list[str]:
        """The fingerprints of the keys, the sealing one first ([] without a key file)."""
        self._reload()
        return [fingerprint(k) for k in self._keys]

    def reseal(self, value: str) -> str:
        """A sealed ``value`` sealed again with the first key (a plain one: sealed)."""
        self._reload()
        if self._fernet is None:
            raise ConfigError("this agent has no secrets_key_file: there is no key to seal with")
        if not value.startswith(SEALED_PREFIX):
            return self.seal(value)
        try:
            token = self._fernet.rotate(value[len(SEALED_PREFIX) :].encode())
        except InvalidToken as exc:
            raise ConfigError(
                f"a stored secret cannot be opened with the keys in {self.key_file}: it was "
                "sealed with a key this file no longer holds"
            ) from exc
        return SEALED_PREFIX + token.decode()

    def seal(self, value: str) -> str:
        """``value`` sealed (or unchanged without a key; a sealed value stays as it is)."""
        if value.startswith(SEALED_PREFIX):
            return value
        self._reload()
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
        self._reload()
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
