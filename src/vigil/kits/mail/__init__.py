"""The mail recovery kit: Postfix + Dovecot with users in an LDAP directory (see ``kit``)."""

from vigil.kits.mail.kit import MailKit

__all__ = ["MailKit"]
