"""Cost of encoding one server frame: the model-derived encoder against a hand-written dict + orjson.

    uv run python -m bench.frames

Prints ns per frame for each (best of 5 runs of 1,000,000) and the load average; the last line is JSON.
"""

from __future__ import annotations

import json
import os
import timeit
from typing import Any

import orjson

from chat_common.server_frames import response_chunk_frame

_DATA = {"messageId": "8c1e0a1e-1111-2222-3333-444455556666", "delta": "hello there", "seq": 5}


def _hand_written(frame_type: str, data: dict[str, Any], request_id: str | None = None) -> str:
    frame: dict[str, Any] = {"type": frame_type, "data": data}
    if request_id is not None:
        frame["requestId"] = request_id
    return orjson.dumps(frame).decode()


def main() -> None:
    n = 1_000_000
    figures = {}
    for name, encode in (
        ("hand_written_ns", lambda: _hand_written("response_chunk", _DATA)),
        ("model_encoder_ns", lambda: response_chunk_frame(_DATA)),
    ):
        figures[name] = round(min(timeit.repeat(encode, number=n, repeat=5)) / n * 1e9, 1)
        print(f"{name}: {figures[name]} ns per response_chunk frame  (load average {os.getloadavg()[0]:.2f})")
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
