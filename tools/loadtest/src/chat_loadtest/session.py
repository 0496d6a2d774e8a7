"""One simulated client connection on the project's Python client (``chat_client``): open, join a
chat, ask questions and check every answer.

The client does not reconnect here (``NO_RECONNECT``): a dropped connection is a finding to count,
not something to hide. An answer is *complete* when its chunks arrive in sequence order (1, 2, ...)
and their deltas add up to exactly the ``content`` of ``response_end``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from dataclasses import dataclass

from websockets.exceptions import InvalidHandshake

from chat_client import NO_RECONNECT, AnswerChunk, AnswerRestarted, ChatClient, ChatClientError, ServerError
from chat_loadtest.stats import Recorder

_questions = itertools.count()

QUESTIONS = (
    "What must a valid contract contain?",
    "Can my landlord keep the deposit for ordinary wear and tear?",
    "Review the termination clause of my employment contract.",
    "How long is the limitation period for an unpaid invoice?",
    "Draft a short notice of withdrawal from a purchase contract.",
)


@dataclass(slots=True)
class Outcome:
    """How one ``send_message`` ended: ``answered``, ``incomplete``, an error code, or ``lost``."""

    kind: str
    retry_after_ms: int | None = None


class SimConnection:
    def __init__(self, url: str, token: str, chat_type: str, recorder: Recorder, *, answer_timeout: float) -> None:
        self.url = url
        self.token = token
        self.chat_type = chat_type
        self.recorder = recorder
        self.answer_timeout = answer_timeout
        self.client: ChatClient | None = None
        self.busy = False

    @property
    def alive(self) -> bool:
        return self.client is not None and self.client.connected

    async def open_and_join(self, *, join_timeout: float) -> bool:
        """Open the socket and join a new chat; counts the outcome. ``True`` when joined."""
        rec = self.recorder
        started = time.monotonic()
        client = ChatClient(
            self.url,
            self.token,
            chat_type="documents" if self.chat_type == "documents" else "messages",
            reconnect=NO_RECONNECT,
            open_timeout=join_timeout,
            request_timeout=self.answer_timeout,
            # the gateway pings every WS_PING_INTERVAL and the library answers; pings of our own
            # would only add frames to every one of thousands of sockets
            ping_interval=None,
        )
        try:
            await client.open()
        except ServerError as exc:
            rec.connections_refused[exc.code] += 1
            return False
        except InvalidHandshake as exc:
            rec.connections_refused[f"handshake: {type(exc).__name__}"] += 1
            return False
        except TimeoutError:
            rec.connections_refused["connect timeout"] += 1
            return False
        except (OSError, ChatClientError) as exc:
            rec.connections_refused[f"connect: {getattr(exc, 'strerror', None) or type(exc).__name__}"] += 1
            return False
        self.client = client
        rec.connections_opened += 1
        rec.connections_joined += 1
        rec.join_ms.append((time.monotonic() - started) * 1000)
        return True

    async def ask(self) -> Outcome:
        """Send one question and follow its answer to the end; records timings and the outcome."""
        assert self.client is not None
        rec = self.recorder
        self.busy = True
        number = next(_questions)
        rec.sent += 1
        try:
            async with asyncio.timeout(self.answer_timeout):
                return await self._follow(f"{QUESTIONS[number % len(QUESTIONS)]} (#{number})")
        except ServerError as exc:
            rec.errors[exc.code] += 1
            return Outcome(exc.code, exc.retry_after_ms)
        except TimeoutError:
            rec.errors["CLIENT_TIMEOUT"] += 1
            return Outcome("CLIENT_TIMEOUT")
        except ChatClientError as exc:
            rec.errors["CONNECTION_LOST"] += 1
            rec.connections_lost[f"{type(exc).__name__} {self.client.last_close_code}"] += 1
            return Outcome("lost")
        except asyncio.CancelledError:
            rec.unfinished += 1
            raise
        finally:
            self.busy = False

    async def _follow(self, content: str) -> Outcome:
        assert self.client is not None
        rec = self.recorder
        answer = await self.client.send(content)
        assert answer.accepted_at is not None
        rec.accepted_ms.append((answer.accepted_at - answer.sent_at) * 1000)
        next_seq, in_order = 1, True
        parts: list[str] = []
        first_ms: float | None = None
        async for event in answer:
            if isinstance(event, AnswerChunk):
                if not parts and answer.first_chunk_at is not None:
                    first_ms = (answer.first_chunk_at - answer.sent_at) * 1000
                    rec.first_chunk_ms.append(first_ms)
                in_order = in_order and event.seq == next_seq
                next_seq += 1
                parts.append(event.delta)
                rec.chunks += 1
                continue
            if isinstance(event, AnswerRestarted):  # a redelivered request: the text starts over
                next_seq, parts = 1, []
                continue
            ended_at = answer.ended_at or time.monotonic()
            end_ms = (ended_at - answer.sent_at) * 1000
            rec.end_ms.append(end_ms)
            if in_order and "".join(parts) == event.content and event.finish_reason != "cancelled":
                rec.answered += 1
                rec.completed.append((ended_at, first_ms, end_ms))
                return Outcome("answered")
            rec.incomplete += 1
            return Outcome("incomplete")
        rec.incomplete += 1  # pragma: no cover - the iteration ends with the AnswerEnd or raises
        return Outcome("incomplete")

    async def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            with contextlib.suppress(Exception):  # closing a socket that is already gone
                await client.close()
