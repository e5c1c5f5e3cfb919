"""The stubs: mypy --strict accepts an example of the API's use (skipped when mypy is not
installed; scripts/test installs it)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def test_mypy_strict_accepts_the_typed_example() -> None:
    pytest.importorskip("mypy")
    example = Path(__file__).with_name("typed_example.py")
    result = subprocess.run(
        # The cache lives in the virtualenv (beside the build): warm runs take a second.
        [sys.executable, "-m", "mypy", "--strict", f"--cache-dir={Path(sys.prefix) / 'mypy-cache'}", str(example)],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr
