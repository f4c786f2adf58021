"""Framing for the one duplex channel between the driver and a worker.

Both sides import this module; it imports nothing from the driver.

A *message* is a list of frames.  Frame 0 is a small pickle (the control
record: message kind and task records); frames 1.. are raw buffers that the
control record refers to by position (out-of-band pickle-5 buffers, so a large
numpy array crosses without being copied into a pickle stream).  On the wire::

    u32 n_frames | u32 n_fds | n_frames x u64 length | frame 0 | frame 1 | ...

A buffer in shared memory (``poolx._shm``) travels as a small descriptor
frame, and the message carries ``n_fds`` file descriptors (``SCM_RIGHTS``,
sent with the message's first bytes); the reader turns each descriptor frame
into a ``_shm.Received`` holding its fd.

Reading is incremental so the driver can use non-blocking sockets in its event
loop: small messages are parsed from a staging buffer (many per ``recv``), and a
large frame is received straight into its own ``bytearray`` with ``recv_into``
(no intermediate copy).
"""

from __future__ import annotations

import array
import errno
import os
import pickle
import socket
import struct
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from ... import _shm

HEAD = _HEAD = struct.Struct("<II")
LEN = _LEN = struct.Struct("<Q")

# How much one recv() may pull into the staging buffer.  64 KiB covers a batch
# of a few hundred tiny tasks in one syscall; larger frames bypass staging.
RECV_CHUNK = 64 * 1024
# A frame at least this large is received directly into its own buffer.
DIRECT_FRAME_BYTES = 256 * 1024


# Room for the most fds one message may carry.
ANC_BYTES = socket.CMSG_SPACE(4 * 253)
# Received fds are close-on-exec, as every fd Python opens (a task's subprocess must not inherit them).
MSG_CMSG_CLOEXEC = int(getattr(socket, "MSG_CMSG_CLOEXEC", 0))
# (an int, not the enum: OR-ing socket.MSG_DONTWAIT costs ~1 us on every read)
_NONBLOCKING_FLAGS = int(socket.MSG_DONTWAIT) | MSG_CMSG_CLOEXEC


class ChannelClosed(ConnectionError):
    """The peer closed the channel (EOF) or it broke."""


class ChannelCorrupt(ChannelClosed):
    """What came through the channel is not a poolx message (a task wrote to the
    worker's socket, a peer died mid-write): the channel is dropped, never resynchronised."""


def _setting(name: str, default: float) -> float:
    """A tunable read from the environment (set before poolx starts its processes), or ``default``."""
    value = os.environ.get(name)
    if not value:
        return default
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not a number") from None
    if number <= 0:
        raise ValueError(f"{name}={value!r} must be positive")
    return number


def _memory() -> int:
    if hasattr(os, "sysconf") and "SC_PHYS_PAGES" in os.sysconf_names:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return 1 << 34


# Limits checked before anything is allocated for a message.
MAX_FRAMES = 1 << 24
# Most fds one message can carry: the kernel passes at most 253 (SCM_MAX_FD).
MAX_MESSAGE_FDS = 253
# The largest frame a peer may announce, in bytes (POOLX_MAX_FRAME_BYTES).  Not
# small: frame 0 holds every in-band pickle of a batch (a 200 MB ``bytes`` or
# list result is a 200 MB frame 0, as it is a 200 MB pickle with the stdlib),
# and a large buffer travels inline, not through shared memory, past
# ``_shm.MAX_FDS`` segments in one message or where ``_shm`` is unavailable
# (not Linux).  Such a frame costs about twice its size in the receiver (the
# frame, then the object rebuilt from it) and as much again in the sender, so
# one above a quarter of memory could not arrive anyway; a lower default would
# refuse results the stdlib delivers.  The bound rejects a claim that cannot be
# true at once; what protects memory from a plausible lie is that a frame's
# buffer grows only as its bytes arrive (FIRST_DIRECT_BYTES).
MAX_FRAME_BYTES = int(_setting("POOLX_MAX_FRAME_BYTES", _memory() // 4))
# A message that has started arriving must keep arriving: after this many
# seconds without a byte of it (POOLX_FRAME_STALL_SECONDS), the driver drops the
# channel and kills its process (a task wrote a frame header to its worker's
# socket, then nothing: its worker would wait for ever).  Progress resets the
# clock, so a slow large transfer is never cut.  Longer holds a lying worker
# (and the tasks it holds) that long; shorter risks killing a worker whose
# sending thread waits for the GIL mid-message behind a task's long C call.
FRAME_STALL_SECONDS = _setting("POOLX_FRAME_STALL_SECONDS", 30.0)
# The first buffer of a large frame; it doubles as the frame's bytes arrive (a
# large block's realloc is an mremap with glibc: no copy).  As large as one
# recv() can deliver from the driver's socket buffers.
FIRST_DIRECT_BYTES = 4 << 20


def decode_control(frame: Any) -> tuple[Any, ...]:
    """A message's first frame: the pickled control tuple, or ChannelCorrupt."""
    try:
        control = pickle.loads(frame)
    except Exception as exc:
        raise ChannelCorrupt(f"a message that is not poolx's: {type(exc).__name__}: {exc}") from exc
    if type(control) is not tuple or not control:
        raise ChannelCorrupt(f"a message that is not poolx's: {type(control).__name__}")
    return control


class Message(list):  # type: ignore[type-arg,unused-ignore]
    """The frames of one received message (a list), with the fds that came with it."""

    __slots__ = ("fds",)


def encode(frames: Sequence[Any], n_fds: int = 0) -> list[bytes | memoryview]:
    """Return the buffers to write for one message (header first)."""
    header = _HEAD.pack(len(frames), n_fds) + b"".join(_LEN.pack(_nbytes(f)) for f in frames)
    return [header, *frames]


def encode_single(frame: bytes) -> bytes:
    """One message of one frame and no fds as one bytes object: a small message goes in one send()."""
    return _HEAD.pack(1, 0) + _LEN.pack(len(frame)) + frame


def out_frames(bufs: Sequence[Any], frames: list[Any], fds: list[int], keys: dict[Any, int]) -> None:
    """Append the frames for ``bufs`` (a task's or result's buffers) to a message being built.

    A shared-memory buffer becomes a descriptor frame, and the fd it needs
    (one per segment per message: ``keys``) joins ``fds``; other buffers are
    their bytes.  Past ``_shm.MAX_FDS`` fds, buffers are sent as bytes.
    """
    for b in bufs:
        if _shm.is_shm(b):
            key = b.key()
            index = keys.get(key)
            if index is None and len(fds) < _shm.MAX_FDS and (fd := _lock_fd(b)) is not None:
                index = keys[key] = len(fds)
                fds.append(fd)
            if index is not None:
                frames.append(b.descriptor(index))
                continue
            frames.append(b.raw() if hasattr(b, "raw") else b.view())
        else:
            frames.append(b.raw() if hasattr(b, "raw") else b)


def _lock_fd(buf: Any) -> int | None:
    """The fd to send with a shared-memory buffer, or None when this process is out of fds
    (EMFILE: the buffer's bytes go instead, a copy, rather than the message failing)."""
    try:
        return int(buf.lock_fd())
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            return None
        raise


class Fds:
    """fds waiting in an outbox to go with the bytes after them; closed here once sent (or dropped)."""

    __slots__ = ("fds",)

    def __init__(self, fds: list[int]) -> None:
        self.fds = fds

    def close(self) -> None:
        fds, self.fds = self.fds, []
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass

    def __del__(self) -> None:
        self.close()


def queue(outbox: list[Any], frames: Sequence[Any], fds: list[int]) -> None:
    """Add one message (and its fds) to a non-blocking writer's outbox."""
    if fds:
        outbox.append(Fds(fds))
    outbox.extend(memoryview(b).cast("B") for b in encode(frames, len(fds)))


def write_some(sock: socket.socket, outbox: list[Any]) -> list[Any]:
    """Write what the socket takes from ``outbox``; returns what is left.

    Raises BlockingIOError/InterruptedError when nothing more fits (what was
    written is gone from the returned list only: callers keep the list they
    passed when that happens, so the queue is advanced in place instead).
    """
    while outbox:
        anc: list[Any] = []
        head = outbox[0]
        if isinstance(head, Fds):
            anc = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", head.fds))]
            start = 1
        else:
            start = 0
        end = start
        while end < len(outbox) and end - start < 64 and not isinstance(outbox[end], Fds):
            end += 1
        sent = sock.sendmsg(outbox[start:end], anc)
        if anc:
            head.close()  # delivered with the first byte
            del outbox[0]
            end -= 1
        rest = advance(outbox[:end], sent)
        outbox[:end] = rest
    return outbox


def _nbytes(buf: bytes | memoryview) -> int:
    return buf.nbytes if isinstance(buf, memoryview) else len(buf)


def send_all(sock: socket.socket, buffers: list[bytes | memoryview], fds: Sequence[int] = ()) -> int:
    """Blocking write of every buffer (the worker side), ``fds`` with the first bytes.

    The fds are closed here once sent.  Returns bytes written.
    """
    views = [memoryview(b).cast("B") for b in buffers]
    total = sum(v.nbytes for v in views)
    try:
        if fds and views:
            sent = sock.sendmsg(views[:64], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
            views = advance(views, sent)
    finally:
        for fd in fds:
            os.close(fd)
    while views:
        sent = sock.sendmsg(views[:64])
        views = advance(views, sent)
    return total


def advance(views: list[memoryview], sent: int) -> list[memoryview]:
    """Drop ``sent`` bytes from the front of a list of byte views."""
    i = 0
    while i < len(views) and sent >= views[i].nbytes:
        sent -= views[i].nbytes
        i += 1
    rest = views[i:]
    if sent and rest:
        rest[0] = rest[0][sent:]
    return rest


def drain(reader: FrameReader, handle: Callable[[Any, list[Any]], None], owner: Any,
          limit: int | None) -> None:
    """Read what a non-blocking socket has and ``handle(owner, message)`` each message.

    At most ``limit`` receives (epoll is level-triggered: what is left raises
    another event); with ``limit=None``, until the socket is empty.  Raises
    ChannelClosed at EOF.
    """
    reads = 0
    while limit is None or reads < limit:
        reads += 1
        got = reader.fill(nonblocking=True)
        while (msg := reader.next_message()) is not None:
            handle(owner, msg)
        if not got or (got < RECV_CHUNK and limit is not None):
            return


class FrameReader:
    """Incremental parser of messages arriving on one socket.

    Nothing is allocated on a peer's word alone: lengths are checked against
    MAX_FRAME_BYTES, a large frame's buffer grows as its bytes arrive, and
    ``stall`` tells how long a message that started arriving has stood still.
    """

    __slots__ = ("_direct", "_direct_len", "_direct_pos", "_fds", "_frames", "_lengths", "_n_fds", "_pos",
                 "_progress", "_sock", "_staging")

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._staging = bytearray()
        self._pos = 0  # parse position in _staging
        self._lengths: list[int] | None = None  # frame lengths of the message being read
        self._n_fds = 0  # fds that came with the message being read
        self._frames: list[bytes | bytearray] = []
        self._direct: bytearray | None = None  # large frame being received in place
        self._direct_pos = 0  # bytes of it received
        self._direct_len = 0  # bytes it will have (its buffer grows to that as they come)
        self._fds: deque[_shm.FdHold] = deque()  # received, not yet handed to a message
        self._progress = time.monotonic()  # when bytes last arrived

    def fill(self, nonblocking: bool) -> int:
        """Receive what is available; blocks for some data unless ``nonblocking``.

        Returns the number of bytes received (0 when nothing was available on a
        non-blocking read).  Raises ChannelClosed on EOF.
        """
        flags = _NONBLOCKING_FLAGS if nonblocking else MSG_CMSG_CLOEXEC
        try:
            if self._direct is not None:
                return self._fill_direct(flags)
            data, anc, _, _ = self._sock.recvmsg(RECV_CHUNK, ANC_BYTES, flags)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as exc:  # ECONNRESET and friends: the peer is gone
            raise ChannelClosed(str(exc)) from exc
        if anc:
            self._take_fds(anc)
        if not data:
            raise ChannelClosed("channel closed by peer")
        self._progress = time.monotonic()
        if self._pos:
            del self._staging[: self._pos]
            self._pos = 0
        self._staging += data
        return len(data)

    def _fill_direct(self, flags: int) -> int:
        buf = self._direct
        assert buf is not None
        if self._direct_pos == len(buf):  # full so far: double it, up to the frame's length
            buf.extend(bytes(min(len(buf), self._direct_len - len(buf))))
        with memoryview(buf) as whole, whole[self._direct_pos :] as view:
            n, anc, _, _ = self._sock.recvmsg_into([view], ANC_BYTES, flags)
        if anc:
            self._take_fds(anc)
        if n == 0:
            raise ChannelClosed("channel closed by peer")
        self._progress = time.monotonic()
        self._direct_pos += n
        return n

    def stall(self, now: float, limit: float) -> str | None:
        """If a message started arriving and no byte came for over ``limit`` seconds, what it claimed."""
        if now - self._progress <= limit or not self._partial():
            return None
        got = sum(map(len, self._frames)) + self._direct_pos + self._available()
        if self._lengths is None:
            claim = "the start of a message header"
        else:
            got += _HEAD.size + len(self._lengths) * _LEN.size
            claim = (f"a message header claiming {sum(self._lengths)} bytes in {len(self._lengths)} "
                     f"frame{'s' if len(self._lengths) > 1 else ''}")
        return f"{claim}, then nothing for {now - self._progress:.0f} s after {got} bytes of it"

    def _partial(self) -> bool:
        return self._direct is not None or self._lengths is not None or self._available() > 0

    def _take_fds(self, anc: list[tuple[int, int, bytes]]) -> None:
        for level, kind, data in anc:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds = array.array("i")
                fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
                self._fds.extend(_shm.FdHold.received(fd) for fd in fds)

    def next_message(self) -> Message | None:
        """Return the next complete message's frames, or None if incomplete."""
        while True:
            if self._direct is not None:
                if self._direct_pos < self._direct_len:
                    return None
                self._frames.append(self._direct)
                self._direct = None
            elif self._lengths is None and not self._read_header():
                return None
            assert self._lengths is not None
            if len(self._frames) == len(self._lengths):
                msg = Message(self._frames)
                self._frames, self._lengths = [], None
                if self._n_fds:
                    self._attach_fds(msg)
                return msg
            if not self._read_frame(self._lengths[len(self._frames)]):
                return None

    def _attach_fds(self, msg: Message) -> None:
        """Turn the message's descriptor frames into ``_shm.Received`` buffers holding its fds."""
        holds: list[_shm.FdHold | None] = [
            self._fds.popleft() if self._fds else None for _ in range(self._n_fds)]
        self._n_fds = 0
        for i in range(1, len(msg)):
            rec = _shm.received(msg[i], holds)
            if rec is not None:
                msg[i] = rec

    def _available(self) -> int:
        return len(self._staging) - self._pos

    def _read_header(self) -> bool:
        if self._available() < _HEAD.size:
            return False
        n, n_fds = _HEAD.unpack_from(self._staging, self._pos)
        if not 0 < n <= MAX_FRAMES or n_fds > min(n, MAX_MESSAGE_FDS):
            raise ChannelCorrupt(f"a message header claiming {n} frames and {n_fds} fds (a message has 1 to "
                                 f"{MAX_FRAMES} frames, and at most one fd per frame and {MAX_MESSAGE_FDS})")
        need = _HEAD.size + n * _LEN.size
        if self._available() < need:
            return False
        self._n_fds = n_fds
        start = self._pos + _HEAD.size
        self._lengths = [_LEN.unpack_from(self._staging, start + i * _LEN.size)[0] for i in range(n)]
        if max(self._lengths) > MAX_FRAME_BYTES:
            raise ChannelCorrupt(
                f"a frame header claiming {max(self._lengths)} bytes, over the {MAX_FRAME_BYTES}-byte bound "
                "(POOLX_MAX_FRAME_BYTES, a quarter of this machine's memory unless set)")
        self._pos += need
        return True

    def _read_frame(self, length: int) -> bool:
        have = self._available()
        if have >= length:
            # A bytearray slice (a copy) so that arrays rebuilt from it are writable.
            self._frames.append(self._staging[self._pos : self._pos + length])
            self._pos += length
            return True
        if length >= DIRECT_FRAME_BYTES:
            # Move what we have into a dedicated buffer and receive the rest in
            # place.  Sized by what arrived, not by the claim: a header alone
            # must not make this process allocate (issue 19: a forged 100 MB
            # frame allocated 100 MB, then waited for bytes that never came).
            buf = self._staging[self._pos :]
            buf.extend(bytes(min(max(FIRST_DIRECT_BYTES, have), length) - have))
            self._pos = len(self._staging)
            self._direct, self._direct_pos, self._direct_len = buf, have, length
        return False
