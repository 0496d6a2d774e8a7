"""Trim a chat's history to a token budget before it goes to the model.

No tokenizer that works offline is available here: ``tiktoken`` downloads its BPE files on first use
(network at run time), and the other packages that ship them are unvetted. So tokens are estimated,
conservatively, from UTF-8 bytes: OpenAI's byte-level BPEs (cl100k, o200k) average about 4 bytes per
token on English and 3 to 5 on Russian, so ``bytes / 3`` overestimates ordinary prose by a third;
only adversarial text (one-byte tokens) can beat it, by at most 3x, which a default budget far
below the model's context window absorbs. ``MESSAGE_OVERHEAD_TOKENS`` covers each message's
role and separators in the chat format.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TypeVar

from llm_worker.providers import PromptMessage

BYTES_PER_TOKEN = 3
MESSAGE_OVERHEAD_TOKENS = 4

M = TypeVar("M", bound=PromptMessage)


def estimate_tokens(text: str) -> int:
    """An upper estimate of the tokens ``text`` takes in one chat message, overhead included."""
    return math.ceil(len(text.encode("utf-8", "replace")) / BYTES_PER_TOKEN) + MESSAGE_OVERHEAD_TOKENS


def trim_to_budget(history: Sequence[M], budget: int) -> list[M]:
    """The newest messages of ``history`` (oldest first) whose estimated tokens fit in ``budget``.

    Messages are kept whole, newest first, and trimming stops at the first that does not fit, so
    the context stays one contiguous stretch of the conversation. The newest message (the question
    being answered) is always kept, even alone over the budget: it is bounded by
    ``WS_MAX_MESSAGE_LENGTH`` already.
    """
    kept: list[M] = []
    used = 0
    for message in reversed(history):
        cost = estimate_tokens(message.content)
        if kept and used + cost > budget:
            break
        kept.append(message)
        used += cost
    kept.reverse()
    return kept
