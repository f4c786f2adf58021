"""What the parts of the ``Scheduler`` share, declared once.

The scheduler thread is one object written in parts by job (``_dispatch``,
``_workers``, ``_blame``, ``_children``; assembled in ``_loop``).  Each part
derives from ``SchedulerState``, which declares the state ``Scheduler.__init__``
sets and the methods one part calls in another, so that each part reads
(and type-checks) on its own.  Nothing here runs: the declarations of
methods exist for the type checker only.  The ``ActorSupervisor``
(``_actors``), an object of its own, sees the scheduler through this
declaration too.
"""

from __future__ import annotations

import selectors
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ...._errors import ActorDiedError
    from ...._futures import Task
    from ...._telemetry import Telemetry
    from .. import _channel
    from ..protocol import WorkerSetup
    from ._actors import ActorSupervisor
    from ._endpoint import Conn
    from ._spawn import Spawner
    from ._workers import WorkerHandle


class SchedulerState:
    """The Scheduler's state and cross-part methods (see the module docstring)."""

    ctx: Any
    max_workers: int
    setup: WorkerSetup
    max_tasks: int | None
    task_timeout: float | None
    init_timeout: float | None
    keep_workers: int  # workers kept alive even when idle (prestart)
    telemetry: Telemetry
    incoming: deque[Any]
    wake_fd: int
    backend: Any  # the ProcessBackend: its wake flag, broken state and options
    spawner: Spawner
    worker_main: Any
    sel: selectors.BaseSelector
    queue: deque[Task]
    results: list[tuple[Any, bool, Any]]  # read, not yet delivered
    workers: dict[int, WorkerHandle]
    next_index: int
    est: float | None
    est_samples: int
    prefetch_cap: int
    closing: bool
    terminating: bool
    start_failures: int
    lock: threading.Lock
    started: int
    restarted: int
    died: int
    to_replace: int
    actors: ActorSupervisor
    conns: set[Conn]
    actors_stopping: bool
    next_liveness: float
    borrowed: int
    borrowed_back: bool
    collectives: Any
    napping: bool
    direct_claimed: bool
    delivering: int  # callers' threads completing futures they read (_direct), outside the lock
    direct_at: float

    if TYPE_CHECKING:  # defined by one part, called by another
        def request(self, command: Callable[[Any], None], arg: Any) -> None: ...
        def fail(self, task: Task, error: BaseException) -> None: ...
        def fail_queue(self, error: BaseException) -> None: ...
        def read(self, w: WorkerHandle, limit: int | None) -> None: ...
        def complete(self, results: list[tuple[Any, bool, Any]]) -> None: ...
        def on_results(self, w: WorkerHandle, records: list[Any], msg: list[Any]) -> None: ...
        def drop_lying(self, w: WorkerHandle, what: str, channel: bool = True) -> None: ...
        def end_loan(self, w: WorkerHandle) -> None: ...
        def after_exit(self, w: WorkerHandle, exitcode: int | None) -> None: ...
        def break_executor(self, message: str) -> None: ...
        def register_client(self, conn: Conn) -> None: ...
        def on_client(self, conn: Conn, mask: int) -> None: ...
        def drop_client(self, conn: Conn, exc: _channel.ChannelCorrupt) -> None: ...
        def catch_up(self, conn: Conn, sent: int) -> None: ...
        def send_results(self, conn: Conn, records: list[Any], bufs: Sequence[Any] = ()) -> None: ...
        def close_conn(self, conn: Conn) -> None: ...
        def reply_error(self, conn: Conn, child_id: int, error: BaseException) -> None: ...
        def reply_died(self, conn: Conn, child_id: int, error: ActorDiedError) -> None: ...
