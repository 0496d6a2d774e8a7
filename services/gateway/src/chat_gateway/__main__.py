"""``chat-gateway``: run one gateway process (configured only by environment variables)."""

from __future__ import annotations

import logging

import uvicorn

from chat_common.logs import setup_logging
from chat_common.process import raise_nofile_limit
from chat_common.samples import RequestSampler
from chat_common.settings import GatewaySettings, load_settings
from chat_common.telemetry import setup_tracing
from chat_gateway.app import create_app
from chat_gateway.drain import GatewayServer
from chat_gateway.http_protocol import GatewayHttpProtocol
from chat_gateway.ws_protocol import GatewayWebSocketProtocol

logger = logging.getLogger("chat_gateway")


def main() -> None:
    settings = load_settings(GatewaySettings)
    setup_logging(settings, service="gateway")
    sampler = RequestSampler()
    setup_tracing(settings, service="chat-gateway", observers=[sampler])
    limit = raise_nofile_limit()
    try:
        app = create_app(settings, sampler=sampler)
    except ValueError as exc:
        raise SystemExit(f"invalid configuration: {exc}") from exc
    logger.info(
        "gateway %s on %s:%d (open-files limit %d)",
        settings.instance_id,
        settings.host,
        settings.gateway_port,
        limit,
    )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.gateway_port,
        loop="uvloop",
        http=GatewayHttpProtocol.configured(header_timeout_s=settings.ws_handshake_timeout_s),
        ws=GatewayWebSocketProtocol.configured(
            max_buffered_bytes=settings.ws_max_buffered_bytes,
            send_timeout_s=settings.ws_send_timeout_s,
            max_pings_per_second=settings.ws_max_frames_per_second,
        ),
        ws_max_size=settings.ws_max_payload,
        ws_per_message_deflate=False,
        ws_ping_interval=settings.ws_ping_interval_s,
        ws_ping_timeout=settings.ws_ping_interval_s,
        backlog=4096,
        timeout_graceful_shutdown=10,
        log_config=None,
        access_log=False,
        lifespan="on",
    )
    server = GatewayServer(config, grace_s=settings.shutdown_grace_s, spread_s=settings.shutdown_spread_s)
    server.run()


if __name__ == "__main__":
    main()
