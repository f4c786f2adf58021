"""Building blocks shared by the modules that run CPython's own tests against
poolx (test_stdlib_conformance.py, test_pool_conformance.py)."""

from __future__ import annotations

import unittest

import pytest


def skipped(reason: str):
    """A test method that unittest reports as skipped, with ``reason``."""

    @unittest.skip(reason)
    def test(self):
        pass

    return test


def known_deviation(method, reason: str):
    """The stdlib test as is, marked as a strict pytest xfail."""

    def test(self):
        return method(self)

    test.__name__ = method.__name__
    test.__doc__ = method.__doc__
    return pytest.mark.xfail(reason=reason, strict=True)(test)
