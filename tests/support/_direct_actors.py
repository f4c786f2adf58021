"""Actor classes for test_actor_direct: importable, so every start method can pickle them."""

from __future__ import annotations

import gc
import os
import threading
import time


class Log:
    """Records the calls it runs, in the order it runs them."""

    def __init__(self):
        self.seen = []
        self.batches = None

    def add(self, item):
        self.seen.append(item)
        return len(self.seen)

    def add_or_die(self, item, die_at):
        if item == die_at:
            os._exit(3)
        return self.add(item)

    def fork_then_die(self, pid_file):
        """Leave a grandchild holding this process's fds open (for two minutes at most), then die."""
        pid = os.fork()
        if pid == 0:
            time.sleep(120)
            os._exit(0)
        with open(pid_file, "w") as f:
            f.write(str(pid))
        os._exit(3)

    def items(self):
        return list(self.seen)

    def wait_for(self, path, timeout=30):
        """Return once the file ``path`` exists (a test creates it when it is ready).

        Says it has started by creating ``path + ".started"``.
        """
        open(path + ".started", "w").close()
        deadline = time.monotonic() + timeout
        while not os.path.exists(path) and time.monotonic() < deadline:
            time.sleep(0.001)
        return os.path.exists(path)

    def sleep(self, seconds):
        time.sleep(seconds)
        return len(self.seen)

    def pid(self):
        return os.getpid()

    def count_messages(self):
        """From now on, count the CALLS messages this actor process receives (poolx's own loop)."""
        worker = next(o for o in gc.get_objects() if type(o).__name__ == "ActorWorker")
        run_batch = worker.run_batch
        self.batches = 0

        def counted(control, msg):
            self.batches += 1
            return run_batch(control, msg)

        worker.run_batch = counted
        return True

    def messages(self):
        return self.batches


class Meeting:
    """Two calls that finish only if they run at the same time (max_concurrency >= 2)."""

    def __init__(self):
        self.event = threading.Event()

    def wait(self):
        return self.event.wait(20)

    def arrive(self):
        self.event.set()
        return True


def call_log(log, tag, n):
    """A task: ``n`` awaited calls through a handle passed in, tagged ``tag``."""
    return [log.add.remote((tag, i)).result(timeout=60) for i in range(n)]
