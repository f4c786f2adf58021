"""Task functions and payloads for the fault matrix (tests/engine/test_faults.py)."""

from __future__ import annotations

import ctypes
import faulthandler
import os
import signal
import threading
import time
from pathlib import Path


class CrashesWhenUnpickled:
    """Pickles fine; its reconstructor segfaults (in the worker, where it is unpickled)."""

    def __reduce__(self):
        return (_segfault_now, ())


def _segfault_now():
    faulthandler.disable()  # keep the test's output quiet; the driver still sees SIGSEGV
    ctypes.string_at(0)


class ExitsWhenUnpickled:
    """Pickles fine; its reconstructor calls os._exit(0)."""

    def __reduce__(self):
        return (os._exit, (0,))


class SystemExitWhenUnpickled:
    """Pickles fine; its reconstructor raises SystemExit (loky's ExitAtUnpickle)."""

    def __reduce__(self):
        return (_raise_system_exit, ())


def _raise_system_exit():
    raise SystemExit("from a reconstructor")


class SystemExitWhenPickled:
    """Cannot be pickled: __reduce__ raises SystemExit (loky's ExitAtPickle)."""

    def __reduce__(self):
        raise SystemExit("from __reduce__")


def takes(*_args):
    return "ran"


def ignore_sigterm_and_sleep(seconds):
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    time.sleep(seconds)
    return seconds


def crash_once(marker, value):
    """os._exit(3) the first time (per marker file), return ``value`` after."""
    path = Path(marker)
    if not path.exists():
        path.write_text("crashed")
        os._exit(3)
    return value


def always_crash(marker):
    """Crash every time; count the attempts in ``marker``."""
    with open(marker, "a") as f:
        f.write("x")
    os._exit(3)


class Flaky(Exception):
    pass


def flaky(marker, fails, value):
    """Raise Flaky the first ``fails`` times (counted in ``marker``), then return ``value``."""
    path = Path(marker)
    runs = len(path.read_text()) if path.exists() else 0
    with open(path, "a") as f:
        f.write("x")
    if runs < fails:
        raise Flaky(f"attempt {runs + 1}")
    return value


def item_crashes_at(x, bad=5):
    if x == bad:
        os._exit(7)
    return x * 10


def item_sleeps_at(x, slow, seconds):
    if x == slow:
        time.sleep(seconds)
    return x * 10


def log_and_crash_at(x, bad, log):
    """Append ``x`` to ``log`` (each run of each item), crash on ``bad``."""
    with open(log, "a") as f:
        f.write(f"{x}\n")
    if x == bad:
        os._exit(7)
    return x


def grow(nbytes, keep=[]):  # noqa: B006 - the leak is the point: memory held across tasks
    keep.append(bytearray(nbytes))
    return os.getpid()


def wait_for_refs(refs):
    """A task that waits for futures of its own executor (received in a container)."""
    return [ref.result(timeout=30) for ref in refs]


def crash_in_actor_call():
    os._exit(5)


class Counter:
    def __init__(self):
        self.n = 0

    def incr(self):
        self.n += 1
        return self.n

    def crash(self):
        os._exit(5)

    def nap(self, seconds):
        time.sleep(seconds)
        return seconds


def corrupt_own_channel(how):
    """Write something that is not a poolx message to this worker's socket to the driver."""
    import struct

    from poolx import _context

    sock = _context.here.worker.sock
    if how == "client channel":  # the channel actor handles inside tasks use
        sock, how = _context.here.client.sock, "huge frame"
    if how == "huge frame":
        data = struct.pack("<II", 1, 0) + struct.pack("<Q", 1 << 63)
    elif how == "too many frames":
        data = struct.pack("<II", 1 << 31, 0)
    else:  # "not a pickle": a well-framed message whose control frame is garbage
        payload = b"\x80\x05garbage that is not a pickle"
        data = struct.pack("<II", 1, 0) + struct.pack("<Q", len(payload)) + payload
    sock.sendall(data)
    time.sleep(60)  # killed by the driver long before


def forge_frame_header(how, marker):
    """Write a plausible frame header and a few bytes of it to this worker's channel, then return.

    The rest never comes: the frame swallows this task's result message and
    then waits.  Only once (``marker``): run again, the task just returns.
    """
    import struct

    from poolx import _context

    if os.path.exists(marker):
        return "again"
    open(marker, "w").close()
    claim = 100_000_000 if how == "100 MB frame" else 4096
    sock = _context.here.worker.sock
    if how == "client channel":
        sock = _context.here.client.sock
    sock.sendall(struct.pack("<IIQ", 1, 0, claim) + b"\x80\x05" + bytes(14))
    return "forged"


class ChannelWriter:
    """An actor whose methods write frame headers to its own channel."""

    def corrupt(self):
        import gc
        import struct

        from poolx.backends.processes.child._actor import ActorWorker

        worker = next(o for o in gc.get_objects() if isinstance(o, ActorWorker))
        worker.sock.sendall(struct.pack("<IIQ", 1, 0, 1 << 50))
        time.sleep(60)  # killed by the driver long before

    def forge(self):
        """A plausible header (100 MB) and a few bytes, then nothing: the frame swallows the result."""
        import gc
        import struct

        from poolx.backends.processes.child._actor import ActorWorker

        worker = next(o for o in gc.get_objects() if isinstance(o, ActorWorker))
        worker.sock.sendall(struct.pack("<IIQ", 1, 0, 100_000_000) + bytes(16))


def exit_holding(data):
    """Die while holding a large argument (its shared memory must be freed with the process)."""
    assert len(data) > 0
    os._exit(3)


def big_result(nbytes):
    return bytearray(nbytes)


def hang_in_initializer():
    time.sleep(120)


def scripted(marker, script):
    """Run number n (counted in ``marker``) does ``script[n]``: "crash", "flaky" or "ok"."""
    path = Path(marker)
    n = len(path.read_text()) if path.exists() else 0
    with open(path, "a") as f:
        f.write("x")
    action = script[n]
    if action == "crash":
        os._exit(3)
    if action == "flaky":
        raise Flaky(f"run {n + 1}")
    return n + 1


def limit_memory_growth(extra):
    """RLIMIT_AS at this process's current address space plus ``extra`` bytes.

    Relative, not absolute: a forked worker inherits the driver's address
    space, which a long test session can grow past any fixed limit.
    """
    import resource

    with open("/proc/self/status") as f:
        vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
    resource.setrlimit(resource.RLIMIT_AS, (vm + extra, vm + extra))


def wait_for_file(path, value=None, timeout=60.0):
    """Block until ``path`` exists (the test's release), at most ``timeout`` s; return ``value``.

    A task that runs exactly as long as the test needs, so that what the test
    checks meanwhile never depends on how fast a loaded machine is.
    """
    deadline = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} was never created")
        time.sleep(0.01)
    return value


def leave_a_thread_running(x, seconds=600):
    """Return at once, leaving a non-daemon thread: the worker's exit waits for it."""
    threading.Thread(target=time.sleep, args=(seconds,), name="left-running").start()
    return x
