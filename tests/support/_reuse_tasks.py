"""Tasks of tests/engine/test_array_reuse.py (importable by name in every worker)."""

from __future__ import annotations

import os
import signal

import numpy as np


def checksum(a: np.ndarray) -> bytes:
    """What the worker received, byte for byte (a digest would hide nothing: it is the bytes)."""
    return np.ascontiguousarray(a).tobytes()


def total(a: np.ndarray) -> float:
    return float(a.sum())


def scribble(a: np.ndarray) -> float:
    """Change the argument in place, then say what the worker saw before."""
    before = float(a.sum())
    a[:] = -1.0
    return before


def scribble_then_die(a: np.ndarray, marker: str) -> float:
    """First run: change the argument in place and die (SIGKILL); the re-run returns its sum."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        a[:] = -1.0
        os.kill(os.getpid(), signal.SIGKILL)
    return float(a.sum())
