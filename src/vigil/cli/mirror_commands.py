"""``vigil mirror ...``: the mirror kit's states and operations (the seed's DataKeeper
mirror: pause, continue, resync, break; a forced in-service after a failure; split-brain
resolution), all through an agent's API."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from vigil.cli import output
from vigil.cli.main import Json, Token, Url, _call, _done, app

mirror_app = typer.Typer(
    help="The mirror kit: replicated volumes (states, pause, continue, resync, break, "
    "force, resolve).",
    no_args_is_help=True,
)
app.add_typer(mirror_app, name="mirror")

Target = Annotated[str, typer.Argument(help="the target server")]


def _show_status(data: dict[str, Any]) -> None:
    source = data.get("source") or "(none: out of service)"
    output.console.print(f"[bold]{data['tag']}[/]  mode {data['mode']}  source {source}")
    for row in data["servers"]:
        view = data["targets"].get(row["server"], {})
        progress = view.get("progress")
        state = row["state"] or "?"
        if row["role"] == "source":
            state = "Source"
        elif progress:
            state += (
                f" {progress['percent']}% ({progress['mb_per_s']} MB/s, ETA {progress['eta_s']}s)"
            )
        dirty = view.get("dirty_bytes")
        extra = f"  {dirty / 2**20:.0f} MiB to copy" if dirty else ""
        eligible = {True: "eligible", False: "not eligible", None: "?"}[row["eligible"]]
        output.console.print(
            f"  {row['server']:<10} {row['priority']:>4}  {output.styled(state):<28} {eligible:<13}"
            f"{extra}  {row['reason'] or ''}"
        )
    for resync in data.get("resyncs", [])[-5:]:
        when = time.strftime("%H:%M:%S", time.localtime(resync["at"]))
        output.console.print(
            f"  resync {when} {resync['target']}: {resync['kind']}, {resync['regions']} "
            f"region(s), {resync['bytes'] / 2**20:.1f} MiB in {resync['seconds']:.2f}s"
        )


@mirror_app.command("status")
def status(tag: str, url: Url = None, token: Token = None, as_json: Json = False) -> None:
    """The mirror of TAG: its source, each target's state (Mirroring, Resynchronizing with
    progress and ETA, Paused, Broken, Resync Pending), eligibility, the last resyncs."""
    _done(_call("GET", f"/v1/mirror/{tag}", url, token), as_json, _show_status)


def _target_command(
    action: str, tag: str, target: str, url: str | None, token: str | None, as_json: bool
) -> None:
    _done(_call("POST", f"/v1/mirror/{tag}/{action}", url, token, {"target": target}), as_json)


@mirror_app.command("pause")
def pause(
    tag: str, target: Target, url: Url = None, token: Token = None, as_json: Json = False
) -> None:
    """Pause the mirror of TAG to TARGET: the source goes on without it, tracking the
    regions it writes (TARGET is no longer eligible to take over)."""
    _target_command("pause", tag, target, url, token, as_json)


@mirror_app.command("continue")
def continue_(
    tag: str, target: Target, url: Url = None, token: Token = None, as_json: Json = False
) -> None:
    """Continue the mirror to TARGET: the regions written meanwhile are copied (a partial
    resync; everything after a break), then it is Mirroring again."""
    _target_command("continue", tag, target, url, token, as_json)


@mirror_app.command("resync")
def resync(
    tag: str, target: Target, url: Url = None, token: Token = None, as_json: Json = False
) -> None:
    """Copy the whole volume to TARGET again (a full resync)."""
    _target_command("resync", tag, target, url, token, as_json)


@mirror_app.command("break")
def break_(
    tag: str, target: Target, url: Url = None, token: Token = None, as_json: Json = False
) -> None:
    """Break the mirror to TARGET: nothing is sent or tracked for it until continue or
    resync (which then copy everything)."""
    _target_command("break", tag, target, url, token, as_json)


@mirror_app.command("force")
def force(
    tag: str,
    on: Annotated[str, typer.Option("--on", help="the server whose copy becomes eligible")],
    reason: Annotated[str, typer.Option("--reason", help="why (recorded)")] = "",
    url: Url = None,
    token: Token = None,
    as_json: Json = False,
) -> None:
    """Make ON's copy of TAG eligible although it may be behind the last source (the
    seed's chapter 7: the source failed while this target was not in sync). Recorded in
    the event log; a failover blocked for want of an eligible server then goes on."""
    body = {"server": on, "reason": reason}
    _done(_call("POST", f"/v1/mirror/{tag}/force", url, token, body), as_json)


@mirror_app.command("resolve")
def resolve(
    tag: str,
    keep: Annotated[
        str | None, typer.Option("--keep", help="the server whose data is kept")
    ] = None,
    url: Url = None,
    token: Token = None,
    as_json: Json = False,
) -> None:
    """A split brain of TAG (both sides written since they diverged): without --keep, how
    much each side wrote; with --keep SERVER, SERVER's data is kept and the other copies
    are resynchronized from it (what the other side wrote is lost)."""

    def show(data: dict[str, Any]) -> None:
        for server, split in data["split_brain"].items():
            source = split["source_regions"]
            theirs = "unknown" if source < 0 else f"{source} region(s)"
            output.console.print(
                f"{server} diverged from {split['source']} after generation {split['ancestor']}: "
                f"{split['source']} wrote {theirs}, {server} wrote {split['target_regions']} "
                "region(s) since"
            )
        for step in data.get("done", []):
            output.console.print(f"  {step}")
        if not data.get("done"):
            output.console.print(
                f"keep one side with: vigil mirror resolve {data['tag']} --keep SERVER"
            )

    _done(_call("POST", f"/v1/mirror/{tag}/resolve", url, token, {"keep": keep}), as_json, show)
