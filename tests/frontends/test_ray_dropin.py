"""What a Ray user hits next with ``import poolx as ray`` (issue 21, item 9, the Ray-style API's
part): shutdown with a running actor call, ``sys.exit()`` in a task, signatures checked at
``.remote()``, ``wait(num_returns=<float>)``, logical resources (``num_gpus``, ``resources``),
detached actors, ``@ray.method``, refs that print as ``ObjectRef(...)``; and one program run
under real Ray and under poolx, compared."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import poolx
import poolx as ray

pytestmark = pytest.mark.timeout(120)

# For tests that need tasks to run while the caller goes on (not serial, which runs them at submit).
CONCURRENT = pytest.mark.parametrize("backend", ["threads", "processes"])


@ray.remote
def add(a, b, *, scale=1):
    return (a + b) * scale


@ray.remote
def leave(code):
    sys.exit(code)


@ray.remote
def span(seconds):
    start = time.time()
    time.sleep(seconds)
    return start, time.time()


@ray.remote
class Sleeper:
    def __init__(self, name, *, loud=False):
        self.name = name

    def nap(self, seconds):
        time.sleep(seconds)
        return self.name

    @ray.method(num_returns=2)
    def pair(self, x):
        return x, x + 1

    @staticmethod
    def twice(x):
        return 2 * x


def _most_at_once(spans):
    """The largest number of (start, end) spans open at one moment."""
    edges = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans])
    open_now = most = 0
    for _, step in edges:
        open_now += step
        most = max(most, open_now)
    return most


# -- shutdown ---------------------------------------------------------------------------------


def test_shutdown_kills_actors_with_a_call_running_and_returns(start_method):
    # (processes backend: a thread cannot be killed, so the threads backend's actor finishes its call)
    ray.init(num_cpus=2, mp_context=start_method)
    actor = Sleeper.remote("a")
    ref = actor.nap.remote(60)
    time.sleep(0.3)  # (the call is running)
    done = threading.Event()
    stopper = threading.Thread(target=lambda: (ray.shutdown(), done.set()), daemon=True)
    stopper.start()
    assert done.wait(30), "shutdown() waited for the actor's call to finish (60 s)"
    with pytest.raises(poolx.ActorDiedError):
        ref.result(timeout=10)
    assert not ray.is_initialized()


# -- sys.exit() in a task ---------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["serial", "threads", "processes"])
def test_sys_exit_in_a_task_raises_worker_crashed_error_from_get(api):
    ref = leave.remote(3)
    with pytest.raises(ray.exceptions.WorkerCrashedError, match=r"sys\.exit\(3\)") as info:
        ray.get(ref)
    assert info.value.exitcode == 3
    # The concurrent.futures face keeps the stdlib's behaviour: the SystemExit itself.
    with pytest.raises(SystemExit):
        ref.result()


def test_the_executor_keeps_the_stdlibs_systemexit():
    with poolx.Executor(1) as ex:
        with pytest.raises(SystemExit):
            ex.submit(sys.exit, 4).result()


# -- signatures -------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["serial", "processes"])
def test_remote_checks_the_calls_signature_at_the_call(api):
    with pytest.raises(TypeError, match=r"add\.remote\(\): missing 1 required positional argument: 'b'"):
        add.remote(1)
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'scal'"):
        add.remote(1, 2, scal=3)
    with pytest.raises(TypeError, match=r"takes 2 positional arguments but 3"):
        add.options(num_returns=1).remote(1, 2, 3)
    assert ray.get(add.remote(1, 2, scale=2)) == 6
    with pytest.raises(TypeError, match=r"Sleeper\.remote\(\): missing 1 required positional argument"):
        Sleeper.remote()
    with pytest.raises(TypeError, match=r"unexpected keyword argument 'quiet'"):
        Sleeper.remote("x", quiet=True)
    actor = Sleeper.remote("x", loud=True)
    with pytest.raises(TypeError, match=r"Sleeper\.nap\.remote\(\): missing 1 required positional"):
        actor.nap.remote()
    with pytest.raises(TypeError, match=r"takes 1 positional argument but 2"):
        actor.twice.remote(1, 2)
    assert ray.get(actor.twice.remote(4)) == 8 and ray.get(actor.nap.remote(0)) == "x"


@pytest.mark.parametrize("backend", ["threads"])
def test_get_actor_gives_a_checked_handle_too(api):
    Sleeper.options(name="checked").remote("n")
    with pytest.raises(TypeError, match="missing 1 required positional argument"):
        ray.get_actor("checked").nap.remote()


# -- wait(num_returns=<float>) ----------------------------------------------------------------


@pytest.mark.parametrize("backend", ["serial"])
def test_wait_truncates_a_float_num_returns_as_ray_does(api):
    peers = [add.remote(i, 0) for i in range(5)]
    ready, not_ready = ray.wait(peers, num_returns=len(peers) / 2 + 1)
    assert (len(ready), len(not_ready)) == (3, 2)
    with pytest.raises(ValueError, match="num_returns"):
        ray.wait(peers, num_returns=0.5)


# -- logical resources ------------------------------------------------------------------------


@CONCURRENT
def test_num_gpus_is_a_logical_count_that_limits_what_runs_at_once(backend):
    ray.init(num_cpus=3, backend=backend, num_gpus=1, object_store_memory=10**8,
             resources={"disk": 2})
    try:
        assert ray.cluster_resources() == {"CPU": 3.0, "GPU": 1.0, "disk": 2.0}
        on_gpu = span.options(num_gpus=1)
        spans = ray.get([on_gpu.remote(0.2) for _ in range(3)])
        assert _most_at_once(spans) == 1
        on_disk = span.options(resources={"disk": 1})
        spans = ray.get([on_disk.remote(0.3) for _ in range(6)])
        assert _most_at_once(spans) <= 2
        half = span.options(num_gpus=0.5)
        refs = [half.remote(0.5) for _ in range(2)]
        time.sleep(0.2)
        assert ray.available_resources()["GPU"] == 0.0
        ray.get(refs)
        assert ray.available_resources() == ray.cluster_resources()
    finally:
        ray.shutdown()


@pytest.mark.parametrize("backend", ["threads"])
def test_a_request_beyond_the_declared_resources_is_refused_naming_them(api):
    with pytest.raises(ValueError, match=r"asks for 1 GPU but poolx.init\(\) declared 0.*num_gpus"):
        span.options(num_gpus=1).remote(0)
    with pytest.raises(ValueError, match=r"asks for 3 disk.*declared 0"):
        span.options(resources={"disk": 3}).remote(0)
    with pytest.raises(ValueError, match=r"Sleeper\.remote\(\) asks for 1 GPU"):
        Sleeper.options(num_gpus=1).remote("g")
    assert ray.cluster_resources() == {"CPU": 2.0}


@pytest.mark.parametrize("backend", ["threads"])
def test_a_task_waiting_for_resources_can_be_cancelled(backend):
    ray.init(num_cpus=2, backend=backend, num_gpus=1)
    try:
        on_gpu = span.options(num_gpus=1)
        first, second = on_gpu.remote(0.5), on_gpu.remote(0.5)
        ray.cancel(second)
        assert ray.get(first)
        with pytest.raises(poolx.TaskCancelledError):
            ray.get(second)
        assert ray.available_resources()["GPU"] == 1.0
    finally:
        ray.shutdown()


# -- detached actors --------------------------------------------------------------------------


@CONCURRENT
def test_a_detached_actor_outlives_its_handles_until_shutdown(api):
    Sleeper.options(name="keeper", lifetime="detached").remote("kept")
    gc.collect()
    assert ray.get(ray.get_actor("keeper").nap.remote(0)) == "kept"
    with pytest.raises(ValueError, match="lifetime='forever'"):
        Sleeper.options(lifetime="forever")


# -- @ray.method and ObjectRef(...) -----------------------------------------------------------


@pytest.mark.parametrize("backend", ["serial", "processes"])
def test_ray_method_num_returns_splits_an_actor_calls_result(api):
    actor = Sleeper.remote("m")
    a, b = actor.pair.remote(1)
    assert ray.get([a, b]) == [1, 2]
    assert ray.get(actor.pair.options(num_returns=1).remote(1)) == (1, 2)
    wrong = actor.pair.options(num_returns=3).remote(1)
    with pytest.raises(ValueError, match="num_returns=3"):
        ray.get(wrong[0])
    with pytest.raises(TypeError, match="num_returns only"):
        ray.method(concurrency_group="io")
    with pytest.raises(ValueError, match="num_returns"):
        ray.method(num_returns=0)


@pytest.mark.parametrize("backend", ["threads"])
def test_refs_print_as_rays_object_refs_and_executor_futures_do_not(api):
    actor = Sleeper.remote("r")
    refs = [add.remote(1, 2), actor.nap.remote(0), *actor.pair.remote(1)]
    for ref in refs:
        assert repr(ref).startswith("ObjectRef(") and str(ref) == repr(ref)
    ray.get(refs)
    with poolx.Executor(1, backend="threads") as ex:
        assert repr(ex.submit(abs, -1)).startswith("<Future at 0x")


# -- the same program under Ray and poolx -----------------------------------------------------

PROGRAM = """
import sys, time
IMPORT

@ray.remote
def add(a, b):
    return a + b

@ray.remote
def boom():
    raise ValueError("boom")

@ray.remote(max_retries=0)
def leave():
    sys.exit(3)

@ray.remote(num_gpus=1)
def on_gpu():
    start = time.time()
    time.sleep(0.3)
    return start, time.time()

@ray.remote
class Pair:
    def __init__(self, x):
        self.x = x

    @ray.method(num_returns=2)
    def two(self):
        return self.x, self.x + 1

    def nap(self):
        time.sleep(60)

if __name__ == "__main__":
    ray.init(num_cpus=2, num_gpus=1, object_store_memory=100 * 2**20, include_dashboard=False)
    out = []
    try:
        add.remote(1)
    except TypeError:
        out.append("TypeError at the call")
    refs = [add.remote(i, 0) for i in range(5)]
    ready, rest = ray.wait(refs, num_returns=len(refs) / 2 + 1)
    out.append(len(ready))
    try:
        ray.get(boom.remote())
    except ray.exceptions.RayTaskError as e:
        out.append(("RayTaskError", isinstance(e, ValueError)))
    try:
        ray.get(leave.remote())
    except ray.exceptions.WorkerCrashedError:
        out.append("WorkerCrashedError")
    pair = Pair.remote(1)
    out.append(ray.get(list(pair.two.remote())))
    spans = sorted(ray.get([on_gpu.remote() for _ in range(2)]))
    out.append(spans[1][0] >= spans[0][1])
    out.append(ray.cluster_resources()["GPU"])
    out.append(repr(refs[0]).startswith("ObjectRef("))
    pair.nap.remote()
    time.sleep(0.5)
    ray.shutdown()
    print("RESULT", out)
"""


def _run(import_line: str, tmp_path, env: dict[str, str]) -> str:
    script = tmp_path / f"program_{import_line.split()[1]}.py"
    script.write_text(textwrap.dedent(PROGRAM).replace("IMPORT", import_line))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=240,
                          env=env, cwd=tmp_path)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT")]
    assert lines, f"{import_line}: exit {done.returncode}\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}"
    return lines[-1]


@pytest.mark.timeout(300)
def test_the_same_program_under_ray_and_poolx(tmp_path):
    pytest.importorskip("ray")
    root = os.path.dirname(os.path.dirname(poolx.__file__))
    env = {**os.environ, "PYTHONPATH": root, "RAY_DEDUP_LOGS": "0", "RAY_USAGE_STATS_ENABLED": "0"}
    on_poolx = _run("import poolx as ray", tmp_path, env)
    assert on_poolx == ("RESULT ['TypeError at the call', 3, ('RayTaskError', True), 'WorkerCrashedError', "
                        "[1, 2], True, 1.0, True]")
    assert _run("import ray", tmp_path, env) == on_poolx
