"""Framing for the one duplex channel between the driver and a worker.

Both sides import this module; it imports nothing from the driver.

A *message* is a list of frames.  Frame 0 is a small pickle (the control
record: message kind and task records); frames 1.. are raw buffers that the
control record refers to by position (out-of-band pickle-5 buffers, so a large
numpy array crosses without being copied into a pickle stream).  On the wire::

    u32 n_frames | u32 reserved | n_frames x u64 length | frame 0 | frame 1 | ...

Reading is incremental so the driver can use non-blocking sockets in its event
loop: small messages are parsed from a staging buffer (many per ``recv``), and a
large frame is received straight into its own ``bytearray`` with ``recv_into``
(no intermediate copy).
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Sequence
from typing import Any

HEAD = _HEAD = struct.Struct("<II")
LEN = _LEN = struct.Struct("<Q")

# How much one recv() may pull into the staging buffer.  64 KiB covers a batch
# of a few hundred tiny tasks in one syscall; larger frames bypass staging.
RECV_CHUNK = 64 * 1024
# A frame at least this large is received directly into its own buffer.
DIRECT_FRAME_BYTES = 256 * 1024


class ChannelClosed(ConnectionError):
    """The peer closed the channel (EOF) or it broke."""


def encode(frames: Sequence[bytes | memoryview]) -> list[bytes | memoryview]:
    """Return the buffers to write for one message (header first)."""
    header = _HEAD.pack(len(frames), 0) + b"".join(_LEN.pack(_nbytes(f)) for f in frames)
    return [header, *frames]


def _nbytes(buf: bytes | memoryview) -> int:
    return buf.nbytes if isinstance(buf, memoryview) else len(buf)


def send_all(sock: socket.socket, buffers: list[bytes | memoryview]) -> int:
    """Blocking write of every buffer (the worker side). Returns bytes written."""
    views = [memoryview(b).cast("B") for b in buffers]
    total = sum(v.nbytes for v in views)
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
    """Incremental parser of messages arriving on one socket."""

    __slots__ = ("_direct", "_direct_pos", "_frames", "_lengths", "_pos", "_sock", "_staging")

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._staging = bytearray()
        self._pos = 0  # parse position in _staging
        self._lengths: list[int] | None = None  # frame lengths of the message being read
        self._frames: list[bytes | bytearray] = []
        self._direct: bytearray | None = None  # large frame being received in place
        self._direct_pos = 0

    def fill(self, nonblocking: bool) -> int:
        """Receive what is available; blocks for some data unless ``nonblocking``.

        Returns the number of bytes received (0 when nothing was available on a
        non-blocking read).  Raises ChannelClosed on EOF.
        """
        flags = socket.MSG_DONTWAIT if nonblocking else 0
        try:
            if self._direct is not None:
                view = memoryview(self._direct)[self._direct_pos :]
                n = self._sock.recv_into(view, 0, flags)
                if n == 0:
                    raise ChannelClosed("channel closed by peer")
                self._direct_pos += n
                return n
            data = self._sock.recv(RECV_CHUNK, flags)
        except (BlockingIOError, InterruptedError):
            return 0
        except OSError as exc:  # ECONNRESET and friends: the peer is gone
            raise ChannelClosed(str(exc)) from exc
        if not data:
            raise ChannelClosed("channel closed by peer")
        if self._pos:
            del self._staging[: self._pos]
            self._pos = 0
        self._staging += data
        return len(data)

    def next_message(self) -> list[bytes | bytearray] | None:
        """Return the next complete message's frames, or None if incomplete."""
        while True:
            if self._direct is not None:
                if self._direct_pos < len(self._direct):
                    return None
                self._frames.append(self._direct)
                self._direct = None
            elif self._lengths is None and not self._read_header():
                return None
            assert self._lengths is not None
            if len(self._frames) == len(self._lengths):
                frames, self._frames, self._lengths = self._frames, [], None
                return frames
            if not self._read_frame(self._lengths[len(self._frames)]):
                return None

    def _available(self) -> int:
        return len(self._staging) - self._pos

    def _read_header(self) -> bool:
        if self._available() < _HEAD.size:
            return False
        n, _ = _HEAD.unpack_from(self._staging, self._pos)
        need = _HEAD.size + n * _LEN.size
        if self._available() < need:
            return False
        start = self._pos + _HEAD.size
        self._lengths = [_LEN.unpack_from(self._staging, start + i * _LEN.size)[0] for i in range(n)]
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
            # Move what we have into a dedicated buffer and receive the rest in place.
            buf = bytearray(length)
            buf[:have] = self._staging[self._pos :]
            self._pos = len(self._staging)
            self._direct, self._direct_pos = buf, have
        return False
