"""A child process's connection to its driver, for actor handles used inside it.

Every worker and actor process gets, besides its work channel, a *client
channel*: a socketpair to the driver's scheduler, which forwards each call to
the actor's process and the result back (the driver is the hub: children never
connect to each other, and nothing listens on an address).

Calls are sent by the calling thread; a reader thread, started at the first
call, completes the futures.  Imported by children only; it never imports the
driver's modules (the messages are ``protocol``'s).
"""

from __future__ import annotations

import itertools
import pickle
import socket
import threading
from typing import Any

from .... import _context, _shm
from .... import _serialization as ser
from ...._errors import PoolxError, SerializationError
from ...._futures import Future
from ...._objects import dependencies, send_resolved, when_done
from ....actors.handle import ActorHandle
from .. import _channel
from .. import protocol as P

# How long get_actor() and init_collective_group() wait for the driver's answer (_ask).
GET_ACTOR_TIMEOUT = 60.0


class ChildClient:
    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(True)
        self.sock = sock
        self.lock = threading.Lock()  # the socket's write side, and ``pending``
        self.ids = itertools.count(1)
        self.pending: dict[int, tuple[Future[Any], str, Any]] = {}  # (future, what, buffers kept)
        self.reader: threading.Thread | None = None
        self.closed: str | None = None
        self.sent = 0  # messages sent; reported with each batch of results (see Worker.flush)

    def call(self, actor_id: int, label: str, method: str, args: tuple[Any, ...],
             kwargs: dict[str, Any]) -> Future[Any]:
        what = f"{label.split('#')[0]}.{method}"
        if args or kwargs:
            try:
                payload, bufs = ser.dumps((args, kwargs), _shm.PRIVATE)
            except Exception as exc:
                raise SerializationError(
                    f"cannot pickle the arguments of {what}(): {type(exc).__name__}: {exc}"
                ) from exc
        else:
            payload, bufs = b"", ()
        future: Future[Any] = Future()
        future.set_running_or_notify_cancel()
        call_id = next(self.ids)
        control = P.control(P.C_CALL, actor_id, [(call_id, method, payload, len(bufs))])
        self._send(call_id, (future, what), [control], bufs)
        return future

    def submit(self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], max_retries: int) -> Future[Any]:
        """A task submitted inside this process: the driver queues it on this executor.

        Futures among the arguments (of tasks submitted here) are waited for
        first, without blocking the caller; the result comes back here.
        """
        future: Future[Any] = Future()
        future.set_running_or_notify_cancel()
        deps = dependencies(args, kwargs)
        if not deps:
            self._submit(future, fn, args, kwargs, max_retries)
            return future

        def release() -> None:
            error = send_resolved(deps, args, kwargs, True, ser.describe(fn),
                                  lambda a, k: self._submit(future, fn, a, k, max_retries))
            if error is not None:
                future.set_exception(error)

        when_done(deps, release)
        return future

    def _submit(self, future: Future[Any], fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                max_retries: int) -> None:
        what = ser.describe(fn)
        try:
            # Submitted with the Ray-style API: large arguments read-only, as in Ray.
            payload, bufs = ser.dumps((fn, args, kwargs), _shm.READONLY)
        except Exception as exc:
            raise SerializationError(
                f"cannot pickle a task calling {what} submitted in a worker: {type(exc).__name__}: {exc}"
            ) from exc
        req_id = next(self.ids)
        control = P.control(P.C_SUBMIT, req_id, what, payload, len(bufs), max_retries)
        self._send(req_id, (future, what), [control], bufs)

    def fetch(self, ref: Future[Any]) -> None:
        """Ask the driver for the value of a ref received inside a container (a ChildRef)."""
        req_id = next(self.ids)
        control = P.control(P.C_GET, req_id, ref.ref_id)  # type: ignore[attr-defined]
        try:
            self._send(req_id, (ref, f"ref #{ref.ref_id}"), [control])  # type: ignore[attr-defined]
        except BaseException as exc:
            ref.set_exception(exc)

    def lend_slot(self) -> Any:
        """Before a wait in a task: lend this worker's slot (None in an actor, or off the main thread)."""
        worker = _context.here.worker
        if worker is None or threading.current_thread() is not threading.main_thread() or not worker.running:
            return None
        return worker.block()

    def get_actor(self, name: str) -> Any:
        return ActorHandle(*self._ask(f"get_actor({name!r})", P.C_GET_ACTOR, name))

    def rendezvous(self, name: str, world_size: int, rank: int, timeout: float | None) -> Any:
        """Join the collective group ``name`` by name: the driver answers with where it meets."""
        return self._ask(f"init_collective_group(group_name={name!r})", P.C_RENDEZVOUS,
                         name, world_size, rank, timeout)

    def _ask(self, what: str, kind: int, *fields: Any) -> Any:
        """Ask the driver (``kind``, a request id, ``fields``) and wait for its ACTOR_INFO answer:
        its value, or the ValueError it reports."""
        future: Future[Any] = Future()
        future.set_running_or_notify_cancel()
        req_id = next(self.ids)
        self._send(req_id, (future, what), [P.control(kind, req_id, *fields)])
        try:
            ok, info = future.result(GET_ACTOR_TIMEOUT)
        except TimeoutError:
            raise PoolxError(f"the driver did not answer {what} within {GET_ACTOR_TIMEOUT:.0f} s") from None
        if not ok:
            raise ValueError(info)
        return info

    def _send(self, ref: int, entry: tuple[Future[Any], str], frames: list[Any], bufs: Any = ()) -> None:
        fds: list[int] = []
        if bufs:
            _channel.out_frames(bufs, frames, fds, {})
        with self.lock:
            if self.closed is not None:
                _channel.Fds(fds).close()
                raise PoolxError(self.closed)
            # The buffers stay referred to until the answer: a segment sent from
            # here must not be reused while the call may still read it.
            self.pending[ref] = (*entry, bufs)
            if self.reader is None:
                self.reader = threading.Thread(target=self._read, name="poolx-client", daemon=True)
                self.reader.start()
            try:
                _channel.send_all(self.sock, _channel.encode(frames, len(fds)), fds)
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
                if control[0] == P.RESULTS:
                    self._on_results(control[1], msg)
                elif control[0] == P.ACTOR_INFO:
                    _, req_id, ok, info = control
                    with self.lock:
                        future = self.pending.pop(req_id)[0]
                    future.set_result((ok, info))
        except _channel.ChannelClosed:
            why = "the connection to the driver closed before the answer came"
        except Exception as exc:  # an answer this process cannot read: fail the calls, never hang them
            why = f"an answer from the driver could not be read ({type(exc).__name__}: {exc})"
        with self.lock:
            self.closed = "the connection to the driver is closed"
            pending, self.pending = self.pending, {}
        for future, *_ in pending.values():
            future.set_exception(PoolxError(why))

    def _on_results(self, records: list[Any], msg: list[Any]) -> None:
        oob = 1
        for call_id, status, data, n_oob, _t0, _t1, info, _u, _p in records:  # protocol.ResultRecord
            bufs = msg[oob : oob + n_oob]
            oob += n_oob
            with self.lock:
                entry = self.pending.pop(call_id, None)
            if entry is None:
                continue
            future, what, _ = entry
            ok, value = P.decode_outcome(status, data, bufs, info, what, True)
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
