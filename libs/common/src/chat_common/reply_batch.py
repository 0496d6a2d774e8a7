"""The reply batch: every answer frame a worker sends to one gateway in one flush, as one AMQP message.

A batch body is a JSON array of entries ``[kind, connection_id, request_id, message_id, seq, attempt,
code, frame]``: the routing facts of each frame (the same as ``ReplyHeaders`` of a single reply) and the
client frame itself, encoded once by the worker and forwarded as it is by the gateway. Entries of one
answer are in the order the worker produced them; batches to one gateway leave in order on one channel.

Plain tuples, not models: the gateway decodes a batch with one ``orjson.loads`` and checks each entry's
shape, so a malformed batch is dropped whole without touching any connection.
"""

from __future__ import annotations

from typing import NamedTuple

import orjson

BATCH_HEADER = "rb"
"""AMQP header of a batch message (its value: the format version); a message without it is one reply."""
BATCH_VERSION = 1

_KINDS = frozenset({"start", "chunk", "end", "error"})


class MalformedBatch(ValueError):
    """A reply batch body that is not a well-formed batch: dropped whole."""


class Reply(NamedTuple):
    kind: str
    connection_id: str
    request_id: str
    message_id: str
    seq: int
    attempt: int
    code: str | None
    frame: str


def encode_batch(replies: list[Reply]) -> bytes:
    # a NamedTuple is not one of orjson's native types: ``tuple`` turns each entry into an array
    return orjson.dumps(replies, default=tuple)


def decode_batch(body: bytes) -> list[Reply]:
    """The entries of a batch body; ``MalformedBatch`` when the body is not a well-formed batch."""
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise MalformedBatch("reply batch is not JSON") from exc
    if not isinstance(raw, list):
        raise MalformedBatch("reply batch is not an array")
    replies = []
    for entry in raw:
        if not (isinstance(entry, list) and len(entry) == 8):
            raise MalformedBatch("reply batch entry has the wrong shape")
        reply = Reply(*entry)
        if not (
            reply.kind in _KINDS
            and isinstance(reply.connection_id, str)
            and isinstance(reply.request_id, str)
            and isinstance(reply.message_id, str)
            and type(reply.seq) is int
            and type(reply.attempt) is int
            and (reply.code is None or isinstance(reply.code, str))
            and isinstance(reply.frame, str)
        ):
            raise MalformedBatch("reply batch entry has a field of the wrong type")
        replies.append(reply)
    return replies
