"""Kept only for tests/test_readme.py, which imports ``load`` from here: the one scenario
loader is ``poolx.harness.scenario`` (``load_module``).  Delete this file once that test
imports from there."""

from .harness.scenario import load_module as load

__all__ = ["load"]
