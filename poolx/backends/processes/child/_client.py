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

import functools
import itertools
import os
import pickle
import socket
import threading
from collections import deque
from typing import Any

from .... import _context, _shm
from .... import _serialization as ser
from ...._errors import PoolxError, SerializationError, TaskCancelledError
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
        # Names the refs this process shares (see share): unique among the driver's children.
        self.token = int.from_bytes(os.urandom(8), "little")
        # Calls waiting for refs among their arguments, and the later calls to the same actor
        # (kept back so that they reach it in the order they were made), by actor id.
        self.held: dict[int, deque[tuple[Future[Any], list[Any], tuple[Any, ...]]]] = {}
        self.hold_lock = threading.Lock()

    def call(self, actor_id: int, label: str, method: str, args: tuple[Any, ...],
             kwargs: dict[str, Any]) -> Future[Any]:
        """Call an actor through the driver; refs among the top-level arguments are waited for
        first (without blocking the caller) and replaced by their values, as in Ray."""
        future: Future[Any] = Future()
        future.set_running_or_notify_cancel()
        deps = dependencies(args, kwargs)
        with self.hold_lock:  # (a release in progress sends under it: nothing overtakes it)
            hold = bool(deps) or actor_id in self.held
            if hold:
                self.held.setdefault(actor_id, deque()).append(
                    (future, deps, (actor_id, label, method, args, kwargs)))
        if hold:
            when_done(deps, lambda: self._release(actor_id))
            return future
        self._call(future, actor_id, label, method, args, kwargs)
        return future

    def _release(self, actor_id: int) -> None:
        """Send the held calls to ``actor_id`` whose arguments are ready, in the order they were made."""
        while True:
            with self.hold_lock:
                queue = self.held.get(actor_id)
                if not queue or not all(d.done() for d in queue[0][1]):
                    return
                future, deps, call = queue.popleft()
                if not queue:
                    del self.held[actor_id]
                # Sent under the lock: another thread releasing the same actor's calls waits.
                what = f"{call[1].split('#')[0]}.{call[2]}()"
                send = functools.partial(self._call, future, *call[:3])
                error = send_resolved(deps, call[3], call[4], True, what, send)
            if error is not None:
                future.set_exception(error)

    def _call(self, future: Future[Any], actor_id: int, label: str, method: str,
              args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
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
        call_id = next(self.ids)
        control = P.control(P.C_CALL, actor_id, [(call_id, method, payload, len(bufs))])
        self._send(call_id, (future, what), [control], bufs)

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

    def share(self, future: Any) -> tuple[int, int]:
        """A future made here leaves this process unfinished (returned by a task, passed inside a
        call): tell the driver, which holds a stand-in under the key returned, and send it the
        outcome once there is one.  The key travels in place of the future (``_refs``)."""
        key: tuple[int, int] | None = getattr(future, "_poolx_ref_id", None)
        first = key is None
        if key is None:
            key = future._poolx_ref_id = (self.token, next(self.ids))
        # Sent before the message that carries the key: the driver reads this channel in order,
        # and the results of a task after the client messages it sent (Worker.flush counts them).
        self._post([P.control(P.C_SHARE, key)])
        if first:
            future.add_done_callback(lambda f, k=key: self._resolve(k, f))
        return key

    def _resolve(self, key: tuple[int, int], future: Any) -> None:
        """A future this process shared is done: send the driver its outcome."""
        bufs: Any = ()
        try:
            if future.cancelled():
                raise TaskCancelledError("the task of this ref was cancelled")
            error = future.exception()
            if error is None:
                data, bufs = ser.dumps(future.result(), _shm.EXCLUSIVE)
                status, info = P.OK, None
            else:
                status, data, bufs, info = P.exception_outcome(error)
        except Exception as exc:
            if not isinstance(exc, TaskCancelledError):
                exc = SerializationError(f"the value of a ref made in this worker cannot be pickled "
                                         f"to send it to the driver: {type(exc).__name__}: {exc}")
            status, data, bufs, info = P.exception_outcome(exc)
        try:
            self._post([P.control(P.C_RESOLVE, key, status, data, len(bufs), info)], bufs)
        except PoolxError:
            pass  # the driver is gone, or this process is ending: it fails the ref (close_conn)

    def _post(self, frames: list[Any], bufs: Any = (),
              answer: tuple[int, tuple[Future[Any], str]] | None = None) -> None:
        """Send a message; with ``answer`` (its request id and what waits for the reply), the
        reply is expected: it is registered first, and the reader thread started."""
        fds: list[int] = []
        if bufs:
            _channel.out_frames(bufs, frames, fds, {})
        with self.lock:
            if self.closed is not None:
                _channel.Fds(fds).close()
                raise PoolxError(self.closed)
            if answer is not None:
                # The buffers stay referred to until the answer: a segment sent from
                # here must not be reused while the call may still read it.
                self.pending[answer[0]] = (*answer[1], bufs)
                if self.reader is None:
                    self.reader = threading.Thread(target=self._read, name="poolx-client", daemon=True)
                    self.reader.start()
            try:
                _channel.send_all(self.sock, _channel.encode(frames, len(fds)), fds)
                self.sent += 1
            except OSError as exc:
                if answer is not None:
                    del self.pending[answer[0]]
                raise PoolxError(f"the connection to the driver is closed: {exc}") from exc

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
        self._post(frames, bufs, (ref, entry))

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
