"""``Lab.status``: what exists of a lab, from its state file and its naming conventions."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx

from vigil.agent.tls import client_context
from vigil.errors import LabError
from vigil.lab import etcd, files, namespaces, network, processes, teardown
from vigil.lab.info import LabStatus, ServerStatus
from vigil.lab.mail.status import mail_status
from vigil.lab.naming import api_url, is_server_name, server_number

if TYPE_CHECKING:
    from vigil.lab.lab import Lab


def _api_ok(client: httpx.Client, url: str) -> bool:
    try:
        return client.get(url + "/v1/health").status_code == 200
    except httpx.HTTPError:
        return False


def lab_status(lab: Lab, *, check_api: bool = False) -> LabStatus:
    """See ``Lab.status``."""
    names = lab.names
    try:
        state = files.load_state(names.state_file)
    except LabError:
        state = None
    servers = set(state.servers) if state else set()
    servers |= {names.server_of_netns(n) for n in teardown.lab_netns(names, None)}
    if names.mount_dir.is_dir():
        servers |= {p.name for p in names.mount_dir.iterdir() if is_server_name(p.name)}
    result = []
    verify = client_context(names.ca_file) if names.ca_file.exists() else False
    with httpx.Client(trust_env=False, timeout=0.5, verify=verify) as client:
        for server in sorted(servers, key=server_number):
            record = state.servers.get(server) if state else None
            net_key = namespaces.ns_key_of_kind(names.netns_path(server), "net")
            mnt_key = namespaces.ns_key_of_kind(names.mount_ns_file(server), "mnt")
            keys = {k for k in (net_key, mnt_key) if k is not None}
            pid = lab.agent_pid(server) if record is not None else None
            api_ok = None
            if check_api and pid is not None and record is not None:
                api_ok = _api_ok(client, api_url(record.address))
            result.append(
                ServerStatus(
                    name=server,
                    address=record.address if record else None,
                    netns=net_key is not None,
                    mount_ns=mnt_key is not None,
                    agent_pid=pid if pid is not None else (record.agent_pid if record else None),
                    agent_alive=pid is not None,
                    processes=len(processes.pids_in_namespaces(keys)),
                    api_ok=api_ok,
                )
            )
    return LabStatus(
        name=names.name,
        root=names.root,
        root_exists=names.root.exists(),
        state_file=state is not None,
        bridge=names.bridge in network.link_names(),
        servers=tuple(result),
        store_members=etcd.statuses(names, state, check_health=check_api),
        mail=mail_status(names, state),
    )
