"""What a client of a protected HTTP service sees: ``python -m vigil.lab.probe``.

Run inside a lab client (``Lab.client_exec``), it stands where the service's users
stand: it fetches ``GET /`` by the service's address, then resolves the service's name
with the lab's DNS server (dnspython, a stub resolver asking only that server, no cache)
and fetches ``GET /`` from the address the name gives. It prints one JSON object::

    {"by_address": {"url": ..., "answer": ["node2", "7"]} | {"url": ..., "error": ...},
     "by_name": {"name": ..., "resolved": ["10.213.0.2"], "url": ..., "answer": [...]}}

``answer`` is the service's reply split in lines (the sample service: its server's
name, then its counter). ``client_view`` runs it in a client and parses the result.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

import dns.exception
import httpx

from vigil.errors import LabError
from vigil.lab.dns import resolve

if TYPE_CHECKING:
    from vigil.lab.lab import Lab

#: seconds one HTTP request or one DNS query may take
TIMEOUT = 2.0


def fetch(url: str) -> dict[str, Any]:
    """``GET url``: the answer's lines, or the error."""
    try:
        reply = httpx.get(url, timeout=TIMEOUT, trust_env=False)
    except httpx.HTTPError as exc:
        return {"url": url, "error": type(exc).__name__}
    if reply.status_code != 200:
        return {"url": url, "error": f"HTTP {reply.status_code}"}
    return {"url": url, "answer": reply.text.strip().splitlines()}


def by_name(dns_server: str, dns_port: int, name: str, port: int) -> dict[str, Any]:
    """Resolve ``name`` with ``dns_server``, then fetch ``/`` from the first address."""
    seen: dict[str, Any] = {"name": name}
    try:
        seen["resolved"] = resolve(dns_server, dns_port, name, TIMEOUT)
    except dns.exception.DNSException as exc:
        seen["error"] = f"DNS: {type(exc).__name__}"
        return seen
    if not seen["resolved"]:
        seen["error"] = "DNS: no A record"
        return seen
    seen.update(fetch(f"http://{seen['resolved'][0]}:{port}/"))
    return seen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vigil.lab.probe", description=__doc__)
    parser.add_argument("--address", required=True, help="the service's (virtual) address")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--name", required=True, help="the service's DNS name")
    parser.add_argument("--dns", required=True, help="the DNS server to ask")
    parser.add_argument("--dns-port", type=int, default=53)
    args = parser.parse_args(argv)
    seen = {
        "by_address": fetch(f"http://{args.address}:{args.port}/"),
        "by_name": by_name(args.dns, args.dns_port, args.name, args.port),
    }
    print(json.dumps(seen))
    return 0


def client_view(lab: Lab, client: str, **options: Any) -> dict[str, Any]:
    """Run the probe in ``client`` of ``lab``; ``options``: ``address``,
    ``port``, ``name``, ``dns``, ``dns_port``. Returns what it printed."""
    argv = [sys.executable, "-m", "vigil.lab.probe"]
    for option, value in options.items():
        argv += [f"--{option.replace('_', '-')}", str(value)]
    done = lab.client_exec(client, argv, capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise LabError(f"the probe in {client} failed: {done.stderr.strip()[-2000:]}")
    seen: dict[str, Any] = json.loads(done.stdout)
    return seen


if __name__ == "__main__":
    sys.exit(main())
