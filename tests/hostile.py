"""Helpers of the issue-14 tests (test_safety*.py): the one-error-line check (the tiny trained run is
conftest.tiny_run)."""

from __future__ import annotations


def one_error(err: str) -> str:
    """The single ``dogcat CMD: error: ...`` line of a failed command; no traceback, no second error."""
    errors = [ln for ln in err.splitlines() if ": error: " in ln]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]
