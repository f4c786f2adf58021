"""The ``poolx`` command's argument types: numbers checked where argparse reads them.

Each is an argparse ``type=``: a bad value becomes argparse's own error, which
names the flag ("poolx demo: error: argument --samples: must be at least 1,
got -1") and exits with status 2 before any work starts.
"""

from __future__ import annotations

import argparse


def positive_int(text: str) -> int:
    """An integer of at least 1 (a count: samples, repeats, workers, a size)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"takes a whole number of at least 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def positive_ints(text: str) -> list[int]:
    """Comma-separated integers of at least 1 (worker counts), sorted, without duplicates."""
    items = [t.strip() for t in text.split(",") if t.strip()]
    wrong = f"takes comma-separated positive integers such as 1,2,4, got {text!r}"
    if not items:
        raise argparse.ArgumentTypeError(wrong)
    try:
        values = {int(t) for t in items}
    except ValueError:
        raise argparse.ArgumentTypeError(wrong) from None
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"takes positive integers (at least 1), got {text!r}")
    return sorted(values)
