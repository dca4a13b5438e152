"""Secret properties sealed at rest with the cluster key (``vigil.agent.secrets``)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vigil.agent.secrets import SEALED_PREFIX, SecretBox, generate_key_file
from vigil.errors import ConfigError


def test_a_sealed_value_opens_with_the_same_key_only(tmp_path: Path) -> None:
    key = tmp_path / "cluster.key"
    generate_key_file(key)
    assert key.stat().st_mode & 0o777 == 0o600
    box = SecretBox(key)
    sealed = box.seal("s3cret")
    assert sealed.startswith(SEALED_PREFIX) and "s3cret" not in sealed
    assert box.seal(sealed) == sealed  # sealing twice changes nothing
    assert box.open(sealed) == "s3cret"
    assert box.open("plain") == "plain"
    other = tmp_path / "other.key"
    generate_key_file(other)
    with pytest.raises(ConfigError, match="sealed with another key"):
        SecretBox(other).open(sealed)
    with pytest.raises(ConfigError, match="no secrets_key_file"):
        SecretBox(None).open(sealed)


def test_fields_are_sealed_by_name_and_other_values_untouched(tmp_path: Path) -> None:
    key = tmp_path / "k"
    generate_key_file(key)
    box = SecretBox(key)
    values = {"bind_password": "pw", "bind_dn": "cn=x", "port": 3}
    sealed = box.seal_fields(values, {"bind_password"})
    assert sealed["bind_dn"] == "cn=x" and sealed["port"] == 3
    assert sealed["bind_password"] != "pw"
    assert box.open_fields(sealed, {"bind_password"}) == values


def test_without_a_key_values_are_kept_and_a_bad_key_file_is_refused(tmp_path: Path) -> None:
    assert SecretBox(None).seal("pw") == "pw"
    bad = tmp_path / "bad.key"
    bad.write_text("not a key")
    with pytest.raises(ConfigError, match="not a vigil secrets key"):
        SecretBox(bad)
    with pytest.raises(ConfigError, match="exists already"):
        generate_key_file(bad)
