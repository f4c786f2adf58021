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


def table_entry(cls_name: str, suite: str, test: str, table: dict):
    """``table``'s entry for a test: keyed by its generated class, else by its stdlib suite."""
    found = table.get(f"{cls_name}.{test}")
    return found if found is not None else table.get(f"{suite}.{test}")


def bad_table_keys(tables, known) -> list[str]:
    """Keys of ``tables`` that are not ``Class.test_x`` with Class in ``known``.

    (A test itself may exist only on some Python versions, so only the class
    part and the method prefix are checked.)
    """
    bad = []
    for table in tables:
        for key in table:
            cls, _, test = key.partition(".")
            if cls not in known or not test.startswith("test"):
                bad.append(key)
    return bad
