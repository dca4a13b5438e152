"""The demo's general steps (``vigil.lab.demo``): running ``vigil`` commands with their
secrets shown as where they come from, the comm paths, timing each step, what runs on
each server, and waiting for the hierarchy to be in service somewhere.

The mail-specific steps (the hierarchy, the client's view, the mail sent and read back)
are in ``vigil.lab.demo_mail``.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx

from vigil.lab.files import load_state
from vigil.lab.info import LabInfo
from vigil.lab.lab import Lab
from vigil.lab.mail import MailOrgInfo
from vigil.lab.mail.status import mail_status

TAG = "mail"
VIP_TAG = "mail-ip"
#: the switchable address clients use: 10.213.I.100
VIP_OCTET = 100
CLIENT = "client1"


@dataclass
class Demo:
    """Everything the demo built, the secrets to hide, and how long each step took."""

    lab: Lab
    info: LabInfo
    org: MailOrgInfo
    #: secret value → how a command line shows it (where an administrator reads it from)
    secrets: dict[str, str] = field(default_factory=dict)
    timings: list[tuple[str, float]] = field(default_factory=list)

    @property
    def vip(self) -> str:
        return self.info.subnet.rsplit(".", 1)[0] + f".{VIP_OCTET}"

    def address(self, server: str) -> str:
        return self.info.server(server).address

    def server_of(self, address: str | None) -> str:
        """The lab server whose own address ``address`` is ('?' if none)."""
        found = [s.name for s in self.info.servers if s.address == address]
        return found[0] if found else "?"


def say(text: str) -> None:
    print(text, flush=True)


def shown(demo: Demo, arg: str) -> str:
    """``arg`` as a command line shows it: quoted, each secret replaced by the shell
    expansion that reads it from its file."""
    quoted = shlex.quote(arg)
    for secret, source in demo.secrets.items():
        if secret in arg:
            # quote the text around the secret, then put the expansion in between
            quoted = source.join(shlex.quote(part) if part else "" for part in arg.split(secret))
    return quoted


def vigil(demo: Demo, *args: str, check: bool = True) -> int:
    """Print ``$ vigil ARGS`` (secrets shown as where they come from) and run it."""
    line = " ".join(shown(demo, arg) for arg in args)
    say(f"\n$ vigil {line}")
    env = {**os.environ, "VIGIL_CLIENT_CONFIG": str(demo.info.client_file)}
    done = subprocess.run([sys.executable, "-m", "vigil", *args], env=env, check=False)
    if check and done.returncode != 0:
        raise SystemExit(f"demo: 'vigil {line}' failed with exit code {done.returncode}")
    return done.returncode


@contextmanager
def timed(demo: Demo, step: str) -> Iterator[None]:
    """Record how long the block took, under ``step``."""
    began = time.monotonic()
    yield
    demo.timings.append((step, time.monotonic() - began))


def show_timings(demo: Demo) -> None:
    width = max(len(step) for step, _ in demo.timings)
    say("\nTimings:")
    for step, seconds in demo.timings:
        say(f"  {step:<{width}}  {seconds:6.2f}s")


def comm_paths(demo: Demo) -> None:
    names = [s.name for s in demo.info.servers]
    for i, one in enumerate(names):
        for other in names[i + 1 :]:
            vigil(
                demo,
                "commpath", "create",
                "--local", one, "--local-address", demo.address(one),
                "--remote", other, "--remote-address", demo.address(other),
            )  # fmt: skip


def where_it_runs(demo: Demo) -> str:
    """Per server: the service address, the mail store's mount, the mail daemons."""
    state = load_state(demo.lab.names.state_file)
    mail = mail_status(demo.lab.names, state)
    rows = {row.name: row for row in mail.servers} if mail else {}
    parts = []
    for server in demo.info.servers:
        addresses = demo.lab.exec(
            server.name, ["ip", "-4", "-br", "addr", "show", "dev", "eth0"],
            capture_output=True, text=True, timeout=10,
        ).stdout  # fmt: skip
        has = [demo.vip] if f" {demo.vip}/" in addresses else []
        row = rows.get(server.name)
        if row is not None:
            has += [str(demo.org.mail_root)] if row.store_mounted else []
            has += [name for name, up in (("postfix", row.postfix), ("dovecot", row.dovecot)) if up]
        parts.append(f"{server.name}: {' '.join(has) or '-'}")
    return "; ".join(parts)


def states_seen_by(demo: Demo, server: str) -> dict[str, dict[str, str]]:
    """tag → {server: state} of the hierarchy's resources, as ``server``'s agent reports
    them ({} if it cannot be reached)."""
    token = demo.info.tokens["administrator"]
    try:
        reply = httpx.get(
            f"{demo.info.server(server).api_url}/v1/status",
            headers={"authorization": f"Bearer {token}"},
            timeout=2.0,
            trust_env=False,
            verify=demo.info.ssl_context(),
        )
        views = reply.json()["hierarchies"]
        resources = next(v["resources"] for v in views if TAG in [r["tag"] for r in v["resources"]])
        return {r["tag"]: {i["server"]: i["state"] for i in r["instances"]} for r in resources}
    except (httpx.HTTPError, ValueError, KeyError, TypeError, StopIteration):
        return {}


def wait_in_service(demo: Demo, server: str, ask: str, timeout: float = 60.0) -> float:
    """Wait until ``ask``'s agent reports every resource of the hierarchy in service on
    ``server``; seconds waited."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        states = states_seen_by(demo, ask)
        if states and all(s.get(server) == "ISP" for s in states.values()):
            return time.monotonic() - began
        time.sleep(0.1)
    raise SystemExit(f"demo: {TAG} did not come in service on {server} within {timeout:g}s")


def server_file(demo: Demo, server: str, name: str) -> str:
    """A file of ``server`` under the lab's root ('' if missing)."""
    try:
        return (demo.lab.names.server_dir(server) / name).read_text(errors="replace")
    except OSError:
        return ""
