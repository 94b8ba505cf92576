"""URLs shown in logs, transfer records and status never carry passwords or query tokens."""

from __future__ import annotations

import pytest

from wtfs.providers.urls import redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://example.org/data/file.bin", "https://example.org/data/file.bin"),
        ("https://user:hunter2@example.org/f", "https://user@example.org/f"),
        ("sftp://alice:pa55@host:2222/home/a.txt", "sftp://alice@host:2222/home/a.txt"),
        ("https://user:p@ss:w0rd@example.org/f", "https://user@example.org/f"),
        ("https://example.org/f?token=abc123&x=1", "https://example.org/f?…"),
        ("https://u:pw@example.org/f?sig=zzz#frag", "https://u@example.org/f?…"),
        ("https://user@example.org/f", "https://user@example.org/f"),
        (
            "http://example.org:8080/api/v1/file/1/download",
            "http://example.org:8080/api/v1/file/1/download",
        ),
        ("file:///data/local.bin", "file:///data/local.bin"),
    ],
)
def test_passwords_and_queries_are_redacted(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.parametrize(
    "url",
    [
        "https://user:topsecret@example.org/f",
        "https://example.org/f?api_key=topsecret",
        "https://a:b@example.org/f?token=topsecret&other=topsecret",
        "https://user:topsecret@x@example.org/x",
        "https://example.org/f#access_token=topsecret",
    ],
)
def test_the_secret_never_survives(url: str) -> None:
    assert "topsecret" not in redact_url(url)
