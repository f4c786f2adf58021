"""File descriptors poolx creates or receives never sit on 0, 1 or 2.

The kernel gives a new fd the lowest free number.  A task (or a driver) that
closed its stdio, as daemonizing code and some libraries do, frees 0, 1 and 2;
the next fd poolx received would take one of them, and a later ``print()``
anywhere in that process wrote into it: into a shared-memory segment, a
channel, the progress cell (issue 19, item 3: 24 of 50 tasks saw their numpy
argument change, with no error).  So every fd poolx makes or receives that
lands below ``MIN_FD`` is moved up at once (``F_DUPFD_CLOEXEC``, then the low
one closed): a write to a closed stdio then fails with EBADF, as it does
without poolx.  (Between the kernel handing out the low number and the move, a
write from another thread could still reach it: the fds that carry other
processes' data are read-only for that reason, see ``_shm``.)

Imported by the driver and by the workers; it imports nothing of poolx.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap as _mmap
import os
import selectors
import socket
from collections.abc import Iterator

# The lowest number an fd of poolx may have: above stdin, stdout and stderr.
MIN_FD = 3


def lift(fd: int) -> int:
    """``fd`` itself if it is above stdio; otherwise a close-on-exec copy above it (``fd`` closed)."""
    if fd >= MIN_FD:
        return fd
    try:
        return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, MIN_FD)
    finally:
        os.close(fd)


def dup(fd: int) -> int:
    """A close-on-exec duplicate of ``fd``, above stdio (``os.dup`` takes the lowest free number)."""
    return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, MIN_FD)


def open_fd(path: str, flags: int) -> int:
    """``os.open`` (close-on-exec), the fd above stdio."""
    return lift(os.open(path, flags | os.O_CLOEXEC))


def lift_socket(sock: socket.socket) -> socket.socket:
    """``sock`` itself if its fd is above stdio; otherwise the same socket on a higher fd."""
    if sock.fileno() >= MIN_FD:
        return sock
    timeout = sock.gettimeout()
    moved = socket.socket(fileno=dup(sock.fileno()))
    sock.close()
    moved.settimeout(timeout)
    return moved


def socketpair() -> tuple[socket.socket, socket.socket]:
    """``socket.socketpair()``, both ends above stdio."""
    a, b = socket.socketpair()
    return lift_socket(a), lift_socket(b)


def pipe() -> tuple[int, int]:
    """``os.pipe()`` (close-on-exec), both ends above stdio."""
    r, w = os.pipe()
    return lift(r), lift(w)


@contextlib.contextmanager
def stdio_held() -> Iterator[None]:
    """Hold the free numbers among 0, 1 and 2 while something makes an fd that cannot be moved.

    (An epoll object keeps the fd it was made with; an mmap object keeps a
    duplicate of its file's fd, made on the lowest free number.)  The placeholders are
    ``O_PATH`` fds of /dev/null: a read or write through one fails with EBADF,
    as through a closed fd.
    """
    held = []
    try:
        while 0 <= (fd := _placeholder()) < MIN_FD:
            held.append(fd)
        if fd >= 0:
            os.close(fd)
        yield
    finally:
        for fd in held:
            os.close(fd)


def _placeholder() -> int:
    """An fd that reads and writes fail on, or -1 when no fd is free (EMFILE, ENFILE: the
    fd being made then fails for want of one too, with the error its caller expects)."""
    try:
        return os.open(os.devnull, getattr(os, "O_PATH", os.O_RDONLY) | os.O_CLOEXEC)
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            return -1
        raise


def selector() -> selectors.BaseSelector:
    """``selectors.DefaultSelector()``, its own fd (epoll's) above stdio."""
    with stdio_held():
        return selectors.DefaultSelector()


def mmap(fd: int, length: int, **kwargs: int) -> _mmap.mmap:
    """``mmap.mmap(fd, length, ...)``, the fd the object keeps (a duplicate) above stdio.

    (Python's mmap duplicates ``fd`` for itself, on the lowest free number, until
    3.13's ``trackfd=False``: without this, that copy of a segment's fd,
    read-write in its creator, took the place of a closed stdout.)
    """
    with stdio_held():
        return _mmap.mmap(fd, length, **kwargs)
