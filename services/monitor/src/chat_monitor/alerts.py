"""Alerts: each health issue, by its key, fires once when it appears and resolves once when it is gone.

A condition must stay clear for ``ALERT_CLEAR_DELAY`` before its alert resolves, so a figure
hovering around a threshold does not flap. Every firing and resolution goes to the log (WARNING /
INFO, the text says ``ALERT firing`` / ``ALERT resolved``) and, when ``ALERT_WEBHOOK_URL`` is set,
to the webhook as a JSON POST: queued, sent by a task of its own with retries and a timeout, so a
slow or dead receiver never holds up the monitor (when the queue is full the oldest are dropped).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from chat_common.frames import iso_utc
from chat_common.health import Issue

logger = logging.getLogger(__name__)

AlertState = Literal["firing", "resolved"]


@dataclass(slots=True)
class Alert:
    key: str
    severity: str
    message: str
    fired_at: float
    """epoch seconds."""
    last_seen: float
    """monotonic time at which the condition was last true."""
    resolved_at: float | None = None

    def to_json(self, state: AlertState) -> dict[str, Any]:
        from datetime import UTC, datetime

        document: dict[str, Any] = {
            "alert": self.key,
            "state": state,
            "severity": self.severity,
            "message": self.message,
            "firedAt": iso_utc(datetime.fromtimestamp(self.fired_at, UTC)),
        }
        if self.resolved_at is not None:
            document["resolvedAt"] = iso_utc(datetime.fromtimestamp(self.resolved_at, UTC))
        return document


class AlertManager:
    def __init__(self, *, clear_delay_s: float, notify: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.clear_delay_s = clear_delay_s
        self.notify = notify
        self.open: dict[str, Alert] = {}
        self.recent: deque[dict[str, Any]] = deque(maxlen=50)
        """the latest firings and resolutions, newest last."""

    def evaluate(self, issues: list[Issue], *, now: float | None = None) -> list[dict[str, Any]]:
        """Fire the alerts of new issues, resolve those of issues gone for the clear delay; return the events."""
        now = time.monotonic() if now is None else now
        events: list[dict[str, Any]] = []
        for issue in issues:
            alert = self.open.get(issue.key)
            if alert is None:
                alert = self.open[issue.key] = Alert(issue.key, issue.status, issue.message, time.time(), now)
                events.append(self._emit(alert, "firing"))
            else:
                alert.last_seen, alert.message = now, issue.message
        current = {issue.key for issue in issues}
        for key in [
            k for k, alert in self.open.items() if k not in current and now - alert.last_seen >= self.clear_delay_s
        ]:
            alert = self.open.pop(key)
            alert.resolved_at = time.time()
            events.append(self._emit(alert, "resolved"))
        return events

    def _emit(self, alert: Alert, state: AlertState) -> dict[str, Any]:
        event = alert.to_json(state)
        if state == "firing":
            logger.warning("ALERT firing [%s] %s: %s", alert.severity, alert.key, alert.message)
        else:
            logger.info("ALERT resolved [%s] %s: %s", alert.severity, alert.key, alert.message)
        self.recent.append(event)
        if self.notify is not None:
            self.notify(event)
        return event

    def open_alerts(self) -> list[dict[str, Any]]:
        return [alert.to_json("firing") for alert in sorted(self.open.values(), key=lambda a: a.fired_at)]


class WebhookNotifier:
    """Deliver alert events to ``url`` in order, each retried ``retries`` times with backoff."""

    def __init__(self, url: str, *, retries: int, timeout_s: float, max_queued: int = 1000) -> None:
        self.url = url
        self.retries = retries
        self.timeout_s = timeout_s
        self._queue: deque[dict[str, Any]] = deque(maxlen=max_queued)
        self._wake = asyncio.Event()
        self.delivered = 0
        self.failed = 0

    def __call__(self, event: dict[str, Any]) -> None:
        """Queue an event; never blocks (the oldest undelivered event goes when the queue is full)."""
        if len(self._queue) == self._queue.maxlen:
            logger.warning("alert webhook queue full: oldest event dropped")
        self._queue.append(event)
        self._wake.set()

    async def run(self) -> None:
        """Send queued events until cancelled."""
        async with httpx.AsyncClient(timeout=self.timeout_s) as client:
            while True:
                await self._wake.wait()
                self._wake.clear()
                while self._queue:
                    await self._deliver(client, self._queue.popleft())

    async def _deliver(self, client: httpx.AsyncClient, event: dict[str, Any]) -> None:
        for attempt in range(self.retries + 1):
            try:
                response = await client.post(self.url, json=event)
                if response.status_code < 500 and response.status_code != 429:
                    if response.status_code >= 400:
                        logger.warning("alert webhook refused %s: HTTP %d", event["alert"], response.status_code)
                        self.failed += 1
                    else:
                        self.delivered += 1
                    return
            except httpx.HTTPError as exc:
                logger.info("alert webhook attempt %d failed: %s", attempt + 1, type(exc).__name__)
            if attempt < self.retries:
                await asyncio.sleep(min(10.0, 0.5 * 2**attempt))
        self.failed += 1
        logger.warning("alert webhook gave up on %s %s", event["alert"], event["state"])
