"""Helpers for tests that run a whole program in a fresh interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import textwrap


def run_script(source: str, *args: str, timeout: float = 60.0, **kwargs):
    """Run ``source`` as a __main__ script in a fresh interpreter."""
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(textwrap.dedent(source))
        path = f.name
    try:
        return subprocess.run(
            [sys.executable, path, *args], capture_output=True, text=True, timeout=timeout, **kwargs
        )
    finally:
        os.unlink(path)
