"""Language-model providers behind one ``Protocol``: OpenAI (any compatible server) and a fake.

A provider turns a prompt into an async stream of ``Delta`` texts followed by one ``Finish``.
Errors the caller should report as ``UPSTREAM_ERROR`` are raised as ``UpstreamError``.
``make_provider`` wraps either in ``TracedProvider``, the one place of the ``llm.chat`` span.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Protocol, cast

import openai
from openai.types.chat import ChatCompletionMessageParam
from opentelemetry import trace

from chat_common.settings import LLMSettings
from llm_worker.tracing import end_llm_span, start_llm_span, traced_http_client


@dataclass(frozen=True, slots=True)
class PromptMessage:
    role: str
    content: str


@dataclass(frozen=True, slots=True)
class Delta:
    text: str


@dataclass(frozen=True, slots=True)
class Finish:
    reason: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


StreamEvent = Delta | Finish


class UpstreamError(Exception):
    """The model failed after the SDK's own retries; the client gets ``UPSTREAM_ERROR``."""


class LLMProvider(Protocol):
    def stream(self, messages: list[PromptMessage], *, max_tokens: int) -> AsyncIterator[StreamEvent]:
        """Stream the answer; closing the iterator early stops the generation."""
        ...

    async def close(self) -> None: ...


class OpenAIProvider:
    """Streams from ``/chat/completions`` with the SDK's retries (before the first chunk) and timeout."""

    def __init__(self, settings: LLMSettings) -> None:
        self.model = settings.openai_model
        self.client = openai.AsyncOpenAI(
            api_key=settings.openai_api_key.get_secret_value() if settings.openai_api_key else "not-needed",
            base_url=settings.openai_base_url,
            timeout=settings.openai_timeout,
            max_retries=settings.openai_max_retries,
            http_client=traced_http_client(),
        )

    async def stream(self, messages: list[PromptMessage], *, max_tokens: int) -> AsyncIterator[StreamEvent]:
        try:
            response = await self.client.chat.completions.create(
                model=self.model,
                messages=cast(
                    "list[ChatCompletionMessageParam]", [{"role": m.role, "content": m.content} for m in messages]
                ),
                max_tokens=max_tokens,
                stream=True,
                stream_options={"include_usage": True},
            )
        except openai.OpenAIError as exc:
            raise UpstreamError(f"{type(exc).__name__}: {exc}") from exc
        reason: str | None = None
        prompt_tokens = completion_tokens = None
        try:
            async for chunk in response:
                if chunk.usage is not None:
                    prompt_tokens = chunk.usage.prompt_tokens
                    completion_tokens = chunk.usage.completion_tokens
                for choice in chunk.choices:
                    if choice.delta.content:
                        yield Delta(choice.delta.content)
                    if choice.finish_reason:
                        reason = choice.finish_reason
        except openai.OpenAIError as exc:
            raise UpstreamError(f"{type(exc).__name__}: {exc}") from exc
        finally:
            await response.close()
        yield Finish(reason or "stop", prompt_tokens, completion_tokens)

    async def close(self) -> None:
        await self.client.close()


_FAKE_SENTENCES = (
    "Under the general principles of contract law, an agreement requires offer, acceptance and consideration.",
    "You should check whether the limitation period for your claim has already started to run.",
    "A written notice sent by registered mail usually serves as proof that the other party was informed.",
    "Keep copies of every document you sign, and note the dates on which you received each letter.",
    "The court will look first at the plain wording of the clause, then at the intention of the parties.",
    "If the contract is silent on the point, the default rules of the civil code fill the gap.",
    "Before you sign, ask for the penalty clause to be capped at a reasonable share of the price.",
    "This is general information, not legal advice: a lawyer in your jurisdiction should review the facts.",
)


class FakeProvider:
    """An offline model for demos and load tests: a plausible legal answer at a configurable pace.

    ``FAKE_LLM_FIRST_TOKEN_MS`` before the first token, then ``FAKE_LLM_TOKENS_PER_SECOND``
    (0: no delay), ``FAKE_LLM_ANSWER_TOKENS`` tokens in all (at most ``max_tokens``).
    """

    def __init__(self, settings: LLMSettings) -> None:
        self.first_token_s = settings.fake_llm_first_token_s
        self.tokens_per_second = settings.fake_llm_tokens_per_second
        self.answer_tokens = settings.fake_llm_answer_tokens

    async def stream(self, messages: list[PromptMessage], *, max_tokens: int) -> AsyncIterator[StreamEvent]:
        words = self._answer(messages)
        count = min(len(words), max_tokens)
        # words, roughly (spaces + 1): splitting the whole history of every request was a twentieth
        # of the worker's CPU in the load benchmarks, where this model stands in for a remote one
        prompt_tokens = sum(m.content.count(" ") + 1 for m in messages if m.content)
        if self.first_token_s:
            await asyncio.sleep(self.first_token_s)
        interval = 1 / self.tokens_per_second if self.tokens_per_second > 0 else 0.0
        start = asyncio.get_running_loop().time()
        for index, word in enumerate(words[:count]):
            if interval:
                # pace against the clock, not per sleep, so timer slack does not accumulate
                delay = start + index * interval - asyncio.get_running_loop().time()
                if delay > 0:
                    await asyncio.sleep(delay)
            elif index % 64 == 63:
                await asyncio.sleep(0)  # a model without delay still lets the loop breathe
            yield Delta(word if index == 0 else " " + word)
        yield Finish("length" if count < len(words) else "stop", prompt_tokens, count)

    def _answer(self, messages: list[PromptMessage]) -> list[str]:
        question = next((m.content for m in reversed(messages) if m.role == "user"), "")
        rng = random.Random(question)  # noqa: S311 - deterministic filler text, not security
        words: list[str] = []
        while len(words) < self.answer_tokens:
            words.extend(rng.choice(_FAKE_SENTENCES).split())
        return words[: self.answer_tokens]

    async def close(self) -> None:
        return None


class TracedProvider:
    """Any provider with its ``llm.chat`` span: current while the inner provider works towards its
    first token (so the SDK's HTTP request span is its child), never across a ``yield`` (the caller's
    own spans stay the request's), ended with the finish reason, token counts or the error."""

    def __init__(self, inner: LLMProvider, *, system: str, model: str) -> None:
        self.inner = inner
        self.system = system
        self.model = model

    async def stream(self, messages: list[PromptMessage], *, max_tokens: int) -> AsyncIterator[StreamEvent]:
        span = start_llm_span(system=self.system, model=self.model, max_tokens=max_tokens)
        events = aiter(self.inner.stream(messages, max_tokens=max_tokens))
        finish: Finish | None = None
        failure: BaseException | None = None
        first = True
        try:
            while True:
                if first:
                    # until the first token the inner provider makes its HTTP request, whose span is
                    # this one's child; later it only reads the response (no span), and entering the
                    # span for each of hundreds of tokens was a tenth of the worker's CPU
                    with trace.use_span(span, end_on_exit=False, record_exception=False, set_status_on_exception=False):
                        try:
                            event = await anext(events)
                        except StopAsyncIteration:
                            break
                else:
                    try:
                        event = await anext(events)
                    except StopAsyncIteration:
                        break
                if isinstance(event, Finish):
                    finish = event
                elif first:
                    span.add_event("first_token")
                    first = False
                yield event
        except BaseException as exc:
            failure = None if isinstance(exc, GeneratorExit | asyncio.CancelledError) else exc
            raise
        finally:
            await _close(events)
            end_llm_span(
                span,
                finish_reason=finish.reason if finish else None,
                prompt_tokens=finish.prompt_tokens if finish else None,
                completion_tokens=finish.completion_tokens if finish else None,
                error=failure,
            )

    async def close(self) -> None:
        await self.inner.close()


async def _close(events: AsyncIterator[StreamEvent]) -> None:
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()


def make_provider(settings: LLMSettings) -> LLMProvider:
    if settings.provider == "openai":
        return TracedProvider(OpenAIProvider(settings), system="openai", model=settings.openai_model)
    return TracedProvider(FakeProvider(settings), system="fake", model="fake")
