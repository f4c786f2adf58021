"""The direct read: a caller waiting for a task's result reads it from the worker itself.

A task handed straight to an idle worker from the caller's thread
(``try_direct``) came back through two more hops: the scheduler thread
woke on the worker's socket, read the result and completed the future, and
the Condition woke the caller.  Instead, when a caller waits on such a
future (``Future.result``/``exception`` call ``wait`` through
``poolx._futures.direct_wait``), its own thread:

1. takes the scheduler's ``lock`` and, if the task is still on that worker
   and no other thread reads its channel, becomes its reader (``owner``):
   the selector no longer watches the socket for input (``reading``), and
   the scheduler goes on serving every other socket, timeouts and deaths;
2. lets go of the lock and waits in ``poll`` on the socket and the
   worker's process sentinel (never holding the lock while it blocks);
3. under the lock again, reads what came (the scheduler's own ``read``:
   the same records and telemetry) and, once its task's outcome is among
   it, gives the channel back; then, outside the lock, completes the
   futures it read (``complete``), so their callbacks may wait for other
   tasks.  ``shutdown()`` waits for those completions (``delivering``).

So that the scheduler does not even wake for the result, ``try_direct``
leaves the channel unwatched at once (a reservation, ``note``) when the
scheduler naps short; it naps short (DIRECT_NAP) while tasks go direct,
and takes back a reservation nobody claimed within DIRECT_CLAIM (a future
waited for by ``wait()``, ``as_completed`` or a callback).  An idle
worker's channel stays unwatched after a direct read (its death is seen by
its sentinel) until the next task goes to it: no selector call per round
trip.

The reader gives up, and leaves the rest to the scheduler and the ordinary
Condition wait, when the worker's process ends (the sentinel: the
scheduler blames its tasks as always), when its channel closes, on
``result(timeout)``'s deadline (the remaining time goes to the ordinary
wait, so the timeout is honoured exactly), and when an exception (a signal
handler's KeyboardInterrupt) interrupts it.  Only one thread reads a
channel at a time: another thread waiting on the same worker, and
``wait()``/``as_completed``, use the Condition, notified by whichever
thread completes the future.  A worker's exit handled while a caller reads
its socket leaves the socket and sentinel open for that caller to close
(``WorkerHandle.gone``), so the caller never polls a closed descriptor.
"""
from __future__ import annotations

import math
import os
import select
import threading
import time
from typing import TYPE_CHECKING, Any

from .... import _futures

if TYPE_CHECKING:
    from ...._futures import Future, Task
    from ._state import SchedulerState
    from ._workers import WorkerHandle

# While tasks go to workers from callers' threads (try_direct), the scheduler
# sleeps at most DIRECT_NAP seconds, and for DIRECT_RECENT seconds after the
# last one.  Only then can try_direct leave a worker's channel unwatched for
# its caller (a reservation, see ``note``): the scheduler takes back a
# reservation nobody claimed within DIRECT_CLAIM seconds (its task's future
# waited for by wait(), as_completed() or a callback instead), and must wake
# to do it.  Shorter naps wake an idle scheduler more often (200 times a
# second at 5 ms, for DIRECT_RECENT after the last direct task); a longer
# claim delays the result nobody reads directly by as much.
DIRECT_NAP = 0.005
DIRECT_RECENT = 0.2
DIRECT_CLAIM = 0.001
# The longest a caller sleeps in poll() before looking again at its task
# under the lock.  Wake-ups come from the socket or the sentinel; this only
# bounds how long a change that neither signals (the task failed by the
# scheduler with its worker alive, an fd closed under us) goes unseen by a
# waiting thread, at the cost of 20 wake-ups a second while a long task runs.
DIRECT_POLL_SECONDS = 0.05

_READABLE = select.POLLIN | select.POLLHUP | select.POLLERR | select.POLLNVAL

# Future -> (its scheduler, its worker, its task), for tasks sent by try_direct.
# At most one entry per live worker: a worker's next direct task, its exit and
# the scheduler's end drop its entry (``forget``), and a finished wait drops its own.
_pending: dict[Any, tuple[Any, Any, Any]] = {}


def note(sched: SchedulerState, w: WorkerHandle, task: Task) -> None:
    """Under the scheduler's lock (try_direct): ``task`` went to ``w`` from a caller's thread.

    Unless the scheduler may be in a long sleep, or the last reservation
    went unclaimed (its future waited for otherwise: by ``await``, a
    callback, ``as_completed``; those pay DIRECT_CLAIM once, not per task),
    ``w``'s channel is left unwatched for the caller (reserved): the result
    then wakes no thread but the caller's.  Else it stays watched (the scheduler reads the
    result unless the caller comes first), and the scheduler, woken by it,
    naps short from then on (``nap``).
    """
    old = w.direct_future
    if old is not None:
        _pending.pop(old, None)
    w.direct_future = task.future
    _pending[task.future] = (sched, w, task)
    sched.direct_at = now = time.monotonic()
    if sched.napping or not sched.direct_claimed:
        if not w.reading:
            unpark(sched, w)
    else:
        w.reserved = now
        if w.reading:
            w.reading = False
            w.watch(sched.sel)


def unpark(sched: SchedulerState, w: WorkerHandle) -> None:
    """Under the scheduler's lock: the selector watches ``w``'s channel again."""
    w.reserved = 0.0
    w.reading = True
    w.watch(sched.sel)


def hand_back(sched: SchedulerState) -> None:
    """Scheduler thread, each pass while tasks go direct: watch again the channels
    whose reservation nobody claimed in DIRECT_CLAIM seconds."""
    now = time.monotonic()
    for w in sched.workers.values():
        if w.reserved and not w.owner and now - w.reserved >= DIRECT_CLAIM:
            unpark(sched, w)
            sched.direct_claimed = False  # no more reservations until a caller reads one


def nap(sched: SchedulerState, timeout: float | None) -> float | None:
    """Under the scheduler's lock: how long its next select() may sleep (see DIRECT_NAP)."""
    if sched.direct_at:
        now = time.monotonic()
        if now - sched.direct_at < DIRECT_RECENT:
            timeout = DIRECT_NAP if timeout is None else min(timeout, DIRECT_NAP)
            for w in sched.workers.values():
                if w.reserved and not w.owner:
                    timeout = max(0.0, min(timeout, w.reserved + DIRECT_CLAIM - now))
        else:
            sched.direct_at = 0.0
    sched.napping = timeout is None or timeout > DIRECT_NAP
    return timeout


def forget(w: WorkerHandle) -> None:
    """Under the scheduler's lock: ``w`` is gone; its direct task is the scheduler's alone."""
    if w.direct_future is not None:
        _pending.pop(w.direct_future, None)
        w.direct_future = None


def wait(future: Future[Any], timeout: float | None) -> float | None:
    """``direct_wait``: wait for ``future`` by reading its worker's channel, if it may.

    Returns the part of ``timeout`` left for the ordinary wait (all of it when
    the direct read does not apply; 0 when the deadline passed).
    """
    entry = _pending.get(future)
    if entry is None or (timeout is not None and timeout <= 0):
        return timeout
    sched, w, task = entry
    if threading.get_ident() == sched.ident:  # a callback on the scheduler thread: it cannot read for us
        return timeout
    deadline = None if timeout is None else time.monotonic() + timeout
    if _take(sched, w, task):
        _read_until_done(sched, w, task, deadline)
    if future.done():
        _pending.pop(future, None)
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _take(sched: Any, w: WorkerHandle, task: Task) -> bool:
    """Take ``w``'s socket from the selector, if ``task`` is still its and nobody reads it."""
    with sched.lock:
        if (task.future.done() or w.owner or not w.open or w.gone
                or sched.workers.get(w.index) is not w or w.outstanding.get(task.id) is not task):
            return False
        w.owner = True
        w.reserved = 0.0
        sched.direct_claimed = True
        if w.reading:
            w.reading = False
            w.watch(sched.sel)
        if w.poller is None:
            w.poller = select.poll()
            w.poller.register(w.sock, select.POLLIN)
            w.poller.register(w.process.sentinel, select.POLLIN)
        return True


def _read_until_done(sched: Any, w: WorkerHandle, task: Task, deadline: float | None) -> None:
    """Read ``w``'s channel until ``task``'s outcome came (or give up); complete what came.

    The futures read are completed outside the lock, after letting go of the
    channel: their callbacks may wait for other tasks, on this worker too.
    """
    sentinel = w.process.sentinel
    poll = w.poller.poll
    owned = True
    try:
        while owned:
            wait_s = DIRECT_POLL_SECONDS
            if deadline is not None:
                wait_s = min(wait_s, deadline - time.monotonic())
                if wait_s <= 0:
                    return
            events = poll(math.ceil(wait_s * 1000))
            with sched.lock:
                if w.open and not w.gone:
                    sched.read(w, limit=8)
                results = sched.results
                if results:
                    sched.results = []
                    sched.delivering += 1
                if (task.id not in w.outstanding or not w.open or w.gone
                        or any(fd == sentinel and mask & _READABLE for fd, mask in events)):
                    owned = False  # done, or it died (the scheduler blames its tasks)
                    _let_go(sched, w)
            if results:
                try:
                    sched.complete(results)
                except BaseException:
                    # A signal handler's exception mid-way: the futures not completed yet
                    # go to the scheduler's next pass, never left pending for ever.
                    with sched.lock:
                        sched.results.extend(r for r in results if not r[0].future.done())
                    sched.backend.wake()
                    raise
                finally:
                    with sched.lock:
                        sched.delivering -= 1
    finally:
        if owned:  # the deadline, or an exception (a signal handler's) while it waited
            with sched.lock:
                _let_go(sched, w)


def _let_go(sched: Any, w: WorkerHandle) -> None:
    """Under the scheduler's lock: the selector watches ``w``'s socket again if tasks
    wait on it (or it is closed; an idle worker's channel stays unwatched until
    the next task: its exit is seen by its sentinel)."""
    w.owner = False
    if w.gone:  # its exit was handled while we read: its files are ours to close
        w.gone = False
        w.close_files()
    elif w.open and w.outstanding and not w.reading:
        unpark(sched, w)


def _forked() -> None:
    _pending.clear()  # a child forked from the driver holds none of its channels


os.register_at_fork(after_in_child=_forked)
_futures.direct_wait = wait
