"""The ``vigil`` command. Only this module exits the process."""

from __future__ import annotations


def main() -> None:
    from vigil.cli.main import run

    run()


if __name__ == "__main__":
    main()
