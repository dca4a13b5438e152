"""The pieces of issue 13 that need no cluster: the cluster CA and TLS contexts, the agent's
``[tls]`` settings, the systemd units and journal lines, and the drill's arithmetic."""

from __future__ import annotations

import logging
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from vigil.agent.ca import init_ca, issue
from vigil.agent.config import AgentConfig, TlsSettings, load_config
from vigil.agent.systemd import AGENT_UNIT, GUARD_UNIT, JournalFormatter, install, units
from vigil.agent.tls import client_context, server_context
from vigil.cli.drill import Outage, next_server, outages, where
from vigil.errors import ConfigError


def test_the_ca_issues_certificates_python_and_openssl_accept(tmp_path: Path) -> None:
    ca = init_ca(tmp_path / "tls")
    assert ca.key_file.stat().st_mode & 0o777 == 0o600
    made = issue(tmp_path / "tls", "node1", ["10.0.0.1", "127.0.0.1"], ["node1.example"])
    assert made.key_file.stat().st_mode & 0o777 == 0o600
    server_context(made.cert_file, made.key_file)  # the pair matches
    checked = subprocess.run(
        ["openssl", "verify", "-CAfile", str(ca.cert_file), str(made.cert_file)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert checked.returncode == 0, checked.stderr
    text = subprocess.run(
        ["openssl", "x509", "-noout", "-text", "-in", str(made.cert_file)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "IP Address:10.0.0.1" in text and "DNS:node1.example" in text
    assert "TLS Web Server Authentication" in text and "TLS Web Client Authentication" in text
    context = client_context(ca.cert_file)
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname
    with pytest.raises(ConfigError, match="exists already"):
        init_ca(tmp_path / "tls")
    with pytest.raises(ConfigError, match="exists already"):
        issue(tmp_path / "tls", "node1", ["10.0.0.1"])
    with pytest.raises(ConfigError, match="not an IP address"):
        issue(tmp_path / "tls", "node2", ["node2"])
    with pytest.raises(ConfigError, match="no CA"):
        issue(tmp_path / "elsewhere", "node2", ["10.0.0.2"])


def test_a_certificate_and_someone_elses_key_are_refused(tmp_path: Path) -> None:
    init_ca(tmp_path)
    one = issue(tmp_path, "node1", ["10.0.0.1"])
    two = issue(tmp_path, "node2", ["10.0.0.2"])
    with pytest.raises(ConfigError, match="cannot be used together"):
        server_context(one.cert_file, two.key_file)


def _config(tmp_path: Path, tls: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(
        f'server = "node1"\nstore = "sqlite:///{tmp_path}/s.db"\nstate_dir = "{tmp_path}"\n'
        f'tokens_file = "{tmp_path}/t.toml"\n[api]\nlisten = "10.0.0.1"\n{tls}'
    )
    return path


def test_an_agent_serves_https_unless_told_plain_http(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"over TLS: give \[tls\] cert_file"):
        load_config(_config(tmp_path, ""))
    plain = load_config(_config(tmp_path, "[tls]\nplain_http = true\n"))
    assert plain.api.url == "http://10.0.0.1:7480"
    tls = f'[tls]\ncert_file = "{tmp_path}/c.pem"\nkey_file = "{tmp_path}/c.key"\n'
    assert load_config(_config(tmp_path, tls)).api.url == "https://10.0.0.1:7480"
    with pytest.raises(ConfigError, match="both cert_file and key_file"):
        load_config(_config(tmp_path, f'[tls]\ncert_file = "{tmp_path}/c.pem"\n'))
    with pytest.raises(ValueError, match="choose one"):
        TlsSettings(cert_file=tmp_path / "c", key_file=tmp_path / "k", plain_http=True)


def test_units_for_the_agent_and_its_fence_guard(tmp_path: Path) -> None:
    config = AgentConfig(
        server="node1", store="x", state_dir=tmp_path / "state", tokens_file=tmp_path / "t"
    )
    text = units(config, Path("/etc/vigil/agent.toml"), "/usr/bin/python3")
    assert "ExecStart=/usr/bin/python3 -m vigil agent run --config /etc/vigil/agent.toml" in (
        text.agent
    )
    assert f"Wants=network-online.target {GUARD_UNIT}" in text.agent
    assert "KillMode=process" in text.agent and "TimeoutStopSec=" in text.agent
    assert f"-m vigil.agent.fenceguard {tmp_path / 'state'}" in text.guard
    assert "fence-guard.pid" in text.guard and "Restart=always" in text.guard
    done = install(config, tmp_path / "agent.toml", tmp_path / "units", systemctl=False)
    assert [p.name for p in done.files] == [GUARD_UNIT, AGENT_UNIT]
    assert done.commands == []
    verify = Path("/usr/bin/systemd-analyze")
    if verify.exists():  # the units parse as systemd reads them
        checked = subprocess.run(
            [str(verify), "verify", *map(str, done.files)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert "Unknown key" not in checked.stderr and "Invalid" not in checked.stderr


def test_journal_lines_carry_the_priority_on_every_line() -> None:
    formatter = JournalFormatter()
    record = logging.LogRecord(
        "vigil.agent", logging.WARNING, __file__, 1, "lease %s", ("x",), None
    )
    assert formatter.format(record) == "<4>vigil.agent: lease x"
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        failed = logging.LogRecord(
            "vigil.agent", logging.ERROR, __file__, 1, "died", (), sys.exc_info()
        )
    lines = formatter.format(failed).splitlines()
    assert lines[0] == "<3>vigil.agent: died" and all(line.startswith("<3>") for line in lines)


def test_the_drill_chooses_the_next_usable_server_and_measures_outages() -> None:
    servers = ["node1", "node2", "node3"]
    assert next_server(servers, "node1", lambda s: True) == "node2"
    assert next_server(servers, "node1", lambda s: s != "node2") == "node3"
    assert next_server(servers, "node3", lambda s: True) == "node1"
    assert next_server(servers, "node1", lambda s: s == "node1") is None
    samples = [(0.0, True), (1.0, False), (1.5, False), (2.0, True), (3.0, False), (3.2, True)]
    assert outages(samples, 0.5, 10.0) == [Outage(1.0, 2.0), Outage(3.0, 3.2)]
    assert outages([(1.0, False)], 0.0, 4.0) == [Outage(1.0, 4.0)]
    status = {
        "hierarchies": [
            {
                "name": "web",
                "active_server": "node2",
                "resources": [
                    {
                        "tag": "web",
                        "instances": [
                            {"server": "node3", "priority": 20},
                            {"server": "node1", "priority": 1},
                            {"server": "node2", "priority": 10},
                        ],
                    },
                    {"tag": "web-ip", "instances": []},
                ],
            }
        ]
    }
    assert where(status, "web-ip") == ("web", "node2", ["node1", "node2", "node3"])
    with pytest.raises(LookupError):
        where(status, "nope")
