"""Shared memory for large buffers: the object store under ``put``, and big arguments and results.

A large out-of-band pickle buffer (a numpy array's data, a bytearray) is
copied once into a *segment*, an anonymous ``memfd`` of this process, and
travels as a 48-byte descriptor plus a file descriptor passed over the
channel (``SCM_RIGHTS``).  The receiver maps the segment and rebuilds the
object on top of it: no copy, whatever the size.

Lifetimes are the kernel's business, so nothing leaks whatever dies:

* A segment is a memfd: it has no name, nothing is ever created in /dev/shm,
  and its memory is freed when the last fd and mapping of it are gone (every
  process that held one may have been SIGKILLed).
* Each sent copy carries a *lock*: the sender opens a new open file
  description of the segment, takes a shared ``flock`` on it, and passes that
  fd.  The lock lives as long as the fd is in flight or, in the receiver, as
  long as the receiver's views of it live (a mapping keeps its file, and so
  the lock, alive after the fd is closed).  The creator reuses a segment it
  no longer refers to only when an exclusive ``flock`` on it succeeds: no
  other process can still read it.
* Freed segments stay mapped in a per-process pool (``POOL_BYTES`` at most),
  so the next large buffer is copied into memory whose pages already exist:
  on the machines we measured, touching fresh pages costs ten times the copy.

Two modes, chosen by the sender:

* ``PRIVATE`` (task and actor arguments and results above ``MIN_BYTES``): the
  receiver maps the segment copy-on-write, so it gets a writable object as
  with pipes, while reads share the sender's pages.
* ``SHARED`` (``put``): the receiver maps it read-only and keeps the mapping
  cached, so the same object passed to many tasks is mapped once per process
  (numpy arrays come back read-only, as Ray's do).  A view of such a buffer,
  pickled again (a put value passed on to another task), travels by
  reference: ``lookup`` finds its segment.

Linux only (``AVAILABLE``); elsewhere large buffers travel through the
channel as before.  Imported by worker processes: it imports nothing of the
driver's side.
"""

from __future__ import annotations

import collections
import ctypes
import errno
import fcntl
import itertools
import mmap
import os
import resource
import struct
import sys
import threading
import weakref
from typing import Any

from . import _fds, _reuse, _writes

AVAILABLE = (sys.platform.startswith("linux") and hasattr(os, "memfd_create")
             and os.path.isdir("/proc/self/fd"))

# How a receiver maps a buffer (the descriptor's mode):
#   PRIVATE    copy-on-write, a mapping per message (task and actor arguments: a writable copy)
#   SHARED     read-only, the mapping cached (put; arguments of Ray-style tasks)
#   EXCLUSIVE  writable, a mapping per message (results: the segment is this result's alone,
#              and its creator cannot reuse it while the receiver's views of it live); the
#              mapping goes with the last view, so a dropped result pins no memory
# READONLY is a sender's choice only: SHARED, for buffers above MIN_BYTES.
NONE, PRIVATE, SHARED, EXCLUSIVE, READONLY = 0, 1, 2, 3, 4
WIRE_MODE = {PRIVATE: PRIVATE, SHARED: SHARED, EXCLUSIVE: EXCLUSIVE, READONLY: SHARED}
# Arguments and results at least this large go through shared memory (PRIVATE).
MIN_BYTES = 1 << 20


def _memory_share(fraction: float, cap: int) -> int:
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return cap
    return max(1 << 26, min(cap, int(total * fraction)))


# Free segments a process keeps mapped for reuse, in bytes: a 1/16 of the
# machine's memory, at most 1 GiB (a buffer larger than that is unmapped when freed).
POOL_BYTES = _memory_share(1 / 16, 1 << 30)
# Read-only mappings of other processes' SHARED segments kept for reuse, in bytes.
CACHE_BYTES = POOL_BYTES
# A free segment is reused for a buffer no smaller than this fraction of it.
REUSE_FILL = 0.5
# Segment sizes are rounded up to this many bytes.
ROUND = 1 << 16
# At most this many fds go with one message (the kernel's limit is 253).
MAX_FDS = 200

# Segments (one fd each, free ones included) may use this fraction of a process's
# RLIMIT_NOFILE soft limit.  A quarter: each may have as many fds again in flight (a
# queued message's), and the rest is the program's own, poolx's channels' and the
# results' it receives.  Past it, large buffers are sent inline (a copy) rather than fail
# for want of an fd: 96 arguments of 1 MiB at once under a limit of 128 all arrive.
FD_SHARE = 0.25
# The soft limit raise_fd_limit() sets in poolx's own processes, if the hard limit allows:
# 65,536, what the first release set in every process (the driver's included).
FD_LIMIT = 1 << 16

MAGIC = b"PXSHMv01"
# magic | creator token | segment uid | capacity | nbytes | mode | index of its fd in the message
DESC = struct.Struct("<8sQQQQII")


def _new_token() -> int:
    return int.from_bytes(os.urandom(8), "little")


_token = _new_token()  # tells this process's segments from those of an earlier process with its pid
_uids = itertools.count(1)


class Segment:
    """A memfd of this process, mapped read-write; back to the pool when unreferenced."""

    __slots__ = ("__weakref__", "capacity", "fd", "generation", "mm", "uid")

    def __init__(self, fd: int, mm: mmap.mmap, capacity: int, uid: int) -> None:
        self.fd = fd
        self.mm = mm
        self.capacity = capacity
        self.uid = uid
        self.generation = _pool.generation

    def __del__(self) -> None:
        try:
            _pool.release(self)
        except Exception:  # interpreter shutdown: the process's exit frees it
            pass


class ShmBuffer:
    """An outgoing buffer stored in one of this process's segments."""

    __slots__ = ("mode", "nbytes", "seg")

    def __init__(self, seg: Segment, nbytes: int, mode: int) -> None:
        self.seg = seg
        self.nbytes = nbytes
        self.mode = mode

    def __len__(self) -> int:
        return self.nbytes

    def raw(self) -> memoryview:
        """The bytes themselves (a path that sends frames as bytes copies them: still correct)."""
        return memoryview(self.seg.mm)[: self.nbytes]

    def view(self) -> memoryview:
        """A read-only view, here in the creating process (``put`` values read in the driver)."""
        return _export(self.seg.mm, self.nbytes, self)

    def key(self) -> tuple[int, int]:
        return (_token, self.seg.uid)

    def lock_fd(self) -> int:
        """A new fd of the segment holding a shared lock: what goes with a message.

        Read-only for arguments and put values (PRIVATE, SHARED): no mapping
        of an argument may change under a task.  A receiver maps PRIVATE
        copy-on-write, where the pages it has not written still show the
        file, so the fd it holds while the task runs must not be able to write
        the file: a stray write through it (a print() after a task closed its
        stdio, in the moment before ``_fds`` moves a received fd up) fails
        with EBADF instead of changing the data.  Sealing the memfd
        (F_SEAL_WRITE, F_SEAL_FUTURE_WRITE) would do it too, but a seal is for
        ever, and segments are reused and results (EXCLUSIVE) are mapped
        writable by their receiver, whose alone they are; a read-only fd costs
        nothing.
        """
        flags = os.O_RDWR if self.mode == EXCLUSIVE else os.O_RDONLY
        fd = _fds.open_fd(f"/proc/self/fd/{self.seg.fd}", flags)
        fcntl.flock(fd, fcntl.LOCK_SH)
        return fd

    def descriptor(self, index: int) -> bytes:
        return DESC.pack(MAGIC, _token, self.seg.uid, self.seg.capacity, self.nbytes, self.mode, index)


class FdHold:
    """A received fd (its open file description holds a shared lock); closed when dropped."""

    __slots__ = ("__weakref__", "fd")

    def __init__(self, fd: int) -> None:
        self.fd = fd

    @classmethod
    def received(cls, fd: int) -> FdHold:
        """Hold an fd that came with a message, moved above stdio (``_fds``): -1 if it cannot be."""
        try:
            return cls(_fds.lift(fd))
        except OSError:  # EMFILE on the move: the buffer's view says the fd did not arrive
            return cls(-1)

    def close(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            os.close(fd)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class Received:
    """An incoming buffer: another process's segment, with the fd (and lock) that came with it."""

    __slots__ = ("capacity", "hold", "mode", "nbytes", "token", "uid")

    def __init__(self, hold: FdHold | None, token: int, uid: int, capacity: int, nbytes: int,
                 mode: int) -> None:
        self.hold = hold
        self.token = token
        self.uid = uid
        self.capacity = capacity
        self.nbytes = nbytes
        self.mode = mode

    def __len__(self) -> int:
        return self.nbytes

    def key(self) -> tuple[int, int]:
        return (self.token, self.uid)

    def lock_fd(self) -> int:
        """Forwarding it (the driver relays between children): a duplicate of the locked fd."""
        return _fds.dup(self._fd())

    def descriptor(self, index: int) -> bytes:
        return DESC.pack(MAGIC, self.token, self.uid, self.capacity, self.nbytes, self.mode, index)

    def _fd(self) -> int:
        if self.hold is None or self.hold.fd < 0:
            raise OSError(errno.EMFILE, _missing_fd())
        return self.hold.fd

    def view(self) -> memoryview:
        """Map it: read-only from the cache (SHARED), or a mapping of its own that goes with its
        last view: copy-on-write (PRIVATE), or writable through to the segment (EXCLUSIVE)."""
        if self.mode == SHARED:
            return _export(_cache.mapping(self), self.nbytes, self)
        # The mapping keeps the lock for as long as the views of it live, even
        # once the fd (closed with the message) is gone.  A result (EXCLUSIVE) is
        # not cached: its segment is read again only after its creator reuses it,
        # which a dropped result's creator may never do (a worker that exits, or
        # whose pool is full, unmaps it), and a cached mapping would keep the
        # segment's memory for as long as the cache holds it (issue 19: 20
        # dropped results of 100 MB kept 1,000 MB mapped).  Mapping again costs
        # the page faults, populated in one call (_populate).  A PRIVATE argument
        # is kept (_Private) since its sender keeps the segment for reuse anyway.
        if self.mode == PRIVATE and _writes.watcher.available():
            return _private.view(self)
        flags = mmap.MAP_SHARED if self.mode == EXCLUSIVE else mmap.MAP_PRIVATE
        mm = _fds.mmap(self._fd(), self.nbytes, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        _populate(mm)
        return memoryview(mm)


def _missing_fd() -> str:
    """Why a segment's fd did not arrive with its message: almost always, no fd to spare."""
    try:
        held = f"holds {len(os.listdir('/proc/self/fd'))} open files"
    except OSError:  # (EMFILE itself)
        held = "has no file descriptor to spare"
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return (f"the shared-memory segment's file descriptor did not arrive with its message: this "
            f"process {held} and its RLIMIT_NOFILE soft limit is {soft}, so the kernel likely "
            "dropped it (each large result or argument kept alive holds one); poolx "
            "does not raise the limit of the driver: raise it (ulimit -n, or resource.setrlimit "
            "before creating the executor) or keep fewer large results alive at once")


def _export(mm: mmap.mmap, nbytes: int, tag: Any) -> memoryview:
    """A read-only view of ``mm[:nbytes]`` that keeps ``tag`` alive and lets ``lookup`` find it."""
    array = (ctypes.c_char * nbytes).from_buffer(mm)
    array._poolx_shm = tag  # type: ignore[attr-defined]
    return memoryview(array).cast("B").toreadonly()


def lookup(buf: Any) -> ShmBuffer | Received | None:
    """The segment a pickle buffer views, when it views a whole SHARED one (sent by reference)."""
    raw = buf.raw()
    obj: Any = raw.obj
    for _ in range(4):
        tag = getattr(obj, "_poolx_shm", None)
        if tag is not None:
            return tag if tag.nbytes == raw.nbytes else None  # a slice is sent as its own copy
        obj = obj.obj if isinstance(obj, memoryview) else getattr(obj, "base", None)
        if obj is None:
            return None
    return None


def store(buf: Any, mode: int) -> ShmBuffer | None:
    """Copy a pickle buffer into a segment of this process (None: no fd to spare, send it inline).

    An argument or put value of at least MIN_BYTES already copied, whose owner
    lives and was not written since, reuses that copy (``_Reused``).
    """
    nbytes = buf.raw().nbytes
    if mode != EXCLUSIVE and nbytes >= MIN_BYTES and _writes.watcher.available():
        seg = _reuse.sent.store(buf, lambda: _copy(buf, mode))
        return None if seg is None else ShmBuffer(seg, nbytes, WIRE_MODE[mode])
    return _copy(buf, mode)


def _copy(buf: Any, mode: int) -> ShmBuffer | None:
    raw = buf.raw()
    nbytes = raw.nbytes
    seg = _pool.allocate(nbytes)
    if seg is None:
        return None
    seg.mm[:nbytes] = raw
    return ShmBuffer(seg, nbytes, WIRE_MODE[mode])


def received(frame: Any, holds: list[FdHold | None]) -> Received | None:
    """The Received a frame of an incoming message describes, if it is a descriptor."""
    if len(frame) != DESC.size or frame[:8] != MAGIC:
        return None
    _, token, uid, capacity, nbytes, mode, index = DESC.unpack(frame)
    hold = holds[index] if index < len(holds) else None
    return Received(hold, token, uid, capacity, nbytes, mode)


def is_shm(buf: Any) -> bool:
    return isinstance(buf, ShmBuffer | Received)


def view(buf: Any) -> Any:
    """What pickle.loads gets for one buffer of a message."""
    return buf.view() if isinstance(buf, ShmBuffer | Received) else buf


# -- the pool of this process's segments -----------------------------------------------------------


class _Pool:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.free: list[tuple[int, int, mmap.mmap, int]] = []  # (capacity, fd, mm, uid), oldest first
        self.free_bytes = 0
        self.live = 0  # segments referred to in this process
        self.generation = 0
        # Whether freed segments are kept for reuse: while an executor that uses
        # shared memory runs.  After the last one stops, a segment freed late
        # (a result the caller held on to) is unmapped at once, not kept for ever.
        self.keep = False

    def allocate(self, nbytes: int) -> Segment | None:
        """A segment of at least ``nbytes``: a free one, or a new memfd (None: no fd to spare)."""
        with self.lock:
            best = -1
            for i, (capacity, fd, _mm, _uid) in enumerate(self.free):
                fits = capacity * REUSE_FILL <= nbytes <= capacity
                if fits and (best < 0 or capacity < self.free[best][0]) and not _in_use(fd):
                    best = i
            if best >= 0:
                capacity, fd, mm, uid = self.free.pop(best)
                self.free_bytes -= capacity
                self.live += 1
                return Segment(fd, mm, capacity, uid)
        capacity = max(ROUND, -(-nbytes // ROUND) * ROUND)
        if not self._room_for_one_more():
            return None
        try:
            fd, mm = _new_segment(capacity)
        except OSError as exc:
            if exc.errno in (errno.EMFILE, errno.ENFILE):  # (the fds in flight took the rest)
                return None
            raise
        with self.lock:
            self.live += 1
        return Segment(fd, mm, capacity, next(_uids))

    def release(self, seg: Segment) -> None:
        if seg.generation != self.generation:  # inherited across fork: not ours to reuse
            _close(seg.fd, seg.mm)
            return
        with self.lock:
            self.live -= 1
            self.free.append((seg.capacity, seg.fd, seg.mm, seg.uid))
            self.free_bytes += seg.capacity
            self._trim(POOL_BYTES if self.keep else 0)

    def _trim(self, limit: int) -> None:
        while self.free and self.free_bytes > limit:
            capacity, fd, mm, _uid = self.free.pop(0)
            self.free_bytes -= capacity
            _close(fd, mm)

    def trim(self, limit: int = 0) -> None:
        """Unmap free segments beyond ``limit`` bytes (0: all of them)."""
        with self.lock:
            self._trim(limit)

    def _room_for_one_more(self) -> bool:
        """Whether one more segment (an fd) fits in this process's share of fds.

        Segments first give up free ones (oldest first).  poolx never raises the
        limit of a process it does not own (the driver): past its share, large
        buffers travel inline, copied through the channel, as without shared memory.
        """
        share = fd_share()
        with self.lock:
            while self.free and self.live + len(self.free) >= share:
                capacity, fd, mm, _uid = self.free.pop(0)
                self.free_bytes -= capacity
                _close(fd, mm)
            return self.live + len(self.free) < share

    def after_fork(self) -> None:
        """In a forked child: the parent's segments are not this process's to reuse."""
        self.lock = threading.Lock()
        for _capacity, fd, mm, _uid in self.free:
            _close(fd, mm)
        self.free = []
        self.free_bytes = 0
        self.live = 0
        self.generation += 1


def _new_segment(capacity: int) -> tuple[int, mmap.mmap]:
    return new_memfd("poolx", capacity)


def new_memfd(name: str, nbytes: int) -> tuple[int, mmap.mmap]:
    """A zeroed close-on-exec memfd of ``nbytes`` (its fd above stdio: ``_fds``) and its read-write map."""
    fd = _fds.lift(os.memfd_create(name, os.MFD_CLOEXEC))
    try:
        os.ftruncate(fd, nbytes)
        return fd, _fds.mmap(fd, nbytes)
    except BaseException:
        os.close(fd)
        raise


def fd_share() -> int:
    """How many segments this process may hold: FD_SHARE of its RLIMIT_NOFILE soft limit."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return FD_LIMIT if soft == resource.RLIM_INFINITY else int(soft * FD_SHARE)


def raise_fd_limit() -> None:
    """Raise this process's RLIMIT_NOFILE soft limit towards the hard one (at most FD_LIMIT).

    Called in poolx's own worker and actor processes only, at start: their
    limit is poolx's to set, and a worker holding many segments (a task's many
    large results) should not fall back to copying.  Never in the driver: a
    process-wide limit there is the program's, and poolx does not change it.

    Such a process also keeps its freed segments for its next results
    (``keep_free_segments``): a fresh 200 MB segment cost 180 to 430 ms of
    page allocation on the CI machine, against 15 to 50 ms for the copy
    into a kept one.  A kept segment is reused once its receiver let the
    last result in it go (the driver dropped it).
    """
    keep_free_segments()
    try:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        want = FD_LIMIT if hard == resource.RLIM_INFINITY else min(hard, FD_LIMIT)
        if soft != resource.RLIM_INFINITY and soft < want:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ValueError, OSError):  # not permitted here (a sandbox): the share is smaller, that is all
        pass


def _in_use(fd: int) -> bool:
    """Whether another process still holds a lock on the segment (reads it, or it is in flight)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    fcntl.flock(fd, fcntl.LOCK_UN)
    return False


def _close(fd: int, mm: mmap.mmap) -> None:
    _close_map(mm)
    try:
        os.close(fd)
    except OSError:
        pass


class _Cache:
    """This process's read-only mappings of SHARED segments of other processes."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.maps: collections.OrderedDict[tuple[int, int], mmap.mmap] = collections.OrderedDict()
        self.bytes = 0

    def mapping(self, rec: Received) -> mmap.mmap:
        key = rec.key()
        with self.lock:
            mm = self.maps.get(key)
            if mm is not None and len(mm) >= rec.nbytes:
                self.maps.move_to_end(key)
                return mm
        # A fresh open file description: the mapping must not keep the lock that
        # came with the message (the cached mapping outlives this object's views).
        fd = _fds.open_fd(f"/proc/self/fd/{rec._fd()}", os.O_RDWR)
        try:
            mm = _fds.mmap(fd, rec.capacity)
        finally:
            os.close(fd)
        _populate(mm)
        with self.lock:
            old = self.maps.pop(key, None)
            if old is not None:
                self.bytes -= len(old)
                _close_map(old)
            self.maps[key] = mm
            self.bytes += len(mm)
            while self.bytes > CACHE_BYTES and len(self.maps) > 1:
                _, oldest = self.maps.popitem(last=False)
                self.bytes -= len(oldest)
                _close_map(oldest)
        return mm

    def clear(self) -> None:
        with self.lock:
            maps, self.maps, self.bytes = self.maps, collections.OrderedDict(), 0
        for mm in maps.values():
            _close_map(mm)

    def after_fork(self) -> None:
        self.lock = threading.Lock()


def _close_map(mm: mmap.mmap) -> None:
    try:
        mm.close()
    except BufferError:  # views of it are alive: the mapping goes with the last of them
        pass


# Linux 5.14's madvise(MADV_POPULATE_READ): map every page of a fresh mapping in one call.
MADV_POPULATE_READ = getattr(mmap, "MADV_POPULATE_READ", 22)


def _populate(mm: mmap.mmap) -> None:
    """Map all of a fresh mapping's pages now: one pass in the kernel instead of a fault per few pages
    (shmem has no transparent huge pages on this machine: shmem_enabled is "never")."""
    try:
        mm.madvise(MADV_POPULATE_READ)
    except (OSError, ValueError):  # (an older kernel: the pages fault in as they are read)
        pass


class _Private:
    """Copy-on-write mappings (PRIVATE arguments) kept for the next message of the same segment.

    A fresh mapping per task cost its page faults on every read (200 MB: 35
    ms, more than the task's own sum).  A kept one is handed out again only
    when no view of it is alive (the last task let its arguments go) and no
    page of it was written (copied on write): then every page shows the
    segment as it is now, whatever its sender wrote into it since, which is
    what the new message sends.  It holds a fresh open file description, not
    the message's lock: the sender may reuse the segment; each task's views
    keep its own message's lock.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        # key -> (mapping, its address, a weak reference to the ctypes array under the last views)
        self.maps: collections.OrderedDict[tuple[int, int], tuple[mmap.mmap, int, Any]] = (
            collections.OrderedDict())
        self.bytes = 0

    def view(self, rec: Received) -> memoryview:
        key = rec.key()
        with self.lock:
            kept = self.maps.pop(key, None)
            if kept is not None:
                self.bytes -= len(kept[0])
        if kept is not None:
            mm, address, views = kept
            stale = views() is not None or _writes.watcher.copied(address, address + len(mm))
            if stale or len(mm) < rec.nbytes:
                _close_map(mm)
                kept = None
        if kept is None:
            fd = _fds.open_fd(f"/proc/self/fd/{rec._fd()}", os.O_RDONLY)
            try:
                prot = mmap.PROT_READ | mmap.PROT_WRITE
                mm = _fds.mmap(fd, rec.capacity, flags=mmap.MAP_PRIVATE, prot=prot)
            finally:
                os.close(fd)
            _populate(mm)
        array = (ctypes.c_char * rec.nbytes).from_buffer(mm)
        array._poolx_hold = rec  # type: ignore[attr-defined]  # (the message's lock, while views live)
        with self.lock:
            self.maps[key] = (mm, ctypes.addressof(array), weakref.ref(array))
            self.bytes += len(mm)
            while self.bytes > CACHE_BYTES and len(self.maps) > 1:
                _, (oldest, _a, _v) = self.maps.popitem(last=False)
                self.bytes -= len(oldest)
                _close_map(oldest)
        return memoryview(array).cast("B")

    def clear(self) -> None:
        with self.lock:
            maps, self.maps, self.bytes = self.maps, collections.OrderedDict(), 0
        for mm, _address, _views in maps.values():
            _close_map(mm)

    def after_fork(self) -> None:
        """In a forked child: the parent's kept mappings would only pin their segments here."""
        self.lock = threading.Lock()
        self.clear()


_pool = _Pool()
_cache = _Cache()
_private = _Private()


def _after_fork() -> None:
    global _token
    _token = _new_token()
    _pool.after_fork()
    _cache.after_fork()
    _private.after_fork()
    _reuse.sent.after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def statistics() -> dict[str, int]:
    """This process's shared memory: segments in use, free ones kept, cached mappings (bytes)."""
    with _pool.lock:
        pool = {"segments_in_use": _pool.live, "free_segments": len(_pool.free),
                "free_bytes": _pool.free_bytes}
    with _cache.lock:
        pool["cached_mappings"] = len(_cache.maps)
        pool["cached_bytes"] = _cache.bytes
    with _reuse.sent.lock:
        pool["reused_copies"] = len(_reuse.sent.sent)
        pool["reused_bytes"] = _reuse.sent.bytes
    return pool


def keep_free_segments() -> None:
    """An executor that uses shared memory starts: keep freed segments for reuse."""
    _pool.keep = True


def release_memory() -> None:
    """Unmap every free segment and cached mapping of this process (what is in use stays).

    Segments freed from now on are unmapped at once, until ``keep_free_segments()``.
    """
    _pool.keep = False
    _reuse.sent.clear()
    _pool.trim(0)
    _cache.clear()
    _private.clear()
