"""Merge model deltas into fewer, larger chunks (every N ms or N characters).

One AMQP message per token costs CPU in the broker, the gateway and the client for nothing;
the gateway's reply consumer spends most of its time decoding frames, so fewer is faster.
"""

from __future__ import annotations

import time


class Coalescer:
    def __init__(self, *, interval_ms: int, max_chars: int) -> None:
        self.interval = interval_ms / 1000
        self.max_chars = max_chars
        self._parts: list[str] = []
        self._size = 0
        self._since = time.monotonic()
        self._sent_any = False

    def add(self, text: str) -> str | None:
        """Add a delta; return the merged text when it is time to send one chunk."""
        if not self._parts:
            self._since = time.monotonic()
        self._parts.append(text)
        self._size += len(text)
        if not self._sent_any or self._size >= self.max_chars or time.monotonic() - self._since >= self.interval:
            # the first delta goes out at once: time to first chunk is what the user feels
            self._sent_any = True
            return self.flush()
        return None

    def flush(self) -> str | None:
        if not self._parts:
            return None
        text = "".join(self._parts)
        self._parts.clear()
        self._size = 0
        return text
