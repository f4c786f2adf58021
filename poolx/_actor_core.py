"""Transitional: the names of the old ``poolx._actor_core``, now ``poolx.actors.runner``.

Delete once no module imports it (issue 20's layout step).
"""

from .actors.options import is_async_class, method_names
from .actors.runner import (
    ASYNC_DEFAULT_CONCURRENCY,
    CALL_ON_INSTANCE,
    AsyncRunner,
    InlineRunner,
    Runner,
    ThreadRunner,
    current_runner,
    make_runner,
)

__all__ = ["ASYNC_DEFAULT_CONCURRENCY", "CALL_ON_INSTANCE", "AsyncRunner", "InlineRunner", "Runner",
           "ThreadRunner", "current_runner", "is_async_class", "make_runner", "method_names"]
