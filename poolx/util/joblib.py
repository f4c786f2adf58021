"""``ray.util.joblib``: ``register_ray()`` makes joblib's ``"ray"`` backend poolx's.

After ``register_ray()``, ``with joblib.parallel_backend("ray"): ...`` runs on
poolx's joblib backend (``"poolx"``, in worker processes on this machine),
with the same keyword arguments as ``"poolx"``.
"""

from __future__ import annotations

__all__ = ["register_ray"]

#: The name Ray's ``register_ray`` gives its joblib backend.
BACKEND_NAME = "ray"


def register_ray() -> None:
    """Register poolx's joblib backend under the name ``"ray"`` too (needs joblib installed)."""
    import joblib

    from .. import joblib as poolx_joblib  # (loads joblib: an optional dependency)

    joblib.register_parallel_backend(BACKEND_NAME, poolx_joblib.PoolxBackend)
