"""The benchmark suite (see README.md); the wheel ships it as ``poolx.benchmarks`` for ``poolx bench``."""
