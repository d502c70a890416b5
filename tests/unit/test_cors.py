"""Which browser origins the collector answers (CXSTREAM_COLLECTOR_ALLOWED_ORIGINS), as browsers compare origins."""

from __future__ import annotations

import pytest

from config.settings import Settings, SettingsError, load_settings, normalise_origin
from streams.http import Cors


def test_origins_are_compared_as_browsers_do() -> None:
    settings = Settings(collector_allowed_origins="HTTPS://Shop.Example.com:443,http://localhost:8080")
    assert settings.collector_allowed_origins == ["https://shop.example.com", "http://localhost:8080"]
    cors = Cors(settings.collector_allowed_origins)
    sent = "https://shop.example.com"
    assert cors.headers(sent) == {
        "Access-Control-Allow-Origin": sent,
        "Access-Control-Allow-Credentials": "true",
        "Vary": "Origin",
    }
    assert cors.headers("https://shop.example.com:443") is not None, "the default port is the same origin"
    assert cors.headers("http://shop.example.com") is None, "another scheme is another origin"
    assert cors.headers("https://evil.example.net") is None
    assert cors.headers(None) == {}, "not a browser's cross-origin call"


def test_a_wildcard_allows_any_origin_without_credentials() -> None:
    cors = Cors(Settings(collector_allowed_origins="*").collector_allowed_origins)
    assert cors.headers("https://anyone.example") == {"Access-Control-Allow-Origin": "*"}
    assert cors.preflight("https://anyone.example").status == 204
    assert Cors([]).preflight("https://anyone.example").status == 403


@pytest.mark.parametrize(
    "origin",
    [
        "shop.example.com",
        "https://shop.example.com/",
        "https://shop.example.com/path",
        "ftp://x.org",
        "https://u@x.org",
    ],
)
def test_what_is_not_an_origin_is_refused_naming_the_variable(origin: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert normalise_origin(origin) is None
    monkeypatch.setenv("CXSTREAM_COLLECTOR_ALLOWED_ORIGINS", origin)
    with pytest.raises(SettingsError, match="CXSTREAM_COLLECTOR_ALLOWED_ORIGINS"):
        load_settings()
