from __future__ import annotations

import time

from chat_common.settings import load_settings
from llm_worker.coalesce import Coalescer
from llm_worker.providers import Delta, FakeProvider, Finish, PromptMessage


def test_first_delta_goes_out_at_once_then_deltas_are_merged() -> None:
    coalescer = Coalescer(interval_ms=10_000, max_chars=10)
    assert coalescer.add("Hi") == "Hi"
    assert coalescer.add(" the") is None
    assert coalescer.add(" re") is None
    assert coalescer.add(" world") == " the re world"
    assert coalescer.add("!") is None
    assert coalescer.flush() == "!"
    assert coalescer.flush() is None


def test_deltas_older_than_the_interval_are_sent() -> None:
    coalescer = Coalescer(interval_ms=20, max_chars=10_000)
    coalescer.add("a")
    assert coalescer.add("b") is None
    time.sleep(0.03)
    assert coalescer.add("c") == "bc"


async def test_fake_provider_streams_a_paced_answer_capped_at_max_tokens() -> None:
    settings = load_settings(fake_llm_first_token_ms=0, fake_llm_tokens_per_second=0, fake_llm_answer_tokens=30)
    provider = FakeProvider(settings)
    events = [e async for e in provider.stream([PromptMessage("user", "q")], max_tokens=12)]
    deltas = [e for e in events if isinstance(e, Delta)]
    finish = events[-1]
    assert isinstance(finish, Finish)
    assert len(deltas) == 12
    assert finish.reason == "length"
    assert finish.completion_tokens == 12

    paced = FakeProvider(
        load_settings(fake_llm_first_token_ms=50, fake_llm_tokens_per_second=100, fake_llm_answer_tokens=10)
    )
    started = time.monotonic()
    events = [e async for e in paced.stream([PromptMessage("user", "q")], max_tokens=100)]
    elapsed = time.monotonic() - started
    assert isinstance(events[-1], Finish)
    assert events[-1].reason == "stop"
    assert 0.12 <= elapsed < 1.0  # 50 ms to the first token, then 9 intervals of 10 ms
