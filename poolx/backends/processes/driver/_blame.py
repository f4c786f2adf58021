"""Failure blame: what becomes of a dead worker's tasks.

Methods of the ``Scheduler`` (``_loop``), on its thread, called by
``on_exit`` (``_workers``) once every outcome the worker sent or logged is
in.  The rules (see ``blame``): only the task it was running is charged; the
tasks it had not started run again elsewhere, uncharged; a death between two
tasks charges the next in line at most MAX_REQUEUE times; a task whose
outcome was lost with its worker runs again at most MAX_LOST times.
"""

from __future__ import annotations

from typing import Any

from ...._errors import InitializerError, TaskCancelledError, TaskTimeoutError, WorkerDiedError, describe_exit
from ...._futures import Task
from ...._serialization import describe
from .._cell import read_cell
from ._spawn import STARTING, STOPPING, crash_dump_fd
from ._state import SchedulerState
from ._workers import WorkerHandle

# A worker that dies between two tasks (its last one finished, the next not
# started) names no culprit: the task it would have run next is charged, and
# fails after this many such deaths.  It guards against a message that kills
# the worker reading it (a payload too large for its memory), which would
# otherwise go from worker to worker for ever; an innocent task would have to
# be next in line at that many idle deaths.  Tasks further back are never
# charged: they had not started.
MAX_REQUEUE = 16
# A task that ran on a worker that died before its outcome could be read (a
# task scribbled on the worker's channel or results log) runs again at most
# this many times, then fails: the scribbler would otherwise run for ever.
MAX_LOST = 2
# Workers dying before they are ready this many times in a row break the executor.
MAX_START_FAILURES = 3


class Blame(SchedulerState):
    """The Scheduler's failure blame (a part of ``Scheduler``, see ``_loop``)."""

    def after_exit(self, w: WorkerHandle, exitcode: int | None) -> None:
        self.end_loan(w)  # first: a worker killed however it died (stop_tasks too) lends no more
        if w.init_timed_out:
            what = (f"the worker initializer {self.backend.initializer_name}"
                    if self.backend.initializer_name else "starting a worker")
            self.break_executor(
                f"{what} did not finish within init_timeout={self.init_timeout:g} s; the worker (pid "
                f"{w.process.pid}) was killed, and no more are started: a hanging initializer would hang "
                f"every worker the same way.{crash_dump_fd(w.fd)}")
            return
        if w.init_error is not None:
            type_name, message, tb = w.init_error
            self.break_executor(
                f"the worker initializer {self.backend.initializer_name} raised {type_name}: "
                f"{message}\n\nWorker traceback:\n{tb}"
            )
            return
        if w.state == STARTING:  # (a worker told to stop is STOPPING, not STARTING)
            self.start_failures += 1
            if self.start_failures >= MAX_START_FAILURES:
                self.break_executor(
                    f"{self.start_failures} workers in a row died while starting; the last one: "
                    f"{describe_exit(exitcode)}"
                )
        if w.cancelled and not self.terminating:  # killed by stop_tasks
            self.to_replace += 1
            requeue = []
            for task in w.outstanding.values():
                if task.id in w.cancelled:
                    self.fail(task, TaskCancelledError(
                        f"{describe(task.fn)} was stopped: its worker (pid {w.pid}) was killed and "
                        "replaced", pid=w.pid))
                else:
                    requeue.append(task)  # not its fault: as if never sent
            self.queue.extendleft(reversed(requeue))
            w.outstanding.clear()
            return
        if w.retiring:  # tasks sent after its last batch run elsewhere, as if never sent
            self.to_replace += 1
            self.queue.extendleft(reversed(list(w.outstanding.values())))
            w.outstanding.clear()
            return
        if w.state == STOPPING:
            return
        self.to_replace += 1
        if not w.outstanding:
            if not (w.tasks_left == 0 and exitcode == 0):
                self.died += 1  # died while idle; else it retired after max_tasks_per_child
            return
        if self.terminating:
            for task in w.outstanding.values():
                self.fail(task, WorkerDiedError(
                    f"the executor was forcefully shut down (terminate_workers/kill_workers) while "
                    f"{describe(task.fn)} was running", exitcode=exitcode, pid=w.pid))
            return
        if not w.timed_out:
            self.died += 1
        self.blame(w, exitcode)

    def blame(self, w: WorkerHandle, exitcode: int | None) -> None:
        """Charge the task that killed ``w``; send back the ones it had not started.

        ``on_exit`` has taken in every outcome the worker sent or logged, so
        what ``w`` still holds is, in dispatch order (the order it runs
        them): tasks that finished but whose outcomes were lost (only when
        their records were unreadable: a corrupt channel, a scribbled log),
        then the task it was running (named by the progress cell, if not
        finished), then tasks it had not started.  Only the running one is
        charged: it fails, or runs again within its ``max_retries``.  Tasks
        not started go back to the queue, uncharged: a death never fails a
        task that was only waiting behind the culprit.  A death between two
        tasks has no culprit; the task that was next in line is the suspect
        (see MAX_REQUEUE).
        """
        running_id, finished, _, item = read_cell(w.cell)
        self.prefetch_cap = 0
        timed_out = bool(w.timed_out)
        # An unknown exit code: its forkserver died, and took every worker it
        # had started with it (they die with their parent, see _lifetime).
        # The task one of them ran killed the forkserver; the others were
        # only there: each runs again, at most MAX_LOST times (see lost).
        # Likewise when poolx killed it for what its channel carried: the task
        # that wrote there ran earlier (its outcome lost with the channel).
        bystander = (exitcode is None or w.killed_for is not None) and not timed_out
        if timed_out:
            # Killed for the task (and map item) seen over task_timeout.  That
            # one fails, even if it finished between the check and the kill
            # (on_exit drops its logged outcome: it did run over); whatever
            # the worker had moved on to is innocent.
            culprit, item = w.timed_out, w.timed_out_item
        else:
            culprit = 0 if finished else running_id
        ran = running_id in w.outstanding  # else every task it still holds comes after the running one
        suspect = not timed_out and culprit not in w.outstanding
        requeue = []
        for task in w.outstanding.values():
            at_running = task.id == running_id
            if task.id == culprit:
                if (self.lost(w, task, exitcode) if bystander
                        else self.charge(w, task, exitcode, item, timed_out)):
                    requeue.append(task)
            elif ran and (finished or not at_running):  # it ran to the end, and its outcome is lost
                if self.lost(w, task, exitcode):
                    requeue.append(task)
            elif suspect and not ran:  # the first task it had not started, after a death with no culprit
                suspect = False
                if self.suspected(w, task, exitcode):
                    requeue.append(task)
            else:  # not started (or killed for another's timeout): not its fault, as if never sent
                requeue.append(task)
            if at_running:
                ran = False
        self.queue.extendleft(reversed(requeue))

    def suspected(self, w: WorkerHandle, task: Task, exitcode: int | None) -> bool:
        """The next task of a worker that died between tasks: True to run it again (MAX_REQUEUE)."""
        task.requeues += 1
        return self.again(w, task, exitcode, task.requeues <= MAX_REQUEUE, (
            f"was the next task of {MAX_REQUEUE + 1} workers that died between tasks", "the message "
            "carrying it may be what kills a worker (an argument too large for its memory?)"))

    def lost(self, w: WorkerHandle, task: Task, exitcode: int | None) -> bool:
        """A task whose outcome died with ``w`` through no fault that can be pinned on it: True to
        run it again, at most MAX_LOST times, then fail it."""
        task.lost += 1
        return self.again(w, task, exitcode, task.lost <= MAX_LOST, (
            f"ran {task.lost} times on workers that died before its outcome reached the driver",
            "a task that kills poolx's forkserver, or writes to file descriptors it did not open (its "
            "worker's channel or results log), loses what its worker reports"))

    def again(self, w: WorkerHandle, task: Task, exitcode: int | None, within: bool,
              why: tuple[str, str]) -> bool:
        """True if ``task`` may run again (``within`` its bound); else fail it, saying ``why``."""
        if within:
            return True
        what, hint = why
        self.fail(task, WorkerDiedError(
            f"{describe(task.fn)} {what} (the last: {describe_exit(exitcode, w.killed_for)}); giving up "
            f"on it: {hint}", exitcode=exitcode, pid=w.pid))
        return False

    def charge(self, w: WorkerHandle, task: Task, exitcode: int | None, item: int, timed_out: bool) -> bool:
        """The task that killed ``w``: True to run it again (retries, a map chunk's other items)."""
        if not timed_out and (task.max_retries == -1 or task.retries < task.max_retries):
            task.retries += 1  # max_retries: run it again
            return True
        if timed_out:
            message = (f"ran longer than task_timeout={self.task_timeout:g} s; its worker (pid {w.pid}) "
                       "was killed and replaced, and the other tasks go on")
            why: tuple[Any, ...] = ("timeout", message, self.task_timeout, w.pid)
        else:
            message = (f"the worker process (pid {w.pid}) running it died: "
                       f"{describe_exit(exitcode, w.killed_for)}. "
                       f"The worker was replaced; other tasks are unaffected.{crash_dump_fd(w.fd)}")
            why = ("died", message, exitcode, w.pid)
        if task.skip is not None and item >= 0 and item not in task.skip:
            # A map() chunk: only the item it was in fails; the chunk runs
            # again without it (poolx._chunks).
            task.skip[item] = why
            return True
        if timed_out:
            self.fail(task, TaskTimeoutError(f"{describe(task.fn)} {message}",
                                             timeout=self.task_timeout, pid=w.pid))
        else:
            self.fail(task, WorkerDiedError(
                f"the worker process (pid {w.pid}) running {describe(task.fn)} died: "
                f"{describe_exit(exitcode, w.killed_for)}. The worker was replaced; other tasks are "
                f"unaffected.{crash_dump_fd(w.fd)}", exitcode=exitcode, pid=w.pid))
        return False

    def break_executor(self, message: str) -> None:
        if self.backend.broken is None:
            self.backend.broken = message
        error = InitializerError(message)
        self.fail_queue(error)
        for w in self.workers.values():
            for task in w.outstanding.values():
                self.fail(task, error)
            w.outstanding.clear()
