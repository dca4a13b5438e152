"""keepalived (Debian 2.2.7) as an anchor: one instance per lab server, VRRP for the
virtual address on ``eth0``.

Set-up, per server: its own configuration, pid files and log under the bench's work dir;
``keepalived -n -l -D`` started inside the server (network + mount namespaces) by
``Lab.spawn``. One VRRP instance, VRRPv3 (``vrrp_version 3``: fractional ``advert_int``
needs it; the same for every setting, so the settings compare), both servers in state
BACKUP with ``nopreempt`` (priorities 101 and 100 only break the first election), so a
server coming back never takes the address back by itself: each run fails whichever server
is active, as for vigil.

The service moves with the address: every notify script (master, backup, fault, stop)
runs ``service.sh follow``, which under a lock starts the sample service if the address is
on eth0 and stops it if not (keepalived forks notify scripts without waiting for them: a
MASTER-then-BACKUP flap at ``advert_int 0.01`` once left the service running on the backup
when separate start/stop scripts finished out of order). So on every tool the service runs
only where the address is, and "the service is up on two servers" means the same thing for
all (with the service left running everywhere, keepalived would only move an address; see
``SERVICE_EVERYWHERE`` for that variant).

The faults: SIGKILL of every keepalived process of the active server (parent and VRRP
child at once: nothing can run ``notify_stop`` or remove the address), and its link cut.
Repair after a run: delete the stale address, stop the stale service, start keepalived
again (it comes up as BACKUP and stays so).
"""

from __future__ import annotations

import signal
from pathlib import Path

from benchlab import BenchLab

from vigil.lab import processes

NAME = "keepalived"
COMMS = ("keepalived",)
VRID = 51
#: run the service on every server and let only the address move (the other variant)
SERVICE_EVERYWHERE = "everywhere"


def _format_interval(value: float) -> str:
    return f"{value:g}"


class Keepalived:
    """keepalived at one ``advert_int`` on every server of the bench lab."""

    tool = NAME

    def __init__(self, bench: BenchLab, advert_int: float, service: str = "notify") -> None:
        self.bench = bench
        self.advert_int = advert_int
        self.service = service
        self.setting = f"advert_int {_format_interval(advert_int)}"
        if service == SERVICE_EVERYWHERE:
            self.setting += " (service everywhere)"
        # master down interval = 3 x advert_int + skew; then 5 GARPs and the notify script
        self.window = max(10.0, 10 * advert_int + 8.0)

    def unsupported(self, scenario: str) -> str | None:
        return None

    def note(self, scenario: str) -> str | None:
        if scenario == "sigkill":
            return (
                "nothing removes the address or stops the service on the killed server: "
                "the client is answered by it until the new master's gratuitous ARPs, so "
                "the outage is short but both servers hold the address and run the service "
                "until the bench repairs the server"
            )
        return (
            "the host veth down drops eth0's carrier in the server: keepalived there goes "
            "to FAULT at once (removes the address, notify_fault stops the service) while "
            "the other server waits 3 x advert_int + skew before it becomes master"
        )

    # -- files ------------------------------------------------------------------------
    def _dir(self, server: str) -> Path:
        path = self.bench.server_dir(server) / "keepalived"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _config(self, server: str, priority: int) -> Path:
        directory = self._dir(server)
        script = self.bench.service_script(server)
        notify = ""
        if self.service != SERVICE_EVERYWHERE:
            notify = "".join(
                f'    notify_{state} "{script} follow"\n'
                for state in ("master", "backup", "fault", "stop")
            )
        text = (
            "global_defs {\n"
            f"    router_id {self.bench.lab.name}-{server}\n"
            "    vrrp_version 3\n"
            "    script_user root\n"
            "    enable_script_security\n"
            "    vrrp_garp_master_repeat 5\n"
            "    vrrp_garp_master_delay 1\n"
            "}\n"
            "vrrp_instance VB {\n"
            "    state BACKUP\n"
            "    nopreempt\n"
            "    interface eth0\n"
            f"    virtual_router_id {VRID}\n"
            f"    priority {priority}\n"
            f"    advert_int {_format_interval(self.advert_int)}\n"
            "    virtual_ipaddress {\n"
            f"        {self.bench.vip}/24 dev eth0\n"
            "    }\n"
            f"{notify}"
            "}\n"
        )
        path = directory / "keepalived.conf"
        path.write_text(text)
        return path

    def _start(self, server: str) -> None:
        directory = self._dir(server)
        # a SIGKILLed keepalived leaves its pid files, and its orphaned VRRP child may
        # linger as a zombie (PID 1 reaps slowly): keepalived would say "already running"
        for name in ("keepalived.pid", "vrrp.pid", "checkers.pid"):
            (directory / name).unlink(missing_ok=True)
        priority = 101 if server == self.bench.servers[0] else 100
        config = self._config(server, priority)
        argv = [
            "keepalived",
            "--dont-fork",
            "--log-console",
            "--log-detail",
            "--no-syslog",
            "--vrrp",
            f"--use-file={config}",
            f"--pid={directory / 'keepalived.pid'}",
            f"--vrrp_pid={directory / 'vrrp.pid'}",
            f"--checkers_pid={directory / 'checkers.pid'}",
        ]
        self.bench.lab.spawn(server, argv, directory / "keepalived.log")

    # -- the subject's contract ---------------------------------------------------------
    def check_config(self) -> str | None:
        """keepalived's own verdict on the configuration (``--config-test``)."""
        server = self.bench.servers[0]
        config = self._config(server, 101)
        done = self.bench.lab.exec(
            server,
            ["keepalived", "--config-test", f"--use-file={config}", "--log-console"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if done.returncode != 0:
            return f"keepalived refuses the configuration: {(done.stderr or done.stdout)[-400:]}"
        return None

    def start(self) -> None:
        for server in self.bench.servers:
            self.bench.delete_vip(server)
            self.bench.stop_service(server)
            if self.service == SERVICE_EVERYWHERE:
                self.bench.lab.exec(server, self.bench.service_argv(server, "start"), timeout=30)
            self._start(server)

    def ready(self) -> str | None:
        for server in self.bench.servers:
            if len(self.bench.pids(server, COMMS)) < 2:
                return f"keepalived is not running (parent and VRRP child) on {server}"
        return None

    def kill_manager(self, server: str) -> str:
        pids = self.bench.pids(server, COMMS)
        self.bench.kill(pids, signal.SIGKILL)
        return f"SIGKILL to keepalived pids {pids} on {server}"

    def repair(self, server: str, scenario: str) -> None:
        if scenario == "sigkill":
            pids = self.bench.pids(server, COMMS)
            self.bench.kill(pids, signal.SIGKILL)
            processes.wait_gone(pids, 10.0)
            self.bench.delete_vip(server)
            if self.service != SERVICE_EVERYWHERE:
                self.bench.stop_service(server)
            self._start(server)

    def stop(self) -> None:
        for server in self.bench.servers:
            pids = self.bench.pids(server, COMMS)
            self.bench.kill(pids, signal.SIGTERM)
        for server in self.bench.servers:
            processes.wait_gone(self.bench.pids(server, COMMS), 10.0)
            self.bench.kill(self.bench.pids(server, COMMS), signal.SIGKILL)
            self.bench.delete_vip(server)
            self.bench.stop_service(server)

    def logs(self) -> dict[str, Path]:
        return {
            f"{server}-keepalived.log": self._dir(server) / "keepalived.log"
            for server in self.bench.servers
        }
