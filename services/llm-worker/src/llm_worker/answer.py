"""Answer one chat request: build the prompt, stream the model, coalesce, store, reply.

Contract: ``answer`` returns the outcome once the answer (complete, cancelled or failed) is both
stored and sent; the caller acks the request after that. If the task is cancelled for a reason that
is not the client's (shutdown, lost broker connection: ``CancelScope.reason`` not in
``STORED_REASONS``), ``CancelledError`` propagates and nothing is stored, so the request can be
redelivered. While PostgreSQL is away, reads and writes are retried until the request's deadline
(at most ``STORE_RETRY_S``), so a short database outage does not burn the delivery limit.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

from chat_common.broker import now_ms
from chat_common.envelopes import ChatRequest
from chat_common.group_commit import GroupCommit
from chat_common.settings import Settings
from chat_common.store import DATA_ERRORS, UNAVAILABLE_ERRORS, AnswerRow, ChatStore
from llm_worker.budget import trim_to_budget
from llm_worker.clean import DeltaCleaner
from llm_worker.coalesce import Coalescer
from llm_worker.metrics import WorkerMetrics
from llm_worker.providers import Delta, Finish, LLMProvider, PromptMessage, UpstreamError
from llm_worker.replies import ReplyStream

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


class Answerer:
    def __init__(
        self,
        settings: Settings,
        store: ChatStore,
        provider: LLMProvider,
        prompts: dict[str, str],
        metrics: WorkerMetrics,
    ) -> None:
        self.settings = settings
        self.store = store
        self.provider = provider
        self.prompts = prompts
        self.metrics = metrics
        self.answers = GroupCommit(store.add_assistant_messages, data_errors=DATA_ERRORS)
        """the answers of concurrent requests stored in one statement; its writer runs in ``__main__``."""

    async def prompt(self, request: ChatRequest) -> list[PromptMessage]:
        history = await self.store.history(
            request.chat_id, limit=self.settings.history_limit, up_to_message=request.user_message_id
        )
        context = [PromptMessage(m.role, m.content) for m in history if m.content and m.status != "failed"]
        return [
            PromptMessage("system", self.prompts[request.chat_type]),
            *trim_to_budget(context, self.settings.history_token_budget),
        ]

    async def answer(self, request: ChatRequest, replies: ReplyStream, scope: CancelScope) -> Outcome:
        started = time.monotonic()
        messages = await with_store_retry(request, lambda: self.prompt(request))
        await replies.start()
        coalescer = Coalescer(interval_ms=self.settings.chunk_coalesce_ms, max_chars=self.settings.chunk_coalesce_chars)
        cleaner = DeltaCleaner()  # NUL and lone surrogates would fail the store and the reply
        parts: list[str] = []
        finish: Finish | None = None
        first = True
        try:
            async for event in self.provider.stream(messages, max_tokens=request.max_tokens):
                if isinstance(event, Delta):
                    if first:
                        first = False
                        self.metrics.first_token_seconds.observe(time.monotonic() - started)
                    text = cleaner.feed(event.text)
                    if not text:
                        continue
                    parts.append(text)
                    ready = coalescer.add(text)
                    if ready is not None:
                        await replies.chunk(ready)
                        self.metrics.chunks.inc()
                else:
                    finish = event
        except asyncio.CancelledError:
            if scope.reason not in STORED_REASONS:
                raise  # shutdown or broker lost: leave the request to be redelivered
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            finish = Finish("timeout" if scope.reason == "timeout" else "cancelled")
        except UpstreamError as exc:
            logger.warning("request %s: model failed: %s", request.request_id, exc)
            await with_store_retry(
                request, lambda: self.store.mark_request(request.request_id, "failed", error_code="UPSTREAM_ERROR")
            )
            await replies.error("UPSTREAM_ERROR", "The language model failed to answer")
            self.metrics.record("upstream_error")
            return "upstream_error"
        held = cleaner.flush()
        if held:
            parts.append(held)
            if (ready := coalescer.add(held)) is not None:
                await replies.chunk(ready)
        rest = coalescer.flush()
        if rest is not None:
            await replies.chunk(rest)
        content = "".join(parts)
        assert finish is not None
        status: Literal["complete", "cancelled", "failed"] = "complete"
        if finish.reason == "cancelled":
            status = "cancelled"
        elif finish.reason == "timeout":
            status = "failed"
        usage = None
        if finish.prompt_tokens is not None or finish.completion_tokens is not None:
            usage = {
                "promptTokens": finish.prompt_tokens,
                "completionTokens": finish.completion_tokens,
                "totalTokens": (finish.prompt_tokens or 0) + (finish.completion_tokens or 0),
            }
            self.metrics.tokens.labels("prompt").inc(finish.prompt_tokens or 0)
            self.metrics.tokens.labels("completion").inc(finish.completion_tokens or 0)
        row = AnswerRow(
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
        await with_store_retry(request, lambda: self.answers.submit(row))
        await replies.end(content, finish_reason=finish.reason, usage=usage)
        outcome: Outcome = "timeout" if status == "failed" else status
        self.metrics.record(outcome, answer_ms=(time.monotonic() - started) * 1000)
        return outcome
