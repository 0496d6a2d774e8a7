"""Make the model's text storable and sendable before anything else sees it.

PostgreSQL refuses ``U+0000`` in ``text`` and orjson (and every strict UTF-8 encoder) refuses lone
surrogates, so one such character in a model's output would fail the store or the reply and loop the
request through redeliveries. Every delta is cleaned here: NUL is dropped, a lone surrogate becomes
U+FFFD. A high surrogate at the end of a delta is held back one delta, since a JSON stream may split
a pair (``\\ud83d`` then ``\\ude00``) across two chunks.
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"


def _is_high(ch: str) -> bool:
    return "\ud800" <= ch <= "\udbff"


def _is_low(ch: str) -> bool:
    return "\udc00" <= ch <= "\udfff"


def clean_text(text: str) -> str:
    """``text`` without NUL, each lone surrogate replaced by U+FFFD, surrogate pairs joined."""
    if text.isascii():
        return text.replace("\x00", "")
    out: list[str] = []
    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "\x00":
            i += 1
            continue
        if _is_high(ch):
            if i + 1 < n and _is_low(text[i + 1]):
                out.append(chr(0x10000 + ((ord(ch) - 0xD800) << 10) + (ord(text[i + 1]) - 0xDC00)))
                i += 2
                continue
            out.append(REPLACEMENT)
        elif _is_low(ch):
            out.append(REPLACEMENT)
        else:
            out.append(ch)
        i += 1
    return "".join(out)


class DeltaCleaner:
    """Cleans a stream of deltas; ``feed`` each one, ``flush`` at the end of the stream."""

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held = ""

    def feed(self, delta: str) -> str:
        text = self._held + delta
        self._held = ""
        if text and _is_high(text[-1]):
            text, self._held = text[:-1], text[-1]
        return clean_text(text)

    def flush(self) -> str:
        held, self._held = self._held, ""
        return clean_text(held)
