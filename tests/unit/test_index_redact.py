"""`wtfs_index.redact`: what every message, log line, status and Girder answer shows of an index
URL. It must hide the password of any URL an admin may type, parseable or not, and never raise
(a traceback quoting the URL is the leak it exists to prevent)."""

from __future__ import annotations

from pathlib import Path

import pytest
from wtfs_index import IndexRefused, open_index, redact

SECRET = "s3cr:et"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://wtfs:PW@127.0.0.1:5432/db", "postgresql://wtfs:***@127.0.0.1:5432/db"),
        ("postgresql://wtfs:p%40ss@db.example/x", "postgresql://wtfs:***@db.example/x"),
        ("postgresql://wtfs@db.example/x", "postgresql://wtfs@db.example/x"),
        ("postgresql://db.example/x?sslmode=require", "postgresql://db.example/x?sslmode=require"),
        # libpq reads a password from the query too
        ("postgresql://u@h/x?sslmode=disable&PassWord=PW",
         "postgresql://u@h/x?sslmode=disable&PassWord=***"),
        # what urlsplit cannot read: a port that is no number, a broken IPv6 literal
        ("postgresql://u:PW@h:port/x", "postgresql://u:***@h:port/x"),
        ("postgresql://u:PW@[::1/x", "postgresql://u:***@[::1/x"),
        # unencoded '/' and '@' in the password: hide up to the last '@'
        ("postgresql://u:P/W@h/x", "postgresql://u:***@h/x"),
        ("postgresql://u:P@W@h/x", "postgresql://u:***@h/x"),
        ("u:PW@h/x", "***@h/x"),
    ],
)  # fmt: skip
def test_the_password_is_hidden_and_the_rest_kept(url: str, shown: str) -> None:
    assert redact(url) == shown
    assert "PW" not in redact(url) and "P/W" not in redact(url)


def test_an_unknown_scheme_is_refused_with_the_url_redacted(tmp_path: Path) -> None:
    for url in (f"mysql://u:{SECRET}@h/x", f"postgresq1://u:{SECRET}@[::1/x"):
        with pytest.raises(IndexRefused) as refused:
            open_index(url, tmp_path)
        assert SECRET not in str(refused.value)
        assert "u:***@" in str(refused.value)
