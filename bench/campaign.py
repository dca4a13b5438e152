"""A long fault campaign: random faults against three servers on a three-member etcd
protecting three hierarchies, with the invariants checked all along.

Usage (as root, from the repository, with its virtualenv)::

    .venv/bin/python bench/campaign.py [--faults 1000] [--seed 1] [--bound 30]
        [--kinds agent-kill,agent-freeze,service-kill,etcd-kill,link-cut,link-flap,store-restart]
        [--quick] [--cleanup]

It builds its own lab (``bcamp``, 10.213.110.0/24) and runs ``tests/faults/campaign.py``
(which says what the lab holds, which faults there are and how the invariants are
checked): one fault at a time, each followed by the wait for every hierarchy back in
service and the cluster whole. Invariants: never two servers active, every hierarchy back
in service within ``--bound`` seconds after each fault, no acknowledged write to the
protected volume lost.

Prints the faults injected per kind, the recovery times (min / median / p95 / max) of the
faults that caused an outage, and every invariant violation with its evidence (the last
events and the instances' states). Exits 1 on any violation (or when the cluster did not
heal and the campaign stopped early). The lab is torn down at the end, on error and on
Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from types import FrameType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository: tests.faults

from tests.faults.campaign import KINDS, QUICK, Campaign, table

NAME, SUBNET = "bcamp", 110


def say(message: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {message}", file=sys.stderr, flush=True)


_MAIN_PID = os.getpid()


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    """SIGTERM: tear down as on Ctrl-C (a forked copy, pyroute2's netns helper, just ends)."""
    if os.getpid() != _MAIN_PID:
        os._exit(128 + signum)
    raise KeyboardInterrupt(f"signal {signum}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--faults", type=int, default=1000, help="faults to inject")
    parser.add_argument("--seed", type=int, default=1, help="the random faults' seed")
    parser.add_argument("--bound", type=float, default=30.0, help="recovery bound (s)")
    parser.add_argument("--kinds", default=",".join(KINDS), help="fault kinds to inject")
    parser.add_argument("--quick", action="store_true", help="the test suite's shorter faults")
    parser.add_argument("--cleanup", action="store_true", help="only remove leftovers")
    args = parser.parse_args(argv)
    args.kinds = tuple(k for k in args.kinds.split(",") if k)
    unknown = set(args.kinds) - set(KINDS)
    if unknown or not args.kinds:
        parser.error(f"--kinds: among {', '.join(KINDS)}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench/campaign.py builds a lab: run it as root", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _interrupt)
    campaign = Campaign(
        NAME,
        SUBNET,
        seed=args.seed,
        bound=args.bound,
        kinds=args.kinds,
        timing=QUICK if args.quick else None,
        say=say,
    )
    if args.cleanup:
        campaign.lab.down()
        return 0
    started = time.monotonic()
    code = 0
    failed = False
    try:
        campaign.build()
        ready = time.monotonic() - started
        say(f"lab ready in {ready:.0f}s; {args.faults} faults, seed {args.seed}")
        campaign.run(args.faults)
    except KeyboardInterrupt as exc:
        say(f"interrupted ({exc or 'Ctrl-C'}): the lab is torn down")
        code = 130
    except Exception:
        say(f"campaign failed, tearing down:\n{traceback.format_exc()}")
        code, failed = 1, True
    finally:
        campaign.close(keep_logs=failed)
    results = campaign.results
    print()
    print(
        f"vigil fault campaign: {len(results.faults)} faults (seed {args.seed}, bound "
        f"{args.bound:g} s, {'quick' if args.quick else 'bench'} fault durations), lab of 3 "
        f"servers on 3 etcd members, 3 hierarchies"
    )
    print()
    print(table(results, args.kinds))
    print(f"\ntotal runtime {time.monotonic() - started:.0f} s")
    if results.violations or results.stopped:
        code = code or 1
    return code


if __name__ == "__main__":
    sys.exit(main())
