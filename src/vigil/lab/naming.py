"""The lab's naming conventions: every name and address a lab uses, derived from its name.

One lab called ``NAME`` with subnet index ``I`` and servers ``node1..nodeN`` owns:

- root directory ``/run/vigil-NAME`` (state, configs, logs, mount-namespace files);
- network namespaces ``vigil-NAME-nodeK`` (files in ``/run/netns``);
- bridge ``vigil-NAME`` on the host, with address ``10.213.I.254/24``;
- host-side veths ``vl-NAME-K`` (their peers are ``eth0`` inside the servers);
- server addresses ``10.213.I.K/24``;
- for clients ``clientK`` (hosts outside the cluster, ``Lab.add_client``): network
  namespaces ``vigil-NAME-clientK``, host-side veths ``vc-NAME-K``, addresses
  ``10.213.I.(199+K)/24``;
- for the members ``etcdK`` of a lab on etcd (``vigil.lab.etcd``): network namespaces
  ``vigil-NAME-etcdK``, mount-namespace files ``ROOT/mnt/etcdK``, directories
  ``ROOT/etcdK``, host-side veths ``ve-NAME-K``, addresses ``10.213.I.(150+K)/24``;
- for a mail organisation (``vigil.lab.mail``): its directory and front-end in clients
  ``client49`` and ``client48`` (files under ``ROOT/mail/``), each server's private mail
  directories ``ROOT/nodeK/mail/`` (bind-mounted inside that server only), and a shared
  disk under ``ROOT/disks/``.

``down`` finds leftovers by these names alone, so the rules must stay unambiguous: a lab
name is a short lower-case label, and every pattern ends in digits, so lab ``a`` never
matches the objects of lab ``a-1``.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

from vigil.errors import LabError

#: the first two octets of every lab subnet; the third is the lab's subnet index
SUBNET_PREFIX = "10.213"
#: the host's address on the bridge (last octet)
HOST_OCTET = 254
#: Linux interface names have at most 15 characters; ``vl-NAME-KK`` must fit
NAME_MAX = 9
MAX_SERVERS = 99
#: client K has address ``10.213.I.(CLIENT_OCTET_BASE + K)``, above every server's
CLIENT_OCTET_BASE = 199
MAX_CLIENTS = 50
#: etcd member K of a lab on etcd has address ``10.213.I.(STORE_OCTET_BASE + K)``
STORE_OCTET_BASE = 150
#: the member counts a lab's etcd may have (odd: a majority survives one loss from 3)
STORE_MEMBER_COUNTS = (1, 3, 5)
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
API_PORT = 7480
NETNS_DIR = Path("/run/netns")
RUN_DIR = Path("/run")

_LAB_NAME = re.compile(rf"^[a-z](?:[a-z0-9-]{{0,{NAME_MAX - 2}}}[a-z0-9])?$")
_SERVER = re.compile(r"^node([1-9][0-9]*)$")
_CLIENT = re.compile(r"^client([1-9][0-9]*)$")
_STORE_MEMBER = re.compile(r"^etcd([1-9])$")


def check_lab_name(name: str) -> str:
    """Return ``name`` if it can name a lab, else raise ``LabError``."""
    if not _LAB_NAME.match(name):
        raise LabError(
            f"lab name {name!r} is not valid: use 1 to {NAME_MAX} lower-case letters, digits "
            "and '-', starting with a letter and not ending with '-' (it becomes part of "
            "interface names, which Linux limits to 15 characters)"
        )
    return name


def server_name(number: int) -> str:
    """The name of server number ``number`` (1-based): ``node1``, ``node2``..."""
    return f"node{number}"


def is_server_name(server: str) -> bool:
    """Whether ``server`` is a lab server name (``node1``..``node99``)."""
    match = _SERVER.match(server)
    return match is not None and int(match.group(1)) <= MAX_SERVERS


def server_number(server: str) -> int:
    """The number of a server named ``nodeK``; ``LabError`` for any other name."""
    if not is_server_name(server):
        raise LabError(f"{server!r} is not a lab server name: lab servers are node1..node99")
    return int(server[len("node") :])


def is_client_name(client: str) -> bool:
    """Whether ``client`` is a lab client name (``client1``..``client50``)."""
    match = _CLIENT.match(client)
    return match is not None and int(match.group(1)) <= MAX_CLIENTS


def client_number(client: str) -> int:
    """The number of a client named ``clientK``; ``LabError`` for any other name."""
    if not is_client_name(client):
        raise LabError(
            f"{client!r} is not a lab client name: lab clients are client1..client{MAX_CLIENTS}"
        )
    return int(client[len("client") :])


def store_member_name(number: int) -> str:
    """The name of etcd member number ``number`` (1-based): ``etcd1``, ``etcd2``..."""
    return f"etcd{number}"


def is_store_member_name(member: str) -> bool:
    """Whether ``member`` is a lab etcd member name (``etcd1``..``etcd5``)."""
    match = _STORE_MEMBER.match(member)
    return match is not None and int(match.group(1)) <= max(STORE_MEMBER_COUNTS)


def store_member_number(member: str) -> int:
    """The number of an etcd member named ``etcdK``; ``LabError`` for any other name."""
    if not is_store_member_name(member):
        raise LabError(f"{member!r} is not a lab etcd member name: they are etcd1..etcd5")
    return int(member[len("etcd") :])


@dataclass(frozen=True)
class LabNames:
    """Every name, path and address of one lab, computed from its name and subnet index."""

    name: str
    subnet_index: int

    def __post_init__(self) -> None:
        check_lab_name(self.name)
        if not 0 <= self.subnet_index <= 255:
            raise LabError(
                f"subnet index {self.subnet_index} is out of range: choose 0 to 255 "
                f"(the lab uses {SUBNET_PREFIX}.<index>.0/24)"
            )

    # -- files -------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        return RUN_DIR / f"vigil-{self.name}"

    @property
    def state_file(self) -> Path:
        return self.root / "lab.json"

    @property
    def secrets_key_file(self) -> Path:
        """The lab's cluster key: it seals the secret properties in the store."""
        return self.root / "cluster.key"

    @property
    def tokens_file(self) -> Path:
        return self.root / "tokens.toml"

    @property
    def tls_dir(self) -> Path:
        """The lab's CA (``ca.pem``, ``ca.key``) and each server's certificate and key."""
        return self.root / "tls"

    @property
    def ca_file(self) -> Path:
        """The lab's CA certificate: agents and clients check the agents' certificates."""
        return self.tls_dir / "ca.pem"

    def cert_file(self, server: str) -> Path:
        return self.tls_dir / f"{server}.pem"

    def key_file(self, server: str) -> Path:
        return self.tls_dir / f"{server}.key"

    @property
    def client_file(self) -> Path:
        return self.root / "client.toml"

    @property
    def store_url(self) -> str:
        """The embedded store's URL (a lab on etcd uses ``etcd_store_url``)."""
        return f"sqlite:///{self.root / 'store.db'}"

    @property
    def mount_dir(self) -> Path:
        """Directory bind-mounted onto itself (private) that holds the mount-ns files."""
        return self.root / "mnt"

    def mount_ns_file(self, server: str) -> Path:
        return self.mount_dir / server

    def server_dir(self, server: str) -> Path:
        return self.root / server

    def config_file(self, server: str) -> Path:
        return self.server_dir(server) / "agent.toml"

    def agent_out(self, server: str) -> Path:
        return self.server_dir(server) / "agent.out"

    # -- network -----------------------------------------------------------------------
    @property
    def bridge(self) -> str:
        return f"vigil-{self.name}"

    def netns(self, server: str) -> str:
        return f"vigil-{self.name}-{server}"

    def netns_path(self, server: str) -> Path:
        return NETNS_DIR / self.netns(server)

    def host_veth(self, server: str) -> str:
        return f"vl-{self.name}-{server_number(server)}"

    def is_netns(self, netns_name: str) -> bool:
        """Whether ``netns_name`` follows this lab's netns naming (``vigil-NAME-nodeK``)."""
        prefix = f"vigil-{self.name}-"
        return netns_name.startswith(prefix) and is_server_name(netns_name[len(prefix) :])

    def server_of_netns(self, netns_name: str) -> str:
        return netns_name[len(f"vigil-{self.name}-") :]

    def is_host_veth(self, ifname: str) -> bool:
        """Whether ``ifname`` is a host-side veth of the lab (a server's, a client's or an
        etcd member's)."""
        return re.fullmatch(rf"v[lce]-{re.escape(self.name)}-[0-9]+", ifname) is not None

    def client_netns(self, client: str) -> str:
        return f"vigil-{self.name}-{client}"

    def client_veth(self, client: str) -> str:
        return f"vc-{self.name}-{client_number(client)}"

    def client_address(self, client: str) -> str:
        return f"{SUBNET_PREFIX}.{self.subnet_index}.{CLIENT_OCTET_BASE + client_number(client)}"

    def is_client_netns(self, netns_name: str) -> bool:
        """Whether ``netns_name`` follows this lab's client naming (``vigil-NAME-clientK``)."""
        prefix = f"vigil-{self.name}-"
        return netns_name.startswith(prefix) and is_client_name(netns_name[len(prefix) :])

    # -- etcd members ------------------------------------------------------------------
    def store_member_netns(self, member: str) -> str:
        store_member_number(member)
        return f"vigil-{self.name}-{member}"

    def store_member_dir(self, member: str) -> Path:
        """``ROOT/etcdK``: the member's data directory (``data``) and logs."""
        store_member_number(member)
        return self.root / member

    def store_member_veth(self, member: str) -> str:
        return f"ve-{self.name}-{store_member_number(member)}"

    def store_member_address(self, member: str) -> str:
        number = STORE_OCTET_BASE + store_member_number(member)
        return f"{SUBNET_PREFIX}.{self.subnet_index}.{number}"

    def is_store_member_netns(self, netns_name: str) -> bool:
        """Whether ``netns_name`` follows this lab's etcd naming (``vigil-NAME-etcdK``)."""
        prefix = f"vigil-{self.name}-"
        return netns_name.startswith(prefix) and is_store_member_name(netns_name[len(prefix) :])

    def etcd_store_url(self, members: list[str]) -> str:
        """The agents' store URL for the lab's etcd ``members``: ``etcd://A:2379,...``."""
        hosts = ",".join(f"{self.store_member_address(m)}:{ETCD_CLIENT_PORT}" for m in members)
        return f"etcd://{hosts}"

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"{SUBNET_PREFIX}.{self.subnet_index}.0/24")

    @property
    def host_address(self) -> str:
        return f"{SUBNET_PREFIX}.{self.subnet_index}.{HOST_OCTET}"

    def address(self, server: str) -> str:
        return f"{SUBNET_PREFIX}.{self.subnet_index}.{server_number(server)}"

    def api_url(self, server: str) -> str:
        return api_url(self.address(server))


def api_url(address: str) -> str:
    """The agent API URL of a lab server with ``address`` (HTTPS: the lab runs with TLS)."""
    return f"https://{address}:{API_PORT}"
