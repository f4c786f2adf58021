"""A child process's connection to its driver, for actor handles used inside it.

Every worker and actor process gets, besides its work channel, a *client
channel*: a socketpair to the driver's scheduler, which forwards each call to
the actor's process and the result back (the driver is the hub: children never
connect to each other, and nothing listens on an address).

Calls are sent by the calling thread; a reader thread, started at the first
call, completes the futures.  Imported by children only; it never imports the
driver's modules.
"""

from __future__ import annotations

import itertools
import pickle
import socket
import threading
from typing import Any

from ... import _serialization as ser
from ..._errors import PoolxError, SerializationError
from ..._futures import Future
from . import _channel
from . import _worker as W

# How long get_actor() waits for the driver's answer.
GET_ACTOR_TIMEOUT = 60.0


class ChildClient:
    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(True)
        self.sock = sock
        self.lock = threading.Lock()  # the socket's write side, and ``pending``
        self.ids = itertools.count(1)
        self.pending: dict[int, tuple[Future[Any], str]] = {}
        self.reader: threading.Thread | None = None
        self.closed: str | None = None
        self.sent = 0  # messages sent; reported with each batch of results (see Worker.flush)

    def call(self, actor_id: int, label: str, method: str, args: tuple[Any, ...],
             kwargs: dict[str, Any]) -> Future[Any]:
        what = f"{label.split('#')[0]}.{method}"
        if args or kwargs:
            try:
                payload, bufs = ser.dumps((args, kwargs))
            except Exception as exc:
                raise SerializationError(
                    f"cannot pickle the arguments of {what}(): {type(exc).__name__}: {exc}"
                ) from exc
        else:
            payload, bufs = b"", ()
        future: Future[Any] = Future()
        future.set_running_or_notify_cancel()
        call_id = next(self.ids)
        control = pickle.dumps((W.C_CALL, actor_id, [(call_id, method, payload, len(bufs))]), ser.PROTOCOL)
        self._send(call_id, (future, what), [control, *(b.raw() for b in bufs)])
        return future

    def get_actor(self, name: str) -> Any:
        from ..._actors import ActorHandle

        future: Future[Any] = Future()
        future.set_running_or_notify_cancel()
        req_id = next(self.ids)
        self._send(req_id, (future, "get_actor"), [pickle.dumps((W.C_GET_ACTOR, req_id, name))])
        try:
            ok, info = future.result(GET_ACTOR_TIMEOUT)
        except TimeoutError:
            raise PoolxError(f"the driver did not answer get_actor({name!r}) within "
                             f"{GET_ACTOR_TIMEOUT:.0f} s") from None
        if not ok:
            raise ValueError(info)
        return ActorHandle(*info)

    def _send(self, ref: int, entry: tuple[Future[Any], str], frames: list[Any]) -> None:
        with self.lock:
            if self.closed is not None:
                raise PoolxError(self.closed)
            self.pending[ref] = entry
            if self.reader is None:
                self.reader = threading.Thread(target=self._read, name="poolx-client", daemon=True)
                self.reader.start()
            try:
                _channel.send_all(self.sock, _channel.encode(frames))
                self.sent += 1
            except OSError as exc:
                del self.pending[ref]
                raise PoolxError(f"the connection to the driver is closed: {exc}") from exc

    def _read(self) -> None:
        reader = _channel.FrameReader(self.sock)
        try:
            while True:
                msg = reader.next_message()
                if msg is None:
                    reader.fill(nonblocking=False)
                    continue
                control = pickle.loads(msg[0])
                if control[0] == W.RESULTS:
                    self._on_results(control[1], msg)
                elif control[0] == W.ACTOR_INFO:
                    _, req_id, ok, info = control
                    with self.lock:
                        future, _ = self.pending.pop(req_id)
                    future.set_result((ok, info))
        except _channel.ChannelClosed:
            pass
        with self.lock:
            self.closed = "the connection to the driver is closed"
            pending, self.pending = self.pending, {}
        for future, _ in pending.values():
            future.set_exception(PoolxError("the connection to the driver closed before the answer came"))

    def _on_results(self, records: list[Any], msg: list[Any]) -> None:
        oob = 1
        for call_id, status, data, n_oob, _t0, _t1, info, _u, _p in records:
            bufs = msg[oob : oob + n_oob]
            oob += n_oob
            with self.lock:
                entry = self.pending.pop(call_id, None)
            if entry is None:
                continue
            future, what = entry
            ok, value = W.outcome(status, data, bufs, info, what)
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
