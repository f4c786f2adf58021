"""The wire protocol between the driver and its children: what each message says.

Imported by both sides (``driver/`` and ``child/``), which never import each
other.  Framing (how a message's frames and fds cross a socket) is
``_channel``'s; the progress cell and results log a child shares with the
driver through a file are ``_cell``'s.  This module says what goes in the
frames:

- a message's frame 0 is a pickled *control* tuple, ``(kind, *fields)``,
  built by ``control`` and read back with ``_channel.decode_control``; the
  fields of each kind are listed below;
- frames 1.. are the out-of-band buffers of the records in it, in order
  (each record says how many are its own: ``n_oob``);
- records travel as plain tuples in the field order of the NamedTuples
  below (``TaskRecord``, ``CallRecord``, ``ResultRecord``).  A NamedTuple
  names the fields for readers and for code off the hot path; the hot paths
  build and unpack plain tuples in the same order, because a NamedTuple
  pickles about ten times slower than a tuple (it goes through
  ``__reduce__``) and the tasks of a batch travel by the thousand;
- an outcome (of a task, an actor call, a child's request) is encoded once
  (``exception_outcome`` for an error; the worker pickles a value itself)
  and decoded once (``decode_outcome``), whichever side reads it.

Messages (``kind``, then fields)::

  driver -> task worker   TASKS evict records   evict: function keys to forget;
                                                records: TaskRecords
                          STOP                  run what was sent, then exit
                          ACK_BLOCKED           every task sent before this was taken back
  driver -> actor         CALLS records         CallRecords
                          STOP
  child -> driver         READY pid
                          INIT_FAILED type message traceback [pickled exception: actors]
                          RESULTS records client_calls
                                                ResultRecords; client_calls: messages the
                                                child sent on its client channel so far
                          RETIRING pid          over its memory cap: it exits after this
                          BLOCKED task_id       its task waits in get(): it lends its slot
                          UNBLOCKED task_id
  child -> driver, on the child's client channel (actor handles, nested tasks, refs):
                          C_CALL actor_id records        CallRecords
                          C_GET_ACTOR req_id name
                          C_SUBMIT req_id what payload n_oob max_retries
                          C_GET req_id ref_id
                          C_RENDEZVOUS req_id name world_size rank timeout
                          C_SHARE key                    no answer
                          C_RESOLVE key status data n_oob info   no answer
  driver -> child, on its client channel:
                          RESULTS records 0     answers to its calls, tasks and refs
                          ACTOR_INFO req_id ok info      answer to C_GET_ACTOR, C_RENDEZVOUS
"""

from __future__ import annotations

import pickle
import traceback
from typing import Any, NamedTuple

from ... import _serialization as ser
from ..._errors import (
    ActorDiedError,
    DeserializationError,
    RemoteError,
    RemoteTraceback,
    SerializationError,
)

# -- message kinds (frame 0 is a pickled tuple whose first item is the kind) -------

TASKS, STOP, CALLS = 1, 2, 3  # driver -> worker (TASKS) or actor (CALLS)
ACK_BLOCKED = 4  # driver -> worker: every task sent before this one was taken back
READY, INIT_FAILED, RESULTS = 11, 12, 13  # worker or actor -> driver
RETIRING = 14  # worker -> driver: over its memory cap, it exits after this message
# A task waiting in get()/wait() lends its worker's slot (see child/_worker's Worker.block):
BLOCKED, UNBLOCKED = 15, 16  # worker -> driver
# On a child's client channel (handles used inside tasks and actors):
C_CALL, C_GET_ACTOR, C_SUBMIT, C_GET = 21, 22, 24, 25  # child -> driver
C_RENDEZVOUS = 26  # child -> driver: an actor joins a collective group by name (init_collective_group)
# child -> driver: a ref made in the child leaves it unfinished (shared under a key), and its outcome
C_SHARE, C_RESOLVE = 27, 28
ACTOR_INFO = 23  # driver -> child: the answer to C_GET_ACTOR or C_RENDEZVOUS

# -- outcome status codes (ResultRecord.status) -------------------------------------

OK, RAISED, UNPICKLABLE_EXCEPTION, BAD_TASK, BAD_RESULT, ACTOR_DIED = 0, 1, 2, 3, 4, 5


# -- records ---------------------------------------------------------------------------


class TaskRecord(NamedTuple):
    """One task of a TASKS message (a plain tuple on the wire, in this order)."""

    task_id: int
    key: int  # the function's key in the worker's cache; 0: ``payload`` holds (fn, args, kwargs)
    fn_bytes: bytes | None  # the pickled function, the first time a worker gets ``key``
    payload: bytes  # pickled (args, kwargs), or (fn, args, kwargs)
    n_oob: int  # out-of-band buffers of the payload, the next frames of the message
    skip: dict[int, tuple[Any, ...]] | None  # map chunk items not to run again (poolx._chunks)


class CallRecord(NamedTuple):
    """One actor call of a CALLS or C_CALL message (a plain tuple on the wire)."""

    call_id: int
    method: str
    payload: bytes  # pickled (args, kwargs), b"" for a call without arguments
    n_oob: int


class ResultRecord(NamedTuple):
    """One outcome of a RESULTS message, and of a results log (a plain tuple on the wire).

    ``t_start``..``t_end`` spans unpickling the arguments and the call;
    ``s_unpickle`` is the unpickling part, ``s_pickle`` the time spent
    pickling the result after ``t_end``.  ``info`` depends on ``status``:
    None (OK), (type name, message, traceback) for an error, plus what could
    not be pickled for BAD_RESULT, and (message, actor, exitcode, pid) for
    ACTOR_DIED.
    """

    req_id: int  # the task, call or request it answers
    status: int
    data: bytes
    n_oob: int
    t_start: float
    t_end: float
    info: Any
    s_unpickle: float
    s_pickle: float


def control(kind: int, *fields: Any) -> bytes:
    """Frame 0 of a message: its kind and fields, pickled (the one encoder of control records)."""
    return pickle.dumps((kind, *fields), ser.PROTOCOL)


STOP_FRAME = control(STOP)


def reply(req_id: int, status: int, data: bytes, n_oob: int, info: Any) -> tuple[Any, ...]:
    """A ResultRecord (as a plain tuple) for an answer the driver makes itself: no timings."""
    return (req_id, status, data, n_oob, 0.0, 0.0, info, 0.0, 0.0)


# -- outcomes ---------------------------------------------------------------------------

# A worker's traceback text is cut to this many characters (its start and its
# end, where the exception is): a 10 MB message must not travel twice.
MAX_TRACEBACK = 64 * 1024


def error_info(exc: BaseException) -> tuple[str, str, str]:
    """(type name, message, formatted traceback) of an exception being handled."""
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    if len(tb) > MAX_TRACEBACK:
        half = MAX_TRACEBACK // 2
        tb = f"{tb[:half]}\n[... {len(tb) - 2 * half} characters of the traceback left out ...]\n{tb[-half:]}"
    try:
        message = str(exc)
    except BaseException:
        message = "<str() of the exception failed>"
    return ser.describe(type(exc)), message, tb


def forget_traceback(exc: BaseException) -> None:
    """Let an exception's frames go (its text was formatted already), if it can be changed."""
    try:
        exc.__traceback__ = None
    except AttributeError:  # an exception that cannot be changed (a frozen dataclass)
        pass


def exception_outcome(exc: BaseException) -> tuple[int, bytes, Any, tuple[str, str, str]]:
    """(status, data, buffers, info) of an error outcome: the exception pickled if it can be."""
    info = error_info(exc)
    forget_traceback(exc)  # the text is in info
    try:
        data, bufs = ser.dumps(exc)
    except BaseException:
        return UNPICKLABLE_EXCEPTION, b"", (), info
    return RAISED, data, bufs, info


def decode_outcome(status: int, data: Any, bufs: list[Any], info: Any, what: Any,
                   actor: bool) -> tuple[bool, Any]:
    """Decode one outcome into (ok, value or exception); the one decoder, for both sides.

    ``what`` names the task or call in messages: a name ("Counter.increment"),
    or the task's function, described only if the outcome is an error (the
    driver decodes every task's result through here).  ``actor`` says whether
    it came from an actor (the messages say where it failed: "in the actor",
    "in the worker").
    """
    if status == OK:
        if actor and not data:  # a call that returned None
            return True, None
        try:
            return True, ser.loads(data, bufs)
        except BaseException as exc:
            where = "" if actor else " in the driver"
            error: BaseException = DeserializationError(
                f"the result of {_name(what)} could not be unpickled{where}: {type(exc).__name__}: {exc}")
            error.__cause__ = exc
            return False, error
    if status == ACTOR_DIED:
        message, name, exitcode, pid = info
        return False, ActorDiedError(message, actor=name, exitcode=exitcode, pid=pid)
    if status == RAISED:
        try:
            error = ser.loads(data, bufs)
        except BaseException:
            error = RemoteError(*info[:3])
    elif status == UNPICKLABLE_EXCEPTION:
        error = RemoteError(*info[:3])
    elif status == BAD_TASK:
        if actor:
            error = DeserializationError(
                f"the actor could not unpickle the arguments of {_name(what)}: {info[0]}: {info[1]}. "
                "An argument's class may not be importable in the actor process, or its "
                "__reduce__/__setstate__ raised.")
        else:
            error = DeserializationError(
                f"the worker could not unpickle the task {_name(what)}: {info[0]}: {info[1]}. "
                "An argument's class may not be importable in the worker (define it in a module, "
                "not in __main__ of a notebook), or its __reduce__/__setstate__ raised."
            )
    else:  # BAD_RESULT
        where = "actor" if actor else "worker"
        error = SerializationError(
            f"the result of {_name(what)} (a {info[3]}) could not be pickled in the {where} "
            f"to send it back: {info[0]}: {info[1]}. Return plain data instead.")
    error.__cause__ = RemoteTraceback(info[2])
    return False, error


def _name(what: Any) -> str:
    return what if isinstance(what, str) else ser.describe(what)


# -- what a child gets at start ---------------------------------------------------------


class FdForChild:
    """An fd to hand to a child at start, under any start method.

    Under spawn/forkserver the Process arguments are pickled while the child is
    being started, which is when multiprocessing can duplicate an fd into it;
    under fork the object is inherited as is and the fd number stays valid.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def __reduce__(self) -> tuple[object, ...]:
        from multiprocessing.reduction import DupFd

        return (_detach, (DupFd(self.fd),))

    def take(self) -> int:
        return self.fd


def _detach(dup: Any) -> int:
    return int(dup.detach())


class WorkerSetup:
    """What a worker needs at start: the initializer, its initargs, max_tasks.

    The initializer travels cloudpickled (a lambda works under every start
    method).  The initargs too when cloudpickle can take them; otherwise they
    stay as objects among the Process arguments, which multiprocessing pickles
    itself at process start: a multiprocessing.Queue, Lock or Event in initargs
    then works as with the stdlib (such objects may only be shared that way).
    """

    def __init__(self, initializer: bytes, initargs: bytes | tuple[Any, ...],
                 max_tasks: int | None, hook: bytes | None = None, max_memory: int | None = None) -> None:
        self.initializer = initializer
        self.initargs = initargs
        self.max_tasks = max_tasks
        self.hook = hook
        self.max_memory = max_memory

    @classmethod
    def build(cls, initializer: Any, initargs: tuple[Any, ...], max_tasks: int | None,
              hook: bytes | None = None, max_memory: int | None = None) -> WorkerSetup:
        fn, _ = ser.dumps(initializer, ser.IN_BAND)  # a SerializationError here names the initializer
        try:
            args: bytes | tuple[Any, ...] = ser.dumps(initargs, ser.IN_BAND)[0]
        except Exception:
            args = initargs
        return cls(fn, args, max_tasks, hook, max_memory)

    def unpack(self) -> tuple[Any, tuple[Any, ...], int | None]:
        args = ser.loads(self.initargs) if isinstance(self.initargs, bytes) else self.initargs
        return ser.loads(self.initializer), args, self.max_tasks


class ActorSetup:
    """What an actor process needs at start: the pickled (cls, args, kwargs) and its options."""

    def __init__(self, spec: tuple[bytes, list[bytes]], label: str, max_concurrency: int | None,
                 num_cpus: float | None, hook: bytes | None = None) -> None:
        self.spec = spec
        self.label = label
        self.max_concurrency = max_concurrency
        self.num_cpus = num_cpus
        self.hook = hook
