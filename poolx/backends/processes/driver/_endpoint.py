"""The driver's end of one channel to a child: a non-blocking socket and its outbox.

One class for the three kinds of channel the scheduler thread watches (a
task worker's, an actor's, a child's client channel), so the non-blocking
write path is written once: ``send`` queues a message and writes what the
socket takes, ``flush`` writes more when the selector says there is room,
and both watch for room (EVENT_WRITE) only while something is left to write.
A slow reader never stalls the loop or the other channels.

An actor's channel is also written by the threads that call it (under the
actor's lock, see ``_actors``): they use ``write`` and ask the loop to
watch for room.
"""

from __future__ import annotations

import selectors
import socket
from typing import Any

from .. import _channel


class Endpoint:
    """A channel's driver end: ``sock`` (non-blocking), its ``reader`` and ``outbox``."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reader = _channel.FrameReader(sock)
        self.outbox: list[Any] = []
        self.writing = False  # the selector watches it for room (EVENT_WRITE)
        self.open = True  # registered with the selector, and read
        # The selector watches it for input (EVENT_READ); False while a caller's
        # thread reads it itself (a task worker's: ``_direct``).
        self.reading = True
        self.watcher: Any = None  # its selector key's data while it is not registered

    def write(self) -> None:
        """Write as much of the outbox as the socket takes."""
        try:
            _channel.write_some(self.sock, self.outbox)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:  # the process is gone; its sentinel will tell
            self.outbox = []

    def send(self, sel: selectors.BaseSelector, frames: list[Any], fds: list[int] | None = None) -> None:
        """Scheduler thread: queue one message and write what fits."""
        if not self.open:
            _channel.Fds(fds or []).close()
            return
        _channel.queue(self.outbox, frames, fds or [])
        self.flush(sel)

    def flush(self, sel: selectors.BaseSelector) -> None:
        """Scheduler thread: write what fits; watch for room while something is left."""
        self.write()
        want_write = bool(self.outbox)
        if want_write != self.writing and self.open:
            self.writing = want_write
            self.watch(sel)

    def watch(self, sel: selectors.BaseSelector) -> None:
        """Under the scheduler's lock: have the selector watch what is wanted now
        (input unless a caller reads it, room while the outbox holds something):
        register, modify or unregister the socket."""
        events = selectors.EVENT_READ if self.reading else 0
        if self.writing:
            events |= selectors.EVENT_WRITE
        key = sel.get_map().get(self.sock)
        if key is None:
            if events:
                sel.register(self.sock, events, self.watcher)
        elif not events:
            self.watcher = key.data
            sel.unregister(self.sock)
        elif events != key.events:
            sel.modify(self.sock, events, key.data)


class Conn(Endpoint):
    """The driver's end of a child's client channel (actor handles, nested tasks, refs)."""

    def __init__(self, sock: socket.socket, owner: str) -> None:
        sock.setblocking(False)
        super().__init__(sock)
        self.owner = owner
        self.seen = 0  # messages read from it
        # The refs its child shared whose outcome has not come yet (``_refs.adopt``), by key: held
        # until it comes (a child may be waiting for one), failed if the child goes first.
        self.shared: dict[Any, Any] = {}
