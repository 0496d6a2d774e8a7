"""The tests' one bounded wait: ``eventually()`` polls a condition until it holds or its deadline passes.

Tests wait for what they can observe (a metric, a row, a health figure), never for a fixed time. The check
may be a plain or an async callable; it passes when ``accept`` holds for its value (truthy by default). An
exception of ``retry_on`` (``AssertionError`` by default, so a check may ``assert``) counts as "not yet". On
timeout the ``AssertionError`` names ``what`` and the last value or exception seen.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any


async def _value(check: Callable[[], Any]) -> Any:
    value = check()
    if inspect.isawaitable(value):
        value = await value
    return value


async def eventually(
    check: Callable[[], Any],
    *,
    timeout: float = 10.0,
    interval: float = 0.1,
    what: str | None = None,
    accept: Callable[[Any], object] = bool,
    retry_on: tuple[type[BaseException], ...] = (AssertionError,),
) -> Any:
    """Call ``check`` every ``interval`` seconds until ``accept(value)`` holds; return that value.

    The check is called at least once, and once more after the deadline, so a condition that is met exactly
    at the deadline passes. Raises ``AssertionError`` naming ``what`` (default: the check's name) with the
    last value or exception, chained from that exception.
    """
    deadline = time.monotonic() + timeout
    last: Any = None
    error: BaseException | None = None
    while True:
        try:
            last, error = await _value(check), None
            if accept(last):
                return last
        except retry_on as failed:
            error = failed
        if time.monotonic() >= deadline:
            break
        await asyncio.sleep(max(0.0, min(interval, deadline - time.monotonic())))
    name = what or getattr(check, "__qualname__", repr(check))
    seen = f"last error: {error!r}" if error is not None else f"last value: {last!r}"
    raise AssertionError(f"{name}: not reached within {timeout}s; {seen}") from error


async def timed(check: Callable[[], Any], **options: Any) -> float:
    """The seconds ``eventually(check, **options)`` took to pass."""
    start = time.monotonic()
    await eventually(check, **options)
    return time.monotonic() - start
