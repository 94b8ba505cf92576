"""URLs shown in logs, causes, transfer records and status never carry credentials or queries."""

from __future__ import annotations

import pytest

from wtfs.providers.base import Source
from wtfs.providers.urls import describe, redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://example.org/data/file.bin", "https://example.org/data/file.bin"),
        ("https://user:hunter2@example.org/f", "https://example.org/f"),
        ("sftp://alice:pa55@host:2222/home/a.txt", "sftp://host:2222/home/a.txt"),
        ("https://user:p@ss:w0rd@example.org/f", "https://example.org/f"),
        ("https://example.org/f?token=abc123&x=1", "https://example.org/f?…"),
        ("https://u:pw@example.org/f?sig=zzz#frag", "https://example.org/f?…"),
        ("https://user@example.org/f", "https://example.org/f"),  # a user name may be a token
        ("https://ghp_t0ken@github.example/f", "https://github.example/f"),
        (
            "http://example.org:8080/api/v1/file/1/download",
            "http://example.org:8080/api/v1/file/1/download",
        ),
        ("http://u:p@[::1]:8080/x", "http://[::1]:8080/x"),
        ("HTTP://Example.ORG/Path", "http://Example.ORG/Path"),
        ("file:///data/local.bin", "file:///data/local.bin"),
        ("local:///data/raw path.bin", "local:///data/raw path.bin"),
        ("http://[::1/unclosed?key=s3cret", "http:…"),
        ("/no/scheme?x=1", "/no/scheme?…"),
        ("//user:pw@host/x", "//host/x"),
    ],
)
def test_credentials_and_queries_are_redacted(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    "url",
    [
        "https://user:topsecret@example.org/f",
        "https://topsecret@example.org/f",
        "https://example.org/f?api_key=topsecret",
        "https://a:b@example.org/f?token=topsecret&other=topsecret",
        "https://user:topsecret@x@example.org/x",
        "https://example.org/f#access_token=topsecret",
        "sftp://topsecret:x@host/f",
    ],
)
def test_the_secret_never_survives(url: str) -> None:
    assert "topsecret" not in redact_url(url)
    assert "topsecret" not in describe(Source(url))


def test_a_source_is_named_by_its_label_else_its_redacted_url() -> None:
    assert describe(Source("https://u:pw@example.org/f?sig=1", label="f.bin")) == "f.bin"
    assert describe(Source("https://u:pw@example.org/f?sig=1")) == "https://example.org/f?…"
