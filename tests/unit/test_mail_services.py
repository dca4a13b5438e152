"""The mail kit's services and probes, run for real on this machine (no lab needed): an
optional service known by its commands, the start/stop waits bounded by max_wait, and a
probe's failure naming its hop."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest

from vigil.errors import KitError
from vigil.kits.base import CheckStatus, KitContext
from vigil.kits.mail.kit import MailKit
from vigil.kits.mail.probes import Probe, greeting, round_trip
from vigil.kits.mail.properties import MailProperties, OptionalService
from vigil.kits.mail.services import Command, Endpoint

REQUIRED = {
    "directory_urls": ["ldap://127.0.0.1:1"],
    "bind_dn": "cn=x",
    "bind_password": "pw",
    "users_base_dn": "dc=x",
}


def context(tmp_path: Path, **props: object) -> KitContext:
    parsed = MailKit().parse_properties({**REQUIRED, **props})
    return KitContext(
        tag="mail",
        server="here",
        properties=parsed,
        log=logging.getLogger("test.mail"),
        state_dir=tmp_path / "state",
    )


def service(ctx: KitContext, **commands: str) -> Command:
    props = ctx.properties
    assert isinstance(props, MailProperties)
    return Command(props, Endpoint("127.0.0.1"), OptionalService(name="filter", **commands))


async def test_an_optional_service_starts_checks_and_stops(tmp_path: Path) -> None:
    ctx = context(tmp_path, max_wait=10)
    flag = tmp_path / "running"
    filt = service(ctx, start=f"touch {flag}", stop=f"rm -f {flag}", check=f"test -e {flag}")
    assert (await filt.check(ctx)).status is CheckStatus.STOPPED
    await filt.start(ctx)
    await filt.start(ctx)  # running already: nothing to do
    assert (await filt.check(ctx)).status is CheckStatus.RUNNING
    await filt.stop(ctx)
    await filt.stop(ctx)
    assert not flag.exists()


async def test_a_service_not_up_within_max_wait_is_a_failure_saying_why(tmp_path: Path) -> None:
    ctx = context(tmp_path, max_wait=0.5)
    filt = service(ctx, start="echo starting; echo 'no config' >&2", stop="true", check="false")
    with pytest.raises(KitError, match=r"filter did not start within max_wait \(0.5s\)"):
        await filt.start(ctx)
    failing = service(ctx, start="echo 'cannot bind' >&2; exit 3", stop="true", check="false")
    with pytest.raises(KitError, match="exited with code 3: cannot bind"):
        await failing.start(ctx)


async def test_a_service_that_will_not_stop_is_reported(tmp_path: Path) -> None:
    ctx = context(tmp_path, max_wait=0.3)
    stuck = service(ctx, start="true", stop="true", check="true")
    with pytest.raises(KitError, match="filter could not be stopped"):
        await stuck.stop(ctx)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


async def test_a_probe_names_the_hop_that_failed() -> None:
    port = closed_port()
    result = await round_trip(Probe("127.0.0.1", port, port, "p", "p@x", "pw", wait=1))
    assert not result.ok and result.hop == "smtp" and not result.directory
    assert f"SMTP 127.0.0.1:{port}" in result.detail
    heard = await greeting("220", "127.0.0.1", port)
    assert not heard.ok and "refused" in heard.detail.lower()


def test_a_queue_file_tells_its_message_id_and_the_recipients_still_pending() -> None:
    from vigil.kits.mail.inflight import parse_postcat

    text = """*** ENVELOPE RECORDS active/8CE8133 ***
sender: t@lab.example
original_recipient: user001@lab.example
done_recipient: user001@lab.example
original_recipient: user002@lab.example
recipient: user002@lab.example
*** MESSAGE CONTENTS active/8CE8133 ***
Received: from [127.0.0.1]
Message-ID: <abc@x>
Subject: recipient: not an envelope record
*** HEADER EXTRACTED active/8CE8133 ***
"""
    message = parse_postcat("8CE8133", text)
    assert message.message_id == "<abc@x>"
    assert message.pending == ("user002@lab.example",)
    assert parse_postcat("X", "recipient: a@b\n").message_id == ""
