"""The ray backend against a local Ray instance (issue 9)."""

from __future__ import annotations

import pytest
from _tasks import raise_value_error, square

import poolx

pytest.importorskip("ray")


def test_tasks_map_and_futures_as_arguments_run_on_ray(ray_cluster):
    with poolx.Executor(2, backend="ray") as ex:
        assert ex.submit(square, 7).result(timeout=120) == 49
        assert list(ex.map(square, range(100))) == [i * i for i in range(100)]
        assert ex.submit(square, ex.submit(square, 3)).result(timeout=60) == 81
        assert ex.submit(lambda: "lambdas travel").result(timeout=60) == "lambdas travel"
        with pytest.raises(ValueError, match="boom") as info:
            ex.submit(raise_value_error, "boom").result(timeout=60)
        assert "raise_value_error" in str(info.value.__cause__)


def test_pool_joblib_and_nested_tasks_run_on_ray(ray_cluster):
    import joblib
    from _tasks import fan_out

    import poolx.joblib  # (registers "poolx")

    with poolx.Pool(2, backend="ray") as pool:
        assert pool.map(square, range(20)) == [i * i for i in range(20)]
    with joblib.parallel_config(backend="poolx", n_jobs=2, engine="ray"):
        assert joblib.Parallel()(joblib.delayed(square)(i) for i in range(10)) == [i * i for i in range(10)]
    poolx.joblib.shutdown_workers()
    with poolx.Executor(2, backend="ray") as ex:
        assert ex.submit(fan_out, 4).result(timeout=60) == [0, 1, 4, 9]


def test_actor_restarts_and_what_ray_cannot_do(ray_cluster):
    with pytest.raises(ValueError, match="task_timeout needs backend='processes'"):
        poolx.Executor(backend="ray", task_timeout=1)
    with poolx.Executor(2, backend="ray") as ex:
        with pytest.raises(ValueError, match="call_timeout needs backend='processes'"):
            ex.options(call_timeout=1).actor(dict)
