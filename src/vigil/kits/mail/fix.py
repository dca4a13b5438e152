"""``vigil extend --fix``: make a backup's mail configuration match the primary's (the
seed's extend wizard, which "will invoke a utility to make the required changes").

Postfix parameters are set with ``postconf -e`` (Postfix's own editor). Dovecot has no
such editor: the settings go into one block at the end of its configuration file, between
``# BEGIN vigil TAG`` and ``# END vigil TAG`` markers, rewritten as a whole each time (a
later value overrides an earlier one in Dovecot's configuration, and a section of the same
name merges with the earlier one). A backup's own copy of a lookup table that differs
from the primary's cannot be fixed from here (the kit never copies files between
servers): ``can_extend`` says so and does not offer ``--fix``.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Mapping

from vigil.errors import KitError, Severity
from vigil.kits.base import KitContext
from vigil.kits.mail import config
from vigil.kits.mail.properties import MailProperties
from vigil.kits.process import run_command

__all__ = ["apply_fixes", "dovecot_block"]


def _changed(expected: Mapping[str, str], actual: Mapping[str, str]) -> dict[str, str]:
    return {
        name: value
        for name, value in expected.items()
        if not name.startswith("record:") and actual.get(name) != value
    }


def dovecot_block(tag: str, settings: Mapping[str, str]) -> str:
    """The managed block for ``dovecot:`` settings (top-level and per namespace)."""
    top, namespaces = [], defaultdict(list)
    for name, value in sorted(settings.items()):
        key = name.removeprefix("dovecot:")
        if key.startswith("namespace/"):
            _, namespace, setting = key.split("/", 2)
            namespaces[namespace].append(f"  {setting} = {value}")
        else:
            top.append(f"{key} = {value}")
    lines = [f"# BEGIN vigil {tag}: settings matching the primary (vigil extend --fix)"]
    lines += top
    for namespace, body in sorted(namespaces.items()):
        lines += [f"namespace {namespace} {{", *body, "}"]
    lines.append(f"# END vigil {tag}")
    return "\n".join(lines) + "\n"


def _replace_block(text: str, tag: str, block: str) -> str:
    begin, end = f"# BEGIN vigil {tag}", f"# END vigil {tag}"
    if begin in text and end in text:
        head, _, rest = text.partition(begin)
        _, _, tail = rest.partition(end)
        return head + block.rstrip("\n") + tail
    return text.rstrip("\n") + "\n\n" + block


async def apply_fixes(ctx: KitContext[MailProperties], props: MailProperties) -> list[str]:
    """Make this server's configuration match ``expected_settings``; each change made."""
    actual = await config.settings(props.postfix_config, props.dovecot_config)
    wanted = _changed(props.expected_settings, actual)
    made = []
    for name, value in sorted(wanted.items()):
        key = name.removeprefix("postfix:")
        if name.startswith("postfix:") and ":" not in key:
            await _postconf_set(ctx, props.postfix_config, key, value)
            made.append(f"postconf -e '{key} = {value}' on {ctx.server}")
    if any(n.startswith("dovecot:") for n in wanted):
        # the block holds every recorded Dovecot setting, not only those differing now:
        # rewriting it must not drop what an earlier fix put there
        dovecot = {n: v for n, v in props.expected_settings.items() if n.startswith("dovecot:")}
        path = props.dovecot_config
        text = _read(path)
        block = dovecot_block(ctx.tag, dovecot)
        _write(path, _replace_block(text, ctx.tag, block))
        changed = sorted(n for n in wanted if n.startswith("dovecot:"))
        made.append(f"{path} on {ctx.server}: {', '.join(changed)}")
    after = config.differences(
        props.expected_settings,
        await config.settings(props.postfix_config, props.dovecot_config),
    )
    if after:
        raise KitError(
            f"the configuration of {ctx.server} still differs after the fixes: {after[0]}",
            Severity.FATAL,
        )
    return made


async def _postconf_set(
    ctx: KitContext[MailProperties], directory: str, name: str, value: str
) -> None:
    result = await run_command(
        ["postconf", "-c", directory, "-e", f"{name} = {value}"], log=ctx.log, timeout=30,
        name="postconf -e",
    )  # fmt: skip
    if not result.ok:
        raise KitError(f"postconf -e {name} on {ctx.server}: {result.last_line}", Severity.FATAL)


def _read(path: str) -> str:
    with open(path) as handle:
        return handle.read()


def _write(path: str, text: str) -> None:
    """Replace the file atomically, keeping its mode."""
    tmp = f"{path}.vigil-tmp"
    with open(tmp, "w") as handle:
        handle.write(text)
    os.chmod(tmp, os.stat(path).st_mode & 0o7777)
    os.replace(tmp, path)
