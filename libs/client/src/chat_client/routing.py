"""Incoming frames to whoever waits for them: requests by ``requestId``, answers by message id.

Everything here runs synchronously in the reader task, so a frame is routed before the next one is
read: chunks reach their ``Answer`` in order. ``Routing`` holds the open requests (``waiting``) and
the answers not finished (``answers`` by our request id, ``by_message`` by the gateway's ids); an
answer leaves when it ends, fails or is recovered (``forget``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from typing import Any

from chat_client.answer import Answer, AnswerEnd
from chat_client.errors import ServerError, server_error

logger = logging.getLogger("chat_client")


class Routing:
    def __init__(self, on_chat: Callable[[dict[str, Any]], None]) -> None:
        self._on_chat = on_chat
        """called with the data of ``chat_joined`` / ``chat_switched`` / ``chat_created``."""
        self.waiting: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.answers: dict[int, Answer] = {}
        self.by_message: dict[str, Answer] = {}
        self.unstarted: deque[Answer] = deque()
        self.last_error: ServerError | None = None
        """the last error frame that answered no request of ours (e.g. a token expiry before a close)."""

    def dispatch(self, frame: dict[str, Any]) -> None:
        kind = frame["type"]
        data = frame.get("data") or {}
        rid = frame.get("requestId")
        if kind == "response_chunk":
            answer = self.by_message.get(data["messageId"])
            if answer is not None:
                answer._on_chunk(data["delta"], data.get("seq"))
        elif kind == "response_start":
            self._on_start(data)
        elif kind == "response_end":
            self._on_end(data)
        elif kind == "message_accepted":
            self._on_accepted(rid, data)
        elif kind == "error":
            self._on_error(rid, data)
        else:
            if kind in ("chat_joined", "chat_switched", "chat_created"):
                self._on_chat(data)
            future = self.waiting.pop(rid, None) if isinstance(rid, int) else None
            if future is not None and not future.done():
                future.set_result(data)

    def _on_accepted(self, rid: Any, data: dict[str, Any]) -> None:
        answer = self.answers.get(rid) if isinstance(rid, int) else None
        if answer is not None and answer.user_message_id is None:
            answer._on_accepted(data["messageId"])
            self.by_message[data["messageId"]] = answer
            self.unstarted.append(answer)

    def _on_start(self, data: dict[str, Any]) -> None:
        message_id = data["messageId"]
        attempt = data.get("attempt") or 1
        known = self.by_message.get(message_id)
        if known is not None:
            # resumed: the rest follows; a later attempt (a redelivered request): the answer starts over
            if not data.get("resumed") and attempt > known.attempt:
                known._on_restart(attempt)
            known._recovering = False
            return
        answer = self.by_message.get(data.get("userMessageId") or "")
        if answer is not None:
            with contextlib.suppress(ValueError):
                self.unstarted.remove(answer)
        else:  # a gateway that does not name the question: answers start in the order they were accepted
            while self.unstarted and answer is None:
                candidate = self.unstarted.popleft()
                if not candidate.done and candidate.message_id is None:
                    answer = candidate
        if answer is not None:
            answer._on_start(message_id)
            answer.attempt = attempt
            self.by_message[message_id] = answer

    def _on_end(self, data: dict[str, Any]) -> None:
        answer = self.by_message.get(data["messageId"])
        if answer is not None:
            end = AnswerEnd(
                data["messageId"], data.get("content", ""), data.get("finishReason") or "stop", data.get("usage")
            )
            answer._on_end(end)
            self.forget(answer)

    def _on_error(self, rid: Any, data: dict[str, Any]) -> None:
        error = server_error(data)
        future = self.waiting.pop(rid, None) if isinstance(rid, int) else None
        if future is not None:
            if not future.done():
                future.set_exception(error)
            return
        answer = self.answers.get(rid) if isinstance(rid, int) else None
        if answer is None and error.message_id is not None:
            answer = self.by_message.get(error.message_id)
        if answer is not None:
            if answer._recovering and error.code == "TIMEOUT":
                # "answer not resumed": no worker holds it now; it will be in the history when it ends
                logger.info("answer %s not resumed; looking for it in the history", answer.message_id)
                return
            self.fail(answer, error)
            return
        self.last_error = error
        logger.info("gateway error: %s", error)

    def open_answers(self) -> list[Answer]:
        return list(self.answers.values())

    def forget(self, answer: Answer) -> None:
        self.answers.pop(answer.request_id, None)
        if self.unstarted:  # it ended before a response_start took it out (BUSY, lost, recovered)
            with contextlib.suppress(ValueError):
                self.unstarted.remove(answer)
        for key in (answer.user_message_id, answer.message_id):
            if key is not None and self.by_message.get(key) is answer:
                del self.by_message[key]

    def fail(self, answer: Answer, error: BaseException) -> None:
        answer._on_error(error)
        self.forget(answer)

    def fail_waiters(self, error: BaseException) -> None:
        waiting, self.waiting = self.waiting, {}
        for future in waiting.values():
            if not future.done():
                future.set_exception(error)

    def fail_unaccepted(self, error: BaseException) -> None:
        """Sends not accepted yet when the socket dropped: whether they were stored is unknown."""
        for answer in self.open_answers():
            if answer.user_message_id is None:
                self.fail(answer, error)

    def fail_answers(self, error: BaseException) -> None:
        for answer in self.open_answers():
            self.fail(answer, error)
        self.unstarted.clear()
