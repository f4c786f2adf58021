"""Ray's namespaces under ``import poolx as ray`` (issue 21, item 7): ``ray.util`` (ActorPool,
multiprocessing.Pool, collective, iter, joblib.register_ray), ``ray.exceptions`` with Ray's
hierarchy, and ``ray.timeline``."""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import pathlib
import subprocess
import sys
import time
import warnings

import pytest

import poolx
import poolx as ray

pytestmark = pytest.mark.timeout(120)


@ray.remote
def square(x):
    return x * x


@ray.remote
def raise_value_error(message):
    raise ValueError(message)


@ray.remote
def get_of_a_failing_task(message):
    return ray.get(raise_value_error.remote(message))  # raises RayTaskError(ValueError) here


@ray.remote
def sleep_then(seconds, value):
    time.sleep(seconds)
    return value


class CodedError(Exception):
    """An exception class with attributes, a constructor and a str() of its own."""

    def __init__(self, code, detail):
        super().__init__(code, detail)
        self.code = code
        self.detail = detail

    def __str__(self):
        return f"code {self.code}"


@ray.remote
def raise_custom():
    raise CodedError(7, "seven")


@ray.remote
class Doubler:
    def double(self, x):
        return 2 * x


# -- ray.util -----------------------------------------------------------------------------------


def test_util_and_exceptions_are_attributes_of_the_package_loaded_on_first_use():
    code = ("import sys, poolx as ray; assert 'poolx.util' not in sys.modules; "
            "print(ray.util.ActorPool is ray.ActorPool, "
            "ray.exceptions.GetTimeoutError is ray.GetTimeoutError, "
            "callable(ray.timeline), callable(ray.method))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.split() == ["True"] * 4


def test_util_maps_rays_names_to_poolx_ones():
    from poolx.util.collective import allreduce, create_collective_group
    from poolx.util.iter import from_range
    from poolx.util.joblib import register_ray
    from poolx.util.multiprocessing import Pool, TimeoutError

    assert ray.util.ActorPool is poolx.ActorPool
    assert allreduce is poolx.collective.allreduce
    assert create_collective_group is poolx.collective.create_collective_group
    assert from_range is poolx.iter.from_range
    assert ray.util.collective.allreduce is allreduce and ray.util.iter.from_range is from_range
    assert ray.util.joblib.register_ray is register_ray and callable(register_ray)
    assert issubclass(Pool, poolx.Pool) and ray.util.multiprocessing.Pool is Pool
    assert TimeoutError is __import__("multiprocessing").TimeoutError


def test_util_names_poolx_lacks_say_so_and_what_to_use():
    placement = r"ray\.util\.placement_group does not exist in poolx.*one machine"
    with pytest.raises(AttributeError, match=placement):
        ray.util.placement_group  # noqa: B018
    with pytest.raises(AttributeError, match=r"ray\.util\.queue does not exist in poolx.*actor"):
        ray.util.queue  # noqa: B018
    with pytest.raises(AttributeError, match=r"ray\.util\.no_such_thing does not exist in poolx.*ActorPool"):
        ray.util.no_such_thing  # noqa: B018
    with pytest.raises(ImportError):
        from poolx.util import placement_group  # noqa: F401


@pytest.mark.parametrize("backend", ["threads", "processes"])
def test_util_actor_pool_runs_rays_example(api):
    pool = ray.util.ActorPool([Doubler.remote(), Doubler.remote()])
    assert list(pool.map(lambda actor, v: actor.double.remote(v), [1, 2, 3, 4])) == [2, 4, 6, 8]


def test_util_multiprocessing_pool_takes_rays_arguments_and_says_what_it_ignores():
    from poolx.util.multiprocessing import Pool

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with Pool(2, ray_address="auto", ray_remote_args={"num_cpus": 1}) as pool:
            assert pool.map(abs, [-1, -2, 3]) == [1, 2, 3]
    messages = [str(w.message) for w in caught]
    assert any("ray_address=..., ray_remote_args=...): ignored" in m for m in messages), messages
    with Pool(processes=1, initializer=None, initargs=None) as pool:  # (Ray's default initargs is None)
        assert pool.apply(abs, (-4,)) == 4


def _slow_initializer_leaves_a_file(folder):
    time.sleep(0.5)  # long enough that a constructor which does not wait returns first
    pathlib.Path(folder, str(os.getpid())).touch()


def test_util_multiprocessing_pool_returns_after_the_initializers_ran(tmp_path):
    from poolx.util.multiprocessing import Pool

    with Pool(2, initializer=_slow_initializer_leaves_a_file, initargs=(str(tmp_path),)) as pool:
        assert len(list(tmp_path.iterdir())) == 2  # both initializers ran before Pool() returned
        assert pool.map(abs, [-1, -2]) == [1, 2]


def test_util_joblib_register_ray_runs_joblib_on_poolx():
    joblib = pytest.importorskip("joblib")
    from poolx.util.joblib import register_ray

    register_ray()
    try:
        with joblib.parallel_backend("ray", n_jobs=2):
            assert joblib.Parallel()(joblib.delayed(abs)(-i) for i in range(5)) == [0, 1, 2, 3, 4]
            backend, _ = joblib.parallel.get_active_backend()
        assert type(backend).__name__ == "PoolxBackend"
    finally:
        import poolx.joblib

        poolx.joblib.shutdown_workers()


# -- ray.exceptions -----------------------------------------------------------------------------


def test_exceptions_have_rays_names_and_hierarchy():
    e = ray.exceptions
    for name in ("GetTimeoutError", "TaskCancelledError", "ActorDiedError", "RayActorError",
                 "WorkerCrashedError", "ObjectLostError", "RayTaskError"):
        assert issubclass(getattr(e, name), e.RayError), name
    assert e.RayError is poolx.PoolxError
    assert issubclass(e.ActorDiedError, e.RayActorError) and e.ActorDiedError is poolx.ActorDiedError
    assert e.WorkerCrashedError is poolx.WorkerDiedError
    assert issubclass(e.GetTimeoutError, TimeoutError)
    # poolx's own types and their stdlib bases are kept for concurrent.futures users
    assert issubclass(poolx.WorkerDiedError, cf.process.BrokenProcessPool)
    assert issubclass(e.TaskCancelledError, cf.CancelledError)
    assert issubclass(e.ObjectLostError, ValueError)
    with pytest.raises(AttributeError, match=r"NodeDiedError does not exist in poolx.*one machine"):
        e.NodeDiedError  # noqa: B018


@pytest.mark.parametrize("backend", ["serial", "threads", "processes"])
def test_get_raises_a_task_error_of_both_ray_task_error_and_the_tasks_class(api):
    ref = raise_value_error.remote("boom")
    with pytest.raises(ray.exceptions.RayTaskError) as info:
        ray.get(ref)
    error = info.value
    assert isinstance(error, ValueError) and type(error).__name__ == "RayTaskError(ValueError)"
    assert str(error) == "boom" and error.args == ("boom",)
    assert isinstance(error.cause, ValueError) and type(error.cause) is ValueError
    with pytest.raises(ValueError, match="boom"):  # code written for poolx or the stdlib still catches it
        ray.get(ref)
    # The concurrent.futures face of the same ref keeps the exception as itself.
    with pytest.raises(ValueError) as plain:
        ref.result()
    assert type(plain.value) is ValueError
    with pytest.raises(CodedError) as custom:
        ray.get(raise_custom.remote())
    assert isinstance(custom.value, ray.RayTaskError)
    assert (custom.value.code, custom.value.detail, str(custom.value)) == (7, "seven", "code 7")


@pytest.mark.parametrize("backend", ["threads", "processes"])
def test_a_task_error_raised_in_a_task_comes_back_as_a_task_error(api):
    with pytest.raises(ray.exceptions.RayTaskError) as info:
        ray.get(get_of_a_failing_task.remote("deep"))
    assert isinstance(info.value, ValueError) and str(info.value) == "deep"


@pytest.mark.parametrize("backend", ["processes"])
def test_a_task_error_keeps_the_workers_traceback(api):
    with pytest.raises(ray.exceptions.RayTaskError) as info:
        ray.get(raise_value_error.remote("boom"))
    assert isinstance(info.value.__cause__, poolx.RemoteTraceback)
    assert "raise_value_error" in info.value.traceback_str


@pytest.mark.parametrize("backend", ["threads"])
def test_get_timeout_is_rays_get_timeout_error(api):
    with pytest.raises(ray.exceptions.GetTimeoutError):
        ray.get(sleep_then.remote(5, 1), timeout=0.05)


# -- ray.timeline -------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["threads", "processes"])
def test_timeline_gives_chrome_trace_events_of_the_tasks(api, tmp_path):
    assert ray.get([square.remote(i) for i in range(3)]) == [0, 1, 4]
    actor = Doubler.remote()
    assert ray.get(actor.double.remote(4)) == 8
    events = ray.timeline()
    spans = [e for e in events if e["ph"] == "X"]
    assert sum(1 for e in spans if "square" in e["name"]) == 3
    assert any("double" in e["name"] for e in spans)
    assert all(e["dur"] >= 0 and "ts" in e and "tid" in e for e in spans)
    path = tmp_path / "trace.json"
    assert ray.timeline(filename=str(path)) is None
    written = json.loads(path.read_text())
    assert sum(1 for e in written["traceEvents"] if "square" in e.get("name", "")) == 3


def test_timeline_before_init_says_to_call_init():
    with pytest.raises(RuntimeError, match=r"poolx\.init\(\)"):
        ray.timeline()
