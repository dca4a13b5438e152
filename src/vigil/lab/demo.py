"""The demo (the README's first command): a protected web service in a 3-server lab.

It builds a lab of three servers, a client (another network namespace on the lab's
network), a DNS server (BIND, in a namespace of its own) and a shared disk (one image, a
loop device per server). It protects the app kit's sample HTTP service with a hierarchy
of four (``vigil.lab.demo_steps``): the service keeps a counter on a shared volume, and
clients reach it by a switchable address and by a DNS name. It extends the hierarchy to
node2 (priority 10) and node3 (20), switches it over to node2 and back to node1, then
kills node1's agent (SIGKILL: its fence guard takes node1's resources down, node2 takes
over). After each step it shows ``vigil status`` and what the client sees: by address, by
name, and the counter (the data written before a move is there after it). Then it tears
the lab down, also when a step fails. Every cluster step is a real ``vigil`` command,
printed before it runs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time

from vigil.lab import demo_steps as steps
from vigil.lab.demo_steps import TAG, Demo, say, vigil
from vigil.lab.lab import Lab


def build(lab: Lab) -> Demo:
    """The lab, its client, its DNS server and its shared disk."""
    say("Building a lab of 3 servers (network and mount namespaces, one agent each)...")
    info = lab.up(3)
    for server in info.servers:
        say(f"  {server.name}: {server.address}, agent API {server.api_url}")
    client = lab.add_client(steps.CLIENT)
    say(f"  {client.name}: {client.address}, a client of the service (no agent)")
    dns = lab.add_dns_server(steps.DNS_WHERE)
    say(
        f"  DNS: BIND at {dns.address} ({dns.where}'s namespace), zone {dns.zone}, "
        f"dynamic updates with TSIG key {dns.key_name}"
    )
    disk = lab.add_shared_disk(64)
    devices = ", ".join(f"{s}: {d}" for s, d in disk.devices.items())
    say(f"  shared disk: {disk.image} (ext4, multi-mount protection), {devices}")
    return Demo(lab=lab, info=info, dns=dns, disk=disk)


def show(demo: Demo, title: str) -> None:
    say(f"\n=== {title} ===")
    vigil(demo, "status")
    steps.show_client_view(demo)


def switchover(demo: Demo, target: str) -> None:
    say(f"\n--- switchover to {target} ---")
    began = time.monotonic()
    vigil(demo, "in-service", TAG, "--on", target)
    say(f"(the switchover took {time.monotonic() - began:.2f}s as seen by the command)")
    show(demo, f"in service on {target}")


def lab_file(demo: Demo, server: str, name: str) -> str:
    """A file of ``server`` under the lab's root ('' if missing)."""
    try:
        return (demo.lab.names.server_dir(server) / name).read_text(errors="replace")
    except OSError:
        return ""


def failover(demo: Demo) -> None:
    say("\n--- failover: SIGKILL of node1's agent ---")
    say("node1's fence guard takes node1's resources down when the agent's lease runs out;")
    say("node2, the live backup with the best priority (10), takes the hierarchy over.")
    demo.lab.stop_agent("node1", signal.SIGKILL)
    waited = steps.wait_in_service(demo, "node2", ask="node2")
    say(f"(in service on node2 and answering the client {waited:.2f}s after the SIGKILL)")
    guard_log, deadline = "", time.monotonic() + 3.0
    while f"unmounted {steps.MOUNT_POINT}" not in guard_log and time.monotonic() < deadline:
        guard_log = lab_file(demo, "node1", "state/fence-guard.log")  # it logs line by line
        time.sleep(0.1)
    fenced = [line for line in guard_log.splitlines() if "fence-guard:" in line][-5:]
    if fenced:
        say("node1's fence guard logged:\n  " + "\n  ".join(fenced))
    show(demo, "after the failover")
    vigil(demo, "why", TAG)


def run_demo(lab: Lab) -> None:
    started = time.monotonic()
    demo = build(lab)
    steps.comm_paths(demo)
    steps.create_hierarchy(demo)
    steps.extend(demo, "node2", 10)
    steps.extend(demo, "node3", 20)
    show(demo, "the hierarchy, in service on node1, extended to node2 and node3")
    switchover(demo, "node2")
    switchover(demo, "node1")
    failover(demo)
    say(f"\nDemo finished in {time.monotonic() - started:.0f}s; tearing the lab down.")


def main() -> None:
    lab = Lab("lab")
    if lab.status().exists:
        say("A lab called 'lab' exists from before; removing it first.")
        lab.down()
    try:
        run_demo(lab)
    finally:
        lab.down()
        with contextlib.suppress(OSError):
            os.rmdir(steps.MOUNT_POINT)  # the empty mount point the volume kit created
        say("Lab removed: no namespace, bridge, process, loop device or file of it is left.")


if __name__ == "__main__":
    main()
