"""Collective communication among actors: allreduce, broadcast, allgather, reduce_scatter, barrier.

Ray's ``ray.util.collective`` API (``import poolx.collective as col``), for
numpy arrays, through shared memory on one machine::

    col.create_collective_group(workers, world_size=4, ranks=[0, 1, 2, 3])  # in the driver
    col.allreduce(self.grads)                                               # in each actor

A group is formed either by the driver (``create_collective_group(actors)``)
or by the actors themselves, each calling ``init_collective_group(world_size,
rank, group_name=...)`` in a method (Ray's two ways); each actor then calls
the operations from its methods, every rank the same operations in the same
order, as with MPI or Gloo.  Each operation works in place on the arrays it is
given and returns when this rank's part is done.

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
(``CollectiveError``).  Linux only (``memfd``); the ``processes`` and
``threads`` backends (``Backend.supports_collectives``).
"""

from __future__ import annotations

import enum
import mmap
import os
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from . import _context, _fds, _shm
from ._actor_core import CALL_ON_INSTANCE, current_runner
from ._errors import ActorDiedError, CollectiveError, CollectiveTimeoutError

__all__ = [
    "CollectiveError",
    "CollectiveTimeoutError",
    "ReduceOp",
    "allgather",
    "allreduce",
    "barrier",
    "broadcast",
    "create_collective_group",
    "destroy_collective_group",
    "get_collective_group_size",
    "get_rank",
    "init_collective_group",
    "is_group_initialized",
    "reduce",
    "reduce_scatter",
]

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


_REDUCE_CODES = {op: i + 1 for i, op in enumerate(ReduceOp)}


def _control_bytes(world_size: int) -> int:
    return 8 * (HEADER + STRIDE * world_size) + 2 * MESSAGE * world_size


@dataclass(frozen=True)
class GroupSpec:
    """What an actor needs to join a group: its name, size, and where the control block is."""

    name: str
    world_size: int
    pid: int
    fd: int
    timeout: float | None


def _new_memfd(name: str, nbytes: int) -> tuple[int, mmap.mmap]:
    """A zeroed memfd of this process for group ``name``, and its read-write map."""
    return _shm.new_memfd(f"poolx-collective-{name}", nbytes)


class _Meeting:
    """A group's control block in the process that creates it (the driver, or for actors of the
    threads backend this process), while its ranks join."""

    def __init__(self, name: str, world_size: int, timeout: float | None) -> None:
        self.fd, self.mm = _new_memfd(name, _control_bytes(world_size))
        self.mm[0:16] = MAGIC.to_bytes(8, "little") + world_size.to_bytes(8, "little")
        self.spec = GroupSpec(name, world_size, os.getpid(), self.fd, timeout)
        self.ranks: set[int] = set()

    def complete(self) -> bool:
        return len(self.ranks) == self.spec.world_size

    def _pids(self) -> list[int]:
        return [int.from_bytes(self.mm[8 * (HEADER + STRIDE * r + PID):][:8], "little", signed=True)
                for r in range(self.spec.world_size)]

    def all_mapped(self) -> bool:
        """Whether every rank has mapped the control block (each writes its pid once it has)."""
        return all(self._pids())

    def abandoned(self) -> bool:
        """Whether a rank gave up waiting for the others (it writes LEFT as its pid)."""
        return LEFT in self._pids()

    def close(self) -> None:
        self.mm.close()
        os.close(self.fd)


class Rendezvous:
    """Where ranks that know only a group's name meet (``init_collective_group``).

    It lives in the driver (one per processes backend, reached through the
    actors' connection to it) or, for actors of the threads backend, in this
    process.  The first rank to ask for a group creates its control block; the
    others get the same one; once every rank has asked, the next request for
    that name forms a new group.  A control block is closed here once every
    rank has mapped it, or at ``close()``.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.meetings: dict[str, _Meeting] = {}
        self.formed: list[_Meeting] = []  # complete, waiting for every rank to map the block

    def join(self, name: str, world_size: int, rank: int, timeout: float | None) -> GroupSpec:
        with self.lock:
            self.sweep()
            meeting = self.meetings.get(name)  # (sweep() dropped it if it never formed)
            if meeting is not None and meeting.spec.world_size != world_size:
                raise ValueError(f"init_collective_group(world_size={world_size}, rank={rank}, "
                                 f"group_name={name!r}): another rank of this group gave world_size="
                                 f"{meeting.spec.world_size}; every rank must give the same")
            if meeting is not None and rank in meeting.ranks:
                raise ValueError(f"init_collective_group(world_size={world_size}, rank={rank}, "
                                 f"group_name={name!r}): rank {rank} has already joined this group, which "
                                 "is still waiting for its other ranks; give each actor its own rank")
            if meeting is None:
                meeting = self.meetings[name] = _Meeting(name, world_size, timeout)
            meeting.ranks.add(rank)
            if meeting.complete():
                del self.meetings[name]
                self.formed.append(meeting)
            return meeting.spec

    def sweep(self) -> None:
        """Close the control blocks that every rank of their group has mapped, and those of groups
        that will never form (a rank gave up)."""
        for meeting in [m for m in self.formed if m.all_mapped()]:
            self.formed.remove(meeting)
            meeting.close()
        for name, meeting in list(self.meetings.items()):
            if meeting.abandoned():
                del self.meetings[name]
                meeting.close()

    def close(self) -> None:
        with self.lock:
            for meeting in [*self.meetings.values(), *self.formed]:
                meeting.close()
            self.meetings.clear()
            self.formed.clear()


_local_rendezvous = Rendezvous()  # for actors that live in this process (threads backend)


# -- in the actors ----------------------------------------------------------------


def _np() -> Any:
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
        np = _np()
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
        self.control: mmap.mmap | None = _open_shared(spec.pid, spec.fd, _control_bytes(self.size), spec.name)
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
                self.data_fd, self.data = _new_memfd(self.name, capacity)
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


def _reduce_into(np: Any, op: ReduceOp, parts: list[Any], out: Any) -> None:
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


def _aligned(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _array(np: Any, value: Any, what: str, name: str, writable: bool) -> Any:
    if not isinstance(value, np.ndarray):
        raise TypeError(f"{what}: {name} must be a numpy array, not {type(value).__name__}"
                        + (" (wrap it: numpy.asarray(...))" if not writable else ""))
    if not value.flags.c_contiguous:
        raise ValueError(f"{what}: {name} must be C-contiguous (numpy.ascontiguousarray(...) makes a "
                         "contiguous copy)")
    if writable and not value.flags.writeable:
        raise ValueError(f"{what}: {name} is read-only (an array from poolx.get or put is): the result "
                         "is written into it in place; pass a copy (array.copy())")
    if value.dtype.hasobject:
        raise TypeError(f"{what}: {name} has dtype object; collectives move numeric arrays")
    return value


def _reduce_op(np: Any, op: Any, dtype: Any, what: str) -> ReduceOp:
    try:
        rop = op if isinstance(op, ReduceOp) else ReduceOp(str(op).lower())
    except ValueError:
        raise ValueError(f"{what}: op={op!r} is not a reduction; use one of "
                         f"{', '.join(o.value for o in ReduceOp)} (or poolx.collective.ReduceOp)") from None
    if rop is ReduceOp.MEAN and not np.issubdtype(dtype, np.inexact):
        raise TypeError(f"{what}: op=mean needs a floating or complex array, not {dtype} (the mean of "
                        "integers is written back in place); use a float array, or op=sum and divide")
    return rop


def _rank_arg(value: Any, size: int, what: str, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < size:
        raise ValueError(f"{what}: {name}={value!r} is not a rank of this group (0 to {size - 1})")
    return value


def _same_arrays(np: Any, arrays: Any, like: Any, size: int, what: str, name: str,
                 writable: bool) -> list[Any]:
    if not isinstance(arrays, Sequence) or len(arrays) != size:
        got = len(arrays) if isinstance(arrays, Sequence) else type(arrays).__name__
        raise ValueError(f"{what}: {name} must be a list of {size} arrays, one per rank (got {got})")
    out = []
    for i, a in enumerate(arrays):
        a = _array(np, a, what, f"{name}[{i}]", writable)
        if a.shape != like.shape or a.dtype != like.dtype:
            raise ValueError(f"{what}: {name}[{i}] is {a.dtype}{list(a.shape)}; every array must be "
                             f"{like.dtype}{list(like.shape)}, as the tensor's")
        out.append(a)
    return out


def _membership(group_name: str) -> Member | None:
    """This actor's place in the group, or None (not in it, or not in an actor)."""
    runner = current_runner()
    return None if runner is None else runner.collective_groups.get(group_name)


def _member(group_name: str, what: str) -> Member:
    runner = current_runner()
    member = _membership(group_name)
    if member is None:
        where = ("this actor is not in a group of that name" if runner is not None
                 else "collectives run inside actors, in their methods")
        raise CollectiveError(
            f"{what}: no collective group {group_name!r} here ({where}); form it in the driver with "
            f"poolx.collective.create_collective_group(actors, group_name={group_name!r}), or in each "
            f"actor with init_collective_group(world_size, rank, group_name={group_name!r})")
    return member


# -- the operations ----------------------------------------------------------------


def allreduce(tensor: Any, group_name: str = "default", op: ReduceOp | str = ReduceOp.SUM) -> None:
    """Combine ``tensor`` across the group with ``op``; every rank gets the result, in place."""
    _reduce_op_call("allreduce", tensor, group_name, op, None)


def reduce(tensor: Any, dst_rank: int = 0, group_name: str = "default",
           op: ReduceOp | str = ReduceOp.SUM) -> None:
    """Combine ``tensor`` across the group; only rank ``dst_rank``'s array receives the result."""
    _reduce_op_call("reduce", tensor, group_name, op, dst_rank)


def _reduce_op_call(what: str, tensor: Any, group_name: str, op: Any, dst: int | None) -> None:
    m = _member(group_name, what)
    np = m.np

    def prepare() -> Any:
        arr = _array(np, tensor, what, "tensor", writable=True)
        rop = _reduce_op(np, op, arr.dtype, what)
        root = -1 if dst is None else _rank_arg(dst, m.size, what, "dst_rank")
        desc = f"{what}({arr.dtype}{list(arr.shape)}, op={rop.value}"
        desc += ")" if dst is None else f", dst={dst})"
        return (arr, rop), (arr.nbytes, arr.dtype, root, _REDUCE_CODES[rop], 1, desc)

    arr, rop = m.begin(what, prepare)
    n, slot = arr.nbytes, _aligned(arr.nbytes)
    data = m.ensure((m.size + 1) * slot, what)
    flat = arr.reshape(-1)
    data[m.rank * slot:m.rank * slot + n] = flat.view(np.uint8)
    m.barrier(what)
    count = flat.size
    lo, hi = count * m.rank // m.size, count * (m.rank + 1) // m.size
    result = data[m.size * slot:m.size * slot + n].view(arr.dtype)
    if hi > lo:
        parts = [data[i * slot:i * slot + n].view(arr.dtype)[lo:hi] for i in range(m.size)]
        _reduce_into(np, rop, parts, result[lo:hi])
    m.barrier(what)
    if dst is None or dst == m.rank:
        np.copyto(flat, result)


def broadcast(tensor: Any, src_rank: int = 0, group_name: str = "default") -> None:
    """Copy rank ``src_rank``'s ``tensor`` into every other rank's, in place."""
    what = "broadcast"
    m = _member(group_name, what)
    np = m.np

    def prepare() -> Any:
        arr = _array(np, tensor, what, "tensor", writable=True)
        src = _rank_arg(src_rank, m.size, what, "src_rank")
        return arr, (arr.nbytes, arr.dtype, src, 0, 1, f"broadcast({arr.dtype}{list(arr.shape)}, src={src})")

    arr = m.begin(what, prepare)
    n = arr.nbytes
    data = m.ensure(_aligned(n), what)
    flat = arr.reshape(-1).view(np.uint8)
    if m.rank == src_rank:
        data[:n] = flat
    m.barrier(what)
    if m.rank != src_rank:
        flat[:] = data[:n]


def allgather(tensor_list: list[Any], tensor: Any, group_name: str = "default") -> None:
    """Every rank's ``tensor``, gathered into ``tensor_list`` (one array per rank, in rank order)."""
    what = "allgather"
    m = _member(group_name, what)
    np = m.np

    def prepare() -> Any:
        arr = _array(np, tensor, what, "tensor", writable=False)
        outs = _same_arrays(np, tensor_list, arr, m.size, what, "tensor_list", writable=True)
        return (arr, outs), (arr.nbytes, arr.dtype, -1, 0, m.size,
                             f"allgather({arr.dtype}{list(arr.shape)})")

    arr, outs = m.begin(what, prepare)
    n, slot = arr.nbytes, _aligned(arr.nbytes)
    data = m.ensure(m.size * slot, what)
    data[m.rank * slot:m.rank * slot + n] = arr.reshape(-1).view(np.uint8)
    m.barrier(what)
    for i, out in enumerate(outs):
        out.reshape(-1).view(np.uint8)[:] = data[i * slot:i * slot + n]


def reduce_scatter(tensor: Any, tensor_list: list[Any], group_name: str = "default",
                   op: ReduceOp | str = ReduceOp.SUM) -> None:
    """Combine the ranks' ``tensor_list`` element-wise; rank *i* gets part *i* in ``tensor``."""
    what = "reduce_scatter"
    m = _member(group_name, what)
    np = m.np

    def prepare() -> Any:
        arr = _array(np, tensor, what, "tensor", writable=True)
        ins = _same_arrays(np, tensor_list, arr, m.size, what, "tensor_list", writable=False)
        rop = _reduce_op(np, op, arr.dtype, what)
        return (arr, ins, rop), (arr.nbytes, arr.dtype, -1, _REDUCE_CODES[rop], m.size,
                                 f"reduce_scatter({arr.dtype}{list(arr.shape)}, op={rop.value})")

    arr, ins, rop = m.begin(what, prepare)
    n = arr.nbytes
    slot = _aligned(m.size * n)
    data = m.ensure(m.size * slot, what)
    base = m.rank * slot
    for j, part in enumerate(ins):
        data[base + j * n:base + (j + 1) * n] = part.reshape(-1).view(np.uint8)
    m.barrier(what)
    parts = [data[i * slot + m.rank * n:i * slot + (m.rank + 1) * n].view(arr.dtype) for i in range(m.size)]
    _reduce_into(np, rop, parts, arr.reshape(-1))


def barrier(group_name: str = "default") -> None:
    """Return once every rank of the group has called ``barrier``."""
    m = _member(group_name, "barrier")
    m.begin("barrier", lambda: (None, (0, None, -1, 0, 0, "barrier()")))


# -- the group ------------------------------------------------------------------------


def get_rank(group_name: str = "default") -> int:
    """This actor's rank in the group, or -1 when it is not in it (Ray's convention)."""
    member = _membership(group_name)
    return -1 if member is None else member.rank


def get_collective_group_size(group_name: str = "default") -> int:
    """The number of ranks of the group, or -1 when this actor is not in it."""
    member = _membership(group_name)
    return -1 if member is None else member.size


def is_group_initialized(group_name: str = "default") -> bool:
    """Whether this actor is in the group (in the driver: whether the driver formed it)."""
    if current_runner() is None:
        return group_name in _formed
    return get_rank(group_name) >= 0


def init_collective_group(world_size: int, rank: int, backend: str = "shm", group_name: str = "default",
                          gloo_timeout: int = int(DEFAULT_TIMEOUT * 1000)) -> None:
    """Join the group ``group_name`` as ``rank`` of ``world_size``, from inside an actor (Ray's first way).

    Returns once every rank has joined (or raises ``CollectiveTimeoutError``
    after ``gloo_timeout`` milliseconds, Ray's name for the group's timeout).
    The ranks meet in the driver (processes backend) or in this process
    (threads backend): the group's actors must belong to one executor.
    """
    what = f"init_collective_group({world_size!r}, {rank!r}, group_name={group_name!r})"
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"{what}: world_size must be a positive int")
    _rank_arg(rank, world_size, what, "rank")
    _check_backend_name(backend, what)
    if gloo_timeout is not None and not gloo_timeout > 0:
        raise ValueError(f"{what}: gloo_timeout={gloo_timeout!r} must be a positive number of milliseconds "
                         "(or None to wait for ever)")
    timeout = None if gloo_timeout is None else gloo_timeout / 1000

    client = _context.here.client
    meet = getattr(client, "rendezvous", None)
    if client is not None and meet is None:  # a worker of a cluster engine
        raise CollectiveError(f"{what}: the {getattr(client, 'engine', 'cluster')} backend does not run "
                              "collectives: use backend='processes' or 'threads'")
    runner = current_runner()
    if runner is None:
        raise CollectiveError(f"{what}: collectives run inside actors; call it from an actor's method, or "
                              "form the group here in the driver with create_collective_group(actors, ...)")
    _not_in(runner, group_name, what)
    if meet is not None:
        spec = meet(group_name, world_size, rank, timeout)
    elif getattr(runner, "collectives", False):
        spec = _local_rendezvous.join(group_name, world_size, rank, timeout)
    else:
        raise CollectiveError(f"{what}: this actor's backend does not run collectives (the serial backend "
                              "runs one call at a time): use backend='processes' or 'threads'")
    try:
        _enter(runner, spec, rank, "init_collective_group")
    finally:
        if meet is None:  # the control block is ours to close once every rank has mapped it
            with _local_rendezvous.lock:
                _local_rendezvous.sweep()


def _not_in(runner: Any, group_name: str, what: str) -> None:
    if group_name in runner.collective_groups:
        raise CollectiveError(f"{what}: this actor is already in a collective group named {group_name!r}: "
                              "destroy_collective_group() it first, or choose another group_name")


def _enter(runner: Any, spec: GroupSpec, rank: int, what: str) -> None:
    """Map the group's control block and wait there for every rank; then this actor is in the group.

    A rank that gives up marks itself as gone: the ranks waiting for it fail at
    once, and a rendezvous forgets the group, so that its name can form again.
    """
    member = Member(spec, rank)
    try:
        member.barrier(what)
    except BaseException:
        member.ranks[rank, PID] = LEFT
        member.close()
        raise
    runner.collective_groups[spec.name] = member


def _check_backend_name(backend: str, what: str) -> None:
    if str(backend).lower() not in ("shm", "gloo"):
        raise ValueError(f"{what}: backend={backend!r}: poolx moves arrays through shared memory on one "
                         "machine: use backend='shm' ('gloo' means the same; there is no GPU backend)")


_formed: dict[str, list[Any]] = {}  # in the driver: group name -> its actors, by rank


def _join(instance: Any, spec: GroupSpec, rank: int) -> int:
    runner = current_runner()
    if runner is None:  # pragma: no cover - __poolx_call__ always runs in an actor
        raise CollectiveError("joining a collective group happens inside an actor")
    _not_in(runner, spec.name, "create_collective_group()")
    _enter(runner, spec, rank, "create_collective_group")
    return os.getpid()


def _leave(instance: Any, group_name: str) -> bool:
    runner = current_runner()
    member = runner.collective_groups.pop(group_name, None) if runner is not None else None
    if member is not None:
        member.close()
    return member is not None


def create_collective_group(actors: Sequence[Any], world_size: int | None = None,
                            ranks: Sequence[int] | None = None, backend: str = "shm",
                            group_name: str = "default", timeout: float | None = DEFAULT_TIMEOUT) -> None:
    """Form a collective group of ``actors`` (in the driver); returns once every actor has joined.

    ``ranks[i]`` is ``actors[i]``'s rank (default: their order).  ``backend``:
    ``"shm"`` (shared memory on this machine, the only one); Ray's ``"gloo"``
    is accepted and means the same.  ``timeout``: the seconds a rank waits for
    the others at each step of an operation (None: for ever; a dead rank is
    noticed either way).  The actors must belong to one executor whose backend
    runs collectives (``processes`` or ``threads``, on Linux).
    """
    actors = list(actors)
    if not actors:
        raise ValueError("create_collective_group(): give the actors of the group (a list of handles)")
    from ._actors import ActorHandle

    bad = [a for a in actors if not isinstance(a, ActorHandle)]
    if bad:
        raise TypeError(f"create_collective_group(): {bad[0]!r} is not an actor handle; pass the handles "
                        "that Executor.actor() or Class.remote() returned")
    world_size = len(actors) if world_size is None else world_size
    if world_size != len(actors):
        raise ValueError(f"create_collective_group(): world_size={world_size} but {len(actors)} actors "
                         "were given; poolx groups hold exactly the actors given")
    ranks = list(range(world_size)) if ranks is None else list(ranks)
    if sorted(ranks) != list(range(world_size)):
        raise ValueError(f"create_collective_group(): ranks={ranks} must hold each of 0..{world_size - 1} "
                         "once")
    if len(set(actors)) != len(actors):
        raise ValueError("create_collective_group(): an actor appears twice; each rank is its own actor")
    _check_backend_name(backend, "create_collective_group()")
    if timeout is not None and not timeout > 0:
        raise ValueError(f"create_collective_group(timeout={timeout!r}): give a positive number of "
                         "seconds, or None to wait for ever")
    if group_name in _formed and not any(_alive_actor(a) for a in _formed[group_name]):
        del _formed[group_name]  # its actors are gone (their executor shut down)
    if group_name in _formed:
        raise ValueError(f"a collective group named {group_name!r} exists: destroy_collective_group("
                         f"{group_name!r}) first, or choose another group_name")
    backends = {id(_backend_of(a)): _backend_of(a) for a in actors}
    if len(backends) > 1:
        raise ValueError("create_collective_group(): the actors belong to different executors; a group's "
                         "actors must share one")
    engine = next(iter(backends.values()))
    if not getattr(engine, "supports_collectives", False):
        why = ("shared memory needs Linux (memfd)" if not _shm.AVAILABLE else
               "its actors' calls do not run at the same time, or not on one machine")
        raise CollectiveError(
            f"the {engine.name} backend does not run collectives ({why}): use backend='processes' or "
            "'threads'" + ("; on Ray, ray.util.collective does this natively" if engine.name == "ray"
                           else ""))

    meeting = _Meeting(group_name, world_size, timeout)
    try:
        spec = meeting.spec
        by_rank: list[Any] = [None] * world_size
        for actor, rank in zip(actors, ranks):
            by_rank[rank] = actor
        calls = [actor._call(CALL_ON_INSTANCE, (_join, spec, rank), {}) for rank, actor in enumerate(by_rank)]
        wait = None if timeout is None else timeout + 30.0
        errors: list[tuple[int, BaseException]] = []
        for rank, call in enumerate(calls):
            try:
                call.result(wait)
            except BaseException as failure:
                errors.append((rank, failure))
    finally:
        meeting.close()  # the actors have their own maps of it now
    if errors:
        _leave_all(by_rank, group_name)
        rank, first = errors[0]
        raise CollectiveError(
            f"create_collective_group({group_name!r}): rank {rank} ({by_rank[rank]!r}) could not join: "
            f"{type(first).__name__}: {first}") from first
    _formed[group_name] = by_rank


def _backend_of(actor: Any) -> Any:
    from ._actors import _local

    found = actor._actor or _local.get(actor._id)
    if found is None:
        raise CollectiveError(f"create_collective_group(): {actor!r} is not an actor of this process's "
                              "executors (groups are formed in the driver)")
    return found.directory.backend


def _alive_actor(handle: Any) -> bool:
    from ._actors import ALIVE, _local

    actor = handle._actor or _local.get(handle._id)
    return actor is not None and actor.status == ALIVE


def _leave_all(actors: list[Any], group_name: str) -> None:
    calls = []
    for actor in actors:
        if actor is None:
            continue
        try:
            calls.append(actor._call(CALL_ON_INSTANCE, (_leave, group_name), {}))
        except Exception:  # the actor is gone: nothing to leave
            pass
    for call in calls:
        try:
            call.result(DEFAULT_TIMEOUT)
        except (ActorDiedError, CollectiveError, TimeoutError):
            pass


def destroy_collective_group(group_name: str = "default") -> None:
    """Dissolve the group and free its shared memory.

    In the driver: every member actor leaves it (after the calls made on it so
    far).  In an actor: this actor leaves it.
    """
    if current_runner() is not None:
        _leave(None, group_name)
        return
    actors = _formed.pop(group_name, None)
    if actors is None:
        raise ValueError(f"destroy_collective_group({group_name!r}): no group of that name was formed here")
    _leave_all(actors, group_name)
