"""The ``app`` kit (Generic Application): any application, protected by commands its
administrator supplies. See ``vigil.kits.app.kit`` for the exit codes and the environment,
``docs/kits/app.md`` for a guide, and ``vigil.kits.app.sample_service`` for a small service
to try it with."""

from vigil.kits.app.kit import EXIT_NOT_CONFIGURED, EXIT_NOT_RUNNING, EXIT_SUCCESS, AppKit
from vigil.kits.app.properties import AppProperties

__all__ = ["EXIT_NOT_CONFIGURED", "EXIT_NOT_RUNNING", "EXIT_SUCCESS", "AppKit", "AppProperties"]
