"""``chat-monitor``: run the monitor (configured only by environment variables)."""

from __future__ import annotations

import uvicorn

from chat_common.logs import setup_logging
from chat_common.settings import MonitorSettings, load_settings
from chat_common.telemetry import setup_tracing
from chat_monitor.app import create_app


def main() -> None:
    settings = load_settings(MonitorSettings)
    setup_logging(settings, service="monitor")
    setup_tracing(settings, service="chat-monitor")
    uvicorn.run(
        create_app(settings),
        host=settings.internal_host,
        port=settings.monitor_port,
        loop="uvloop",
        log_config=None,
        access_log=False,
    )


if __name__ == "__main__":
    main()
