"""The API fuzz at length: ``tests.api_fuzz`` with many more requests per operation than the
test suite's bounded run (``tests/integration/test_fuzz.py``).

Usage (as root, from the repository, with its virtualenv)::

    .venv/bin/python bench/fuzz.py [--examples 200] [--roles guest,operator,administrator]
                                   [--report fuzz.json]

A lab of two servers (``bfuzz``, 10.213.103.0/24) with the sample service's hierarchy
``web`` on node1 extended to node2, and a dns resource whose TSIG secret is in the store
(a BIND on node2). Every operation of the agent's OpenAPI document (but stopping an
agent) is sent ``--examples`` generated requests, valid and invalid, with a token of each
role; prints the requests by status and every finding (a 5xx, a refused request that
changed the configuration, a secret in an answer), and exits 1 when there is one. The lab
is torn down whatever happens.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository: tests

from tests.api_fuzz import ROLES, Fuzzer, lab_secrets, write_report
from tests.bind_server import bind_server
from tests.integration.helpers import Api, service_commands, wait_for

from vigil.lab.lab import Lab

PORT = 8080


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=200, help="requests per operation")
    parser.add_argument("--roles", default=",".join(ROLES))
    parser.add_argument("--report", type=Path, help="write the report as JSON here")
    args = parser.parse_args()
    lab = Lab("bfuzz", subnet_index=103)
    lab.down()
    started = time.monotonic()
    try:
        info = lab.up(2)
        records = {"web": "10.213.103.77"}
        with bind_server(lab=lab, server="node2", network=info.subnet, records=records) as bind:
            api = Api(info)
            try:
                one, two = info.server("node1"), info.server("node2")
                api.ok("POST", "/v1/commpaths", {
                    "local": "node1", "local_address": one.address,
                    "remote": "node2", "remote_address": two.address,
                })  # fmt: skip
                web = {"tag": "web", "kit": "app", "server": "node1"}
                api.ok("POST", "/v1/resources", {**web, "properties": service_commands(PORT)})
                dns = bind.kit_properties("web", one.address, ttl=5, request_timeout=3)
                api.ok("POST", "/v1/resources", {
                    "tag": "webdns", "kit": "dns", "server": "node1", "properties": dns,
                })  # fmt: skip
                api.ok("POST", "/v1/hierarchies/web/extend", {"server": "node2"})
                wait_for(lambda: api.instances("web")["node1"]["state"] == "ISP", what="web")
            finally:
                api.close()
            fuzzer = Fuzzer(info, lab_secrets(info, [bind.secret]))
            try:
                report = fuzzer.run(
                    roles=args.roles.split(","),
                    examples=args.examples,
                    progress=lambda line: print(f"  {line}", flush=True),
                )
            finally:
                fuzzer.close()
    finally:
        lab.down()
    print(f"\n{report.requests} requests in {report.seconds:.0f} s "
          f"({time.monotonic() - started:.0f} s with the lab), "
          f"{report.refused} refused changes checked")  # fmt: skip
    print("status  requests")
    for status, count in sorted(report.by_status.items()):
        print(f"{status:>6}  {count:>8}")
    print(f"findings: {len(report.findings)}")
    for finding in report.findings:
        print(f"  {finding}")
    if args.report:
        write_report(report, args.report)
    return 1 if report.findings else 0


if __name__ == "__main__":
    raise SystemExit(main())
