"""One answer from prompt to stored reply: build the prompt, stream the model, coalesce, store, reply.

Contract: ``answer`` returns the outcome once the answer (complete, cancelled or failed) is both
stored and sent; the caller acks the request after that. If the task is cancelled for a reason that
is not the client's (shutdown, lost broker connection: ``CancelScope.reason`` not in
``STORED_REASONS``), ``CancelledError`` propagates and nothing is stored, so the request can be
redelivered. While PostgreSQL is away, reads and writes are retried until the request's deadline
(at most ``STORE_RETRY_S``), so a short database outage does not burn the delivery limit.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from chat_common.broker import now_ms
from chat_common.envelopes import ChatRequest
from chat_common.errors import ErrorCode
from chat_common.group_commit import GroupCommit
from chat_common.settings import WorkerSettings
from chat_common.store import (
    DATA_ERRORS,
    UNAVAILABLE_ERRORS,
    AnswerRow,
    ChatStore,
    HistoryQuery,
    StoredMessage,
)
from llm_worker.budget import trim_to_budget
from llm_worker.clean import DeltaCleaner
from llm_worker.coalesce import Coalescer
from llm_worker.metrics import WorkerMetrics
from llm_worker.providers import Finish, LLMProvider, PromptMessage, UpstreamError
from llm_worker.replies import ReplyStream, usage_of

logger = logging.getLogger(__name__)

Outcome = Literal["complete", "cancelled", "timeout", "upstream_error", "expired", "duplicate"]
T = TypeVar("T")

STORED_REASONS = frozenset({"cancelled", "disconnected", "timeout"})
"""cancel reasons after which the partial answer is stored; any other cancel leaves it to redelivery."""
STORE_RETRY_S = 30.0


@dataclass(slots=True)
class CancelScope:
    """Set ``reason`` before cancelling the answering task so that it knows why it was cancelled."""

    request: ChatRequest
    reason: str | None = None
    task: asyncio.Task[Any] | None = field(default=None, repr=False)
    replies: ReplyStream | None = field(default=None, repr=False)
    pending_disconnect: asyncio.TimerHandle | None = field(default=None, repr=False)

    def cancel(self, reason: str) -> bool:
        """Cancel the answering task once, for ``reason``; ``False`` if it was cancelled before."""
        if self.reason is not None or self.task is None:
            return False
        if self.pending_disconnect is not None:
            self.pending_disconnect.cancel()
            self.pending_disconnect = None
        self.reason = reason
        self.task.cancel()
        return True


async def with_store_retry(request: ChatRequest, operation: Callable[[], Awaitable[T]]) -> T:
    """Run a store operation, retrying while PostgreSQL is unavailable, until the request's deadline
    or ``STORE_RETRY_S``; then the last error propagates (the request goes back to the queue)."""
    give_up = min(time.monotonic() + STORE_RETRY_S, time.monotonic() + (request.deadline_ms - now_ms()) / 1000)
    delay = 0.2
    while True:
        try:
            return await operation()
        except UNAVAILABLE_ERRORS as exc:
            if time.monotonic() + delay > give_up:
                raise
            logger.warning("request %s: database unavailable (%s); retrying", request.request_id, type(exc).__name__)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


@dataclass(slots=True)
class Answerer:
    settings: WorkerSettings
    store: ChatStore
    provider: LLMProvider
    prompts: dict[str, str]
    metrics: WorkerMetrics
    answers: GroupCommit[AnswerRow, bool] = field(init=False)
    """the answers of concurrent requests stored in one statement; its writer runs in ``__main__``."""
    histories: GroupCommit[HistoryQuery, list[StoredMessage]] = field(init=False)
    """the histories the prompts of concurrent requests need, read in one statement (``__main__`` runs it)."""

    def __post_init__(self) -> None:
        self.answers = GroupCommit(self.store.add_assistant_messages, data_errors=DATA_ERRORS)
        # a request whose ids are not UUIDs fails its own read only (the group is then read one by one)
        self.histories = GroupCommit(
            functools.partial(self.store.histories, limit=self.settings.history_limit),
            data_errors=(ValueError, *DATA_ERRORS),
        )

    async def prompt(self, request: ChatRequest) -> list[PromptMessage]:
        history = await self.histories.submit(HistoryQuery(request.chat_id, request.user_message_id))
        context = [PromptMessage(m.role, m.content) for m in history if m.content and m.status != "failed"]
        return [
            PromptMessage("system", self.prompts[request.chat_type]),
            *trim_to_budget(context, self.settings.history_token_budget),
        ]

    async def answer(
        self, request: ChatRequest, replies: ReplyStream, scope: CancelScope
    ) -> tuple[Outcome, float | None]:
        """The outcome, and the answer's time in ms (None for an ``upstream_error``)."""
        started = time.monotonic()
        messages = await with_store_retry(request, lambda: self.prompt(request))
        await replies.start()
        stream = _Stream(replies, self._coalescer())
        try:
            finish = await self._generate(request, messages, stream, scope, started)
        except UpstreamError as exc:
            logger.warning("request %s: model failed: %s", request.request_id, exc)
            await with_store_retry(
                request, lambda: self.store.mark_request(request.request_id, "failed", error_code="UPSTREAM_ERROR")
            )
            await replies.error("UPSTREAM_ERROR", "The language model failed to answer")
            return "upstream_error", None
        content, last = await stream.flush()
        status = _status(finish)
        await with_store_retry(request, lambda: self.answers.submit(_row(request, content, status, finish)))
        self._count_tokens(finish)
        if last is not None:
            await replies.chunk(last)  # in the same batch as the end: one message, one socket write
        await replies.end(
            content, finish_reason=finish.reason, usage=usage_of(finish.prompt_tokens, finish.completion_tokens)
        )
        outcome: Outcome = "timeout" if status == "failed" else status
        return outcome, (time.monotonic() - started) * 1000

    async def _generate(
        self,
        request: ChatRequest,
        messages: list[PromptMessage],
        stream: _Stream,
        scope: CancelScope,
        started: float,
    ) -> Finish:
        """Stream the model into ``stream`` until its ``Finish``, or a cancel the client asked for."""
        finish: Finish | None = None
        try:
            async for event in self.provider.stream(messages, max_tokens=request.max_tokens):
                if isinstance(event, Finish):
                    finish = event
                    continue
                if stream.first:
                    self.metrics.first_token_seconds.observe(time.monotonic() - started)
                if await stream.feed(event.text):
                    self.metrics.chunks.inc()
        except asyncio.CancelledError:
            if scope.reason not in STORED_REASONS:
                raise  # shutdown or broker lost: leave the request to be redelivered
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            finish = Finish("timeout" if scope.reason == "timeout" else "cancelled")
        assert finish is not None  # every provider stream ends with one
        return finish

    def _coalescer(self) -> Coalescer:
        return Coalescer(interval_ms=self.settings.chunk_coalesce_ms, max_chars=self.settings.chunk_coalesce_chars)

    def _count_tokens(self, finish: Finish) -> None:
        if finish.prompt_tokens is not None or finish.completion_tokens is not None:
            self.metrics.tokens.labels("prompt").inc(finish.prompt_tokens or 0)
            self.metrics.tokens.labels("completion").inc(finish.completion_tokens or 0)

    async def fail_final(self, request: ChatRequest, replies: ReplyStream) -> None:
        """Record the request as failed (``INTERNAL``) and tell the client; best effort, never raises."""
        try:
            await with_store_retry(
                request,
                lambda: self.store.mark_request(request.request_id, "failed", error_code="INTERNAL", only_open=True),
            )
            await replies.error(ErrorCode.INTERNAL.value, "The request could not be completed")
        except Exception as exc:  # noqa: BLE001 - the request is acked anyway: the same data would fail again
            logger.warning("request %s: final failure not recorded or not sent (%r)", request.request_id, exc)


class _Stream:
    """The model's text on its way to the client: cleaned, coalesced into chunks, kept whole for the store."""

    def __init__(self, replies: ReplyStream, coalescer: Coalescer) -> None:
        self.replies = replies
        self.coalescer = coalescer
        self.cleaner = DeltaCleaner()  # NUL and lone surrogates would fail the store and the reply
        self.parts: list[str] = []
        self.first = True

    async def feed(self, delta: str) -> bool:
        """Take one delta of the model; whether a chunk was sent."""
        self.first = False
        text = self.cleaner.feed(delta)
        if not text:
            return False
        self.parts.append(text)
        ready = self.coalescer.add(text)
        if ready is None:
            return False
        await self.replies.chunk(ready)
        return True

    async def flush(self) -> tuple[str, str | None]:
        """The whole answer, and its last chunk, held back for the caller to send with the end."""
        held = self.cleaner.flush()
        if held:
            self.parts.append(held)
            if (ready := self.coalescer.add(held)) is not None:
                await self.replies.chunk(ready)
        return "".join(self.parts), self.coalescer.flush()


def _status(finish: Finish) -> Literal["complete", "cancelled", "failed"]:
    if finish.reason == "cancelled":
        return "cancelled"
    if finish.reason == "timeout":
        return "failed"
    return "complete"


def _row(
    request: ChatRequest, content: str, status: Literal["complete", "cancelled", "failed"], finish: Finish
) -> AnswerRow:
    return AnswerRow(
        message_id=request.assistant_message_id,
        chat_id=request.chat_id,
        request_id=request.request_id,
        content=content,
        status=status,
        finish_reason=finish.reason,
        error_code="TIMEOUT" if status == "failed" else None,
        prompt_tokens=finish.prompt_tokens,
        completion_tokens=finish.completion_tokens,
    )
