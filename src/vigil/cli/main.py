"""The ``vigil`` command line: Typer app assembling the command groups."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="vigil",
    help="vigil: a high-availability cluster manager for Linux.",
    no_args_is_help=True,
    add_completion=False,
)


def _register() -> None:
    from vigil.cli import lab_commands

    app.add_typer(lab_commands.app, name="lab")


def run() -> None:
    _register()
    app()
