"""The app kit's configuration checks on one server (``validate_create``, ``can_extend``).

Only what can be known without running anything: each command's program must exist and
be executable on the server, and the working directory must exist. The program is the
command line's first word after any ``NAME=value`` assignments; it is checked when it is
an absolute path, a path relative to the working directory (``./start``, ``bin/start``),
or a bare name looked up in ``PATH`` (the agent's, or the one set in ``environment``).
Anything else (``$HOME/bin/start``, a shell keyword or builtin) is left to the shell.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
from pathlib import Path

from vigil.kits.app.properties import COMMAND_FIELDS, AppProperties

__all__ = ["command_problem", "config_problems"]

_ASSIGNMENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=.*", re.DOTALL)
_BARE_NAME = re.compile(r"[A-Za-z0-9_.+@%-]+")
#: shell keywords and builtins: a command line starting with one is left to the shell
_SHELL_WORDS_TEXT = (
    "! { } ( ) [ [[ . : if then else elif fi while until for do done case esac in "
    "function alias bg break cd command continue eval exec exit export false fg "
    "getopts hash jobs local read readonly return set shift source test times trap "
    "true type ulimit umask unalias unset wait echo printf kill pwd"
)
_SHELL_WORDS = frozenset(_SHELL_WORDS_TEXT.split())


def config_problems(properties: AppProperties, server: str) -> list[str]:
    """Every configuration problem of ``properties`` on this server (named ``server`` in
    the messages), each a message saying what to fix."""
    problems: list[str] = []
    workdir = properties.working_directory
    if workdir is not None and not Path(workdir).is_dir():
        problems.append(
            f"working_directory {workdir!r} does not exist on {server}: create it or "
            "correct the path"
        )
    search_path = properties.environment.get("PATH", os.environ.get("PATH", os.defpath))
    for field in COMMAND_FIELDS:
        line = getattr(properties, field)
        if line is None:
            continue
        problem = command_problem(field, line, server, search_path, Path(workdir or "/"))
        if problem:
            problems.append(problem)
    return problems


def command_problem(
    what: str, line: str, server: str, search_path: str, workdir: Path
) -> str | None:
    """The problem with command line ``line`` (the ``what`` command) on ``server``, or
    None when its program is found (or cannot be checked without running the shell)."""
    try:
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        words = list(lexer)
    except ValueError as exc:
        return f"{what} command is not a valid shell command line ({exc}): {line!r}"
    while words and _ASSIGNMENT.fullmatch(words[0]):
        words.pop(0)
    if not words or words[0] in _SHELL_WORDS:
        return None
    program = words[0]
    if program.startswith("/"):
        return _file_problem(what, program, Path(program), server)
    if "/" in program and _BARE_NAME.fullmatch(program.replace("/", "")):
        return _file_problem(what, program, workdir / program, server)
    if _BARE_NAME.fullmatch(program) and shutil.which(program, path=search_path) is None:
        return (
            f"{what} command {program!r} not found in PATH on {server}: install it or "
            "give its absolute path"
        )
    return None


def _file_problem(what: str, program: str, path: Path, server: str) -> str | None:
    shown = repr(program) if str(path) == program else f"{program!r} ({path})"
    if not path.exists():
        return f"{what} command {shown} not found on {server}: install it or correct the path"
    if path.is_dir():
        return f"{what} command {shown} is a directory on {server}, not a program: correct the path"
    if not os.access(path, os.X_OK):
        return (
            f"{what} command {shown} is not executable on {server}: make it executable "
            "(chmod +x) or correct the path"
        )
    return None
