"""What the client tells its user about chats (``ChatInfo``, ``HistoryMessage``, ``ChatSummary``); the codec."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

try:
    import orjson

    def dumps(frame: dict[str, Any]) -> str:
        return orjson.dumps(frame).decode()

    loads = orjson.loads
except ImportError:  # pragma: no cover - orjson is optional
    import json

    dumps = json.dumps  # type: ignore[assignment]
    loads = json.loads  # type: ignore[assignment]

ChatType = Literal["documents", "messages"]


@dataclass(frozen=True, slots=True)
class HistoryMessage:
    id: str
    role: str
    content: str
    created_at: str
    status: str | None = None


@dataclass(frozen=True, slots=True)
class ChatInfo:
    chat_id: str
    chat_type: ChatType
    history: tuple[HistoryMessage, ...] = ()


@dataclass(frozen=True, slots=True)
class ChatSummary:
    chat_id: str
    chat_type: ChatType
    title: str | None
    updated_at: str


def history_of(items: Any) -> tuple[HistoryMessage, ...]:
    """The ``history`` of a ``chat_joined`` / ``chat_switched`` frame (what is not a message is skipped)."""
    if not isinstance(items, list):
        return ()
    return tuple(
        HistoryMessage(
            id=str(m.get("id")),
            role=str(m.get("role")),
            content=str(m.get("content") or ""),
            created_at=str(m.get("createdAt") or ""),
            status=m.get("status"),
        )
        for m in items
        if isinstance(m, dict)
    )
