"""Typed configuration from environment variables: shared sections, one class per service composed of them.

Every name and default of SPEC §3 lives here, with the project's own additions. A section holds the
variables of one concern (the broker, the database, the edge, ...); ``GatewaySettings``,
``WorkerSettings`` and ``MonitorSettings`` are each composed of the sections that service reads, so
a component typed with a section sees only its variables. ``Settings`` holds every variable (the
tools and tests that start the whole stack). Secrets are ``SecretStr`` (never in a repr or a log),
URLs are validated DSNs, and every millisecond setting has its seconds as ``<name>_s``, converted
here once. ``load_settings`` turns a bad value into one start-up error that names the variable.
"""

from __future__ import annotations

import logging
import os
import socket
import uuid
from typing import Annotated, ClassVar, Literal, TypeVar, overload

from pydantic import (
    AliasChoices,
    AmqpDsn,
    Field,
    PostgresDsn,
    RedisDsn,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

logger = logging.getLogger(__name__)

PositiveInt = Annotated[int, Field(gt=0)]
CommaList = Annotated[list[str], NoDecode]


def _split_commas(value: object) -> object:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


FRAME_ENVELOPE_BYTES = 256
"""room a ``send_message`` frame needs besides its content: type, ``chatId``, a ``requestId``."""


def max_frame_for(message_length: int) -> int:
    """Bytes of the largest ``send_message`` frame a client may need for ``message_length`` characters.

    JSON is UTF-8 (RFC 8259 §8.1): at most 4 bytes per character. A client that escapes non-ASCII
    (``\\uXXXX``, 6 or 12 bytes per character: Python's ``json.dumps`` default) is not counted: with the
    spec's defaults (16384 bytes, 4000 characters) it cannot send 4000 non-ASCII characters, and is
    told ``PAYLOAD_TOO_LARGE``; browsers' ``JSON.stringify`` and the project's clients send UTF-8.
    """
    return 4 * message_length + FRAME_ENVELOPE_BYTES


class Seconds:
    """A millisecond setting in seconds: ``request_timeout_s = Seconds("request_timeout")``, converted in one place."""

    __slots__ = ("field",)

    def __init__(self, field: str) -> None:
        self.field = field

    def __get__(self, instance: object, owner: type | None = None) -> float:
        return float(getattr(instance, self.field)) / 1000


class _Section(BaseSettings):
    model_config = SettingsConfigDict(case_sensitive=False, extra="ignore", frozen=True, ignored_types=(Seconds,))


class ProcessSettings(_Section):
    """What every process reads: its identity, its logs and traces, its heartbeat, its internal endpoints."""

    instance_id: str = Field(default_factory=lambda: f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}")
    internal_host: str = "127.0.0.1"
    """listen address of the internal HTTP endpoints (monitor API and dashboard, worker ``/metrics``,
    ``/health``, ``/readyz``): no authentication there, so loopback unless a private network needs them."""
    heartbeat_interval: PositiveInt = 5_000
    log_level: str = "INFO"
    log_format: Literal["text", "json"] = "text"
    debug: str | None = Field(default=None, validation_alias=AliasChoices("DEBUG"))
    otel_exporter_otlp_endpoint: str | None = None
    shutdown_grace: Annotated[int, Field(ge=0)] = 25_000
    """ms a stopping gateway or worker lets in-flight answers run before it closes or requeues them."""

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        level = value.upper()
        if level not in logging.getLevelNamesMapping():
            raise ValueError(f"unknown log level {value!r}")
        return level

    @property
    def verbose_gateway(self) -> bool:
        """The original's ``DEBUG=websocket:*`` switch."""
        return bool(self.debug) and "websocket" in (self.debug or "")

    heartbeat_interval_s: ClassVar[Seconds] = Seconds("heartbeat_interval")
    shutdown_grace_s: ClassVar[Seconds] = Seconds("shutdown_grace")


class BrokerSettings(_Section):
    """RabbitMQ: where it is, and the request queues' limits."""

    amqp_url: AmqpDsn = AmqpDsn("amqp://guest:guest@localhost:5672/")
    request_queue_max_length: PositiveInt = 10_000
    request_delivery_limit: PositiveInt = 3
    publish_timeout: PositiveInt = 5_000
    """ms a publish (with its confirm) may take before the client gets ``BUSY``."""
    reply_prefetch: PositiveInt = 1000
    """replies a gateway takes from its reply queue before it has read them; the rest wait in the
    broker (bounded by the queue's message TTL), not in the gateway's memory."""

    publish_timeout_s: ClassVar[Seconds] = Seconds("publish_timeout")


class DatabaseSettings(_Section):
    """PostgreSQL, where chats and messages are kept."""

    database_url: PostgresDsn = PostgresDsn("postgresql://chat:chat@localhost:5432/chat")
    database_pool_size: PositiveInt = 10


class RequestSettings(_Section):
    """A request's life between gateway and worker: its timeout, its grace on a closed connection, its history."""

    request_timeout: PositiveInt = 120_000
    """ms from publishing a request to its ``response_end`` before the client gets ``TIMEOUT``."""
    resume_grace: Annotated[int, Field(ge=0)] = 10_000
    """ms a worker keeps generating for a closed connection, waiting for the client to resume."""
    history_limit: PositiveInt = 50
    """messages returned in ``history`` and, at most, sent to the model as context."""

    request_timeout_s: ClassVar[Seconds] = Seconds("request_timeout")
    resume_grace_s: ClassVar[Seconds] = Seconds("resume_grace")


class EdgeSettings(_Section):
    """The gateway's edge: the WebSocket limits of the original document and the ones added against hostile peers."""

    ws_max_connections: PositiveInt = 2000
    ws_max_connections_per_user: PositiveInt = 5
    ws_rate_limit_window: PositiveInt = 60_000
    ws_rate_limit_max_messages: PositiveInt = 30
    ws_cleanup_interval: PositiveInt = 300_000
    ws_inactive_timeout: PositiveInt = 1_800_000
    ws_max_payload: Annotated[int, Field(ge=256)] = 16_384
    ws_max_message_length: PositiveInt = 4000
    ws_max_tokens: PositiveInt = 2000
    ws_allowed_origins: CommaList = Field(default_factory=list)
    ws_auth_timeout: PositiveInt = 10_000
    """ms an unauthenticated socket has to send ``join_chat``."""
    ws_ping_interval: PositiveInt = 20_000
    """ms between WebSocket protocol pings; a peer that misses one for as long is dropped."""
    ws_max_unauthenticated_per_address: PositiveInt = 256
    """sockets one client address may hold open before sending ``join_chat``."""
    ws_max_frames_per_second: PositiveInt = 20
    """frames of any type one connection may send per second on average (bursts of twice that);
    beyond it frames are dropped with ``RATE_LIMITED``, so no client can flood the database with
    ``create_chat`` or the gateway with pings."""
    ws_max_buffered_bytes: Annotated[int, Field(ge=65_536)] = 1_048_576
    """bytes of output one connection may have waiting (queued in the gateway plus unsent in its
    socket) before it is dropped: two full histories, or a history and an answer; a client that
    reads holds next to nothing, one that does not read cannot grow the gateway past this."""
    ws_send_timeout: PositiveInt = 20_000
    """ms a write or a close may wait on a peer that does not read before it is dropped."""
    ws_handshake_timeout: PositiveInt = 5_000
    """ms a new TCP connection has to complete its HTTP request headers (the WebSocket handshake)."""
    ws_max_unauthenticated_share: Annotated[float, Field(gt=0, le=1)] = 0.25
    """share of ``WS_MAX_CONNECTIONS`` that sockets not yet authenticated may hold together."""
    ws_chat_creates_per_minute: PositiveInt = 10
    """chats one user may create per minute (``create_chat``, ``join_chat`` without ``chatId``),
    over all connections (all gateways with Redis); beyond it ``RATE_LIMITED``. Each is a row."""
    ws_history_reads_per_minute: PositiveInt = 60
    """history loads per user per minute (``switch_chat``, ``join_chat`` of an existing chat, which
    read and encode up to ``HISTORY_LIMIT`` messages); beyond it ``RATE_LIMITED``."""
    busy_retry_after: PositiveInt = 2_000
    shutdown_spread: Annotated[int, Field(ge=0)] = 3_000
    """ms over which a stopping gateway spreads the 1012 closes of its idle connections."""
    host: str = "0.0.0.0"
    """the gateway's listen address (clients connect to it)."""
    gateway_port: Annotated[int, Field(ge=0, le=65535)] = 3000
    redis_url: RedisDsn | None = None
    """shared connection slots and rate limits across gateways; without it each gateway counts alone."""
    redis_slot_ttl: Annotated[int, Field(ge=300)] = 30_000
    """ms a gateway's connection slots live in Redis without a refresh: how long the slots of a
    gateway that died keep counting against its users."""
    chat_page_enabled: bool = True
    """serve the chat page at ``/chat/`` (static files, no token inside); turn off in production if unwanted."""
    dev_tokens_enabled: bool = False
    """``POST /api/dev/token`` signs a token for any user id with ``JWT_SECRET``: local trials only,
    never in production (``scripts/run.sh`` turns it on)."""
    dev_token_ttl: Annotated[int, Field(ge=10_000)] = 3_600_000
    """ms a development token lives."""

    _split_origins = field_validator("ws_allowed_origins", mode="before")(_split_commas)

    @field_validator("redis_url", mode="before")
    @classmethod
    def _empty_is_off(cls, value: object) -> object:
        """``REDIS_URL=`` (set, empty) means no Redis, as an unset one does."""
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _payload_carries_longest_message(self) -> EdgeSettings:
        needed = max_frame_for(self.ws_max_message_length)
        if self.ws_max_payload < needed:
            raise ValueError(
                f"WS_MAX_PAYLOAD={self.ws_max_payload} cannot carry a send_message of WS_MAX_MESSAGE_LENGTH="
                f"{self.ws_max_message_length} characters: that needs {needed} bytes (4 per character in "
                f"UTF-8 plus {FRAME_ENVELOPE_BYTES} for the frame); raise WS_MAX_PAYLOAD or lower "
                "WS_MAX_MESSAGE_LENGTH"
            )
        return self

    @property
    def max_unauthenticated(self) -> int:
        """Sockets this process holds at most before they authenticate."""
        return max(1, int(self.ws_max_connections * self.ws_max_unauthenticated_share))

    ws_cleanup_interval_s: ClassVar[Seconds] = Seconds("ws_cleanup_interval")
    ws_inactive_timeout_s: ClassVar[Seconds] = Seconds("ws_inactive_timeout")
    ws_auth_timeout_s: ClassVar[Seconds] = Seconds("ws_auth_timeout")
    ws_ping_interval_s: ClassVar[Seconds] = Seconds("ws_ping_interval")
    ws_send_timeout_s: ClassVar[Seconds] = Seconds("ws_send_timeout")
    ws_handshake_timeout_s: ClassVar[Seconds] = Seconds("ws_handshake_timeout")
    shutdown_spread_s: ClassVar[Seconds] = Seconds("shutdown_spread")
    dev_token_ttl_s: ClassVar[Seconds] = Seconds("dev_token_ttl")


class AuthSettings(_Section):
    """How the gateway verifies tokens (SPEC §6)."""

    jwt_secret: SecretStr | None = None
    jwt_public_key: str | None = None
    jwt_algorithms: CommaList = Field(default_factory=lambda: ["HS256"])
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_leeway: Annotated[int, Field(ge=0)] = 5
    """seconds of clock skew tolerated on ``exp`` and ``nbf``."""
    jwt_jwks_url: str | None = None
    """the identity provider's JWKS: RS*/ES*/PS*/EdDSA tokens are checked with the key their ``kid`` names."""
    jwt_jwks_cache_ttl: Annotated[int, Field(ge=1_000)] = 300_000
    """ms the key set is kept before it is fetched again."""
    jwt_jwks_refresh_interval: Annotated[int, Field(ge=0)] = 10_000
    """ms at least between two fetches caused by an unknown ``kid`` (a key rotation)."""
    jwt_jwks_timeout: PositiveInt = 5_000
    """ms one JWKS fetch may take."""
    environment: Literal["development", "production"] = "production"
    """``development`` allows the published development ``JWT_SECRET`` and short secrets (run.sh, compose)."""

    _split_algorithms = field_validator("jwt_algorithms", mode="before")(_split_commas)

    @field_validator("jwt_algorithms")
    @classmethod
    def _no_none_algorithm(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one algorithm is required")
        if any(alg.lower() == "none" for alg in value):
            raise ValueError("'none' is never accepted")
        return value

    jwt_jwks_cache_ttl_s: ClassVar[Seconds] = Seconds("jwt_jwks_cache_ttl")
    jwt_jwks_refresh_interval_s: ClassVar[Seconds] = Seconds("jwt_jwks_refresh_interval")
    jwt_jwks_timeout_s: ClassVar[Seconds] = Seconds("jwt_jwks_timeout")


class LLMSettings(_Section):
    """The worker's model: OpenAI (or a compatible server) or the fake, and how its stream is cut into chunks."""

    openai_api_key: SecretStr | None = None
    openai_base_url: str | None = None
    openai_model: str = "gpt-4o-mini"
    openai_timeout: Annotated[float, Field(gt=0)] = 60.0
    """seconds for one OpenAI request (connect, read between chunks)."""
    openai_max_retries: Annotated[int, Field(ge=0)] = 2
    llm_provider: Literal["openai", "fake"] | None = None
    fake_llm_first_token_ms: Annotated[int, Field(ge=0)] = 300
    fake_llm_tokens_per_second: Annotated[float, Field(ge=0)] = 40.0
    """0 streams without delay."""
    fake_llm_answer_tokens: PositiveInt = 80
    prompts_dir: str | None = None
    """folder with ``documents.md`` and ``messages.md`` replacing the built-in system prompts."""
    history_token_budget: Annotated[int, Field(ge=100)] = 8_000
    """estimated tokens of the history sent to the model (the newest messages, kept whole; the question
    always): a bound on prompt cost and on chats outgrowing the model's context window."""
    chunk_coalesce_ms: Annotated[int, Field(ge=0)] = 50
    chunk_coalesce_chars: PositiveInt = 256
    worker_concurrency: PositiveInt = 64
    worker_metrics_port: Annotated[int, Field(ge=0, le=65535)] = 3200

    @model_validator(mode="after")
    def _pick_provider(self) -> LLMSettings:
        if self.llm_provider is None:
            object.__setattr__(self, "llm_provider", "openai" if self.openai_api_key else "fake")
        return self

    @property
    def provider(self) -> Literal["openai", "fake"]:
        return self.llm_provider or "fake"

    fake_llm_first_token_s: ClassVar[Seconds] = Seconds("fake_llm_first_token_ms")


class HealthSettings(_Section):
    """Health rules and alerts (the monitor; the gateway applies the rules that concern one process)."""

    health_window: Annotated[int, Field(ge=5_000)] = 60_000
    """ms of the sliding window behind messagesPerMinute, averageResponseTime, errorRate and percentiles."""
    health_capacity_warning: Annotated[float, Field(gt=0, le=1)] = 0.80
    health_capacity_critical: Annotated[float, Field(gt=0, le=1)] = 0.95
    health_response_p95_warning: PositiveInt = 3_000
    """ms; warning when the p95 answer time (request to ``response_end``) is above it."""
    health_error_rate_warning: Annotated[float, Field(ge=0, le=1)] = 0.05
    health_error_rate_critical: Annotated[float, Field(ge=0, le=1)] = 0.25
    health_error_rate_min_requests: Annotated[int, Field(ge=1)] = 20
    """requests the window must hold before the error-rate rules apply (one failure of one request
    on a quiet gateway would otherwise be a 100 % error rate)."""
    health_queue_warning: PositiveInt = 100
    """requests waiting in the request queues; warning above it, critical above it while still growing."""
    health_backlog_growth_window: PositiveInt = 30_000
    """ms over which a backlog must have grown to count as growing."""
    health_memory_warning_mb: PositiveInt = 1024
    """resident memory of one process above which it is flagged."""
    alert_webhook_url: str | None = None
    """JSON POST of every alert that fires or resolves; retried, never blocking the monitor."""
    alert_webhook_retries: Annotated[int, Field(ge=0)] = 3
    alert_webhook_timeout: PositiveInt = 5_000
    alert_clear_delay: Annotated[int, Field(ge=0)] = 5_000
    """ms a condition must stay clear before its alert resolves (no flapping around a threshold)."""
    instance_silence_timeout: PositiveInt = 15_000
    """ms after the last heartbeat before the monitor considers an instance gone."""
    jaeger_ui_url: str = "http://localhost:16686"
    """where operators open a trace: ``{JAEGER_UI_URL}/trace/{trace id}``."""
    monitor_port: Annotated[int, Field(ge=0, le=65535)] = 3100

    health_window_s: ClassVar[Seconds] = Seconds("health_window")
    health_backlog_growth_window_s: ClassVar[Seconds] = Seconds("health_backlog_growth_window")
    alert_webhook_timeout_s: ClassVar[Seconds] = Seconds("alert_webhook_timeout")
    alert_clear_delay_s: ClassVar[Seconds] = Seconds("alert_clear_delay")
    instance_silence_timeout_s: ClassVar[Seconds] = Seconds("instance_silence_timeout")


class GatewaySettings(
    ProcessSettings, BrokerSettings, DatabaseSettings, RequestSettings, EdgeSettings, AuthSettings, HealthSettings
):
    """What a gateway reads."""


class WorkerSettings(ProcessSettings, BrokerSettings, DatabaseSettings, RequestSettings, LLMSettings):
    """What an LLM worker reads."""


class MonitorSettings(ProcessSettings, BrokerSettings, HealthSettings):
    """What the monitor reads."""


class Settings(GatewaySettings, WorkerSettings, MonitorSettings):  # type: ignore[misc]  # the pydantic plugin on a diamond
    """Every variable of every service: for the tools and tests that start the whole stack."""


class ConfigurationError(SystemExit):
    """Raised at start-up for invalid configuration; its text names each offending variable."""


S = TypeVar("S", bound=_Section)


@overload
def load_settings(**overrides: object) -> Settings: ...


@overload
def load_settings(kind: type[S], /, **overrides: object) -> S: ...


def load_settings(kind: type[_Section] = Settings, /, **overrides: object) -> _Section:
    """Read the environment into ``kind``; on a bad value exit with a message naming the variable."""
    try:
        settings = kind(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            name = str(error["loc"][0]).upper() if error["loc"] else "configuration"
            lines.append(f"{name}: {error['msg']} (got {error.get('input')!r})")
        raise ConfigurationError("invalid configuration:\n  " + "\n  ".join(lines)) from exc
    fake = isinstance(settings, LLMSettings) and settings.llm_provider == "fake" and not settings.openai_api_key
    if fake and "LLM_PROVIDER" not in os.environ:
        logger.warning("OPENAI_API_KEY is not set: using the built-in fake LLM (LLM_PROVIDER=fake)")
    return settings
