"""A sampling CPU profiler whose cost does not grow with the program's calls.

pyinstrument's ``Profiler`` installs a C hook that runs on every Python call
and return and reads the clock there: on a machine with a slow clock a
call-heavy program runs 3-5x slower under it (a generator expression over two
million items: 0.11-0.17 s plain, 0.4-0.7 s profiled, on issue 22's VM).  Here one daemon thread per
process wakes every ``INTERVAL``, reads ``sys._current_frames()`` for the
threads being captured, and records each one's stack, weighted by the real
time since that thread's previous sample (the GIL can delay a wake-up: a
late sample stands for the whole gap).  The cost is per sample, not per call.

The result is a real pyinstrument ``Session``, with the frame identifiers
pyinstrument itself records (``get_frame_info``) and its thread frame at the
root, so that everything that reads ``.pyisession`` files (``profiles.py``:
combining, relabelling, the call tree, speedscope, the hot functions) works on
it unchanged.  What it sees differently: a thread blocked in a C call (a
``recv``, a ``sleep``) is shown in the Python function that made the call, not
in a ``<built-in>`` frame of the C function; and a capture's total is right on
average, not exactly: its first sample also stands for the moments before it
began, and the moments after its last sample are not counted (a capture
shorter than the spacing of samples may have none; see ``LINGER``).

The sampler thread starts with the process's first capture and ends
``LINGER`` seconds after its last one.  A forked child starts with no capture and no sampler, whatever its
parent was doing (the state is per pid, and reset after a fork).
"""

from __future__ import annotations

import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

#: Seconds between samples.  Shorter shows short functions better but costs the
#: program more: each sample takes the GIL from the captured thread, and on busy
#: cores that thread then also waits until the OS runs the sampler (a convoy),
#: which a single-process loop does not show.  At 2 ms a call-heavy loop alone
#: used about 3% more CPU, but a scikit-learn grid search on 2 busy cores used
#: 0.3 s more CPU per worker (about 20%); at 10 ms about 0.05 s (issue 22's
#: measurements, benchmarks/RESULTS-profile.md).  A busy thread keeps the GIL
#: for up to ``sys.getswitchinterval()`` (5 ms) once asked, so the real spacing
#: can be longer: every sample is weighted by the time it stands for.
INTERVAL = 0.01

#: Seconds the sampler thread outlives the process's last capture.  A cluster
#: worker is captured once per task, and its tasks may be shorter than the
#: spacing of samples: a thread started anew with each capture would sample
#: none of them.  One that goes on samples them at random points instead, and
#: weighting each sample by the time since the sampler's previous one (not
#: since the capture began) makes the short captures' total right on average: a
#: 1 ms task is seen once in about five, for 5 ms.  Longer costs an idle
#: process a wake-up per interval for longer; shorter restarts the thread more
#: often between a cluster worker's tasks.
LINGER = 0.5

#: The sampler thread's name (the tests look for it).
THREAD_NAME = "poolx-profile-sampler"


@dataclass(eq=False)
class Recording:
    """One thread's capture: its samples, as pyinstrument's frame records."""

    ident: int
    thread_name: str
    target_description: str
    start_call_stack: list[str]
    start_time: float = field(default_factory=time.time)
    start_clock: float = field(default_factory=time.perf_counter)
    start_cpu: float = field(default_factory=time.process_time)
    records: list[tuple[list[str], float]] = field(default_factory=list)


class _State:
    """The process's sampler: the captures running and the thread sampling them."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self.lock = threading.Lock()
        # (a thread may have more than one: two hooks, or a capture in a capture)
        self.recordings: list[Recording] = []
        self.thread: threading.Thread | None = None
        self.names: dict[str, str] = {}  # every frame name seen, stored once (see _stored)
        self.last_wake = 0.0  # perf_counter() at the sampler's previous sample


_state: _State | None = None
_state_lock = threading.Lock()


def _current() -> _State:
    global _state
    with _state_lock:
        if _state is None or _state.pid != os.getpid():
            _state = _State()  # a forked child: none of the parent's captures or threads
        return _state


def _after_fork() -> None:
    # The parent's sampler thread may have held a lock at the fork: the child
    # gets fresh ones (and, by pid, a fresh state).
    global _state, _state_lock
    _state_lock = threading.Lock()
    _state = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


def _frame_info() -> Any:
    from pyinstrument.low_level.stat_profile import get_frame_info

    return get_frame_info


def call_stack(frame: Any, thread_name: str, ident: int, frame_info: Any = None) -> list[str]:
    """``frame``'s stack root first, as pyinstrument records it: a thread frame, then each function."""
    frame_info = frame_info or _frame_info()
    stack = []
    while frame is not None:
        stack.append(frame_info(frame))
        frame = frame.f_back
    stack.append(f"{thread_name}\x00<thread>\x00{ident}")
    stack.reverse()
    return stack


def start(target_description: str, caller_frame: Any = None) -> Recording:
    """Start capturing the calling thread (until ``stop(recording)``, from any thread)."""
    thread = threading.current_thread()
    ident = threading.get_ident()
    if caller_frame is None:
        caller_frame = sys._getframe(1)
    recording = Recording(ident, thread.name, target_description,
                          call_stack(caller_frame, thread.name, ident))
    state = _current()
    with state.lock:
        state.recordings.append(recording)
        if state.thread is None:
            state.last_wake = time.perf_counter()
            state.thread = threading.Thread(target=_run, args=(state,), name=THREAD_NAME, daemon=True)
            state.thread.start()
    return recording


def stop(recording: Recording) -> Any:
    """End ``recording``'s capture; returns its pyinstrument ``Session`` (the
    sampler thread ends ``LINGER`` seconds after the process's last capture)."""
    from pyinstrument.session import Session

    state = _current()
    with state.lock:
        if recording in state.recordings:
            state.recordings.remove(recording)
    return Session(
        frame_records=list(recording.records),
        start_time=recording.start_time,
        duration=time.perf_counter() - recording.start_clock,
        min_interval=INTERVAL,
        max_interval=INTERVAL,
        sample_count=len(recording.records),
        start_call_stack=recording.start_call_stack,
        target_description=recording.target_description,
        cpu_time=time.process_time() - recording.start_cpu,
        sys_path=list(sys.path),
        sys_prefixes=Session.current_sys_prefixes(),
    )


def _stored(stack: list[str], recording: Recording, names: dict[str, str]) -> list[str]:
    # A long capture keeps every sample (a worker may live for hours): a stack
    # equal to the previous sample's is that same list, and each frame's name
    # is stored once for the process.
    if recording.records and recording.records[-1][0] == stack:
        return recording.records[-1][0]
    return [names.setdefault(name, name) for name in stack]


def _run(state: _State) -> None:
    frame_info = _frame_info()
    idle_since = None
    while True:
        time.sleep(INTERVAL)
        with state.lock:
            if state.recordings:
                idle_since = None
            elif idle_since is None:
                idle_since = time.perf_counter()
            elif time.perf_counter() - idle_since > LINGER:
                state.thread = None  # (under the lock: a start() from now on makes a new one)
                return
        sample(state, frame_info)


def sample(state: _State, frame_info: Any) -> None:
    """Record one sample of every thread being captured, weighted by the time
    since the sampler's previous one (see ``LINGER``)."""
    frames = sys._current_frames()
    now = time.perf_counter()
    stacks: dict[int, list[str]] = {}
    with state.lock:
        for recording in state.recordings:
            ident = recording.ident
            if ident not in stacks:
                frame = frames.get(ident)
                if frame is None:  # (the thread ended without stopping its capture)
                    continue
                stacks[ident] = _stored(call_stack(frame, recording.thread_name, ident, frame_info),
                                        recording, state.names)
            recording.records.append((stacks[ident], now - state.last_wake))
        state.last_wake = now
    del frames  # (holds every thread's frames alive)
