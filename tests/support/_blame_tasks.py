"""Tasks for test_blame: each leaves a line in a run log, so a test can count how often it ran."""

from __future__ import annotations

import os
import sys
import threading
import time


def _ran(log: str, i: int) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{i}\n".encode())
    finally:
        os.close(fd)


def runs(log: str) -> dict[int, int]:
    """How many times each task ran, from its run log."""
    counts: dict[int, int] = {}
    with open(log) as f:
        for line in f:
            counts[int(line)] = counts.get(int(line), 0) + 1
    return counts


def fate(i: int) -> str:
    """What task ``i`` of a faulty run does: 1% crash their worker, 1% raise, the rest return 2i."""
    if i % 100 == 37:
        return "crash"
    if i % 100 == 71:
        return "raise"
    return "ok"


def faulty(log: str, i: int) -> int:
    _ran(log, i)
    what = fate(i)
    if what == "crash":
        os._exit(13)
    if what == "raise":
        raise ValueError(f"task {i} raises")
    return 2 * i


def faulty_item(log: str, i: int) -> int:
    return faulty(log, i)


def noted(log: str, i: int) -> int:
    _ran(log, i)
    return 2 * i


def exit_once_returned(log: str, i: int) -> int:
    """Return; a thread this task leaves behind kills the worker as soon as the return is recorded.

    It watches the worker's progress cell for "finished", so it dies after the
    outcome is recorded and before the batched result is sent (FLUSH_SECONDS).
    """
    _ran(log, i)
    worker = sys.modules["poolx._context"].here.worker
    words = worker.views.words
    running = words[0]

    def later() -> None:
        deadline = time.monotonic() + 10
        while not (words[0] == running and words[1] == 1) and time.monotonic() < deadline:
            time.sleep(0.0001)
        os._exit(9)

    threading.Thread(target=later, daemon=True).start()
    return 2 * i


def close_every_fd_and_return(log: str, i: int) -> int:
    """Close every fd from 3 up (daemonizing code does): the worker's channel and log fd go too."""
    _ran(log, i)
    os.closerange(3, 1 << 16)
    return 2 * i
