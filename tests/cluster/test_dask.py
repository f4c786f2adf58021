"""The dask backend against a real cluster: a scheduler and two workers started
as separate processes with the ``dask`` command, on loopback (issue 9)."""

from __future__ import annotations

import pytest
from _tasks import raise_value_error, square

import poolx

pytest.importorskip("distributed")


def test_tasks_map_and_futures_as_arguments_run_on_the_cluster(dask_address):
    with poolx.Executor(backend="dask", address=dask_address) as ex:
        assert ex.submit(square, 7).result(timeout=60) == 49
        assert list(ex.map(square, range(100))) == [i * i for i in range(100)]
        assert ex.submit(square, ex.submit(square, 3)).result(timeout=60) == 81
        assert ex.submit(lambda: "lambdas travel").result(timeout=60) == "lambdas travel"
        with pytest.raises(ValueError, match="boom") as info:
            ex.submit(raise_value_error, "boom").result(timeout=60)
        assert "raise_value_error" in str(info.value.__cause__)
        assert ex.submit(square, 2).result(timeout=60) == 4
        stats = ex.statistics()
    assert stats.tasks_completed >= 4 and stats.tasks_failed == 1


def test_pool_and_the_environment_variable_move_an_unchanged_program(dask_address, monkeypatch):
    monkeypatch.setenv("POOLX_BACKEND", "dask")
    monkeypatch.setenv("POOLX_DASK_ADDRESS", dask_address)
    with poolx.Executor() as ex:
        assert ex.backend == "dask"
        assert ex.submit(square, 5).result(timeout=60) == 25


def test_what_the_dask_backend_cannot_do_is_refused_clearly(dask_address):
    with pytest.raises(ValueError, match="task_timeout needs backend='processes'"):
        poolx.Executor(backend="dask", address=dask_address, task_timeout=1)
    with poolx.Executor(backend="dask", address=dask_address) as ex:
        with pytest.raises(ValueError, match="cannot restart an actor"):
            ex.options(max_restarts=1).actor(dict)
    with pytest.raises(ValueError, match="address= is the cluster"):
        poolx.Executor(backend="threads", address=dask_address)


def test_pool_joblib_and_the_ray_style_api_run_on_the_cluster(dask_address):
    import joblib

    import poolx.joblib  # (registers "poolx")

    with poolx.Pool(2, backend="dask", address=dask_address) as pool:
        assert pool.map(square, range(20)) == [i * i for i in range(20)]
        assert pool.apply_async(square, (6,)).get(timeout=60) == 36
    with joblib.parallel_config(backend="poolx", n_jobs=2, engine="dask", address=dask_address):
        assert joblib.Parallel()(joblib.delayed(square)(i) for i in range(10)) == [i * i for i in range(10)]
    poolx.joblib.shutdown_workers()
    poolx.init(2, backend="dask", address=dask_address)
    try:
        remote_square = poolx.remote(square)
        assert poolx.get([remote_square.remote(i) for i in range(5)]) == [0, 1, 4, 9, 16]
        ref = poolx.put(list(range(1000)))
        assert poolx.get(poolx.remote(sum).remote(ref)) == sum(range(1000))
        ready, pending = poolx.wait([remote_square.remote(3)], num_returns=1, timeout=60)
        assert poolx.get(ready) == [9] and not pending
    finally:
        poolx.shutdown()


def test_nested_tasks_from_a_task_run_on_the_cluster(dask_address):
    from _tasks import fan_out

    with poolx.Executor(2, backend="dask", address=dask_address) as ex:
        assert ex.submit(fan_out, 4).result(timeout=60) == [0, 1, 4, 9]
