"""Python client for the chat gateway (SPEC §2 protocol).

async with await ChatClient.connect("ws://localhost:3000/ws/chat", token_provider) as client:
    answer = await client.send("What must a valid contract contain?")
    async for delta in answer.deltas():
        print(delta, end="")
"""

from chat_client.answer import Answer, AnswerChunk, AnswerEnd, AnswerRestarted
from chat_client.client import ChatClient
from chat_client.errors import (
    ERRORS_BY_CODE,
    AnswerInterrupted,
    Busy,
    ChatClientError,
    ChatNotFound,
    ClientClosed,
    ConnectionLost,
    InternalError,
    InvalidMessage,
    MessageTooLong,
    PayloadTooLarge,
    RateLimited,
    RequestTimeout,
    ServerAtCapacity,
    ServerError,
    TooManyConnections,
    Unauthorized,
    UpstreamError,
)
from chat_client.models import ChatInfo, ChatSummary, ChatType, HistoryMessage
from chat_client.policy import NO_RECONNECT, Backoff, TokenProvider

__all__ = [
    "ERRORS_BY_CODE",
    "NO_RECONNECT",
    "Answer",
    "AnswerChunk",
    "AnswerEnd",
    "AnswerInterrupted",
    "AnswerRestarted",
    "Backoff",
    "Busy",
    "ChatClient",
    "ChatClientError",
    "ChatInfo",
    "ChatNotFound",
    "ChatSummary",
    "ChatType",
    "ClientClosed",
    "ConnectionLost",
    "HistoryMessage",
    "InternalError",
    "InvalidMessage",
    "MessageTooLong",
    "PayloadTooLarge",
    "RateLimited",
    "RequestTimeout",
    "ServerAtCapacity",
    "ServerError",
    "TokenProvider",
    "TooManyConnections",
    "Unauthorized",
    "UpstreamError",
]
