"""``Lab``: a cluster of N servers on one machine, each server a pair of namespaces.

Each server ``nodeK`` is a network namespace (``eth0`` on a private bridge, address
``10.213.I.K/24``, loopback, no default route) and a persistent mount namespace. The host
has ``10.213.I.254`` on the bridge, so the CLI reaches every agent's API. All agents share
one embedded store (``sqlite:///ROOT/store.db``), or with ``store="etcd"`` an etcd of 1, 3
or 5 members in namespaces of their own on the lab network (``vigil.lab.etcd``). See
``vigil.lab.naming`` for every name and ``vigil.lab.teardown`` for how ``down`` finds and
removes it all.

Typical use::

    lab = Lab("demo", subnet_index=3)
    info = lab.up(3)                     # node1..node3 with their agents answering
    lab.exec("node2", ["ip", "-br", "addr"])
    lab.stop_agent("node1", signal.SIGKILL)
    lab.add_client("client1")            # a host outside the cluster, on the lab network
    lab.add_dns_server("client50")       # BIND in a namespace of its own (vigil.lab.dns)
    lab.add_shared_disk(64)              # one image, a loop device per server (vigil.lab.disk)
    lab.add_local_disks(64)              # each server its own disk, a mirror's (lab.localdisk)
    mail = lab.add_mail_org(users=20)    # directory, front-end, mail configs (vigil.lab.mail)
    lab.down()                           # idempotent; also after a crash

    Lab("e", 4).up(3, store="etcd", store_members=3)   # agents on etcd
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

from vigil.agent.ca import init_ca, issue
from vigil.agent.config import LeaseSettings, TlsSettings
from vigil.agent.secrets import generate_key_file
from vigil.errors import LabError
from vigil.lab import (
    agents,
    clients,
    disk,
    dns,
    etcd,
    files,
    localdisk,
    namespaces,
    network,
    processes,
    teardown,
)
from vigil.lab.clients import ClientInfo
from vigil.lab.disk import SharedDiskInfo
from vigil.lab.dns import DnsServerInfo
from vigil.lab.info import LabInfo, LabStatus, ServerInfo
from vigil.lab.localdisk import LocalDiskInfo
from vigil.lab.mail import MailOrgInfo
from vigil.lab.mail import org as mail_org
from vigil.lab.naming import (
    API_PORT,
    MAX_SERVERS,
    LabNames,
    api_url,
    server_name,
    server_number,
    store_member_name,
    store_member_number,
)

#: seconds ``up``/``start_agent`` wait for an agent to answer its health check
AGENT_START_TIMEOUT = 30.0


def agent_argv(config_file: Path) -> list[str]:
    """The command line of an agent (run inside its server)."""
    return [sys.executable, "-m", "vigil", "agent", "run", "--config", str(config_file)]


def _require_root() -> None:
    if os.geteuid() != 0:
        raise LabError(
            "the lab needs root: it creates network namespaces, a bridge and mounts; run it as root"
        )


class Lab:
    """One lab, named ``name``, on subnet ``10.213.<subnet_index>.0/24``.

    Every method reads the lab's state file and the system, so another process (the CLI,
    a test) may ``down`` or inspect a lab this one built; the object itself only keeps the
    ``Popen`` handles of the processes it started, to reap them.
    """

    def __init__(self, name: str = "lab", subnet_index: int = 0) -> None:
        self.names = LabNames(name, subnet_index)
        self._children: dict[int, subprocess.Popen[bytes]] = {}
        #: the system units the last ``add_mail_org`` disabled
        self.disabled_units: list[str] = []

    @property
    def name(self) -> str:
        return self.names.name

    def __repr__(self) -> str:
        return f"Lab({self.name!r}, subnet_index={self.names.subnet_index})"

    # -- building ----------------------------------------------------------------------
    def up(
        self,
        servers: int,
        *,
        start_agents: bool = True,
        keep_on_failure: bool = False,
        store: Literal["embedded", "etcd"] = "embedded",
        store_members: int = 1,
        lease: LeaseSettings | None = None,
    ) -> LabInfo:
        """Build the lab with ``servers`` servers and, unless told not to, start their
        agents and wait until each answers ``GET /v1/health`` with 200.

        ``store``: the agents' store, ``embedded`` (one SQLite file) or ``etcd`` with
        ``store_members`` members (1, 3 or 5; started and healthy before the agents).
        ``lease``: the agents' ``[lease]`` settings (default: the agent's defaults).
        Raises ``LabError`` if the lab (or leftovers of it) exists, if its subnet collides
        with an address or route of the host, or if any step fails; a lab that failed to
        come up is torn down again unless ``keep_on_failure``.
        """
        _require_root()
        if not 1 <= servers <= MAX_SERVERS:
            raise LabError(f"a lab has 1 to {MAX_SERVERS} servers, not {servers}")
        if store not in ("embedded", "etcd"):
            raise LabError(f"a lab's store is 'embedded' or 'etcd', not {store!r}")
        if store == "etcd":
            etcd.check_member_count(store_members)
        self._refuse_existing()
        conflicts = network.subnet_conflicts(self.names.subnet)
        if conflicts:
            raise LabError(
                f"subnet {self.names.subnet} of lab {self.name} collides with the host's "
                f"{', '.join(conflicts)}; choose another subnet index"
            )
        try:
            count = store_members if store == "etcd" else 0
            self._build([server_name(k) for k in range(1, servers + 1)], count, lease)
            if count:
                members = etcd.member_names(count)
                for member in members:
                    self.start_store_member(store_member_number(member), wait=False)
                etcd.wait_healthy(self.names, self._state(), members, etcd.START_TIMEOUT)
            if start_agents:
                for server in self._state().servers:
                    self.start_agent(server, wait=False)
                agents.wait_healthy(self, list(self._state().servers), AGENT_START_TIMEOUT)
        except BaseException as exc:
            if not keep_on_failure:
                self._down_after_failure(exc)
            if isinstance(exc, Exception) and not isinstance(exc, LabError):
                raise LabError(f"lab {self.name} could not be built: {exc}") from exc
            raise
        return self.info()

    def _refuse_existing(self) -> None:
        found = []
        if self.names.root.exists():
            found.append(str(self.names.root))
        if self.names.bridge in network.link_names():
            found.append(f"bridge {self.names.bridge}")
        found += [f"netns {n}" for n in teardown.lab_netns(self.names, None)]
        found += [f"netns {n}" for n in clients.netns_names(self.names)]
        found += [f"netns {n}" for n in etcd.netns_names(self.names, None)]
        if found:
            raise LabError(
                f"lab {self.name} exists already ({', '.join(found)}); remove it with "
                f"`vigil lab down --name {self.name}` first"
            )

    def _build(self, servers: list[str], store_members: int, lease: LeaseSettings | None) -> None:
        names = self.names
        names.root.mkdir(mode=0o755, parents=True)
        tokens = files.write_tokens(names.tokens_file)
        generate_key_file(names.secrets_key_file)
        init_ca(names.tls_dir, f"vigil lab {names.name} CA")
        members = etcd.member_names(store_members)
        state = files.LabState(
            name=names.name,
            subnet=str(names.subnet),
            subnet_index=names.subnet_index,
            bridge=names.bridge,
            host_address=names.host_address,
            store="etcd" if members else "embedded",
            store_url=names.etcd_store_url(members) if members else None,
        )
        files.save_state(names.state_file, state)
        prefixlen = names.subnet.prefixlen
        network.create_bridge(
            names.bridge, names.host_address, prefixlen, alias=f"vigil lab {names.name}"
        )
        namespaces.private_bind_dir(names.mount_dir)
        for server in servers:
            state.servers[server] = files.ServerState(
                name=server,
                address=names.address(server),
                netns=names.netns(server),
                mount_ns=str(names.mount_ns_file(server)),
                host_veth=names.host_veth(server),
            )
            files.save_state(names.state_file, state)
            self._build_server(server, state.store_url or names.store_url, lease)
        etcd.build(names, state, store_members)
        urls = [names.api_url(s) for s in servers]
        files.write_client_file(names.client_file, urls, tokens, names.ca_file)

    def _build_server(self, server: str, store_url: str, lease: LeaseSettings | None) -> None:
        names = self.names
        network.create_netns(names.netns(server))
        namespaces.create_mount_ns(
            names.netns_path(server),
            names.mount_ns_file(server),
            work_dir=names.server_dir(server) / ".sysfs",
        )
        network.connect_server(
            bridge=names.bridge,
            host_veth=names.host_veth(server),
            netns_name=names.netns(server),
            address=names.address(server),
            prefixlen=names.subnet.prefixlen,
        )
        state_dir = names.server_dir(server) / "state"
        state_dir.mkdir(parents=True, exist_ok=True)
        issued = issue(names.tls_dir, server, [names.address(server)])
        tls = TlsSettings(
            cert_file=issued.cert_file, key_file=issued.key_file, ca_file=names.ca_file
        )
        files.write_agent_config(
            names.config_file(server),
            server=server,
            address=names.address(server),
            port=API_PORT,
            store_url=store_url,
            state_dir=state_dir,
            tokens_file=names.tokens_file,
            log_file=names.server_dir(server) / "agent.log",
            secrets_key_file=names.secrets_key_file,
            tls=tls,
            lease=lease,
        )

    def _down_after_failure(self, exc: BaseException) -> None:
        try:
            self.down()
        except LabError as cleanup:
            exc.add_note(f"tearing the half-built lab down failed too: {cleanup}")

    # -- tearing down ------------------------------------------------------------------
    def down(self) -> None:
        """Stop every process of the lab and remove all it created. Idempotent.

        Works without a state file (after a crash, or on a half-built lab) by the lab's
        naming conventions. Raises ``LabError`` naming each part that could not be
        removed; parts already gone are not an error.
        """
        _require_root()
        try:
            state = files.load_state(self.names.state_file)
        except LabError:
            state = None  # unreadable: fall back to the naming conventions
        problems = teardown.tear_down(self.names, state)
        for pid, child in list(self._children.items()):
            if child.poll() is not None or not processes.is_alive(pid):
                del self._children[pid]
        if problems:
            raise LabError(
                f"lab {self.name} could not be removed completely: {'; '.join(problems)}"
            )

    # -- running things inside servers -------------------------------------------------
    def exec(self, server: str, argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[Any]:
        """Run ``argv`` inside ``server`` (its network and mount namespaces) and wait.

        ``kwargs`` go to ``subprocess.run`` (``capture_output``, ``text``, ``timeout``,
        ``check``...); ``cwd`` is applied inside the server's mount namespace.
        """
        cwd = kwargs.pop("cwd", None)
        prefix = self._enter(server)
        if cwd is not None:
            prefix.insert(1, f"--wd={cwd}")
        return subprocess.run([*prefix, *argv], check=kwargs.pop("check", False), **kwargs)

    def spawn(self, server: str, argv: list[str], log_file: Path | str) -> int:
        """Start ``argv`` as a detached daemon inside ``server``; output appended to
        ``log_file``. Returns its pid. ``down`` stops it with everything else."""
        child = processes.spawn_detached([*self._enter(server), *argv], Path(log_file))
        self._children[child.pid] = child
        return child.pid

    def _enter(self, server: str) -> list[str]:
        """``nsenter ... --`` for ``server``; ``LabError`` if its namespaces are gone."""
        server_number(server)
        netns_path = self.names.netns_path(server)
        mount_ns = self.names.mount_ns_file(server)
        if namespaces.ns_key_of_kind(netns_path, "net") is None:
            raise LabError(f"lab {self.name} has no server {server} (no {netns_path})")
        if namespaces.ns_key_of_kind(mount_ns, "mnt") is None:
            raise LabError(f"server {server} of lab {self.name} has no mount namespace")
        return namespaces.nsenter_argv(netns_path, mount_ns, [])

    # -- clients: hosts outside the cluster ----------------------------------------------
    def add_client(self, client: str = "client1") -> ClientInfo:
        """Add ``client`` (``client1``..``client50``): a network namespace on the lab's
        bridge with address ``10.213.I.(199+K)``, to reach the cluster from outside.
        ``down`` removes it. See ``vigil.lab.clients``."""
        _require_root()
        return clients.add(self.names, client)

    def client_exec(
        self, client: str, argv: list[str], **kwargs: Any
    ) -> subprocess.CompletedProcess[Any]:
        """Run ``argv`` inside ``client``'s network namespace and wait (``kwargs`` go to
        ``subprocess.run``)."""
        argv = clients.enter_argv(self.names, client, argv)
        return subprocess.run(argv, check=kwargs.pop("check", False), **kwargs)

    # -- services of the lab: a DNS server, shared disks ---------------------------------
    def add_dns_server(
        self,
        where: str = "client50",
        zone: str = dns.DEFAULT_ZONE,
        network: str | None = None,
        **options: Any,
    ) -> DnsServerInfo:
        """Start BIND in ``where`` (a server, or a dedicated namespace: a client, created
        when missing), serving ``zone`` and the reverse zone of ``network`` (default: the
        lab subnet), updatable with a fresh TSIG key. ``options``: ``records``,
        ``key_name``, ``algorithm``. ``down`` stops it. See ``vigil.lab.dns``."""
        state = self._state()
        enter = self._enter(where) if where in state.servers else None
        server, child = dns.add(self.names, state, where, enter, zone, network, **options)
        self._children[child.pid] = child
        return server

    def dns_server(self, where: str = "client50") -> DnsServerInfo:
        """The DNS server ``add_dns_server`` started in ``where``."""
        return dns.recorded(self._state(), where)

    def remove_dns_server(self, where: str = "client50") -> None:
        """Stop the DNS server in ``where`` and remove its files (nothing if none)."""
        dns.remove(self.names, self._state(), where)

    def add_shared_disk(self, size_mb: int = 64, mmp: bool = True) -> SharedDiskInfo:
        """A shared disk: a sparse ext4 image under the root (multi-mount protection with
        ``mmp``), one loop device per server. ``down`` detaches them. See ``vigil.lab.disk``."""
        return disk.add(self.names, self._state(), size_mb, mmp)

    def shared_disks(self) -> list[SharedDiskInfo]:
        """The lab's shared disks, in the order they were added."""
        return [disk.info_of(record) for record in self._state().shared_disks]

    def add_local_disks(self, size_mb: int = 64) -> dict[str, LocalDiskInfo]:
        """Give every server its own blank disk (a sparse image under the root, a loop
        device of its own in direct-I/O mode), as a mirror needs; servers that have one
        keep it. Every server's disk, by server. ``down`` detaches and removes them. See
        ``vigil.lab.localdisk``."""
        _require_root()
        return localdisk.add(self.names, self._state(), size_mb)

    def local_disks(self) -> dict[str, LocalDiskInfo]:
        """Each server's own disk, by server (``add_local_disks``)."""
        state = self._state()
        return {s: localdisk.info_of(s, record) for s, record in state.local_disks.items()}

    # -- the mail organisation ---------------------------------------------------------
    def add_mail_org(
        self,
        users: int = 20,
        primary: str = "node1",
        *,
        disk_mb: int = mail_org.DEFAULT_DISK_MB,
        disable_system_units: bool = True,
    ) -> MailOrgInfo:
        """Build the mail organisation the mail kit protects (``vigil.lab.mail``): an LDAP
        directory with ``users`` mail users (and a probe user) homed on ``primary``, a
        front-end (Postfix relay, Dovecot proxy), every server's own Postfix and Dovecot
        configuration, and a shared disk holding the queue and the mailboxes, left
        mounted at ``/srv/mail`` on ``primary`` with Postfix and Dovecot stopped.

        ``disable_system_units``: ``systemctl disable postfix dovecot slapd`` (starts and
        stops nothing; the Debian packages enable them, and the mail kit refuses a service
        that would start at boot outside vigil). ``down`` removes all of it.
        """
        _require_root()
        state = self._state()
        enter = {server: self._enter(server) for server in state.servers}
        built = mail_org.add(
            self.names,
            enter,
            users=users,
            primary=primary,
            disk_mb=disk_mb,
            disable_units=disable_system_units,
        )
        for child in built.children:
            self._children[child.pid] = child
        self.disabled_units = built.disabled_units
        return built.info

    def mail_org(self) -> MailOrgInfo:
        """The mail organisation ``add_mail_org`` built (read from ``lab.json`` and the
        directory's password files: any process may ask)."""
        return mail_org.recorded(self.names)

    def prepare_mail_server(self, server: str) -> Path:
        """Make ``server`` ready to take the mail service over: its Postfix and Dovecot
        configurations rewritten from the recorded organisation and its private mail
        directories bind-mounted (normally both are there since ``add_mail_org``).
        Mounting the shared disk is the volume's business (the kit's). Returns the
        server's private mail directory (``ROOT/nodeK/mail``)."""
        return mail_org.prepare_server(self.names, server, self._enter(server))

    # -- agents ------------------------------------------------------------------------
    def start_agent(self, server: str, *, wait: bool = True) -> int:
        """Start ``server``'s agent unless it runs already; returns its pid. With ``wait``,
        wait until it answers its health check (``LabError`` after 30 s, with the tail of
        its ``agent.out``)."""
        pid = self.agent_pid(server)
        if pid is None:
            names = self.names
            argv = [*self._enter(server), *agent_argv(names.config_file(server))]
            child = processes.spawn_detached(argv, names.agent_out(server))
            self._children[child.pid] = child
            pid = child.pid
            self._set_agent_pid(server, pid)
        if wait:
            agents.wait_healthy(self, [server], AGENT_START_TIMEOUT)
        return pid

    def stop_agent(
        self, server: str, sig: int = signal.SIGTERM, *, wait: bool = True, timeout: float = 10.0
    ) -> None:
        """Send ``sig`` to ``server``'s agent (nothing if none runs). With ``wait``, wait
        until it is gone, SIGKILLing it after ``timeout`` s; use ``wait=False`` for
        signals that do not end a process (SIGSTOP)."""
        pid = self.agent_pid(server)
        if pid is None:
            return
        processes.send([pid], sig)
        if not wait:
            return
        if processes.wait_gone([pid], timeout) and processes.terminate([pid], grace=0.0):
            raise LabError(f"the agent on {server} (pid {pid}) survived SIGKILL")
        self._set_agent_pid(server, None)

    def agent_pid(self, server: str) -> int | None:
        """The pid of ``server``'s agent if it runs (inside that server), else ``None``."""
        record = self._state().servers.get(server)
        if record is None:
            raise LabError(f"lab {self.name} has no server {server!r}")
        return processes.running_in(record.agent_pid, self.names.netns_path(server))

    def _set_agent_pid(self, server: str, pid: int | None) -> None:
        state = self._state()
        state.servers[server].agent_pid = pid
        files.save_state(self.names.state_file, state)

    # -- the store's etcd members (a lab on etcd) ----------------------------------------
    def start_store_member(self, number: int, *, wait: bool = True) -> int:
        """Start etcd member ``number`` (``etcdK``) on its data unless it runs; returns its
        pid. With ``wait``, wait until it answers ``/health`` (a leader elected)."""
        member, state = store_member_name(number), self._state()
        pid = etcd.member_pid(self.names, state, member)
        if pid is None:
            child = etcd.start(self.names, state, member)
            self._children[child.pid] = child
            pid = child.pid
        if wait:
            etcd.wait_healthy(self.names, state, [member], etcd.START_TIMEOUT)
        return pid

    def stop_store_member(
        self, number: int, sig: int = signal.SIGTERM, *, wait: bool = True
    ) -> None:
        """Send ``sig`` to etcd member ``number`` (SIGKILL: a crash; SIGSTOP/SIGCONT with
        ``wait=False``: freeze and thaw). With ``wait``, wait until it is gone."""
        etcd.stop(self.names, self._state(), store_member_name(number), sig, wait)

    def store_leader(self) -> int | None:
        """The number of the etcd member that is raft leader now (asked of each running
        member over ``/v3/maintenance/status``), ``None`` when none knows one."""
        leader = etcd.leader(self.names, self._state())
        return store_member_number(leader) if leader else None

    # -- inspecting --------------------------------------------------------------------
    def _state(self) -> files.LabState:
        state = files.load_state(self.names.state_file)
        if state is None:
            raise LabError(
                f"lab {self.name} is not up (no {self.names.state_file}); build it with "
                f"`vigil lab up --name {self.name}`"
            )
        return state

    def info(self) -> LabInfo:
        """Servers, addresses, API URLs, tokens and files of the lab (``LabError`` if it
        is not up)."""
        state = self._state()
        names = self.names
        servers = tuple(
            ServerInfo(
                name=server,
                address=record.address,
                api_url=api_url(record.address),
                netns=record.netns,
                mount_ns=Path(record.mount_ns),
                config_file=names.config_file(server),
                agent_out=names.agent_out(server),
                agent_pid=self.agent_pid(server),
            )
            for server, record in sorted(state.servers.items(), key=lambda i: server_number(i[0]))
        )
        return LabInfo(
            name=names.name,
            root=names.root,
            subnet=state.subnet,
            bridge=state.bridge,
            host_address=state.host_address,
            store_url=state.store_url or names.store_url,
            client_file=names.client_file,
            tokens_file=names.tokens_file,
            ca_file=names.ca_file,
            servers=servers,
            tokens=files.read_tokens(names.tokens_file),
            store=state.store,
            store_members=etcd.infos(names, state),
        )

    def status(self, *, check_api: bool = False) -> LabStatus:
        """What exists of the lab, by state file and by names; never raises for a lab
        that is down. With ``check_api``, ask each running agent's health endpoint."""
        from vigil.lab.status import lab_status

        return lab_status(self, check_api=check_api)
