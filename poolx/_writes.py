"""Which ranges of this process's memory were written since we last looked (Linux 6.7+).

A large argument sent again reuses the shared-memory copy made the first
time (``_shm``'s reuse cache) only if not one byte of it was written in
between.  Hashing 200 MB costs more than copying it (crc32 ~100 ms, blake2b
~270 ms, a copy into a warm segment ~15-50 ms on the 2-core CI machine), so
the kernel watches for us instead:

* a ``userfaultfd`` registered in *asynchronous write-protect* mode
  (``UFFD_FEATURE_WP_ASYNC``) marks every page of a watched range
  write-protected; the first write to a page after that, from any thread,
  from a system call writing into it (``readinto``) or through
  ``process_vm_writev``, is resolved by the kernel itself (no handler thread,
  no signal) and leaves the page marked *written*;
* ``PAGEMAP_SCAN`` on ``/proc/self/pagemap`` says whether any page of a range
  is written, or no longer watched (remapped, unmapped: counted as written).

Checking a 200 MB range costs about 50 us; protecting it again about 0.3 ms.
Only private anonymous memory (what numpy allocates) can be watched: shared
or file-backed mappings (``np.memmap``, another process's segment) are
refused by the kernel (``watch`` returns False), and their arrays are copied
each time, since another process may write them without touching our page
tables.  Where the system call is refused (seccomp, an old kernel, another
architecture) nothing is watched and every send copies, as before.

Not seen: a range zeroed by ``madvise(MADV_DONTNEED)`` while its array
lives, and a device or ``io_uring`` writing pages pinned before they were
protected.  Both are things a program does to its own memory on purpose.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import sys
import threading

from . import _fds

# userfaultfd(2)'s number by architecture (x86-64, arm64); elsewhere nothing is watched.
_SYSCALL = {"x86_64": 323, "aarch64": 282}.get(platform.machine())
_UFFD_USER_MODE_ONLY = 1  # what an unprivileged process may open (vm.unprivileged_userfaultfd = 0)
_UFFD_API = 0xAA
_FEATURE_WP_UNPOPULATED = 1 << 13  # pages not yet touched count as protected too
_FEATURE_WP_ASYNC = 1 << 15  # the kernel resolves write faults itself, marking the page written
# ioctl numbers: _IOWR(0xAA, nr, size) for userfaultfd, _IOWR('f', 16, 96) for PAGEMAP_SCAN.
_UFFDIO_API = 0xC018AA3F
_UFFDIO_REGISTER = 0xC020AA00
_UFFDIO_UNREGISTER = 0x8010AA01
_UFFDIO_WRITEPROTECT = 0xC018AA06
_REGISTER_MODE_WP = 1 << 1
_WRITEPROTECT_MODE_WP = 1
_PAGEMAP_SCAN = 0xC0606610
_PAGE_IS_WPALLOWED = 1 << 0
_PAGE_IS_WRITTEN = 1 << 1
_PAGE_IS_FILE = 1 << 2
_PAGE_IS_PRESENT = 1 << 3
_PM_SCAN_ARG_SIZE = 96

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def inner_pages(address: int, nbytes: int) -> tuple[int, int]:
    """The whole pages inside ``nbytes`` at ``address``: [lo, hi).

    Only those are watched: a partial first or last page shares its other
    bytes with other objects (an array in malloc's heap), written all the
    time, so its caller compares those few bytes itself.
    """
    return (address + PAGE - 1) & ~(PAGE - 1), (address + nbytes) & ~(PAGE - 1)


def private_anonymous(lo: int, hi: int) -> bool:
    """Whether [lo, hi) is all private anonymous memory (/proc/self/maps), which only this
    process writes, through its own page tables.

    The kernel watches any memory in asynchronous mode, shared and file-backed
    mappings too, but another process writes those through its own page
    tables, unseen here.  A mapping replaced later (munmap, MAP_FIXED) loses
    its registration, which ``written`` counts as written.
    """
    try:
        with open("/proc/self/maps", "rb") as maps:
            lines = maps.read().splitlines()
    except OSError:
        return False
    covered = lo
    for line in lines:
        fields = line.split(None, 5)
        start, end = (int(x, 16) for x in fields[0].split(b"-"))
        if end <= covered or start >= hi:
            continue
        path = fields[5].strip() if len(fields) > 5 else b""
        if start > covered or not fields[1].endswith(b"p") or fields[4] != b"0" or path.startswith(b"/"):
            return False
        covered = end
        if covered >= hi:
            return True
    return False


class _Watcher:
    """This process's userfaultfd and pagemap fds, opened on first use."""

    def __init__(self) -> None:
        self.uffd = -1
        self.pagemap = -1
        self.tried = False
        self.libc: ctypes.CDLL | None = None

    def _ioctl(self, fd: int, request: int, arg: ctypes.Array[ctypes.c_uint64]) -> int:
        assert self.libc is not None
        r = int(self.libc.ioctl(fd, ctypes.c_ulong(request), ctypes.c_void_p(ctypes.addressof(arg))))
        if r < 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))
        return r

    def available(self) -> bool:
        if not self.tried:
            with _opening:
                if not self.tried:
                    self._open()
                    self.tried = True
        return self.uffd >= 0

    def _open(self) -> None:
        if _SYSCALL is None or not sys.platform.startswith("linux"):
            return
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.syscall.restype = ctypes.c_long
            flags = os.O_CLOEXEC | os.O_NONBLOCK
            fd = int(libc.syscall(ctypes.c_long(_SYSCALL), ctypes.c_int(flags)))
            if fd < 0 and ctypes.get_errno() == errno.EPERM:
                fd = int(libc.syscall(ctypes.c_long(_SYSCALL), ctypes.c_int(flags | _UFFD_USER_MODE_ONLY)))
            if fd < 0:
                return
        except (OSError, AttributeError):
            return
        self.libc = libc
        try:
            self.uffd = fd = _fds.lift(fd)
        except OSError:  # (lift closed it)
            return
        try:
            api = (ctypes.c_uint64 * 3)(_UFFD_API, _FEATURE_WP_ASYNC | _FEATURE_WP_UNPOPULATED, 0)
            self._ioctl(fd, _UFFDIO_API, api)
            self.pagemap = _fds.open_fd("/proc/self/pagemap", os.O_RDONLY)
            # PAGEMAP_SCAN itself (Linux 6.7): an empty range must scan without error.
            self._scan(0, 0, _PAGE_IS_WRITTEN, 0)
        except OSError:  # (an older kernel: no asynchronous write-protect, or no PAGEMAP_SCAN)
            self.close()

    def close(self) -> None:
        for fd in (self.uffd, self.pagemap):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.uffd = self.pagemap = -1

    def _scan(self, lo: int, hi: int, mask: int, inverted: int) -> int:
        """How many regions of [lo, hi) match (at most one: the scan stops at the first page)."""
        vec = (ctypes.c_uint64 * 3)()
        arg = (ctypes.c_uint64 * 12)(_PM_SCAN_ARG_SIZE, 0, lo, hi, 0, ctypes.addressof(vec), 1, 1,
                                     inverted, mask, 0, mask)
        return self._ioctl(self.pagemap, _PAGEMAP_SCAN, arg)

    def watch(self, lo: int, hi: int) -> bool:
        """Protect [lo, hi) (registering it first): False for memory that is not private and
        anonymous, or that the kernel refuses."""
        if not self.available() or not private_anonymous(lo, hi):
            return False
        try:
            register = (ctypes.c_uint64 * 4)(lo, hi - lo, _REGISTER_MODE_WP, 0)
            self._ioctl(self.uffd, _UFFDIO_REGISTER, register)
            protect = (ctypes.c_uint64 * 3)(lo, hi - lo, _WRITEPROTECT_MODE_WP)
            self._ioctl(self.uffd, _UFFDIO_WRITEPROTECT, protect)
        except OSError:  # shared or file-backed memory, another userfaultfd's range: not watched
            return False
        return True

    def written(self, lo: int, hi: int) -> bool:
        """Whether a page of [lo, hi) was written since ``watch``, or is no longer watched."""
        try:
            return bool(self._scan(lo, hi, _PAGE_IS_WRITTEN, 0)
                        or self._scan(lo, hi, _PAGE_IS_WPALLOWED, _PAGE_IS_WPALLOWED))
        except OSError:  # (a range partly unmapped since)
            return True

    def copied(self, lo: int, hi: int) -> bool:
        """Whether a page of [lo, hi), a private mapping of a file, was written (copied on write).

        Its other pages still show the file: present ones are the file's pages,
        absent ones are read from it again.  No userfaultfd needed, only
        PAGEMAP_SCAN: a written page is present and no longer the file's.
        """
        try:
            return bool(self._scan(lo, hi, _PAGE_IS_FILE | _PAGE_IS_PRESENT, _PAGE_IS_FILE))
        except OSError:
            return True

    def unwatch(self, lo: int, hi: int) -> None:
        try:
            self._ioctl(self.uffd, _UFFDIO_UNREGISTER, (ctypes.c_uint64 * 2)(lo, hi - lo))
        except OSError:  # (unmapped already: nothing to undo)
            pass

    def reset(self) -> None:
        """Close both fds (every range stops being watched); opened again on next use."""
        self.close()
        self.tried = False

    def after_fork(self) -> None:
        """In a forked child: both fds name the parent's memory; this process opens its own."""
        self.reset()


_opening = threading.Lock()  # (two threads sending their first large argument at once open one watcher)
watcher = _Watcher()  # one per process; its user (``_shm``'s reuse cache) serializes calls to it


def _after_fork() -> None:
    global _opening
    _opening = threading.Lock()
    watcher.after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
