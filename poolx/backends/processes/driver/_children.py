"""Requests from children: what tasks and actors ask the driver on their client channels.

Methods of the ``Scheduler`` (``_loop``), on its thread.  Every child has a
client channel to the driver besides its work channel (``child/_client``):
actor handles used inside a child call through it (the driver forwards the
call to the actor's process, and the result bytes back, unread), tasks
submitted inside a child are queued here and their results go back to it,
a ref received inside a container is fetched through it, and actors meet
here to form collective groups by name.  The driver is the hub: children
never connect to each other.
"""

from __future__ import annotations

import selectors
import time
from collections.abc import Sequence
from typing import Any

from .... import _objects, _refs, _shm
from ...._errors import ActorDiedError, ObjectLostError, SerializationError, TaskCancelledError
from ...._futures import Task
from ...._serialization import describe, dumps, loads
from ....actors.directory import Actor, ActorCall, local_actor
from .. import _channel
from .. import protocol as P
from ._endpoint import Conn
from ._spawn import driver_socks
from ._state import SchedulerState


class Children(SchedulerState):
    """The Scheduler's answers to its children (a part of ``Scheduler``, see ``_loop``)."""

    def register_client(self, conn: Conn) -> None:
        self.conns.add(conn)
        self.sel.register(conn.sock, selectors.EVENT_READ, lambda k, m, c=conn: self.on_client(c, m))

    def on_client(self, conn: Conn, mask: int) -> None:
        if mask & selectors.EVENT_WRITE:
            conn.flush(self.sel)
        if mask & selectors.EVENT_READ and conn.open:
            try:
                _channel.drain(conn.reader, self.on_client_message, conn, limit=8)
            except _channel.ChannelCorrupt as exc:
                self.drop_client(conn, exc)
            except _channel.ChannelClosed:
                self.close_conn(conn)

    def on_client_message(self, conn: Conn, msg: list[Any]) -> None:
        conn.seen += 1
        control = _channel.decode_control(msg[0])
        kind = control[0]
        directory = self.backend.options.actors
        if kind == P.C_SUBMIT:
            self.submit_from_child(conn, control, msg)
            return
        if kind == P.C_GET:
            self.get_for_child(conn, control[1], control[2])
            return
        if kind == P.C_SHARE:
            future = _refs.adopt(control[1])
            if not future.done():
                conn.shared[control[1]] = future
            return
        if kind == P.C_RESOLVE:
            self.resolve_shared(conn, control, msg)
            return
        if kind == P.C_GET_ACTOR:
            _, req_id, name = control
            try:
                found = directory.get(name)
            except ValueError as exc:
                reply = P.control(P.ACTOR_INFO, req_id, False, str(exc))
            else:
                info = (found.id, found.label, found.name, found.methods)
                reply = P.control(P.ACTOR_INFO, req_id, True, info)
            conn.send(self.sel, [reply])
        elif kind == P.C_RENDEZVOUS:
            _, req_id, name, world_size, rank, timeout = control
            try:
                spec = self.rendezvous().join(name, world_size, rank, timeout)
            except (ValueError, OSError) as exc:
                reply = P.control(P.ACTOR_INFO, req_id, False, str(exc))
            else:
                reply = P.control(P.ACTOR_INFO, req_id, True, spec)
            conn.send(self.sel, [reply])
        elif kind == P.C_CALL:
            _, actor_id, records = control
            actor = directory.by_id.get(actor_id)
            elsewhere = local_actor(actor_id) if actor is None else None
            oob = 1
            for child_id, method, payload, n_oob in records:  # protocol.CallRecord
                bufs = msg[oob : oob + n_oob]
                oob += n_oob
                if elsewhere is not None:
                    self.call_elsewhere(conn, child_id, elsewhere, method, payload, bufs)
                    continue
                if actor is None:
                    self.reply_died(conn, child_id, ActorDiedError(
                        f"the actor #{actor_id} is not alive in this program: it was killed or its "
                        "executor was shut down (or its handle comes from another program)",
                        actor=f"#{actor_id}"))
                    continue
                call = ActorCall(actor, method, (), {})
                call.origin = (conn, child_id)
                call.state = (payload, bufs)
                call.bytes_out = len(payload) + sum(len(b) for b in bufs)
                self.telemetry.actor_call_submitted()
                error = self.actors.route(actor, call)
                if error is not None:
                    self.actors.fail(call, error)

    def call_elsewhere(self, conn: Conn, child_id: int, actor: Actor, method: str, payload: bytes,
                       bufs: Sequence[Any]) -> None:
        """A child calls an actor of another executor of this process (a handle made by the Ray-style
        API's executor, used in a Pool's worker, say): the call goes through that executor as if
        made here, and its result back to the child.  Calls from one child keep their order: each
        is handed to the actor (``Actor.call``) in the order read."""
        try:  # (a dead actor fails the call with its death: "its executor was shut down", say)
            args, kwargs = loads(payload, bufs) if payload else ((), {})
            future = actor.call(method, args, kwargs)
        except BaseException as exc:
            self.reply_error(conn, child_id, exc)
            return
        future.add_done_callback(lambda f: self.answer_later(conn, child_id, f))

    def resolve_shared(self, conn: Conn, control: tuple[Any, ...], msg: list[Any]) -> None:
        """The outcome of a ref a child shared (C_RESOLVE): complete the driver's stand-in."""
        _, key, status, data, n_oob, info = control
        future = conn.shared.pop(key, None)
        if future is None or future.done():
            return  # nobody holds it any more
        ok, value = P.decode_outcome(status, data, msg[1 : 1 + n_oob], info, "a ref made in a task", True)
        if ok:
            future.set_result(value)
        else:
            future.set_exception(value)

    def fail_shared(self, conn: Conn) -> None:
        """A child is gone: the refs it shared whose outcome never came fail (Ray: OwnerDiedError)."""
        shared, conn.shared = conn.shared, {}
        for future in shared.values():
            if not future.done():
                future.set_exception(ObjectLostError(
                    f"the value of this ref is lost: the process that made it ({conn.owner}, with "
                    ".remote() or an actor call inside it) exited before the value was ready.  Wait for it "
                    "there (get()) before returning it, or keep that process alive"))

    def drop_client(self, conn: Conn, exc: _channel.ChannelCorrupt) -> None:
        """A child's client channel lied (see drop_lying): close it and kill the child."""
        self.close_conn(conn)
        for w in self.workers.values():
            if w.client is conn:
                self.drop_lying(w, f"sent on its client channel {exc}", channel=False)
                return
        self.actors.drop_client(conn, exc)

    def catch_up(self, conn: Conn, sent: int) -> None:
        """Forward the actor calls a child sent before the results being read.

        A task's actor calls were sent before its result: forwarding them first
        means a call the driver makes once the result is in reaches the actor
        after them (the lecture's pattern: tasks call ``tracker.increment``, then
        the driver asks ``tracker.counts``).
        """
        deadline = time.monotonic() + 1.0
        while conn.open and conn.seen < sent and time.monotonic() < deadline:
            self.on_client(conn, selectors.EVENT_READ)

    def send_results(self, conn: Conn, records: list[Any], bufs: Sequence[Any] = ()) -> None:
        """Send a child RESULTS records (answers to its calls, tasks and refs) and their buffers.

        ``bufs`` are the records' buffers in order; a shared-memory one goes as
        a descriptor with its fd (one fd per segment in the message).
        """
        frames: list[Any] = [P.control(P.RESULTS, records, 0)]
        fds: list[int] = []
        _channel.out_frames(bufs, frames, fds, {})
        conn.send(self.sel, frames, fds)

    def close_conn(self, conn: Conn) -> None:
        self.fail_shared(conn)
        if conn.open:
            conn.open = False
            conn.outbox = []
            self.sel.unregister(conn.sock)
        if conn in self.conns:
            self.conns.discard(conn)
            driver_socks.discard(conn.sock)
            conn.sock.close()

    def submit_from_child(self, conn: Conn, control: tuple[Any, ...], msg: list[Any]) -> None:
        """Queue a task that a task or an actor submitted; its result goes back to it unread."""
        _, child_id, what, payload, n_oob, max_retries = control
        bufs = msg[1 : 1 + n_oob]
        task = Task(_Named(what), (), {})
        task.state = (0, None, payload, bufs)
        task.bytes_out = len(payload) + sum(len(b) for b in bufs)
        task.max_retries = max_retries
        task.origin = (conn, child_id)
        task.future.add_done_callback(lambda _f: self.reply_origin(task))
        self.telemetry.task_submitted()
        self.queue.append(task)

    def get_for_child(self, conn: Conn, req_id: int, ref_id: int) -> None:
        """A child asks for the value of a ref it received inside a container."""
        future = _objects.lookup(ref_id)
        if future is None:
            self.reply_error(conn, req_id, ObjectLostError(
                f"the ref #{ref_id} is no longer held in the driver: a ref inside a container stays "
                "valid while the driver holds it or the task that received it runs"))
            return
        if type(ref_id) is tuple:  # shared by a child: held by its conn until its outcome comes
            _refs.read_once(ref_id)
        future.add_done_callback(lambda f: self.answer_later(conn, req_id, f))

    def answer_later(self, conn: Conn, req_id: int, future: Any) -> None:
        """Any thread: ``future`` (a ref a child asked for, a call it made to another executor's
        actor) is done: have the loop send the answer.  Nothing once the loop has ended: its
        children are gone (a Pool terminated while its task's call was still running)."""
        backend = self.backend
        if backend is None or not conn.open:
            return
        self.incoming.append((self.reply_ref_later, (conn, req_id, future)))
        backend.wake()

    def reply_ref_later(self, args: tuple[Conn, int, Any]) -> None:
        """Scheduler thread: the ref a child asked for is done (a command: see ``request``)."""
        self.reply_ref(*args)

    def reply_ref(self, conn: Conn, req_id: int, future: Any) -> None:
        if future.cancelled():
            self.reply_error(conn, req_id, TaskCancelledError("the task of this ref was cancelled"))
            return
        error = future.exception()
        if isinstance(error, ActorDiedError):
            self.reply_died(conn, req_id, error)
            return
        if error is not None:
            self.reply_error(conn, req_id, error)
            return
        bufs: Sequence[Any]
        try:
            if isinstance(future, _objects.PutRef):
                data, bufs = future.blob  # stored once: sent as it is
            else:
                data, bufs = dumps(future.result(), _shm.EXCLUSIVE)
        except Exception as exc:
            self.reply_error(conn, req_id, SerializationError(
                f"the value of ref #{req_id} cannot be pickled to send it to the worker: {exc}"))
            return
        self.send_results(conn, [P.reply(req_id, P.OK, data, len(bufs), None)], bufs)

    def reply_error(self, conn: Conn, child_id: int, error: BaseException) -> None:
        """Send a child the error its request (a task it submitted, a ref it asked for) ended with."""
        if not conn.open:
            return
        status, data, bufs, info = P.exception_outcome(error)
        self.send_results(conn, [P.reply(child_id, status, data, len(bufs), info)], bufs)

    def reply_died(self, conn: Conn, child_id: int, error: ActorDiedError) -> None:
        info = (str(error), error.actor, error.exitcode, error.pid)
        self.send_results(conn, [P.reply(child_id, P.ACTOR_DIED, b"", 0, info)])

    def reply_origin(self, task: Task) -> None:
        """A task from a child ended without a result to forward: send the child its error."""
        if task.origin is None:
            return
        conn, child_id = task.origin
        task.origin = None
        future = task.future
        error = (TaskCancelledError(f"{describe(task.fn)} was cancelled: its executor was shut down")
                 if future.cancelled() else future.exception())
        if error is not None:
            self.reply_error(conn, child_id, error)

    def rendezvous(self) -> Any:
        """Where this executor's actors meet to form collective groups by name (made at first use)."""
        if self.collectives is None:
            # Imported here: the collective layer (a front end's, over shared
            # memory) is loaded only by executors whose actors form groups.
            from ....collective import Rendezvous

            self.collectives = Rendezvous()
        return self.collectives


class _Named:
    """The ``fn`` of a task submitted in a child: the driver knows only its name."""

    __module__ = ""

    def __init__(self, qualname: str) -> None:
        self.__qualname__ = qualname

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"{self.__qualname__} runs in a worker only")
