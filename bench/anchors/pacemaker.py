"""Pacemaker 2.1 + Corosync 3.1 (Debian 12) as an anchor: a two-node cluster in the lab.

Each lab server is one cluster node. Inside its own mount namespace (the lab's, entered
with ``Lab.exec``) the bench mounts, before anything starts (``PacemakerCluster.prepare``):

* private copies of ``/var/lib/pacemaker`` (CIB, scheduler inputs; owned by hacluster),
  ``/var/lib/corosync``, ``/etc/corosync`` and the log directories ``/var/log/pacemaker``,
  ``/var/log/corosync``, bound from ``WORKDIR/nodeK/pcmk/``;
* a fresh tmpfs on ``/run`` and on ``/dev/shm`` (libqb's IPC: its sockets are abstract,
  so per network namespace, but its ring buffers are files in ``/dev/shm``; a shared one
  would join the two nodes' daemons);
* ``/etc/init.d`` bound from a directory holding only ``vbsample``, an LSB script around
  the sample service (``start``/``stop``/``status`` of ``python -m
  vigil.kits.app.sample_service``): Pacemaker's ``lsb:`` class finds it there.

``corosync -f`` and ``pacemakerd`` run in each server (``Lab.spawn``), each in a UTS
namespace of its own with the server's name as host name. Corosync: knet transport, no
crypto, ``two_node: 1``, the token under test. The CIB, written once through
``cibadmin``/``crm_attribute``: ``stonith-enabled=false``, ``no-quorum-policy=ignore``,
``resource-stickiness=100`` (a node coming back does not take the group back), and a group
``vbgrp`` = ``ocf:heartbeat:IPaddr2`` (the virtual address /24 on eth0; it sends its own
gratuitous ARPs) then ``lsb:vbsample``, each monitored every 2 s.

The faults: SIGKILL of corosync on the active node (pacemaker's daemons lose their
cluster layer; nothing stops the resources there), and the active node's link cut.
Repair: every cluster process of that node killed, the stale address and service
removed, corosync and pacemakerd started again (the node rejoins; stickiness keeps the
group where it is).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
import xml.etree.ElementTree as ET
from pathlib import Path

from benchlab import BenchLab, wait_until

from vigil.lab import processes

NAME = "pacemaker"
COROSYNC = ("corosync",)
PACEMAKER = ("pacemakerd", "pacemaker-")
BINDS = {
    "var-lib-pacemaker": "/var/lib/pacemaker",
    "var-lib-corosync": "/var/lib/corosync",
    "etc-corosync": "/etc/corosync",
    "log-pacemaker": "/var/log/pacemaker",
    "log-corosync": "/var/log/corosync",
    "init.d": "/etc/init.d",
}
MOUNT_SCRIPT = """
set -e
for pair in "$@"; do
  src=${pair%%=*}; dst=${pair#*=}
  mount --bind "$src" "$dst"
done
mount -t tmpfs -o mode=0755,nosuid,nodev tmpfs /run
mkdir -p /run/resource-agents /run/crm /run/pacemaker /run/corosync
chmod 1777 /run/resource-agents 2>/dev/null || true
mount -t tmpfs -o mode=1777,nosuid,nodev tmpfs /dev/shm
"""
UNMOUNT_SCRIPT = """
umount -l /dev/shm 2>/dev/null
umount -l /run 2>/dev/null
for dst in "$@"; do umount -l "$dst" 2>/dev/null; done
true
"""


def _group_xml(vip: str) -> str:
    def op(rid: str) -> str:
        return (
            f'<operations><op id="{rid}-monitor" name="monitor" interval="2s" timeout="20s"/>'
            f'<op id="{rid}-start" name="start" interval="0" timeout="30s"/>'
            f'<op id="{rid}-stop" name="stop" interval="0" timeout="30s"/></operations>'
        )

    return (
        '<group id="vbgrp">'
        '<primitive id="vbvip" class="ocf" provider="heartbeat" type="IPaddr2">'
        '<instance_attributes id="vbvip-ia">'
        f'<nvpair id="vbvip-ip" name="ip" value="{vip}"/>'
        '<nvpair id="vbvip-cidr" name="cidr_netmask" value="24"/>'
        '<nvpair id="vbvip-nic" name="nic" value="eth0"/>'
        "</instance_attributes>"
        f"{op('vbvip')}</primitive>"
        f'<primitive id="vbweb" class="lsb" type="vbsample">{op("vbweb")}</primitive>'
        "</group>"
    )


class PacemakerCluster:
    """The per-node mounts and files shared by every token setting."""

    def __init__(self, bench: BenchLab) -> None:
        self.bench = bench
        self.prepared: list[str] = []
        self.configured = False

    def unavailable(self) -> str | None:
        for binary in ("corosync", "pacemakerd", "cibadmin", "crm_mon", "unshare"):
            if shutil.which(binary) is None:
                return f"{binary} is not installed (Debian packages pacemaker, corosync)"
        if not Path("/usr/lib/ocf/resource.d/heartbeat/IPaddr2").exists():
            return "ocf:heartbeat:IPaddr2 is missing (Debian package resource-agents)"
        return None

    def node_dir(self, server: str) -> Path:
        return self.bench.server_dir(server) / "pcmk"

    def prepare(self) -> None:
        """Private copies of the cluster's state, config and log directories per node."""
        for server in self.bench.servers:
            base = self.node_dir(server)
            for name, target in BINDS.items():
                src = base / name
                src.mkdir(parents=True, exist_ok=True)
                if name != "init.d":  # a copy with owners and modes (hacluster's dirs)
                    subprocess.run(["cp", "-a", f"{target}/.", f"{src}/"], check=True)
            for stale in (base / "var-lib-pacemaker" / "cib").glob("*"):
                stale.unlink()
            script = base / "init.d" / "vbsample"
            shutil.copy(self.bench.service_script(server), script)
            script.chmod(0o755)
            pairs = [f"{base / name}={target}" for name, target in BINDS.items()]
            done = self.bench.lab.exec(
                server,
                ["sh", "-c", MOUNT_SCRIPT, "mount", *pairs],
                capture_output=True,
                text=True,
                timeout=30,
            )
            self.prepared.append(server)
            if done.returncode != 0:
                raise RuntimeError(f"mounts for {server} failed: {done.stderr.strip()}")

    def unprepare(self) -> None:
        for server in self.prepared:
            self.kill_all(server)
            self.bench.delete_vip(server)
            self.bench.stop_service(server)
            self.bench.lab.exec(
                server,
                ["sh", "-c", UNMOUNT_SCRIPT, "umount", *BINDS.values()],
                capture_output=True,
                timeout=30,
            )
        self.prepared = []

    # -- processes ----------------------------------------------------------------------
    def kill_all(self, server: str) -> None:
        pids = self.bench.pids(server, COROSYNC + PACEMAKER)
        self.bench.kill(pids, signal.SIGKILL)
        processes.wait_gone(pids, 10.0)

    def write_corosync(self, token: int) -> None:
        nodes = "".join(
            f"  node {{\n    ring0_addr: {s.address}\n    name: {s.name}\n    nodeid: {i}\n  }}\n"
            for i, s in enumerate(self.bench.info.servers, start=1)
        )
        text = (
            "totem {\n  version: 2\n  cluster_name: vbench\n  transport: knet\n"
            f"  token: {token}\n  crypto_cipher: none\n  crypto_hash: none\n}}\n"
            f"nodelist {{\n{nodes}}}\n"
            "quorum {\n  provider: corosync_votequorum\n  two_node: 1\n}\n"
            "logging {\n  to_logfile: yes\n  logfile: /var/log/corosync/corosync.log\n"
            "  to_syslog: no\n  to_stderr: no\n  timestamp: on\n}\n"
        )
        for server in self.bench.servers:
            (self.node_dir(server) / "etc-corosync" / "corosync.conf").write_text(text)

    def start_node(self, server: str) -> None:
        log = self.node_dir(server) / "daemons.out"
        uts = ["unshare", "--uts", "sh", "-c", f'hostname {server} && exec "$@"', "node"]
        self.bench.lab.spawn(server, [*uts, "corosync", "-f"], log)
        if not wait_until(lambda: self._corosync_up(server), 30.0, 0.2):
            raise RuntimeError(f"corosync did not start on {server}; see {log}")
        self.bench.lab.spawn(server, [*uts, "pacemakerd"], log)

    def _corosync_up(self, server: str) -> bool:
        done = self.bench.lab.exec(
            server, ["corosync-cfgtool", "-s"], capture_output=True, timeout=10
        )
        return done.returncode == 0

    def cli(self, server: str, argv: list[str], timeout: float = 30.0) -> str:
        done = self.bench.lab.exec(server, argv, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv[:3])} on {server}: {done.stderr.strip()}")
        return str(done.stdout)

    def configure(self) -> None:
        """The cluster options and the group, once (the CIB persists across restarts)."""
        if self.configured:
            return
        server = self.bench.servers[0]
        for kind, name, value in (
            ("crm_config", "stonith-enabled", "false"),
            ("crm_config", "no-quorum-policy", "ignore"),
            ("rsc_defaults", "resource-stickiness", "100"),
        ):
            self.cli(server, ["crm_attribute", "--type", kind, "--name", name, "--update", value])
        self.cli(
            server, ["cibadmin", "--create", "-o", "resources", "-X", _group_xml(self.bench.vip)]
        )
        self.configured = True

    def status(self, server: str) -> tuple[set[str], dict[str, set[str]]]:
        """(online nodes, resource -> nodes it is active on) as ``server`` sees it."""
        done = self.bench.lab.exec(
            server,
            ["crm_mon", "-1", "--output-as=xml"],
            capture_output=True,
            text=True,
            timeout=10,
        )
        if done.returncode != 0 or not done.stdout.strip():
            raise RuntimeError(
                f"crm_mon on {server}: {(done.stderr or done.stdout).strip()[-200:]}"
            )
        root = ET.fromstring(done.stdout)
        online = {
            n.get("name", "")
            for n in root.iter("node")
            if n.get("online") == "true" and n.get("name")
        }
        active: dict[str, set[str]] = {}
        for rsc in root.iter("resource"):
            rid = rsc.get("id", "")
            nodes = {n.get("name", "") for n in rsc.iter("node")}
            if rsc.get("active") == "true" and rsc.get("role") == "Started":
                active.setdefault(rid, set()).update(nodes)
        return online, active


class Pacemaker:
    """The two-node cluster at one corosync token."""

    tool = NAME

    def __init__(self, cluster: PacemakerCluster, token_ms: int) -> None:
        self.cluster = cluster
        self.bench = cluster.bench
        self.token = token_ms
        self.setting = f"token {token_ms} ms"
        # token + consensus (1.2 x token), a new membership, the scheduler, start
        self.window = max(30.0, 10 * token_ms / 1000 + 20.0)

    def unsupported(self, scenario: str) -> str | None:
        return None

    def note(self, scenario: str) -> str | None:
        if scenario == "sigkill":
            return (
                "without corosync the node's pacemaker cannot act and, without fencing, "
                "nobody stops its resources: the client is answered by it until IPaddr2's "
                "gratuitous ARPs on the other node, then both nodes hold the address and "
                "run the service until the bench repairs the node"
            )
        return (
            "both partitions keep quorum (two_node) and, without fencing, the cut node "
            "keeps its resources while the other starts them after token + consensus"
        )

    def start(self) -> None:
        cluster = self.cluster
        cluster.write_corosync(self.token)
        for server in self.bench.servers:
            cluster.kill_all(server)
            self.bench.delete_vip(server)
            self.bench.stop_service(server)
        for server in self.bench.servers:
            cluster.start_node(server)
        first = self.bench.servers[0]

        def both_online() -> bool:
            try:
                online, _ = cluster.status(first)
            except (RuntimeError, subprocess.TimeoutExpired, ET.ParseError):
                return False
            return online == set(self.bench.servers)

        if not wait_until(both_online, 90.0, 0.5):
            raise RuntimeError("the two nodes did not come online within 90 s")
        cluster.configure()

    def ready(self) -> str | None:
        for server in self.bench.servers:
            if not self.bench.pids(server, COROSYNC) or not self.bench.pids(
                server, ("pacemakerd",)
            ):
                return f"corosync or pacemakerd is not running on {server}"
        try:
            views = {s: self.cluster.status(s) for s in self.bench.servers}
        except (RuntimeError, subprocess.TimeoutExpired, ET.ParseError) as exc:
            return str(exc)
        for server, (online, active) in views.items():
            if online != set(self.bench.servers):
                return f"{server} sees online {sorted(online)}"
            where = {frozenset(active.get(r, set())) for r in ("vbvip", "vbweb")}
            if len(where) != 1 or len(next(iter(where))) != 1:
                return f"{server} sees the group active on {active}"
        return None

    def kill_manager(self, server: str) -> str:
        pids = self.bench.pids(server, COROSYNC)
        self.bench.kill(pids, signal.SIGKILL)
        return f"SIGKILL to corosync (pids {pids}) on {server}"

    def repair(self, server: str, scenario: str) -> None:
        if scenario != "sigkill":
            return  # the link is back: the partitions merge, pacemaker settles
        self.cluster.kill_all(server)
        self.bench.delete_vip(server)
        self.bench.stop_service(server)
        time.sleep(0.5)
        self.cluster.start_node(server)

    def stop(self) -> None:
        for server in self.bench.servers:
            pids = self.bench.pids(server, ("pacemakerd",))
            self.bench.kill(pids, signal.SIGTERM)
        for server in self.bench.servers:
            processes.wait_gone(self.bench.pids(server, ("pacemakerd",)), 60.0)
            self.cluster.kill_all(server)
            self.bench.delete_vip(server)
            self.bench.stop_service(server)

    def logs(self) -> dict[str, Path]:
        found = {}
        for server in self.bench.servers:
            base = self.cluster.node_dir(server)
            found[f"{server}-daemons.out"] = base / "daemons.out"
            found[f"{server}-pacemaker.log"] = base / "log-pacemaker" / "pacemaker.log"
            found[f"{server}-corosync.log"] = base / "log-corosync" / "corosync.log"
        return found

    def diagnose(self) -> str:
        views = []
        for server in self.bench.servers:
            try:
                online, active = self.cluster.status(server)
            except (RuntimeError, subprocess.TimeoutExpired, ET.ParseError) as exc:
                views.append(f"{server}: {exc}")
                continue
            views.append(f"{server} sees online {sorted(online)}, active {active}")
        return "; ".join(views)
