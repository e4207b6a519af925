"""Settings are read from an environ mapping, validated, and never leak the key."""

import re

import pytest

from streamchat.core.errors import ConfigError
from streamchat.settings import DEFAULT_SYSTEM_PROMPT, Settings, load_env_file, public_url


def test_empty_environment_means_offline_demo_model():
    settings = Settings.from_env({})
    assert settings.offline
    assert settings.provider_label == "offline demo model"
    assert settings.system_prompt == DEFAULT_SYSTEM_PROMPT
    assert settings.offline_tps == 30.0
    assert settings.offline_ttft_ms == 300.0


def test_key_alone_selects_openai():
    settings = Settings.from_env({"OPENAI_API_KEY": "sk-test-123"})
    assert not settings.offline
    assert settings.provider_label == "https://api.openai.com/v1"


def test_base_url_without_key_works_for_local_servers():
    settings = Settings.from_env({"OPENAI_BASE_URL": "http://localhost:11434/v1/"})
    assert not settings.offline
    assert settings.api_key is None
    assert settings.base_url == "http://localhost:11434/v1"


def test_blank_values_count_as_unset():
    settings = Settings.from_env({"OPENAI_API_KEY": "  ", "OPENAI_BASE_URL": ""})
    assert settings.offline


def test_key_never_appears_in_repr():
    settings = Settings.from_env({"OPENAI_API_KEY": "sk-very-secret-value"})
    assert "sk-very-secret-value" not in repr(settings)


@pytest.mark.parametrize(
    ("name", "value", "fragment"),
    [
        ("TEMPERATURE", "hot", "TEMPERATURE must be a number between 0 and 2"),
        ("TEMPERATURE", "3", "TEMPERATURE must be a number between 0 and 2"),
        ("OFFLINE_TPS", "0", "OFFLINE_TPS must be a number"),
        ("OFFLINE_TPS", "nan", "OFFLINE_TPS must be a number"),
        ("STREAM_RETRIES", "1.5", "STREAM_RETRIES must be a whole number"),
        ("MAX_TOKENS", "-4", "MAX_TOKENS must be a whole number of at least 1"),
        (
            "OPENAI_BASE_URL",
            "localhost:11434",
            "OPENAI_BASE_URL must be an http:// or https:// URL such as http://localhost:11434/v1",
        ),
        ("LOG_LEVEL", "loud", "LOG_LEVEL must be one of"),
    ],
)
def test_bad_values_name_the_variable_and_the_fix(name, value, fragment):
    with pytest.raises(ConfigError, match=re.escape(fragment)) as info:
        Settings.from_env({name: value})
    assert repr(value) in str(info.value) or name == "OPENAI_BASE_URL"


def test_base_url_error_does_not_echo_credentials():
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"OPENAI_BASE_URL": "ftp://user:hunter2@host"})
    assert "hunter2" not in str(info.value)


def test_public_url_strips_credentials_and_query():
    assert (
        public_url("https://user:pw@example.com:8443/v1?key=abc#x") == "https://example.com:8443/v1"
    )


def test_env_file_fills_in_beneath_the_process_environment(tmp_path, monkeypatch):
    env_file = tmp_path / ".env"
    env_file.write_text("OPENAI_MODEL=from-file\nSYSTEM_PROMPT=Be brief.\n")
    monkeypatch.setenv("OPENAI_MODEL", "from-process")
    monkeypatch.delenv("SYSTEM_PROMPT", raising=False)
    settings = Settings.from_env(load_env_file(env_file))
    assert settings.model == "from-process"
    assert settings.system_prompt == "Be brief."


def test_chainlit_ci_placeholder_key_counts_as_no_key():
    # `chainlit run` with CI=true behaves as --ci and sets this fake key.
    assert Settings.from_env({"OPENAI_API_KEY": "sk-FAKE-OPENAI-API-KEY"}).offline


def test_answer_language_is_validated():
    assert Settings.from_env({"ANSWER_LANGUAGE": "Roman-Urdu"}).language == "hinglish"
    assert Settings.from_env({}).language == "en"
    with pytest.raises(ConfigError, match="ANSWER_LANGUAGE"):
        Settings.from_env({"ANSWER_LANGUAGE": "klingon"})


def test_http_client_choice():
    assert Settings.from_env({}).http_client == "aiohttp"
    assert Settings.from_env({"OPENAI_HTTP_CLIENT": "HTTPX"}).http_client == "httpx"
    with pytest.raises(ConfigError, match="OPENAI_HTTP_CLIENT must be one of aiohttp, httpx"):
        Settings.from_env({"OPENAI_HTTP_CLIENT": "requests"})


def test_read_pacing_is_on_unless_switched_off():
    assert Settings.from_env({}).read_pacing
    assert not Settings.from_env({"STREAM_READ_PACING": "false"}).read_pacing
    with pytest.raises(ConfigError, match="STREAM_READ_PACING must be true or false"):
        Settings.from_env({"STREAM_READ_PACING": "sometimes"})


def test_a_blank_switch_keeps_its_default():
    # Blank means unset for every variable, switches included (it used to mean false here).
    assert Settings.from_env({"STREAM_READ_PACING": "", "SHOW_METRICS": " "}).show_metrics
    assert Settings.from_env({"STREAM_READ_PACING": ""}).read_pacing


def test_guardrails_locked_takes_the_same_words_as_every_switch():
    assert Settings.from_env({"GUARDRAILS_LOCKED": "on"}).guardrails.locked
    assert not Settings.from_env({"GUARDRAILS_LOCKED": "Off"}).guardrails.locked
    assert not Settings.from_env({"SHOW_METRICS": "no"}).show_metrics


def test_guardrail_checks_across_settings_become_config_errors():
    with pytest.raises(ConfigError, match="GUARDRAIL_REGEX_FILE must name a file"):
        Settings.from_env({"GUARDRAILS": "pii,regex"})
    with pytest.raises(ConfigError, match="Set GUARDRAIL_MODERATION_BASE_URL"):
        Settings.from_env({"GUARDRAILS": "moderation", "OPENAI_BASE_URL": "http://h:1/v1"})


def test_redis_url_is_checked_without_echoing_it():
    with pytest.raises(ConfigError, match="REDIS_URL must be a redis://") as info:
        Settings.from_env({"REDIS_URL": "localhost:6379?password=hunter2"})
    assert "hunter2" not in str(info.value)
    assert Settings.from_env({"REDIS_URL": "unix:///run/redis.sock"}).rate_limits.redis_url
