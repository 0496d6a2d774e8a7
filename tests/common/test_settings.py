from __future__ import annotations

import pytest

from chat_common.settings import ConfigurationError, load_settings


def test_defaults_are_the_original_documents(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WS_MAX_CONNECTIONS", "WS_RATE_LIMIT_WINDOW", "JWT_ALGORITHMS", "LLM_PROVIDER", "OPENAI_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    settings = load_settings()
    assert (
        settings.ws_max_connections,
        settings.ws_max_connections_per_user,
        settings.ws_rate_limit_window,
        settings.ws_rate_limit_max_messages,
        settings.ws_cleanup_interval,
        settings.ws_inactive_timeout,
        settings.ws_max_payload,
        settings.ws_max_message_length,
        settings.ws_max_tokens,
    ) == (2000, 5, 60000, 30, 300000, 1800000, 16384, 4000, 2000)
    assert settings.gateway_port == 3000
    assert settings.monitor_port == 3100
    assert settings.worker_metrics_port == 3200
    assert settings.jwt_algorithms == ["HS256"]
    assert settings.provider == "fake"  # no OPENAI_API_KEY


def test_environment_is_read_with_the_spec_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WS_MAX_CONNECTIONS", "3000")
    monkeypatch.setenv("WS_ALLOWED_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("JWT_ALGORITHMS", "RS256,ES256")
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    monkeypatch.delenv("LLM_PROVIDER", raising=False)
    settings = load_settings()
    assert settings.ws_max_connections == 3000
    assert settings.ws_allowed_origins == ["https://a.example", "https://b.example"]
    assert settings.jwt_algorithms == ["RS256", "ES256"]
    assert settings.provider == "openai"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WS_MAX_CONNECTIONS", "lots"),
        ("WS_MAX_CONNECTIONS_PER_USER", "0"),
        ("WS_RATE_LIMIT_WINDOW", "-5"),
        ("WS_MAX_PAYLOAD", "10"),
        ("JWT_ALGORITHMS", "HS256,none"),
        ("LLM_PROVIDER", "llama"),
        ("LOG_LEVEL", "chatty"),
        ("GATEWAY_PORT", "70000"),
    ],
)
def test_a_bad_value_stops_start_up_naming_the_variable(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigurationError) as raised:
        load_settings()
    assert name in str(raised.value)


def test_the_payload_limit_must_carry_the_longest_message(monkeypatch: pytest.MonkeyPatch) -> None:
    """4000 characters of 4-byte UTF-8 and the frame around them must fit in one frame (issue 11)."""
    assert load_settings().ws_max_payload >= 4 * load_settings().ws_max_message_length  # the spec's defaults fit
    monkeypatch.setenv("WS_MAX_PAYLOAD", "8192")
    with pytest.raises(ConfigurationError) as raised:
        load_settings()
    assert "WS_MAX_PAYLOAD" in str(raised.value)
    assert "WS_MAX_MESSAGE_LENGTH" in str(raised.value)
    monkeypatch.setenv("WS_MAX_MESSAGE_LENGTH", "1000")
    assert load_settings().ws_max_payload == 8192


def test_each_service_reads_its_sections_and_secrets_stay_out_of_reprs() -> None:
    from chat_common.settings import (
        AuthSettings,
        GatewaySettings,
        LLMSettings,
        MonitorSettings,
        Settings,
        WorkerSettings,
    )

    secret, key = "s3cr3t-" + "x" * 40, "sk-" + "y" * 40
    settings = Settings(jwt_secret=secret, openai_api_key=key)  # type: ignore[arg-type]
    assert secret not in repr(settings)
    assert key not in repr(settings)
    assert settings.jwt_secret is not None
    assert settings.jwt_secret.get_secret_value() == secret
    # a service's class has its own sections and none of the others'
    assert "ws_max_connections" in GatewaySettings.model_fields
    assert "openai_api_key" not in GatewaySettings.model_fields
    assert "openai_api_key" in WorkerSettings.model_fields
    assert "jwt_secret" not in WorkerSettings.model_fields
    assert set(MonitorSettings.model_fields) < set(Settings.model_fields)
    assert isinstance(settings, GatewaySettings | WorkerSettings | MonitorSettings | AuthSettings | LLMSettings)
    # durations are read in ms (the spec's units) and converted once
    assert Settings(request_timeout=1500).request_timeout_s == 1.5  # type: ignore[arg-type]


def test_urls_are_validated_where_they_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    from chat_common.settings import ConfigurationError, WorkerSettings

    monkeypatch.setenv("DATABASE_URL", "not a url")
    with pytest.raises(ConfigurationError, match="DATABASE_URL"):
        load_settings(WorkerSettings)
    monkeypatch.setenv("DATABASE_URL", "postgresql://chat:chat@db:5432/chat")
    assert str(load_settings(WorkerSettings).database_url) == "postgresql://chat:chat@db:5432/chat"


def test_an_empty_redis_url_means_no_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    from chat_common.settings import GatewaySettings

    monkeypatch.setenv("REDIS_URL", "")
    assert load_settings(GatewaySettings).redis_url is None
    monkeypatch.setenv("REDIS_URL", "rediss://:pw@cache:6380/1")
    assert str(load_settings(GatewaySettings).redis_url) == "rediss://:pw@cache:6380/1"
