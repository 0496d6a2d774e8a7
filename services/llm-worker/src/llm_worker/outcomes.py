"""How a request delivery ends: the outcome exceptions its handler raises and the one ``settle`` that acts on them.

As in faststream's acknowledgement middleware, the handler never acks: it raises ``Ack``, ``Nack``,
``Reject`` or ``Abandon``, and ``settle`` (the only caller of ``ack``/``nack``/``reject`` on a
request) acts on it, counts the outcome, marks the request's span with it and ends the span. A
failure of the settle itself (the channel closed meanwhile: the broker redelivers) is logged here,
once, and never raised. ``CancelledError`` is not an outcome: the caller settles a cancelled
handler with a shielded ``Nack`` and lets the cancellation go on. The request consumer and the
dead-letter consumer both settle here; control messages are consumed without acks.
"""

from __future__ import annotations

import logging

from aio_pika.abc import AbstractIncomingMessage
from opentelemetry.trace import Span

from llm_worker.metrics import WorkerMetrics
from llm_worker.tracing import end_process_span

logger = logging.getLogger(__name__)


class Settled(Exception):
    """How the delivery ends; ``outcome`` is counted in ``chat_worker_requests{outcome}`` (None: not counted)."""

    def __init__(self, outcome: str | None = None, *, answer_ms: float | None = None) -> None:
        super().__init__(outcome)
        self.outcome = outcome
        self.answer_ms = answer_ms


class Ack(Settled):
    """Done: the answer is stored and sent, or there was nothing to generate."""


class Nack(Settled):
    """Back to the queue: a transient failure (the database away, a failed store); another delivery
    tries again, within the queue's delivery limit."""


class Reject(Settled):
    """Dead-lettered without a retry: no delivery could ever process it (a malformed request)."""


class Abandon(Settled):
    """Not settled at all: the broker connection is gone, and with it the delivery (the broker has
    the request back already; an ack on the old channel is impossible)."""


async def settle(
    message: AbstractIncomingMessage,
    decision: Settled,
    *,
    metrics: WorkerMetrics,
    span: Span | None = None,
    label: str = "request",
) -> None:
    """Act on ``decision`` for ``message``, count its outcome, end the delivery's span (if it has one).

    Never raises: a settle the broker cannot take (the channel closed meanwhile, so the broker
    redelivers) is logged here, once. Called for a cancelled handler too (``Nack``: the request goes
    back to the queue); the caller shields it and lets the cancellation go on.
    """
    if decision.outcome is not None:
        metrics.record(decision.outcome, answer_ms=decision.answer_ms)
    try:
        if isinstance(decision, Ack):
            await message.ack()
        elif isinstance(decision, Nack):
            await message.nack(requeue=True)
        elif isinstance(decision, Reject):
            await message.reject(requeue=False)
    except Exception as exc:  # noqa: BLE001 - the channel is gone: the broker redelivers, nothing to undo
        logger.warning(
            "%s %s: %s not delivered to the broker (%r)", label, message.message_id, type(decision).__name__, exc
        )
    if span is not None:
        end_process_span(span, outcome=decision.outcome, requeued=isinstance(decision, Nack))
