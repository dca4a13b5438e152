"""``vigil ca``: a certificate authority for the cluster's TLS (``vigil.agent.ca``).

Run on one machine (the CA's key stays there), then copy ``ca.pem`` to every server and
client and each server its own certificate and key::

    vigil ca init --dir /etc/vigil/tls
    vigil ca issue node1 --address 10.0.0.1 --dir /etc/vigil/tls
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from vigil.agent import ca
from vigil.cli import output
from vigil.cli.main import Json, _done

app = typer.Typer(help="A certificate authority for the agents' TLS.", no_args_is_help=True)

Directory = Annotated[
    Path, typer.Option("--dir", help="where the CA's ca.pem and ca.key are (or go)")
]


@app.command("init")
def init(
    directory: Directory = Path("/etc/vigil/tls"),
    name: Annotated[str, typer.Option(help="the CA's name")] = "vigil cluster CA",
    days: Annotated[int, typer.Option(help="how long the CA is valid")] = ca.CA_DAYS,
    as_json: Json = False,
) -> None:
    """Make the cluster's CA: ca.pem (give it to every agent and client) and ca.key
    (mode 0600: keep it on this machine)."""
    made = ca.init_ca(directory, name, days)
    data = {"ca_file": str(made.cert_file), "ca_key": str(made.key_file)}
    _done(
        data,
        as_json,
        lambda d: output.console.print(
            f"CA made: {d['ca_file']} (certificate: copy it to every server and client as "
            f"[tls] ca_file) and {d['ca_key']} (its key: keep it here, readable by root only)",
            markup=False,
            highlight=False,
        ),
    )


@app.command("issue")
def issue_certificate(
    server: Annotated[str, typer.Argument(help="the server's name in the cluster")],
    address: Annotated[
        list[str], typer.Option("--address", help="an IP address the agent is reached at")
    ],
    dns: Annotated[
        list[str] | None, typer.Option("--dns", help="a host name it is reached by")
    ] = None,
    directory: Directory = Path("/etc/vigil/tls"),
    out: Annotated[
        Path | None, typer.Option("--out", help="where to write it (default: --dir)")
    ] = None,
    days: Annotated[int, typer.Option(help="how long it is valid")] = ca.SERVER_DAYS,
    as_json: Json = False,
) -> None:
    """Issue SERVER its certificate (SERVER.pem, a chain) and key (SERVER.key, mode 0600),
    signed by the CA in --dir, for its addresses and names (server and client use)."""
    made = ca.issue(directory, server, address, dns or [], days, out)
    data = {
        "server": server,
        "cert_file": str(made.cert_file),
        "key_file": str(made.key_file),
        "ca_file": str(directory / ca.CA_CERT),
    }

    def show(d: dict[str, str]) -> None:
        output.console.print(
            f"certificate for {d['server']}: {d['cert_file']} and {d['key_file']}; "
            "in its agent configuration:"
        )
        output.console.print(
            f'[tls]\ncert_file = "{d["cert_file"]}"\nkey_file = "{d["key_file"]}"\n'
            f'ca_file = "{d["ca_file"]}"',
            highlight=False,
            markup=False,
        )

    _done(data, as_json, show)
