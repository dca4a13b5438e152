"""The mail organisation's generated configuration (``vigil.lab.mail``): pure text, no
process started. What the integration test cannot see cheaply: every user's entry, the
password hashes, the access rules, every master.cf service outside a chroot, the order
of the queue manifest."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

from vigil.lab.mail import directory_conf, dovecot_conf, postfix_conf, queue
from vigil.lab.mail.paths import SERVICE_DN, server_commands


def test_user_names_are_as_wide_as_the_largest_number() -> None:
    assert directory_conf.user_uid(1, 20) == "user001"
    assert directory_conf.user_uid(7, 10_000) == "user00007"
    assert directory_conf.user_uid(10_000, 10_000) == "user10000"


def test_ssha_is_salted_sha1_that_checks_the_password() -> None:
    hashed = directory_conf.ssha("secret")
    assert hashed.startswith("{SSHA}") and hashed != directory_conf.ssha("secret")
    raw = base64.b64decode(hashed[len("{SSHA}") :])
    digest, salt = raw[:20], raw[20:]
    assert hashlib.sha1(b"secret" + salt).digest() == digest


def test_the_ldif_has_parents_first_and_every_user_homed() -> None:
    text = "".join(directory_conf.ldif([("user001", "a"), ("vigil-probe", "b")], "s", "10.0.0.1"))
    dns = [line[4:] for line in text.splitlines() if line.startswith("dn: ")]
    assert dns[:3] == [
        "dc=lab,dc=example",
        "ou=people,dc=lab,dc=example",
        "ou=services,dc=lab,dc=example",
    ]
    assert dns[3] == SERVICE_DN
    assert dns[4:] == [
        "uid=user001,ou=people,dc=lab,dc=example",
        "uid=vigil-probe,ou=people,dc=lab,dc=example",
    ]
    assert text.count("mailHost: 10.0.0.1\n") == 2
    assert "mail: vigil-probe@lab.example\n" in text
    assert "userPassword: a" not in text and "userPassword: {SSHA}" in text


def test_only_the_service_account_writes_mail_host() -> None:
    conf = directory_conf.slapd_conf(Path("/x"), "admin-secret")
    rules = conf.split("access to ")[1:]
    assert rules[0].startswith("attrs=userPassword") and "by anonymous auth" in rules[0]
    assert rules[1].startswith("attrs=mailHost")
    assert f'by dn.exact="{SERVICE_DN}" write' in rules[1] and "by users read" in rules[1]
    assert "write" not in rules[2]
    assert "include /etc/ldap/schema/misc.schema" in conf and "admin-secret" not in conf


def test_the_front_end_routes_by_mail_host_and_accepts_etrn() -> None:
    config = postfix_conf.frontend(
        config_dir=Path("/f/postfix"),
        state_dir=Path("/f/state"),
        log_file=Path("/f/postfix.log"),
        address="10.213.9.247",
        networks="10.213.9.0/24",
        directory_url="ldap://10.213.9.248:389",
        bind_password="pw",
    )
    main = config.main
    assert main["transport_maps"] == "ldap:/f/postfix/ldap-transport.cf"
    assert main["relay_recipient_maps"] == "ldap:/f/postfix/ldap-recipients.cf"
    assert main["smtpd_etrn_restrictions"] == "permit_mynetworks, reject"
    assert main["mynetworks"] == "127.0.0.0/8 10.213.9.0/24"
    assert main["maillog_file_prefixes"] == "/f"
    assert [main[k] for k in ("queue_run_delay", "maximal_backoff_time")] == ["30s", "120s"]
    transport = config.maps["ldap-transport.cf"]
    assert "result_attribute = mailHost\n" in transport
    assert "result_format = smtp:[%s]:25\n" in transport
    assert "bind_pw = pw\n" in transport and "domain = lab.example\n" in transport


def test_a_server_delivers_to_dovecot_from_a_queue_on_the_shared_disk() -> None:
    config = postfix_conf.server(
        server="node2",
        networks="10.213.9.0/24",
        directory_url="ldap://10.213.9.248:389",
        bind_password="pw",
        config_dir=Path("/etc/vigil-mail/postfix"),
    )
    assert config.main["queue_directory"] == "/srv/mail/spool"
    assert config.main["virtual_transport"] == "lmtp:unix:/run/vigil-mail/dovecot/lmtp"
    assert config.main["inet_interfaces"] == "all" and config.main["mydestination"] == ""
    assert config.main["myhostname"] == "node2.lab.example"


def test_no_master_cf_service_runs_in_a_chroot() -> None:
    rows = [line.split() for line in postfix_conf.master_cf().splitlines()[1:]]
    assert {row[4] for row in rows} == {"n"}
    assert {"postlog", "flush", "lmtp", "smtp"} <= {row[0] for row in rows}


def test_the_proxy_goes_to_mail_host_and_a_server_stores_on_the_disk() -> None:
    proxy = dovecot_conf.proxy_ldap("ldap://d:389", "pw")
    assert "mailHost=host" in proxy and "=proxy=y" in proxy and "auth_bind = yes" in proxy
    server = dovecot_conf.server(ldap_file=Path("/l"), frontend_address="10.213.9.247")
    assert "mail_location = maildir:/srv/mail/vmail/%d/%n:INDEX=" in server
    assert "uid=5000 gid=5000" in server and "user = postfix" in server
    assert "auth_bind_userdn = uid=%n,ou=people,dc=lab,dc=example" in dovecot_conf.server_ldap("u")


def test_the_queue_manifest_is_read_parents_first(tmp_path: Path) -> None:
    manifest = tmp_path / "postfix-files"
    manifest.write_text(
        "$queue_directory/maildrop:d:$mail_owner:$setgid_group:730:uc\n"
        "$queue_directory:d:root:-:755:uc\n"
        "$data_directory:d:$mail_owner:-:700:uc\n"
        "$command_directory/postqueue:f:root:$setgid_group:2755:u\n"
    )
    found = queue.entries(manifest)
    assert [(e.base, e.relative, e.owner, e.group, oct(e.mode)) for e in found] == [
        ("data_directory", "", "postfix", None, "0o700"),
        ("queue_directory", "", "root", None, "0o755"),
        ("queue_directory", "maildrop", "postfix", "postdrop", "0o730"),
    ]


def test_dovecot_starts_before_postfix_and_stops_after() -> None:
    commands = server_commands()
    assert [argv[0] for argv in commands["start"]] == ["dovecot", "postfix"]
    assert [argv[0] for argv in commands["stop"]] == ["postfix", "dovecot"]
