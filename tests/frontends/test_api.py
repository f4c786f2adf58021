"""The public surface: names, signatures, validation, the backend registry."""

from __future__ import annotations

import concurrent.futures as cf
import inspect
import pickle
import types

import pytest
from _tasks import square

import poolx
from poolx.backends import Backend, get_backend


def test_every_public_name_is_in_all_and_exists():
    public = {n for n in dir(poolx) if not n.startswith("_") and
              not isinstance(getattr(poolx, n), types.ModuleType)}
    assert public <= set(poolx.__all__), public - set(poolx.__all__)
    for name in poolx.__all__:
        assert hasattr(poolx, name), name


def test_executor_signature_matches_process_pool_executor():
    ours = inspect.signature(poolx.Executor)
    theirs = inspect.signature(cf.ProcessPoolExecutor)
    for name, param in theirs.parameters.items():
        assert name in ours.parameters, name
        assert ours.parameters[name].kind == param.kind, name
        assert ours.parameters[name].default == param.default, name
    assert ours.parameters["backend"].kind is inspect.Parameter.KEYWORD_ONLY
    assert issubclass(poolx.Executor, cf.Executor)
    for method in ("submit", "map", "shutdown", "terminate_workers", "kill_workers",
                   "__enter__", "__exit__"):
        assert callable(getattr(poolx.Executor, method))


def test_map_signature_has_the_314_parameters():
    params = inspect.signature(poolx.Executor.map).parameters
    assert [p for p in params if p != "self"][:2] == ["fn", "iterables"]
    assert {"timeout", "chunksize", "buffersize"} <= set(params)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"max_workers": 0}, ValueError, "max_workers must be greater than 0"),
        ({"max_workers": -1}, ValueError, "max_workers must be greater than 0"),
        ({"initializer": 42}, TypeError, "initializer must be a callable"),
        ({"max_tasks_per_child": "3"}, TypeError, "must be an integer"),
        ({"max_tasks_per_child": 0}, ValueError, ">= 1"),
        ({"backend": "nope"}, ValueError, "unknown backend 'nope'; available backends: "),
    ],
)
def test_bad_constructor_arguments_are_refused_clearly(kwargs, error, match):
    with pytest.raises(error, match=match):
        poolx.Executor(**kwargs)


def test_submit_refuses_what_is_not_callable(executor):
    with pytest.raises(TypeError, match="needs a callable"):
        executor.submit(42)


def test_errors_subclass_the_stdlib_types_existing_code_catches():
    assert issubclass(poolx.WorkerDiedError, cf.process.BrokenProcessPool)
    assert issubclass(poolx.InitializerError, cf.process.BrokenProcessPool)
    assert issubclass(poolx.SerializationError, pickle.PicklingError)
    assert issubclass(poolx.DeserializationError, pickle.UnpicklingError)
    for name in ("WorkerDiedError", "InitializerError", "SerializationError",
                 "DeserializationError", "RemoteError"):
        assert issubclass(getattr(poolx, name), poolx.PoolxError)


def test_errors_survive_pickling():
    err = poolx.WorkerDiedError("died", exitcode=-9, pid=123)
    back = pickle.loads(pickle.dumps(err))
    assert (str(back), back.exitcode, back.pid) == ("died", -9, 123)
    remote = pickle.loads(pickle.dumps(poolx.RemoteError("m.E", "msg", "tb")))
    assert (remote.type_name, remote.message, remote.tb) == ("m.E", "msg", "tb")


def test_builtin_backends_and_their_capabilities():
    assert {"serial", "threads", "processes"} <= set(poolx.available_backends())
    processes = get_backend("processes")
    assert processes.uses_processes and processes.supports_worker_restart
    assert not get_backend("serial").uses_processes
    assert get_backend("serial").runs_in_caller


class _InlineBackend(Backend):
    name = "inline-test"
    runs_in_caller = True

    def submit(self, task):
        task.worker = 0
        task.run_here()
        self.telemetry.task_done(task, task.future.exception() is None)

    def shutdown(self, wait, cancel_futures):
        pass


def test_a_registered_backend_serves_the_executor():
    poolx.register_backend("inline-test", _InlineBackend)
    with poolx.Executor(1, backend="inline-test") as ex:
        assert ex.backend == "inline-test"
        assert ex.submit(square, 5).result() == 25
        assert list(ex.map(square, range(4))) == [0, 1, 4, 9]
    with pytest.raises(TypeError, match="Backend subclass"):
        poolx.register_backend("bad", object)  # type: ignore[arg-type]


def test_backends_are_found_through_the_entry_point_group(monkeypatch):
    import importlib.metadata as md

    ep = md.EntryPoint(name="from-entry-point", value="test_api:_InlineBackend",
                       group="poolx.backends")
    real = md.entry_points

    def fake(**kwargs):
        if kwargs.get("group") == "poolx.backends":
            return [ep]
        return real(**kwargs)

    monkeypatch.setattr(md, "entry_points", fake)
    assert "from-entry-point" in poolx.available_backends()
    assert get_backend("from-entry-point") is _InlineBackend


def test_max_tasks_per_child_needs_a_backend_that_supports_it():
    with pytest.raises(ValueError, match="does not support max_tasks_per_child"):
        poolx.Executor(1, backend="threads", max_tasks_per_child=2)


def test_capability_errors_name_the_backend():
    with poolx.Executor(1, backend="threads") as ex:
        with pytest.raises(NotImplementedError, match="'threads' backend"):
            ex.kill_workers()
