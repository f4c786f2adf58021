"""A collective group's shared memory and the barrier protocol its ranks meet at.

The layer under ``poolx.collective``'s operations: it knows the layout of the
shared memory and how ranks wait for one another, not how a group is formed
(``_group``) nor what an operation computes (``poolx.collective``).

How it works.  The group has a *control block*: a few words per rank in a
shared ``memfd`` that each actor maps (through ``/proc/<pid>/fd``).  The
driver creates it: in ``create_collective_group``, or when the first rank
asks for the group by name (a ``Rendezvous``: in the driver for the processes
backend, reached through the actor's connection to it; in this process for
the threads backend).  The creator closes its copy once every rank has mapped
it.
Rank 0 owns a *data segment* (a memfd too) that grows to the largest
operation's need: one slot per rank plus a result area.  An allreduce copies
each rank's array into its slot, then each rank reduces its own 1/n of the
elements across all slots into the result area, then each rank copies the
result out: every rank moves about 3x the array's bytes, and the reduction
runs on all ranks at once.  Ranks meet at barriers: each rank counts its
arrivals in its own word and waits until every rank's count has reached its
own (spinning briefly, then sleeping).  While it waits it checks that the
ranks it waits for are alive, and gives up after the group's ``timeout``.

Each rank's metadata (operation, size, dtype, root) is written before the
first barrier of an operation and checked by every rank after it, so a rank
calling another operation, or the same one on another shape, fails the
operation on every rank at once with a ``ValueError`` that names them; a rank
that rejects its own arguments reports why to the others
(``CollectiveError``).  Linux only (``memfd``).
"""

from __future__ import annotations

import enum
import mmap
import os
import time
from dataclasses import dataclass
from typing import Any

from .. import _fds, _shm
from .._errors import CollectiveError, CollectiveTimeoutError

# Seconds a rank waits at one step for the others (Ray's gloo_timeout is 30 s too).
DEFAULT_TIMEOUT = 30.0
# Seconds between checks that the ranks a waiting rank waits for are alive.
LIVENESS_EVERY = 0.2
# Data slots start at multiples of this many bytes (a cache line).
ALIGN = 64
# The data segment's size is rounded up to this many bytes.
ROUND = 1 << 20
# The reduction runs on blocks of this many bytes, so the partial result stays in cache.
BLOCK_BYTES = 1 << 18

# The control block: int64 words.  A header, then STRIDE words per rank (128
# bytes: each rank writes only its own cache lines), then MESSAGE bytes per rank
# and parity.  A rank's metadata has two copies, one per operation parity: a
# fast rank may write its next operation's metadata while a slow one still
# reads this operation's (it cannot get further ahead: the next operation's
# first barrier waits for everyone).
H_MAGIC, H_SIZE, H_PID, H_FD = range(4)  # H_PID, H_FD: rank 0's data segment
HEADER = 8
STRIDE = 16
ARRIVE, PID = 0, 1
LEFT = -1  # a rank's PID word once it has given up joining (init_collective_group timed out)
META = 2  # then two blocks of META_WORDS, one per parity
OP, NBYTES, DTYPE, ROOT, REDUCE, COUNT, STATUS = range(7)
META_WORDS = 7
MESSAGE = 160
MAGIC = 0x6C6F63786C6F6F70  # b"poolxcol", little-endian

_OPS = {"barrier": 1, "allreduce": 2, "reduce": 3, "broadcast": 4, "allgather": 5, "reduce_scatter": 6}
_LEAVING = 7  # a rank's STATUS when it has failed and raised


class ReduceOp(enum.Enum):
    """How ``allreduce``, ``reduce`` and ``reduce_scatter`` combine the ranks' arrays.

    ``MEAN`` is poolx's addition to Ray's four (floating and complex arrays
    only: the mean of integers is not an integer).  Strings work too:
    ``op="max"``.
    """

    SUM = "sum"
    PRODUCT = "product"
    MIN = "min"
    MAX = "max"
    MEAN = "mean"


REDUCE_CODES = {op: i + 1 for i, op in enumerate(ReduceOp)}


def control_bytes(world_size: int) -> int:
    return 8 * (HEADER + STRIDE * world_size) + 2 * MESSAGE * world_size


@dataclass(frozen=True)
class GroupSpec:
    """What an actor needs to join a group: its name, size, and where the control block is."""

    name: str
    world_size: int
    pid: int
    fd: int
    timeout: float | None


def new_memfd(name: str, nbytes: int) -> tuple[int, mmap.mmap]:
    """A zeroed memfd of this process for group ``name``, and its read-write map."""
    return _shm.new_memfd(f"poolx-collective-{name}", nbytes)


def numpy_module() -> Any:
    try:
        import numpy
    except ImportError:  # pragma: no cover - numpy comes with every extra that uses this
        raise ImportError("poolx.collective works on numpy arrays: pip install numpy") from None
    return numpy


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (a dead child not yet reaped)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    state = stat[stat.rfind(b")") + 2:][:1]
    return state not in (b"Z", b"X")


class Member:
    """This actor's place in one group: its rank, its maps of the control block and data segment."""

    def __init__(self, spec: GroupSpec, rank: int) -> None:
        np = numpy_module()
        self.np = np
        self.name = spec.name
        self.size = spec.world_size
        self.rank = rank
        self.timeout = spec.timeout
        self.broken: str | None = None
        self.generation = 0  # barriers passed
        self.ops = 0  # operations begun (the metadata parity)
        self.capacity = 0  # the data segment's size, as every rank knows it
        self.data: mmap.mmap | None = None
        self.data_fd: int | None = None  # rank 0: the segment's memfd (others open it through /proc)
        self.bytes: Any = None  # a uint8 view of the data segment
        self.control: mmap.mmap | None = _open_shared(spec.pid, spec.fd, control_bytes(self.size), spec.name)
        words = np.frombuffer(self.control, dtype=np.int64, count=HEADER + STRIDE * self.size)
        self.header = words[:HEADER]
        self.ranks = words[HEADER:].reshape(self.size, STRIDE)
        self.arrive = self.ranks[:, ARRIVE]
        self.messages = np.frombuffer(self.control, dtype=np.uint8, offset=8 * words.size,
                                      count=2 * MESSAGE * self.size).reshape(self.size, 2, MESSAGE)
        if int(self.header[H_MAGIC]) != MAGIC or int(self.header[H_SIZE]) != self.size:
            self.close()
            raise CollectiveError(f"collective group {spec.name!r}: the control block is not this "
                                  "group's (was the group destroyed?)")
        self.ranks[rank, PID] = os.getpid()

    # -- waiting for one another

    def barrier(self, what: str) -> None:
        """Wait until every rank has arrived here; with a way out (timeout, a dead rank)."""
        self.generation += 1
        g = self.generation
        self.ranks[self.rank, ARRIVE] = g
        arrive = self.arrive
        if arrive.min() >= g:
            return
        start = time.monotonic()
        next_check = start + LIVENESS_EVERY
        delay = 0.0
        spins = 0
        while arrive.min() < g:
            if spins < 100:
                spins += 1
                time.sleep(0)  # lets other threads (ranks on the threads backend) run
            else:
                delay = min(delay * 2 or 1e-5, 5e-4)
                time.sleep(delay)
            now = time.monotonic()
            if now >= next_check:
                next_check = now + LIVENESS_EVERY
                self._check_peers(g, what)
                if self.timeout is not None and now - start > self.timeout:
                    late = [r for r in range(self.size) if arrive[r] < g]
                    self.broken = f"rank {self.rank} timed out in {what}"
                    raise CollectiveTimeoutError(
                        f"collective group {self.name!r}: rank {self.rank} waited {self.timeout:g} s in "
                        f"{what} for rank{'s' if len(late) > 1 else ''} {', '.join(map(str, late))}, "
                        "which never arrived: is every rank calling the same operations in the same "
                        "order?  (create_collective_group(timeout=...) sets the wait; the group is "
                        "now broken: destroy it and create a new one)")

    def _check_peers(self, g: int, what: str) -> None:
        me = os.getpid()
        for r in range(self.size):
            if self.arrive[r] >= g:
                continue
            pid = int(self.ranks[r, PID])
            if pid == LEFT:
                self.broken = f"rank {r} left"
                raise CollectiveError(f"collective group {self.name!r}: rank {r} gave up waiting and left "
                                      f"while rank {self.rank} waited for it in {what}")
            if pid and pid != me and not _alive(pid):
                self.broken = f"rank {r} (pid {pid}) died"
                raise CollectiveError(
                    f"collective group {self.name!r}: rank {r} (pid {pid}) died while rank {self.rank} "
                    f"waited for it in {what}; the group is broken: destroy it and create a new one")

    # -- the steps every operation shares

    def begin(self, what: str, prepare: Any) -> Any:
        """Check this rank's arguments, publish its metadata, meet the others, check theirs.

        ``prepare()`` returns ``(plan, meta)``, ``meta`` being (nbytes, dtype, root,
        reduce, count, description).  Returns ``plan`` once every rank has
        called the same operation on the same shapes.
        """
        if self.broken is not None:
            raise CollectiveError(f"collective group {self.name!r} is broken ({self.broken}): "
                                  "destroy it and create a new one")
        parity = self.ops % 2
        self.ops += 1
        base = META + parity * META_WORDS
        row = self.ranks[self.rank]
        try:
            plan, (nbytes, dtype, root, reduce_code, count, description) = prepare()
        except BaseException as exc:
            row[base + STATUS] = _LEAVING
            self._write_message(parity, f"{type(exc).__name__}: {exc}")
            self.barrier(what)
            raise
        row[base + OP] = _OPS[what]
        row[base + NBYTES] = nbytes
        row[base + DTYPE] = _dtype_code(dtype)
        row[base + ROOT] = root
        row[base + REDUCE] = reduce_code
        row[base + COUNT] = count
        row[base + STATUS] = 0
        self._write_message(parity, description)
        self.barrier(what)
        metas = self.ranks[:, base:base + META_WORDS]
        failed = [r for r in range(self.size) if metas[r, STATUS] == _LEAVING]
        if failed:
            r = failed[0]
            raise CollectiveError(f"collective group {self.name!r}: rank {r} failed in {what}: "
                                  f"{self._message(r, parity)}")
        if not (metas == metas[0]).all():
            calls = "; ".join(f"rank {r}: {self._message(r, parity)}" for r in range(self.size))
            raise ValueError(f"collective group {self.name!r}: the ranks did not make the same call "
                             f"(every rank must call the same operation, with arrays of the same "
                             f"shape and dtype, and the same root and op): {calls}")
        return plan

    def _write_message(self, parity: int, text: str) -> None:
        raw = text.encode("utf-8", "replace")[:MESSAGE - 1]
        out = self.messages[self.rank, parity]
        out[:len(raw)] = self.np.frombuffer(raw, dtype=self.np.uint8)
        out[len(raw)] = 0

    def _message(self, rank: int, parity: int) -> str:
        raw = bytes(self.messages[rank, parity])
        return raw.split(b"\0", 1)[0].decode("utf-8", "replace")

    def ensure(self, need: int, what: str) -> Any:
        """The data segment, at least ``need`` bytes (every rank calls this with the same ``need``).

        No operation writes to the segment before its first barrier, which
        every rank reaches only once done with the previous operation: so an
        operation's data is never overwritten while a rank still reads it.
        """
        need = max(need, ALIGN)
        if need > self.capacity:
            capacity = -(-need // ROUND) * ROUND
            if self.rank == 0:
                self._drop_data()
                self.data_fd, self.data = new_memfd(self.name, capacity)
                self.header[H_PID] = os.getpid()
                self.header[H_FD] = self.data_fd
            self.capacity = capacity
            self.barrier(what)  # rank 0 has published the new segment
            if self.rank != 0:
                self._drop_data()
                self.data = _open_shared(int(self.header[H_PID]), int(self.header[H_FD]), capacity,
                                         self.name)
            self.bytes = self.np.frombuffer(self.data, dtype=self.np.uint8)
        return self.bytes

    def _drop_data(self) -> None:
        self.bytes = None
        if self.data is not None:
            try:
                self.data.close()
            except BufferError:  # a view the user kept: the mapping goes with it
                pass
            self.data = None
        if self.data_fd is not None:
            os.close(self.data_fd)
            self.data_fd = None

    def close(self) -> None:
        self._drop_data()
        self.header = self.ranks = self.arrive = self.messages = None
        control, self.control = self.control, None
        if control is not None:
            try:
                control.close()
            except BufferError:
                pass

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


def _open_shared(pid: int, fd: int, nbytes: int, name: str) -> mmap.mmap:
    """Map another process's (or this one's) memfd ``fd`` read-write."""
    try:
        own = _fds.open_fd(f"/proc/{pid}/fd/{fd}", os.O_RDWR)
    except OSError as exc:
        raise CollectiveError(f"collective group {name!r}: cannot open the shared memory of process "
                              f"{pid} (/proc/{pid}/fd/{fd}: {exc.strerror}); the group's processes must "
                              "be on this machine and run as one user") from exc
    try:
        return _fds.mmap(own, nbytes)
    finally:
        os.close(own)


def _dtype_code(dtype: Any) -> int:
    import zlib

    return zlib.crc32(dtype.str.encode()) if dtype is not None else 0


def reduce_into(np: Any, op: ReduceOp, parts: list[Any], out: Any) -> None:
    """``out = op(parts)`` elementwise, block by block so the partial result stays in cache."""
    ufunc = {ReduceOp.SUM: np.add, ReduceOp.MEAN: np.add, ReduceOp.PRODUCT: np.multiply,
             ReduceOp.MIN: np.minimum, ReduceOp.MAX: np.maximum}[op]
    n = out.size
    step = max(1, BLOCK_BYTES // max(1, out.itemsize))
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        o = out[lo:hi]
        if len(parts) == 1:
            np.copyto(o, parts[0][lo:hi])
        else:
            ufunc(parts[0][lo:hi], parts[1][lo:hi], out=o)
            for p in parts[2:]:
                ufunc(o, p[lo:hi], out=o)
        if op is ReduceOp.MEAN:
            np.divide(o, len(parts), out=o)


def aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN
