"""The parts of the ``"poolx"`` joblib backend (``poolx.joblib`` is the public module)."""
