"""The sampling CPU profiler (poolx/harness/_sampler.py) behind ``ProfilerHook("cpu")``.

No test times anything: the overhead figures are measured by hand (issue 22's
note).  What is asserted is what cannot flake: the number of samples follows
the wall time, not the number of calls, and nothing is printed or left running.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import poolx
from poolx.harness import _sampler, profiles
from poolx.harness._hook import ProfilerHook

pytest.importorskip("pyinstrument")

from pyinstrument.renderers import ConsoleRenderer, HTMLRenderer
from pyinstrument.session import Session


def _spin_named_busy_loop(seconds: float) -> int:
    n = 0
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        n += 1
    return n


def _nap_named_sleeper(seconds: float) -> None:
    time.sleep(seconds)


def _time_in(session: Session, function: str) -> float:
    """Seconds of ``session`` with ``function`` on the stack."""
    return sum(t for stack, t in session.frame_records
               if any(f.split("\x00", 1)[0] == function for f in stack))


def _sampler_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == _sampler.THREAD_NAME]


def _no_sampler_thread_soon() -> bool:
    """Whether the sampler thread ends once it has outlived the last capture by LINGER."""
    deadline = time.monotonic() + _sampler.LINGER + 30  # (a loaded machine may not run it for a while)
    while _sampler_threads() and time.monotonic() < deadline:
        time.sleep(0.02)
    return not _sampler_threads()


def test_the_session_loads_with_pyinstrument_and_renders_and_shows_the_hot_function(tmp_path):
    recording = _sampler.start("busy test")
    _nap_named_sleeper(0.01)
    _spin_named_busy_loop(0.5)
    session = _sampler.stop(recording)
    path = tmp_path / "busy.pyisession"
    session.save(str(path))

    loaded = Session.load(str(path))
    assert loaded.sample_count == len(loaded.frame_records) > 0
    assert loaded.target_description == "busy test"
    text = ConsoleRenderer(unicode=False, color=False).render(loaded)
    assert "_spin_named_busy_loop" in text
    assert "_spin_named_busy_loop" in HTMLRenderer().render(loaded)
    # each stack starts with pyinstrument's thread frame (profiles.relabel replaces it)
    assert all("\x00<thread>\x00" in stack[0] for stack, _ in loaded.frame_records)
    total = sum(t for _, t in loaded.frame_records)
    assert _time_in(loaded, "_spin_named_busy_loop") > 0.5 * total
    assert "_spin_named_busy_loop" in profiles.functions_in(path)


def test_a_sleeping_function_is_seen_as_wall_time():
    recording = _sampler.start("sleep test")
    _nap_named_sleeper(0.4)
    session = _sampler.stop(recording)
    total = sum(t for _, t in session.frame_records)
    assert session.sample_count > 0
    # sampled by wall clock: the sleep is most of the capture, though it uses no CPU
    assert _time_in(session, "_nap_named_sleeper") > 0.5 * total
    assert session.cpu_time < session.duration


def test_the_number_of_samples_follows_wall_time_not_calls():
    recording = _sampler.start("calls test")
    sum(math.sqrt(i) for i in range(2_000_000))  # two million calls of the generator
    session = _sampler.stop(recording)
    # at most one sample per interval (plus slack for the first and a late stop);
    # a per-call profiler records far more, or costs the program per call
    assert session.sample_count <= session.duration / _sampler.INTERVAL + 5
    # the samples stand for the whole capture (each weighted by the time since the one before)
    assert abs(sum(t for _, t in session.frame_records) - session.duration) <= 0.1 * session.duration + 0.05


def test_the_sampler_thread_runs_only_while_a_capture_does():
    assert _no_sampler_thread_soon()
    done = threading.Event()
    other: list = []

    def captured() -> None:
        recording = _sampler.start("other thread")
        done.wait(30)
        other.append(_sampler.stop(recording))

    thread = threading.Thread(target=captured)
    thread.start()
    mine = _sampler.start("main thread")
    _spin_named_busy_loop(0.1)
    assert len(_sampler_threads()) == 1  # one per process, for both captures
    session = _sampler.stop(mine)
    time.sleep(_sampler.LINGER + 0.2)
    assert len(_sampler_threads()) == 1  # the other thread's capture still runs
    done.set()
    thread.join(30)
    assert _no_sampler_thread_soon()
    # each capture saw only its own thread
    assert _time_in(session, "_spin_named_busy_loop") > 0
    assert _time_in(other[0], "_spin_named_busy_loop") == 0
    roots = {stack[0] for stack, _ in other[0].frame_records}
    assert roots <= {f"{thread.name}\x00<thread>\x00{thread.ident}"}


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork only")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")  # (the point)
def test_a_forked_child_starts_with_no_capture_of_its_parent():
    recording = _sampler.start("parent")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running the parent's cleanup
        code = 1
        try:
            fresh = _sampler._current()
            inherited = len(fresh.recordings) + (fresh.thread is not None)
            child = _sampler.start("child")
            _spin_named_busy_loop(0.2)
            session = _sampler.stop(child)
            alive = 0 if _no_sampler_thread_soon() else 1
            os.write(write, f"{inherited} {session.sample_count} {alive}".encode())
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    try:
        deadline = time.monotonic() + 60
        while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        if done[0] == 0:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the forked child did not finish within 60 s")
        report = os.read(read, 100).decode()
    finally:
        os.close(read)
        _sampler.stop(recording)
    assert os.waitstatus_to_exitcode(done[1]) == 0
    inherited, samples, alive = map(int, report.split())
    assert inherited == 0  # none of the parent's captures, no (dead) sampler thread
    assert samples > 0  # the child's own sampler ran
    assert alive == 0  # and ended with its capture


_PROGRAM = textwrap.dedent("""
    import math, os, sys, tempfile
    import pyinstrument.stack_sampler
    from poolx.harness._hook import ProfilerHook

    # a slow clock, as this project's VMs measure at times (~5 us a read):
    # pyinstrument's per-call hook then warns on stderr, into the program's output
    pyinstrument.stack_sampler.timing_overhead = lambda: {"walltime": 5e-6, "walltime_coarse": 5e-6}

    out = tempfile.mkdtemp()
    hook = ProfilerHook("cpu", out)
    hook.start("driver")
    sum(math.sqrt(i) for i in range(2_000_000))
    hook.stop()
    print(sorted(os.listdir(out)))
""")


@pytest.mark.timeout(120)
def test_a_cpu_capture_prints_nothing_on_the_programs_stderr():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.dirname(poolx.__file__)),
                                                       os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", _PROGRAM], capture_output=True, text=True, timeout=100,
                          env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert "driver-p" in proc.stdout and ".pyisession" in proc.stdout, proc.stdout


def _tiny(x: int) -> int:
    return x + 1


@pytest.mark.timeout(120)
def test_a_worker_waiting_for_its_next_task_shows_as_waiting(tmp_path, start_method):
    hook = ProfilerHook("cpu", str(tmp_path))
    with poolx.Executor.for_front_end(1, mp_context=start_method, child_hook=hook) as ex:
        assert ex.submit(_tiny, 1).result(timeout=60) == 2
        time.sleep(0.5)  # the worker waits for its next task meanwhile
        assert ex.submit(_tiny, 2).result(timeout=60) == 3
    files = list(tmp_path.glob("worker-0-p*.pyisession"))
    assert len(files) == 1, files
    hot = profiles.hot_functions(Session.load(str(files[0])))
    assert hot and hot[0]["function"] == profiles.WAITING_LABEL, hot
    assert hot[0]["seconds"] > 0.25


def test_two_captures_of_one_thread_both_see_its_work():
    # (two hooks in one thread, as pyinstrument allowed: e.g. poolx.profile() inside a profiled run)
    outer = _sampler.start("outer")
    inner = _sampler.start("inner")
    _spin_named_busy_loop(0.2)
    inner_session = _sampler.stop(inner)
    outer_session = _sampler.stop(outer)
    inner_busy = _time_in(inner_session, "_spin_named_busy_loop")
    assert inner_busy > 0
    assert _time_in(outer_session, "_spin_named_busy_loop") >= inner_busy
    assert _no_sampler_thread_soon()


def _one_ms_task() -> None:
    _spin_named_busy_loop(0.001)


def test_captures_shorter_than_a_sample_are_counted_right_on_average():
    # As on a cluster worker: one capture per task, each far shorter than the
    # spacing of samples.  A sampler started with each capture saw none of them.
    sessions = []
    for _ in range(300):
        recording = _sampler.start("task")
        _one_ms_task()
        sessions.append(_sampler.stop(recording))
    busy = sum(_time_in(s, "_one_ms_task") for s in sessions)
    total = sum(s.duration for s in sessions)
    assert busy > 0.2 * total, (busy, total, sum(s.sample_count for s in sessions))
    assert _no_sampler_thread_soon()


def test_a_long_capture_stores_each_stack_and_name_once():
    recording = _sampler.start("memory")
    _nap_named_sleeper(0.3)  # the same stack, sample after sample
    session = _sampler.stop(recording)
    stacks = [stack for stack, _ in session.frame_records]
    napping = [stack for stack in stacks if stack[-1].startswith("_nap_named_sleeper")]
    assert len(napping) >= 2, stacks
    assert len({id(stack) for stack in napping}) == 1  # (consecutive equal stacks: one list)
    names = {}
    for stack in stacks:
        for name in stack:
            assert names.setdefault(name, name) is name  # one string object per frame name
