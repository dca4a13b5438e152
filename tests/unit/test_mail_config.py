"""The mail kit's reading of Postfix and Dovecot configurations, its properties, and the
extend fixes' Dovecot block (pure parts; the commands run in the integration tests)."""

from __future__ import annotations

import pytest

from vigil.errors import KitError
from vigil.kits.mail.config import (
    differences,
    location_directories,
    parse_sections,
    static_directory,
)
from vigil.kits.mail.fix import _replace_block, dovecot_block
from vigil.kits.mail.kit import MailKit
from vigil.kits.mail.properties import MailProperties

REQUIRED = {
    "directory_urls": ["ldap://10.0.0.5"],
    "bind_dn": "cn=vigil,dc=example",
    "bind_password": "secret",
    "users_base_dn": "ou=people,dc=example",
}


@pytest.mark.parametrize(
    ("template", "home", "expected"),
    [
        ("/srv/mail/vmail/%d/%n", "", "/srv/mail/vmail"),
        ("/srv/mail/%%d", "", "/srv/mail"),
        ("/srv/mail/box-%u", "", "/srv/mail"),
        ("/srv/public", "", "/srv/public"),
        ("~/Maildir", "/srv/mail/home/%u", "/srv/mail/home"),
        ("~/Maildir", "", None),
        ("Maildir", "", None),
    ],
)
def test_the_static_directory_of_a_location(template: str, home: str, expected: str | None) -> None:
    assert static_directory(template, home) == expected


def test_a_location_names_its_main_path_and_its_directories() -> None:
    location = "maildir:/srv/m/%d/%n:INDEX=/srv/i/%d:CONTROL=/srv/c/%d:LAYOUT=fs:VOLATILEDIR=/tmp/v"
    assert location_directories(location) == [
        ("mail", "/srv/m/%d/%n"),
        ("INDEX", "/srv/i/%d"),
        ("CONTROL", "/srv/c/%d"),
        ("VOLATILEDIR", "/tmp/v"),
    ]
    assert location_directories("") == []


def test_namespace_sections_are_parsed_without_their_nested_sections() -> None:
    text = """namespace inbox {
  inbox = yes
  location =
  mailbox Sent {
    special_use = \\Sent
  }
  prefix =
}
namespace shared {
  location = maildir:/srv/shared/%%u
  type = shared
}
mail_location = maildir:/x
"""
    sections = parse_sections(text, "namespace")
    assert sections == {
        "inbox": {"inbox": "yes", "location": "", "prefix": ""},
        "shared": {"location": "maildir:/srv/shared/%%u", "type": "shared"},
    }


def test_differences_are_changes_to_make_and_records_are_not_compared() -> None:
    expected = {
        "postfix:queue_directory": "/srv/mail/spool",
        "postfix:virtual_mailbox_maps:ldap:/etc/p/users.cf": "sha256:aa",
        "dovecot:namespace/inbox/location": "",
        "record:postfix:version": "3.7.11",
    }
    actual = {
        "postfix:queue_directory": "/var/spool/postfix",
        "postfix:virtual_mailbox_maps:ldap:/etc/p/users.cf": "sha256:bb",
        "dovecot:namespace/inbox/location": "",
        "dovecot:namespace/public/type": "public",
        "record:postfix:version": "3.6.4",
    }
    assert differences(expected, actual) == [
        "change postfix:queue_directory from '/var/spool/postfix' to '/srv/mail/spool'",
        "make postfix:virtual_mailbox_maps:ldap:/etc/p/users.cf the same file as on the "
        "primary (it differs here)",
        "remove Dovecot namespace public (the primary has none)",
    ]
    assert differences(expected, {**expected}) == []


def test_the_dovecot_block_overrides_top_level_settings_and_namespaces() -> None:
    block = dovecot_block(
        "mail",
        {
            "dovecot:mail_location": "maildir:/srv/mail/vmail/%d/%n",
            "dovecot:namespace/inbox/separator": "/",
            "dovecot:namespace/inbox/inbox": "yes",
        },
    )
    assert block.splitlines() == [
        "# BEGIN vigil mail: settings matching the primary (vigil extend --fix)",
        "mail_location = maildir:/srv/mail/vmail/%d/%n",
        "namespace inbox {",
        "  inbox = yes",
        "  separator = /",
        "}",
        "# END vigil mail",
    ]
    once = _replace_block("protocols = imap\n", "mail", block)
    assert once == "protocols = imap\n\n" + block
    again = _replace_block(once, "mail", dovecot_block("mail", {"dovecot:mail_uid": "5000"}))
    assert again.count("# BEGIN vigil mail") == 1
    assert "mail_uid = 5000" in again and "mail_location" not in again


def test_properties_need_a_directory_and_name_what_is_wrong() -> None:
    kit = MailKit()
    props = kit.parse_properties(REQUIRED)
    assert isinstance(props, MailProperties)
    assert props.max_wait == 900.0
    assert props.home_attribute == "mailHost"
    assert "bind_password" in MailProperties.secret_fields()
    assert "services" in MailProperties.per_server_fields()
    assert "home_server" in MailProperties.per_server_fields()
    with pytest.raises(KitError, match="directory_urls"):
        kit.parse_properties({**REQUIRED, "directory_urls": ["http://x"]})
    with pytest.raises(KitError, match="without spaces"):
        kit.parse_properties({**REQUIRED, "services": [{"name": "GFI Mail Essentials"}]})
    with pytest.raises(KitError, match="core services"):
        kit.parse_properties({**REQUIRED, "services": [{"name": "postfix"}]})
    with pytest.raises(KitError, match="listed twice"):
        kit.parse_properties({**REQUIRED, "services": [{"name": "rspamd"}, {"name": "rspamd"}]})
    with pytest.raises(KitError, match="probe_user, probe_address and probe_password"):
        kit.parse_properties({**REQUIRED, "probe_user": "probe"})
    with pytest.raises(KitError, match="service_home"):
        kit.parse_properties({**REQUIRED, "home_mode": "service"})


def test_the_timeouts_follow_max_wait_per_service() -> None:
    kit = MailKit()
    props = kit.parse_properties({**REQUIRED, "max_wait": 10, "services": [{"name": "rspamd"}]})
    from vigil.kits.base import Action

    assert kit.timeout(Action.REMOVE, props) >= 3 * 10
    assert kit.timeout(Action.RESTORE, props) > kit.timeout(Action.REMOVE, props)
