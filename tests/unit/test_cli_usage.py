"""A mistyped command line gets Click's usage message and exit code 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys


def vigil(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "vigil", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)


def test_an_extra_argument_is_a_usage_error() -> None:
    result = vigil("lab", "down", "tfdie")
    assert result.returncode == 2, result
    assert "Got unexpected extra argument(s) (tfdie)" in result.stderr
    assert "Usage: python -m vigil lab down [OPTIONS]" in result.stderr
    assert "Traceback" not in result.stderr


def test_an_unknown_option_is_a_usage_error() -> None:
    result = vigil("status", "--no-such-option")
    assert result.returncode == 2, result
    assert "No such option: --no-such-option" in result.stderr
    assert "Traceback" not in result.stderr
