"""Large arguments sent again: the first shared-memory copy reused while the array is unchanged.

``Executor.submit(f, a)`` five times with the same 200 MB array copied it
into shared memory five times; joblib's memmapping copies it once and sends
a file name after (keyed by the array's identity alone: an array changed in
place between calls reaches its workers stale).  Here the copy is reused
only while the kernel says no byte of the array was written (``_writes``),
so a changed array always travels anew.  ``_shm.store`` calls ``sent.store``
for arguments and put values of at least ``_shm.MIN_BYTES``; results are
copied every time (their receiver may write into its segment).
"""

from __future__ import annotations

import atexit
import collections
import functools
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any

from . import _writes

# The copies of arguments and put values kept for reuse, in bytes (least recently sent dropped first).
# Each is memory beyond the caller's own array for as long as that array lives, as
# joblib's memory-mapped files are for as long as its Parallel; a 1/16 of memory, at most 1 GiB.
REUSE_BYTES = max(1 << 26, min(1 << 30, os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 16))


def _owner(buf: Any) -> tuple[int, Any] | None:
    """Where a numpy array's pickle buffer starts, and the object owning that memory.

    The owner (the end of the ``.base`` chain) is what must stay alive for the
    memory to stay the same memory; None for anything else (no reuse).
    """
    obj: Any = memoryview(buf).obj  # (the array, or the transposed view numpy pickles a Fortran array as)
    try:
        address = int(obj.__array_interface__["data"][0])
    except (AttributeError, KeyError, TypeError, IndexError):
        return None
    owner = obj
    for _ in range(64):
        base = getattr(owner, "base", None)
        if base is None:
            return address, owner
        owner = base
    return None


class _Sent:
    __slots__ = ("hi", "lo", "owner", "seg")

    def __init__(self, owner: weakref.ref[Any], lo: int, hi: int, seg: Any) -> None:
        self.owner = owner
        self.lo = lo
        self.hi = hi
        self.seg: Any = seg  # a _shm.Segment; None once dropped


class _Reused:
    """This process's copies of large arguments, by (address, size), reused while unchanged.

    A copy is sent again only if the owner of the memory it was made from is
    the same live object and no page of the memory was written since, by
    any thread, as the kernel tells (``_writes``).  Its pages are protected
    before the copy is made, so a write during the copy counts too.  A
    segment is never rewritten while a copy refers to it: a changed array
    gets a new segment, and the old one goes when the last task sending it
    does (a task re-run after its worker died gets what it was sent).
    """

    def __init__(self) -> None:
        # Reentrant: an owner's death (its weakref callback) may come inside store(), in
        # the thread that holds it.  Held during the copy: a range protected by another
        # thread in between would clear the marks of pages written during it.
        self.lock = threading.RLock()
        self.sent: collections.OrderedDict[tuple[int, int], _Sent] = collections.OrderedDict()
        self.bytes = 0

    def store(self, buf: Any, copy: Callable[[], Any]) -> Any:
        """The segment (``_shm.Segment``) holding ``buf``'s bytes: the kept copy, or ``copy()``'s new one
        (None if ``copy`` found no fd to spare)."""
        found = _owner(buf)
        if found is None:
            return _seg(copy())
        address, owner = found
        raw = buf.raw()
        nbytes = raw.nbytes
        key = (address, nbytes)
        lo, hi = _writes.inner_pages(address, nbytes)
        if hi <= lo:
            return _seg(copy())
        with self.lock:
            sent = self.sent.get(key)
            if sent is not None:
                if sent.owner() is owner and sent.seg is not None and _unchanged(raw, sent.seg.mm, address):
                    self.sent.move_to_end(key)
                    return sent.seg
                self._drop(key)
            try:
                ref = weakref.ref(owner, functools.partial(self._died, key))
            except TypeError:  # (not weakly referable: a bytes object under the array)
                return _seg(copy())
            if not self._watch(lo, hi):  # (shared or file-backed memory: copied every time)
                return _seg(copy())
            seg = _seg(copy())
            if seg is not None:
                self.sent[key] = _Sent(ref, lo, hi, seg)
                self.bytes += seg.capacity
                while self.bytes > REUSE_BYTES and len(self.sent) > 1:
                    self._drop(next(iter(self.sent)))
            return seg

    def _watch(self, lo: int, hi: int) -> bool:
        """Protect [lo, hi): a kept copy whose pages overlap it and were written is dropped first
        (protecting them again would hide that write)."""
        for key, sent in list(self.sent.items()):
            if sent.lo < hi and lo < sent.hi and _writes.watcher.written(sent.lo, sent.hi):
                self._drop(key)
        return _writes.watcher.watch(lo, hi)

    def _drop(self, key: tuple[int, int]) -> None:
        sent = self.sent.pop(key, None)
        if sent is None or sent.seg is None:
            return
        self.bytes -= sent.seg.capacity
        sent.seg = None  # (to the pool once no task refers to it either)
        if not any(s.lo < sent.hi and sent.lo < s.hi for s in list(self.sent.values())):
            _writes.watcher.unwatch(sent.lo, sent.hi)

    def _died(self, key: tuple[int, int], ref: weakref.ref[Any]) -> None:
        """An owner died: its copy goes (before its memory is freed: numpy clears weakrefs first)."""
        try:
            with self.lock:
                sent = self.sent.get(key)
                if sent is not None and sent.owner is ref:
                    self._drop(key)
        except Exception:  # interpreter shutdown
            pass

    def clear(self) -> None:
        """Drop every kept copy, and close the watcher's fds (the last executor stopped)."""
        with self.lock:
            for key in list(self.sent):
                self._drop(key)
            _writes.watcher.reset()

    def after_fork(self) -> None:
        """In a forked child: the parent's copies are not this process's (its pool closes them)."""
        self.lock = threading.RLock()
        self.sent = collections.OrderedDict()
        self.bytes = 0


def _unchanged(raw: memoryview, copy: Any, address: int) -> bool:
    """Whether ``raw`` (at ``address``) still holds what ``copy`` holds: its whole pages unwritten
    (the kernel's word), and the bytes of its part pages before and after them compared one by one."""
    lo, hi = _writes.inner_pages(address, raw.nbytes)
    if _writes.watcher.written(lo, hi):
        return False
    head, tail, n = lo - address, hi - address, raw.nbytes
    return raw[:head] == copy[:head] and raw[tail:] == copy[tail:n]


def _seg(stored: Any) -> Any:
    return None if stored is None else stored.seg


sent = _Reused()
atexit.register(sent.clear)
