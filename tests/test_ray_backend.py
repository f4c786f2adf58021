"""The ray backend against a local Ray instance (issue 9)."""

from __future__ import annotations

import os

import pytest
from _tasks import raise_value_error, square

import poolx

pytest.importorskip("ray")


# ray.shutdown() leaves its core worker's event loops, socket and log files open
# in the driver (Ray 2.60): Ray's, not poolx's.
@pytest.mark.leaks("fds")
def test_tasks_map_and_futures_as_arguments_run_on_ray(monkeypatch):
    # Ray's workers import the tests' task modules, as a cluster's import the user's code.
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [os.path.dirname(__file__),
                                                                   os.environ.get("PYTHONPATH")])))
    with poolx.Executor(2, backend="ray") as ex:
        assert ex.submit(square, 7).result(timeout=120) == 49
        assert list(ex.map(square, range(100))) == [i * i for i in range(100)]
        assert ex.submit(square, ex.submit(square, 3)).result(timeout=60) == 81
        assert ex.submit(lambda: "lambdas travel").result(timeout=60) == "lambdas travel"
        with pytest.raises(ValueError, match="boom") as info:
            ex.submit(raise_value_error, "boom").result(timeout=60)
        assert "raise_value_error" in str(info.value.__cause__)
        with pytest.raises(ValueError, match="does not run actors"):
            ex.actor(dict)
