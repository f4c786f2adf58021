"""retrieve: six slow lookups, the classic latency-bound workload.

Item ``i`` takes ``(i % 6) / 10`` s and returns ``(i, DATABASE[i % 6])`` (a larger
``--size`` repeats the six).  Serially that is 1.5 s; with one worker per item the
ideal is 0.5 s (the slowest item), so anything above 0.5 s is the engine's overhead.

The three forms the ``poolx profile`` harness compares:

- ``serial(size)``: one lookup after another;
- ``tasks(executor, size)``: one task per item;
- ``actors(executor, size)``: the same tasks, each telling a ``Tracker`` actor
  (passed to the tasks as an argument) that it fetched its item; the run checks
  the tracker counted every item.
"""

from __future__ import annotations

import time
from typing import Any

DATABASE = ["learning", "Ray", "for", "distributed", "data", "processing"]
#: Default input size: the number of items looked up (past ``len(DATABASE)``, they repeat).
SIZE = len(DATABASE)
#: Default worker counts for ``poolx profile retrieve``: waiting, not computing,
#: so more workers than cores still helps.
WORKERS = (1, 3, 6)


def retrieve(item: int) -> tuple[int, str]:
    time.sleep(item % len(DATABASE) / 10.0)
    return item, DATABASE[item % len(DATABASE)]


def serial(size: int = SIZE) -> list[tuple[int, str]]:
    return [retrieve(i) for i in range(size)]


def tasks(executor: Any, size: int = SIZE) -> list[tuple[int, str]]:
    return list(executor.map(retrieve, range(size), chunksize=1))


class Tracker:
    """An actor that counts the items fetched."""

    def __init__(self) -> None:
        self.count = 0

    def increment(self) -> None:
        self.count += 1

    def counts(self) -> int:
        return self.count


def retrieve_tracked(item: int, tracker: Any) -> tuple[int, str]:
    result = retrieve(item)
    tracker.increment.remote()
    return result


def actors(executor: Any, size: int = SIZE) -> list[tuple[int, str]]:
    tracker = executor.actor(Tracker)
    results = list(executor.map(retrieve_tracked, range(size), [tracker] * size, chunksize=1))
    counted = tracker.counts.remote().result()
    if counted != size:
        raise RuntimeError(f"the tracker counted {counted} items, not {size}")
    return results
