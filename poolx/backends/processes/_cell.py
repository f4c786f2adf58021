"""The progress cell and results log: what a child tells the driver through a file.

Each child (task worker or actor) shares one unlinked temporary file with the
driver, mapped on both sides: a few words saying which task it is running
and since when, the outcomes it has not sent yet, and (written by
faulthandler) its stack if it dies of a fatal error.  The child writes
(``child/``), the driver reads (``driver/``); both import this module and
neither imports the other.  Unlike the channel, the file survives the
child's death: this is how the driver blames the task that killed a worker,
and keeps the outcomes of the tasks that finished before.
"""

from __future__ import annotations

import mmap
import os
import pickle
from typing import Any

# The progress cell: four 8-byte words at the start of the first page of a
# per-worker unlinked temporary file (a fatal error's stack dump, from
# faulthandler, is written after them):
#   [0] the id of the task being run      [1] 1 once its outcome is recorded
#   [2] when it started (perf_counter, a double)
#   [3] the item of a map() chunk being run (-1: none): with it the driver
#       blames the one item that killed the worker, not the whole chunk (see
#       poolx._chunks), and task_timeout counts per item (the scheduler
#       restarts the clock when it sees the index change).
# Each word is stored and loaded whole, through memoryviews (one 8-byte move:
# never torn, unlike struct.pack_into, which writes a double piecewise), and
# in an order that is safe to read at any moment: the start time before the
# id, and the id before "not finished", so a reader may see a new task as
# finished (it is then only run again, if its worker died) but never an old
# one as unfinished.
#   [4] how many bytes of the results log (below) hold records not yet sent
RUNNING, FINISHED, STARTED, ITEM, LOG_END = 0, 1, 2, 3, 4
PROGRESS_BYTES = 4096
# The results log, after the cell in the same file: each result a task worker
# has not sent yet, as a u32 length and the pickled record.  A worker batches
# its results (FLUSH_SECONDS), so a crash would otherwise take the outcomes of
# tasks that already finished with it, and they would run a second time; the
# driver reads the log of a dead worker instead (``read_log``).  1 MiB holds
# thousands of small records; a result too large for what is left (or one
# with out-of-band buffers) is sent before its task counts as finished.
LOG_BYTES = 1 << 20
# Where a fatal error's stack dump (faulthandler) starts; the file's size before it.
DUMP_OFFSET = PROGRESS_BYTES + LOG_BYTES


class CellViews:
    """The progress cell's words as views: ``words`` (int64) and ``times`` (double)."""

    def __init__(self, cell: mmap.mmap) -> None:
        self.words = memoryview(cell)[:40].cast("q")
        self.times = memoryview(cell)[:40].cast("d")


def read_log(cell: mmap.mmap, fd: int) -> list[tuple[Any, ...]]:
    """The result records a dead worker logged and had not sent (the driver's side).

    A record cut short by the death is not counted: the worker moves LOG_END
    past a record only once it is written whole.
    """
    with memoryview(cell) as whole, whole[:40] as part, part.cast("q") as words:
        end = words[LOG_END]
    if not 0 < end <= LOG_BYTES:
        return []
    log = os.pread(fd, end, PROGRESS_BYTES)
    records, pos = [], 0
    while pos + 4 <= len(log):
        size = int.from_bytes(log[pos:pos + 4], "little")
        pos += 4
        try:
            record = pickle.loads(log[pos:pos + size])
        except Exception:  # (a task that scribbled over the log: its records are lost, no more)
            break
        pos += size
        # A protocol.ResultRecord (nine fields) with no out-of-band buffers (n_oob == 0):
        if type(record) is tuple and len(record) == 9 and type(record[0]) is int and record[3] == 0:
            records.append(record)
    return records


def read_cell(cell: mmap.mmap) -> tuple[int, bool, float, int]:
    """(running task id, finished, started, map item) from a progress cell (the driver's side)."""
    with memoryview(cell) as whole, whole[:32] as part, part.cast("q") as words, part.cast("d") as times:
        running, finished, item = words[RUNNING], words[FINISHED], words[ITEM]
        started = times[STARTED]
    return running, bool(finished), started, item
