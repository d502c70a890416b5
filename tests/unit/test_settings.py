"""Settings: defaults, environment overrides, and errors that name the variable."""

from __future__ import annotations

from pathlib import Path

import pytest

from config.settings import SettingsError, load_settings, settings_markdown
from config.topics import Topics
from schemas.touchpoint import IdentifierType

README = Path(__file__).resolve().parents[2] / "README.md"


def test_defaults_are_the_embedded_setup(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("CXSTREAM_KAFKA_URL", "CXSTREAM_DATABASE_URL", "CXSTREAM_TOPIC_PREFIX"):
        monkeypatch.delenv(var, raising=False)
    s = load_settings()
    assert s.kafka_url == "kafka://127.0.0.1:9092"
    assert s.kafka_port == 9092
    assert s.database_url.startswith("sqlite:///")
    assert Topics(s.topic_prefix).channel("web") == "cx.touchpoints.web"


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXSTREAM_KAFKA_URL", "kafka://a:1,b:2")
    monkeypatch.setenv("CXSTREAM_METRIC_WINDOWS", "1h, 1d")
    monkeypatch.setenv("CXSTREAM_IDENTIFIER_LIMITS", '{"crm_id": 2}')
    s = load_settings()
    assert s.bootstrap_servers == ["a:1", "b:2"]
    assert s.metric_windows == ["1h", "1d"]
    assert s.identifier_limits == {IdentifierType.CRM_ID: 2}


@pytest.mark.parametrize(
    ("var", "value"),
    [
        ("CXSTREAM_PARTITIONS", "zero"),
        ("CXSTREAM_PARTITIONS", "0"),
        ("CXSTREAM_KAFKA_URL", "http://x"),
        ("CXSTREAM_DATABASE_URL", "mysql://x"),
        ("CXSTREAM_METRIC_WINDOWS", "1h,fortnight"),
        ("CXSTREAM_WEB_PORT", "70000"),
        ("CXSTREAM_IDENTIFIER_LIMITS", '{"shoe_size": 1}'),
        # Accepted silently, or a traceback without the variable's name, before:
        ("CXSTREAM_IDENTIFIER_LIMITS", "{not json"),
        ("CXSTREAM_IDENTIFIER_LIMITS", '{"crm_id": -1}'),
        ("CXSTREAM_METRIC_WINDOWS", ""),
        ("CXSTREAM_TOPIC_PREFIX", "my prefix/"),
        ("CXSTREAM_WRITE_KEYS", " , "),
        ("CXSTREAM_DEFAULT_PHONE_REGION", "XX"),
        ("CXSTREAM_BLOCKED_IDENTIFIERS", "nonsense"),
        ("CXSTREAM_BLOCKED_IDENTIFIERS", "shoe:42"),
        ("CXSTREAM_WORKER_ID", " "),
        ("CXSTREAM_APP_ID", ""),
        ("CXSTREAM_WEB_HOST", ""),
        ("CXSTREAM_DATA_DIR", ""),
        ("CXSTREAM_ALLOWED_LATENESS_S", "86400"),
        ("CXSTREAM_DEDUPE_HORIZON_S", "86400"),
        ("CXSTREAM_DEAD_LETTER_ORIGINALS", "shred"),
    ],
)
def test_a_bad_value_names_its_variable(monkeypatch: pytest.MonkeyPatch, var: str, value: str) -> None:
    monkeypatch.setenv(var, value)
    with pytest.raises(SettingsError, match=var):
        load_settings()


def test_readme_configuration_table_is_current() -> None:
    assert settings_markdown() in README.read_text(), "run: python -c 'from config.settings import settings_markdown'"


def test_the_public_write_key_is_refused_beyond_loopback_and_warned_about_with_postgresql() -> None:
    from config.settings import exposure_problems

    assert exposure_problems(load_settings()) == ([], [])
    errors, _ = exposure_problems(load_settings(web_host="0.0.0.0"))
    assert errors and "CXSTREAM_WRITE_KEYS" in errors[0] and "CXSTREAM_WEB_HOST" in errors[0]
    assert exposure_problems(load_settings(web_host="0.0.0.0", write_keys=["k-1"])) == ([], [])
    _, warnings = exposure_problems(load_settings(database_url="postgresql+psycopg://u@h/db"))
    assert warnings and "dev-write-key" in warnings[0]


@pytest.mark.parametrize("salt", [None, "", "   "])
def test_hashing_without_a_salt_is_refused(monkeypatch: pytest.MonkeyPatch, salt: str | None) -> None:
    monkeypatch.setenv("CXSTREAM_HASH_IDENTIFIERS", "true")
    if salt is None:
        monkeypatch.delenv("CXSTREAM_IDENTIFIER_SALT", raising=False)
    else:
        monkeypatch.setenv("CXSTREAM_IDENTIFIER_SALT", salt)
    with pytest.raises(SettingsError, match=r"CXSTREAM_IDENTIFIER_SALT: .*required when CXSTREAM_HASH_IDENTIFIERS"):
        load_settings()


def test_hashing_with_a_salt_and_a_salt_without_hashing_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CXSTREAM_HASH_IDENTIFIERS", "true")
    monkeypatch.setenv("CXSTREAM_IDENTIFIER_SALT", "pepper")
    assert load_settings().identifier_salt == "pepper"
    monkeypatch.setenv("CXSTREAM_HASH_IDENTIFIERS", "false")
    monkeypatch.delenv("CXSTREAM_IDENTIFIER_SALT")
    assert load_settings().hash_identifiers is False
