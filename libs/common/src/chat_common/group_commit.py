"""Group commit: the writes of concurrent callers in one statement, while the previous one runs.

A caller ``submit``s its row and waits for its own result. One writer task (``run``, owned by the
service's task group) takes every row submitted since its last statement and writes them with one
``write_many``. At low load a row is written alone, as soon as it comes (no added delay); under load
each statement carries more rows, so the database's round trips and commits grow slower than the load.

Tracing: a statement serves many requests, so it cannot be the child of each. It runs in the trace
context of the first caller in it (so a request written alone has its statement in its own trace, as
an unbatched write would), and a statement of several rows is wrapped in a ``group write`` span that
links to every other caller's span (OpenTelemetry's way of naming a batch's members).

If a statement fails with an error that depends on the data (``data_errors``: one row's bad value),
the rows of that statement are written one by one, so that only the bad row's caller hears it; any
other failure (the database away) is every caller's, who decides to retry.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from opentelemetry import context, trace

logger = logging.getLogger(__name__)

Row = TypeVar("Row")
Result = TypeVar("Result")


class GroupCommit(Generic[Row, Result]):
    def __init__(
        self,
        write_many: Callable[[list[Row]], Awaitable[list[Result]]],
        *,
        data_errors: tuple[type[BaseException], ...] = (),
        max_rows: int = 500,
    ) -> None:
        self._write_many = write_many
        self._data_errors = data_errors
        self._max_rows = max_rows
        self._queue: list[tuple[Row, asyncio.Future[Result], context.Context]] = []
        self._wake = asyncio.Event()
        self.statements = 0
        self.rows = 0

    async def submit(self, row: Row) -> Result:
        """Write ``row`` with whatever else is waiting; its own result, or the statement's error."""
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.append((row, future, context.get_current()))
        self._wake.set()
        return await future

    async def run(self) -> None:
        """Write until cancelled; rows still queued then fail with ``CancelledError`` for their callers."""
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._queue:
                    batch, self._queue = self._queue[: self._max_rows], self._queue[self._max_rows :]
                    await self._write([entry for entry in batch if not entry[1].done()])
        finally:
            for _, future, _ in self._queue:
                future.cancel()

    async def _write(self, batch: list[tuple[Row, asyncio.Future[Result], context.Context]]) -> None:
        if not batch:
            return
        token = context.attach(batch[0][2])
        try:
            if len(batch) == 1:
                results = await self._write_many([batch[0][0]])
            else:
                members = (trace.get_current_span(ctx).get_span_context() for _, _, ctx in batch[1:])
                links = [trace.Link(member) for member in members if member.is_valid]
                with _tracer.start_as_current_span("group write", links=links, attributes={"rows": len(batch)}):
                    results = await self._write_many([row for row, _, _ in batch])
        except self._data_errors as exc:
            if len(batch) == 1:
                _fail(batch[0][1], exc)
                return
            logger.warning("a grouped write of %d rows was refused for its data: writing them one by one", len(batch))
            for entry in batch:
                await self._write([entry])
            return
        except asyncio.CancelledError:
            for _, future, _ in batch:
                future.cancel()
            raise
        except Exception as exc:  # noqa: BLE001 - every caller of the statement hears it and decides
            for _, future, _ in batch:
                _fail(future, exc)
            return
        finally:
            context.detach(token)
        self.statements += 1
        self.rows += len(batch)
        for (_, future, _), result in zip(batch, results, strict=True):
            if not future.done():  # its caller may have been cancelled meanwhile
                future.set_result(result)


_tracer = trace.get_tracer(__name__)


def _fail(future: asyncio.Future[Result], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
