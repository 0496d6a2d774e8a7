"""``llm-worker``: run one worker process (configured only by environment variables)."""

from __future__ import annotations

import asyncio
import logging
import signal

from chat_common.logs import setup_logging
from chat_common.process import run
from chat_common.samples import RequestSampler
from chat_common.settings import WorkerSettings, load_settings
from chat_common.store import ChatStore, create_pool
from chat_common.telemetry import setup_tracing
from llm_worker.answer import Answerer
from llm_worker.http import serve_http
from llm_worker.metrics import WorkerMetrics
from llm_worker.prompts import load_prompts
from llm_worker.providers import make_provider
from llm_worker.reaper import reap_forever
from llm_worker.service import Worker

logger = logging.getLogger("llm_worker")


async def amain(settings: WorkerSettings, *, sampler: RequestSampler | None = None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    provider = make_provider(settings)
    pool = await create_pool(str(settings.database_url), max_size=settings.database_pool_size)
    metrics = WorkerMetrics()
    answerer = Answerer(
        settings, ChatStore(pool), provider, {str(k): v for k, v in load_prompts(settings).items()}, metrics
    )
    worker = Worker(settings, answerer, metrics, sampler=sampler)

    def health() -> tuple[int, dict[str, object]]:
        ok = worker.connected
        return (200 if ok else 503), {
            "status": "healthy" if ok else "critical",
            "inFlight": worker.in_flight,
        }

    def not_ready() -> list[str]:
        reasons = []
        if not worker.connected:
            reasons.append("not connected to RabbitMQ")
        if worker.stopping:
            reasons.append("shutting down")
        return reasons

    server = await serve_http(settings.internal_host, settings.worker_metrics_port, metrics.registry, health, not_ready)
    try:
        await worker.start()
        await _serve(worker, answerer, settings, stop)
    finally:
        await worker.close()
        server.close()
        await provider.close()
        await pool.close()


async def _serve(worker: Worker, answerer: Answerer, settings: WorkerSettings, stop: asyncio.Event) -> None:
    """Run the worker's own tasks until ``stop``, then shut down in order: stop consuming, farewell
    (no heartbeat after it), the answers in flight finish within the grace (or go back to the queue),
    then the answers' writer, the histories' reader and the reply batcher stop (after the answers they
    carry), then the rest is cancelled."""
    async with asyncio.TaskGroup() as tasks:
        beats = tasks.create_task(worker.heartbeats())
        reaper = tasks.create_task(reap_forever(answerer.store, request_timeout_s=settings.request_timeout_s))
        writer = tasks.create_task(answerer.answers.run())
        reader = tasks.create_task(answerer.histories.run())
        replies = tasks.create_task(worker.batcher.run())
        logger.info("worker %s ready (provider %s)", settings.instance_id, settings.provider)
        await stop.wait()
        logger.info("worker %s stopping", settings.instance_id)
        await worker.stop_consuming()
        beats.cancel()
        await worker.farewell()
        await worker.drain(grace_s=settings.shutdown_grace_s)
        writer.cancel()
        reader.cancel()
        replies.cancel()
        reaper.cancel()


def main() -> None:
    settings = load_settings(WorkerSettings)
    setup_logging(settings, service="llm-worker")
    sampler = RequestSampler()
    setup_tracing(settings, service="llm-worker", observers=[sampler])
    run(amain(settings, sampler=sampler))


if __name__ == "__main__":
    main()
