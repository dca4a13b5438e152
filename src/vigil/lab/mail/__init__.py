"""The lab's mail organisation (``vigil lab up --mail``, ``Lab.add_mail_org``): what the
mail kit is tested and demonstrated on.

- a directory: OpenLDAP's slapd in a lab client of its own (``client49``), base
  ``dc=lab,dc=example``, mail users with ``mail`` and ``mailHost`` (their home server),
  a service account that re-homes them, a probe mailbox (``directory``,
  ``directory_conf``, ``ldap``);
- a front-end in another lab client (``client48``): a Postfix relay routing each
  recipient by its ``mailHost`` and a Dovecot proxy routing logins the same way
  (``frontend``, ``postfix_conf``, ``dovecot_conf``);
- on every lab server, its own Postfix and Dovecot configuration at the same paths,
  private to the server by bind mounts in its mount namespace (``servers``, ``paths``);
- a shared disk holding the queue and the mailboxes, mounted on the primary (``org``);
- mail clients that stand in a lab namespace (``clients``), and the status (``status``).

Module map: ``paths`` (fixed names), ``org`` (build, read back, teardown), ``info``
(``MailOrgInfo``).
"""

from __future__ import annotations

from vigil.lab.mail.clients import MailClientError
from vigil.lab.mail.info import DirectoryInfo, FrontendInfo, MailOrgInfo, MailUser
from vigil.lab.mail.ldap import LdapRefused
from vigil.lab.mail.status import MailServerStatus, MailStatus

__all__ = [
    "DirectoryInfo",
    "FrontendInfo",
    "LdapRefused",
    "MailClientError",
    "MailOrgInfo",
    "MailServerStatus",
    "MailStatus",
    "MailUser",
]
