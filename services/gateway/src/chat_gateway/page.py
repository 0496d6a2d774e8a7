"""The browser chat page (static files under ``static/``) and the development-token endpoint.

The page is plain HTML/CSS/JS with no token inside: it is served when ``CHAT_PAGE_ENABLED`` (the
default) and talks to ``/ws/chat`` like any client. ``POST /api/dev/token`` exists only when
``DEV_TOKENS_ENABLED`` is set (off by default): it signs a token for any user id, so it must never
be on where real users are.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import JSONResponse, RedirectResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.staticfiles import StaticFiles

from chat_common.settings import GatewaySettings
from chat_gateway.devtoken import issue_dev_token

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
_USER_ID = re.compile(r"^[A-Za-z0-9._@-]{1,64}$")


class DevTokenRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    userId: str = Field(min_length=1, max_length=64)


def mount_chat_page(app: FastAPI, settings: GatewaySettings) -> None:
    if settings.chat_page_enabled:
        app.mount("/chat", StaticFiles(directory=STATIC_DIR, html=True), name="chat-page")

        @app.get("/", include_in_schema=False)
        async def root() -> RedirectResponse:
            return RedirectResponse("/chat/")

    if not settings.dev_tokens_enabled:
        return
    if not settings.jwt_secret or not all(alg.startswith("HS") for alg in settings.jwt_algorithms):
        logger.warning("DEV_TOKENS_ENABLED ignored: development tokens need JWT_SECRET and an HS* algorithm")
        return
    logger.warning("development tokens enabled (POST /api/dev/token): never do this in production")
    ttl_s = settings.dev_token_ttl_s

    @app.post("/api/dev/token", include_in_schema=False)
    async def dev_token(request: DevTokenRequest) -> JSONResponse:
        if not _USER_ID.match(request.userId):
            return JSONResponse({"error": "userId: letters, digits and . _ @ - only"}, status_code=422)
        token, expires_at = issue_dev_token(settings, request.userId, ttl_s=ttl_s)
        return JSONResponse(
            {"token": token, "userId": request.userId, "expiresAt": int(expires_at * 1000)},
            headers={"Cache-Control": "no-store"},
        )
