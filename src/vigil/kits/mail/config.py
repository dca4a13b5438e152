"""Reading the running configuration of Postfix (``postconf``) and Dovecot (``doveconf``).

Three questions, all answered from what the daemons themselves would use:

* **Where is the data?** (the seed's chapter 8, "Error Creating"): Postfix's
  ``queue_directory``; Dovecot's ``mail_location``, ``mail_home`` and the location of every
  namespace, each with its ``INDEX``, ``CONTROL``, ``INBOX`` ... directories. A location is
  a template (``maildir:/srv/mail/%d/%n``): its data lives below the static part.
* **What must a backup match?** (the seed's extend check of storage groups and stores):
  ``settings`` returns named values (``postfix:queue_directory``,
  ``dovecot:namespace/inbox/location``...) that ``compare`` turns into a list of changes.
* **Where do the services listen?** (for the checks): Postfix's smtp port and LMTP
  destination, Dovecot's base directory, IMAP and POP3 ports, log files.
"""

from __future__ import annotations

import hashlib
import logging
import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from vigil.errors import KitError, Severity
from vigil.kits.process import run_command

__all__ = [
    "DataLocation",
    "data_locations",
    "differences",
    "dovecot_version",
    "location_directories",
    "parse_sections",
    "postconf",
    "postfix_version",
    "settings",
    "static_directory",
]

#: seconds one postconf/doveconf call may take
READ_TIMEOUT = 30.0
#: Postfix parameters a backup must have as the primary has them
POSTFIX_MATCH = (
    "queue_directory",
    "mydestination",
    "virtual_mailbox_domains",
    "virtual_mailbox_maps",
    "virtual_alias_domains",
    "virtual_alias_maps",
    "virtual_transport",
    "relay_domains",
    "transport_maps",
    "local_recipient_maps",
    "always_add_missing_headers",  # a Message-ID on every message: duplicates go by it
)
#: Dovecot settings a backup must have as the primary has them (plus every namespace's)
DOVECOT_MATCH = ("mail_location", "mail_home", "mail_uid", "mail_gid", "protocols")
NAMESPACE_MATCH = ("type", "prefix", "separator", "inbox", "location")
#: settings recorded for the checks, not compared
POSTFIX_RECORD = ("data_directory", "maillog_file")
DOVECOT_RECORD = ("base_dir", "log_path", "info_log_path")
_TABLE = re.compile(r"^(?P<type>[a-z0-9_]+):(?P<path>/\S+)$")


@dataclass(frozen=True)
class DataLocation:
    """A directory that holds mail data, what it is, and how to move it."""

    path: str
    what: str
    how_to_move: str


async def postconf(config_dir: str, names: tuple[str, ...]) -> dict[str, str]:
    """``postconf -c DIR -x -h`` values (expanded), by name."""
    out = await _read(["postconf", "-c", config_dir, "-x", *names], "postconf")
    values = {}
    for line in out.splitlines():
        name, sep, value = line.partition(" = ")
        if sep:
            values[name.strip()] = value.strip()
        elif line.endswith(" ="):
            values[line[:-2].strip()] = ""
    return values


async def doveconf(config_file: str, names: tuple[str, ...]) -> str:
    """``doveconf -c FILE NAMES`` output as text (settings and sections)."""
    return await _read(["doveconf", "-c", config_file, *names], "doveconf")


async def postfix_version(config_dir: str) -> str:
    return (await postconf(config_dir, ("mail_version",))).get("mail_version", "")


async def dovecot_version() -> str:
    out = await _read(["dovecot", "--version"], "dovecot --version")
    return out.split()[0] if out.split() else ""


async def _read(argv: list[str], what: str) -> str:
    result = await run_command(argv, log=_CONFIG_LOG, timeout=READ_TIMEOUT, name=what)
    if result.returncode == 127:
        raise KitError(f"{argv[0]} is not installed here: {result.output}", Severity.FATAL)
    if not result.ok:
        raise KitError(
            f"{' '.join(argv)} {result.describe_exit()}: {result.last_line}", Severity.FATAL
        )
    # postconf warns on stderr (merged) about missing map files: keep only "name = value"
    return "\n".join(
        line for line in result.output.splitlines() if not line.startswith(f"{argv[0]}: ")
    )


#: configuration reads print every setting: their lines stay out of the agent log (only
#: warnings, e.g. a command timed out, get through)
_CONFIG_LOG = logging.getLogger("vigil.kit.mail.config")
_CONFIG_LOG.setLevel(logging.WARNING)


# --- Dovecot's sections -----------------------------------------------------------------


def parse_sections(text: str, kind: str) -> dict[str, dict[str, str]]:
    """``{name: {setting: value}}`` of the top-level ``kind NAME { ... }`` sections in
    doveconf output (nested sections are skipped)."""
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] | None = None
    depth = 0
    for raw in text.splitlines():
        line = raw.strip()
        if depth == 0:
            match = re.fullmatch(rf"{re.escape(kind)}\s+(\S+)\s*\{{", line)
            if match:
                current = sections.setdefault(match.group(1), {})
                depth = 1
            continue
        if line.endswith("{"):
            depth += 1
        elif line == "}":
            depth -= 1
            if depth == 0:
                current = None
        elif depth == 1 and current is not None:
            name, sep, value = line.partition(" = ")
            if sep:
                current[name.strip()] = value.strip()
            elif line.endswith(" ="):
                current[line[:-2].strip()] = ""
    return sections


# --- locations --------------------------------------------------------------------------


def static_directory(template: str, home: str = "") -> str | None:
    """The directory below which a path template's data lives: the components before the
    first one with a ``%`` variable. ``~`` is ``home``; None when it cannot be told."""
    if template.startswith("~"):
        if not home:
            return None
        template = home.rstrip("/") + template[1:]
    if not template.startswith("/"):
        return None
    parts = []
    for part in template.split("/"):
        if "%" in part:
            break
        parts.append(part)
    directory = posixpath.normpath("/".join(parts) or "/")
    return directory


def location_directories(location: str) -> list[tuple[str, str]]:
    """``(label, path template)`` of a Dovecot mail location: the main path and every
    ``KEY=path`` option that names a directory (INDEX, CONTROL, INBOX, VOLATILEDIR...)."""
    if not location:
        return []
    _, sep, rest = location.partition(":")
    if not sep:
        rest = location  # a bare path: the format is detected
    found = []
    for index, piece in enumerate(rest.split(":")):
        key, eq, value = piece.partition("=")
        if index == 0 and not eq:
            found.append(("mail", piece))
        elif eq and value.startswith(("/", "~")) and key.isupper():
            found.append((key, value))
    return [(label, path) for label, path in found if path]


def _userdb_home(userdb: str) -> str:
    """The ``home=`` of a static userdb's args, if any."""
    match = re.search(r"\bhome=(\S+)", userdb)
    return match.group(1) if match else ""


async def data_locations(postfix_dir: str, dovecot_file: str) -> list[DataLocation]:
    """Every directory of mail data the two configurations name."""
    queue = (await postconf(postfix_dir, ("queue_directory",)))["queue_directory"]
    found = [
        DataLocation(
            queue,
            "the Postfix queue (queue_directory)",
            "move it with `vigil mail set-queue-path` (the seed's SetSMTPQueuePath)",
        )
    ]
    text = await doveconf(dovecot_file, ("mail_location", "mail_home", "userdb", "namespace"))
    values = _top_level(text)
    home = values.get("mail_home", "") or _userdb_home(text)
    how = f"change it in {dovecot_file} and move the mail there (doveadm sync / cp -a)"
    templates = [
        (f"Dovecot's mail location ({label})", t)
        for label, t in location_directories(values.get("mail_location", ""))
    ]
    if values.get("mail_home"):
        templates.append(("Dovecot's mail_home", values["mail_home"]))
    for name, section in sorted(parse_sections(text, "namespace").items()):
        for label, template in location_directories(section.get("location", "")):
            templates.append((f"Dovecot namespace {name} ({label})", template.replace("%%", "%")))
    for what, template in templates:
        directory = static_directory(template, home)
        if directory is None:
            raise KitError(
                f"{what} {template!r}: cannot tell which directory it is in (a path relative "
                "to the user's home, and no mail_home or static userdb home is set); give "
                f"an absolute path in {dovecot_file}",
                Severity.FATAL,
            )
        found.append(DataLocation(directory, f"{what} {template}", how))
    return found


def _top_level(text: str) -> dict[str, str]:
    values = {}
    depth = 0
    for raw in text.splitlines():
        line = raw.strip()
        if line.endswith("{"):
            depth += 1
        elif line == "}":
            depth -= 1
        elif depth == 0:
            name, sep, value = line.partition(" = ")
            if sep:
                values[name] = value
            elif line.endswith(" ="):
                values[line[:-2]] = ""
    return values


# --- settings to match ------------------------------------------------------------------


async def settings(postfix_dir: str, dovecot_file: str) -> dict[str, str]:
    """The named settings a backup must match, plus those the checks use (``record:``)."""
    found: dict[str, str] = {}
    values = await postconf(postfix_dir, (*POSTFIX_MATCH, *POSTFIX_RECORD, "mail_version"))
    for name in POSTFIX_MATCH:
        found[f"postfix:{name}"] = values.get(name, "")
        for table in _tables(values.get(name, "")):
            found[f"postfix:{name}:{table}"] = _digest(table)
    for name in POSTFIX_RECORD:
        found[f"record:postfix:{name}"] = values.get(name, "")
    found["record:postfix:version"] = values.get("mail_version", "")
    found["record:dovecot:version"] = await dovecot_version()
    master = await _read(["postconf", "-c", postfix_dir, "-M", "smtp/inet"], "postconf -M")
    service = master.split()[0] if master.split() else "smtp"
    found["record:postfix:smtp_port"] = _port(service, 25)
    text = await doveconf(dovecot_file, (*DOVECOT_MATCH, *DOVECOT_RECORD, "namespace"))
    top = _top_level(text)
    for name in DOVECOT_MATCH:
        found[f"dovecot:{name}"] = top.get(name, "")
    for name in DOVECOT_RECORD:
        found[f"record:dovecot:{name}"] = top.get(name, "")
    for ns, section in sorted(parse_sections(text, "namespace").items()):
        for name in NAMESPACE_MATCH:
            found[f"dovecot:namespace/{ns}/{name}"] = section.get(name, "")
    for protocol, default in (("imap", 143), ("pop3", 110)):
        path = f"service/{protocol}-login/inet_listener/{protocol}/port"
        try:
            port = (await doveconf(dovecot_file, ("-h", path))).strip()
        except KitError:
            port = ""
        found[f"record:dovecot:{protocol}_port"] = port or str(default)
    return found


def _port(service: str, default: int) -> str:
    """The port of a master.cf service name (``smtp``, ``2525``, ``127.0.0.1:25``)."""
    tail = service.rsplit(":", 1)[-1]
    if tail.isdigit():
        return tail
    return str({"smtp": 25, "submission": 587}.get(tail, default))


def _tables(value: str) -> list[str]:
    """``type:/path`` lookup tables named in a parameter value."""
    return [
        word
        for word in re.split(r"[\s,]+", value)
        if _TABLE.match(word) and not word.startswith(("lmtp:", "smtp:"))
    ]


def _digest(table: str) -> str:
    """A table's file content, as a digest (a file missing is its own value)."""
    found = _TABLE.match(table)
    if found is None:  # _tables keeps only what matches
        return "missing"
    path = Path(found.group("path"))
    try:
        return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    except OSError:
        return "missing"


def differences(expected: Mapping[str, str], actual: Mapping[str, str]) -> list[str]:
    """Each setting that differs, as a change to make on this server."""
    changes = []
    for name in sorted(expected):
        if name.startswith("record:"):
            continue
        want, have = expected[name], actual.get(name)
        if have == want:
            continue
        if have is None:
            changes.append(f"add {name} = {want!r} (missing here)")
        elif want.startswith("sha256:") or have in ("missing",) or want == "missing":
            changes.append(f"make {name} the same file as on the primary (it differs here)")
        else:
            changes.append(f"change {name} from {have!r} to {want!r}")
    for name in sorted(set(actual) - set(expected)):
        if name.startswith("dovecot:namespace/") and name.endswith("/type"):
            namespace = name.split("/")[1]
            changes.append(f"remove Dovecot namespace {namespace} (the primary has none)")
    return changes
