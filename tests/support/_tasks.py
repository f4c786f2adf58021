"""Task functions for the tests: importable, so every start method can pickle them."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
import time


def square(x):
    return x * x


def add(a, b=0):
    return a + b


def noop():
    return None


def identity(x):
    return x


def sleep_and_return(seconds, value=None):
    time.sleep(seconds)
    return value


def getpid(*_):
    return os.getpid()


def raise_value_error(message="boom"):
    raise ValueError(message)


def divide(a, b):
    return a / b


def segfault():
    ctypes.string_at(0)


def exit_process(code=3):
    os._exit(code)


def kill_self(sig=signal.SIGKILL):
    os.kill(os.getpid(), sig)
    time.sleep(5)


def raise_system_exit(code=2):
    sys.exit(code)


def raise_keyboard_interrupt():
    raise KeyboardInterrupt


def sys_exit_in_thread_then_sleep():
    threading.Thread(target=sys.exit, args=(1,)).start()
    return "still here"


class UnpicklableError(Exception):
    def __init__(self, message):
        super().__init__(message)
        self.lock = threading.Lock()


def raise_unpicklable_error():
    raise UnpicklableError("holds a lock")


def return_lock():
    return threading.Lock()


class FailsToUnpickle:
    """Pickles fine, raises when unpickled (in whichever process that is)."""

    def __reduce__(self):
        return (_explode, ("cannot rebuild FailsToUnpickle",))


def _explode(message):
    raise RuntimeError(message)


def return_fails_to_unpickle():
    return FailsToUnpickle()


class ReduceRaisesInDriver:
    """Unpickles in a worker but not in the driver (where the env var is absent)."""

    def __reduce__(self):
        return (_rebuild_if_worker, ())


def _rebuild_if_worker():
    if os.environ.get("POOLX_TEST_IN_WORKER") != "1":
        raise RuntimeError("rebuilt outside a worker")
    return ReduceRaisesInDriver()


def mark_worker():
    os.environ["POOLX_TEST_IN_WORKER"] = "1"


def allocate(nbytes):
    return len(bytearray(nbytes))


def set_memory_limit(nbytes):
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (nbytes, nbytes))


def array_roundtrip(arr):
    return arr * 2


def record_init(path):
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")


def failing_init():
    raise ValueError("initializer exploded")


_inner_pools = []


def start_inner_process_pool():
    """Start a ProcessPoolExecutor in this worker and leave it running; return its workers' pids."""
    import concurrent.futures as cf
    import multiprocessing

    pool = cf.ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("fork"))
    _inner_pools.append(pool)
    pool.submit(abs, 1).result(timeout=30)
    return [p.pid for p in pool._processes.values()]


def fan_out(n):
    """A task that starts ``n`` tasks of its own through the Ray-style API and waits for them."""
    import poolx

    remote_square = poolx.remote(square)
    return poolx.get([remote_square.remote(i) for i in range(n)])
