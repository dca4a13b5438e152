"""The dns kit without a DNS server: its properties, its secret, its timeouts, how it
combines the DNS servers' answers, and what it proposes on extend.

DNS servers here are closed ports on 127.0.0.1 (connection refused at once): no BIND.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from pathlib import Path
from typing import Any

import pytest

from vigil.errors import KitError, Severity
from vigil.kits.base import Action, CheckStatus, KitContext
from vigil.kits.dns import DnsKit, DnsProperties
from vigil.kits.dns.kit import combine
from vigil.kits.dns.properties import Endpoint, parse_endpoint
from vigil.kits.dns.records import ServerView

KIT = DnsKit()
SECRET = "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA=="  # base64 of a 32-byte text


def closed_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on (connection refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def values(**changes: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "zone": "lab.example",
        "name": "web",
        "servers": ["10.0.0.53"],
        "tsig_key": "vigil-key",
        "tsig_secret": SECRET,
        "address": "10.0.0.1",
    }
    base.update(changes)
    return base


def parse(**changes: Any) -> DnsProperties:
    properties = KIT.parse_properties(values(**changes))
    assert isinstance(properties, DnsProperties)
    return properties


def refused(**changes: Any) -> str:
    with pytest.raises(KitError) as caught:
        KIT.parse_properties(values(**changes))
    assert caught.value.severity is Severity.FATAL
    return str(caught.value)


def make_ctx(tmp_path: Path, addresses: tuple[str, ...] = (), **changes: Any) -> KitContext:
    return KitContext(
        tag="web-dns",
        server="node1",
        properties=parse(**changes),
        log=logging.getLogger("vigil.kit.dns.web-dns"),
        state_dir=tmp_path / "state" / "kits" / "web-dns",
        addresses=addresses,
    )


# --- properties ------------------------------------------------------------------------


def test_defaults_and_normal_forms() -> None:
    p = parse(servers=[" 10.0.0.53 ", "10.0.0.54:5353", "[2001:db8::53]:53", "2001:db8::54"])
    assert p.zone == "lab.example."
    assert p.tsig_key == "vigil-key"
    assert p.servers == ["10.0.0.53", "10.0.0.54:5353", "2001:db8::53", "2001:db8::54"]
    assert p.endpoints()[1] == Endpoint("10.0.0.54", 5353)
    assert (p.ttl, p.update_ptr, p.remove_records, p.tsig_algorithm) == (
        30,
        True,
        False,
        "hmac-sha256",
    )
    assert p.reverse_name.to_text() == "1.0.0.10.in-addr.arpa."


@pytest.mark.parametrize(
    ("name", "fqdn"),
    [
        ("web", "web.lab.example."),
        ("mail.web", "mail.web.lab.example."),
        ("web.lab.example", "web.lab.example."),
        ("web.lab.example.", "web.lab.example."),
        ("WEB.Lab.Example.", "WEB.Lab.Example."),
        ("@", "lab.example."),
    ],
)
def test_names_relative_or_absolute(name: str, fqdn: str) -> None:
    assert parse(name=name).fqdn.to_text() == fqdn


def test_a_name_outside_the_zone_is_refused() -> None:
    assert "name web.other.org. is not inside zone lab.example." in refused(name="web.other.org.")


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("address", "10.0.0.256", "must be an IPv4 address"),
        ("address", "2001:db8::1", "must be an IPv4 address"),
        ("servers", [], "at least 1"),
        ("servers", ["dns.example.com"], "is not an IP address"),
        ("servers", ["10.0.0.53:0"], "port must be a number from 1 to 65535"),
        ("servers", ["10.0.0.53:99999"], "port must be a number from 1 to 65535"),
        ("servers", ["[2001:db8::53]x"], "[address]:port"),
        ("servers", ["10.0.0.53", "10.0.0.53:53"], "listed twice"),
        ("zone", "bad..zone", "not a valid zone name"),
        ("zone", ".", "must not be the root zone"),
        ("tsig_algorithm", "hmac-sha3", "tsig_algorithm"),
        ("ttl", -1, "ttl"),
        ("request_timeout", 0, "request_timeout"),
        ("colour", "blue", "colour"),
    ],
)
def test_bad_values_are_refused_naming_the_field(field: str, value: Any, expected: str) -> None:
    assert expected in refused(**{field: value})


def test_endpoint_text_round_trips() -> None:
    for text in ("10.0.0.53", "10.0.0.53:5353", "[2001:db8::53]:5353", "2001:db8::53"):
        endpoint = parse_endpoint(text)
        assert parse_endpoint(str(endpoint)) == endpoint


def test_schema_marks_the_secret_and_the_per_server_address() -> None:
    schema = DnsProperties.model_json_schema()
    assert schema["properties"]["tsig_secret"]["secret"] is True
    assert schema["properties"]["tsig_secret"]["writeOnly"] is True
    assert DnsProperties.per_server_fields() == {"address"}
    assert DnsProperties.secret_fields() == {"tsig_secret"}
    assert "tsig_secret" in schema["required"] and "address" in schema["required"]


# --- the secret never shows ------------------------------------------------------------


def test_secret_not_in_repr_str_dumps_or_describe() -> None:
    p = parse()
    shown = [
        repr(p),
        str(p),
        p.model_dump_json(),
        json.dumps(p.model_dump(mode="json")),
        repr(KIT.parse_properties(values())),
        json.dumps(KIT.describe()),
        repr(DnsKit),
    ]
    for text in shown:
        assert SECRET not in text
    assert p.tsig_secret.get_secret_value() == SECRET


@pytest.mark.parametrize(
    "changes",
    [
        {"tsig_secret": "not base64 at all: my-password"},
        {"tsig_secret": "c2VjcmV0"[:-1]},
        {"address": "nowhere", "tsig_secret": "my-password!"},
        {"tsig_secret": 12345},
        {"unknown": "my-password!", "tsig_secret": "my-password!"},
    ],
)
def test_secret_not_in_validation_errors(changes: dict[str, Any]) -> None:
    secret = str(changes["tsig_secret"])
    with pytest.raises(KitError) as caught:
        KIT.parse_properties(values(**changes))
    cause = caught.value.__cause__
    for text in (str(caught.value), repr(caught.value), str(cause), repr(cause)):
        assert secret not in text, text
    assert "tsig_secret" in str(caught.value) or "unknown" in str(caught.value)


async def test_secret_not_in_logs_or_messages_of_any_action(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    servers = [f"127.0.0.1:{closed_port()}", f"127.0.0.1:{closed_port()}"]
    ctx = make_ctx(tmp_path, ("10.0.0.9",), servers=servers, remove_records=True)
    texts: list[str] = []
    texts += await KIT.validate_create(ctx)
    texts += (await KIT.can_extend(ctx)).problems
    for check in (await KIT.quick_check(ctx), await KIT.deep_check(ctx)):
        texts += [check.detail, check.warning]
    await KIT.remove(ctx)
    with pytest.raises(KitError) as caught:
        await KIT.restore(ctx)
    texts.append(str(caught.value))
    assert not await KIT.recover(ctx)
    texts += [record.getMessage() for record in caplog.records]
    assert texts and all(SECRET not in text for text in texts)
    assert caplog.records, "the actions should have logged their failures"
    assert SECRET not in caplog.text


# --- timeouts ----------------------------------------------------------------------------


def test_timeouts_grow_with_servers_and_request_timeout() -> None:
    one = parse(request_timeout=2)
    three = parse(request_timeout=2, servers=["10.0.0.53", "10.0.0.54", "10.0.0.55"])
    assert KIT.timeout(Action.QUICK_CHECK, one) == KIT.timeout(Action.QUICK_CHECK, three)
    assert KIT.timeout(Action.RESTORE, three) > KIT.timeout(Action.RESTORE, one) > 2 * 6
    assert KIT.timeout(Action.RECOVER, one) > KIT.timeout(Action.RESTORE, one)
    assert KIT.timeout(Action.DEEP_CHECK, one) > KIT.timeout(Action.QUICK_CHECK, one)
    for action in Action:
        assert KIT.timeout(action, one) > 0


# --- combining the DNS servers' answers --------------------------------------------------


def view(status: CheckStatus, detail: str, reachable: bool = True) -> ServerView:
    return ServerView(Endpoint("10.0.0.53"), status, detail, reachable)


RUNNING = view(CheckStatus.RUNNING, "points here")
ELSEWHERE = view(CheckStatus.STOPPED, "points elsewhere")
SILENT = view(CheckStatus.FAILED, "did not answer", reachable=False)
WRONG = view(CheckStatus.FAILED, "PTR missing")


@pytest.mark.parametrize(
    ("views", "status", "detail", "warning"),
    [
        ([RUNNING, RUNNING], CheckStatus.RUNNING, "points here; points here", ""),
        ([RUNNING, ELSEWHERE], CheckStatus.STOPPED, "points elsewhere", ""),
        ([SILENT, ELSEWHERE], CheckStatus.STOPPED, "points elsewhere", ""),
        ([SILENT], CheckStatus.FAILED, "did not answer", ""),
        ([SILENT, SILENT], CheckStatus.FAILED, "did not answer; did not answer", ""),
        ([RUNNING, SILENT], CheckStatus.RUNNING, "points here", "did not answer"),
        ([RUNNING, WRONG, SILENT], CheckStatus.FAILED, "PTR missing", ""),
    ],
)
def test_combine(views: list[ServerView], status: CheckStatus, detail: str, warning: str) -> None:
    check = combine(views)
    assert (check.status, check.detail, check.warning) == (status, detail, warning)


# --- extend: the proposed address --------------------------------------------------------


async def test_can_extend_proposes_the_targets_first_ipv4_address(tmp_path: Path) -> None:
    servers = [f"127.0.0.1:{closed_port()}"]
    copied = make_ctx(tmp_path, ("fe80::1", "10.0.0.2", "10.0.0.3"), servers=servers)
    check = await KIT.can_extend(copied)
    assert check.proposed == {"address": "10.0.0.2"}
    assert any("cannot be reached" in problem for problem in check.problems)
    own = make_ctx(tmp_path, ("10.0.0.3", "10.0.0.1"), servers=servers)
    assert (await KIT.can_extend(own)).proposed == {}
    unknown = make_ctx(tmp_path, (), servers=servers)
    assert (await KIT.can_extend(unknown)).proposed == {}


async def test_unreachable_server_problems_say_what_to_check(tmp_path: Path) -> None:
    port = closed_port()
    ctx = make_ctx(tmp_path, servers=[f"127.0.0.1:{port}"])
    problems = await asyncio.wait_for(KIT.validate_create(ctx), 10)
    assert problems == [
        f"DNS server 127.0.0.1:{port} cannot be reached: Connect call failed "
        f"('127.0.0.1', {port}): check that it runs and that servers lists the right "
        "address and port"
    ]
    check = await KIT.quick_check(ctx)
    assert check.status is CheckStatus.FAILED
