"""URLs as logs, error causes, transfer records and status show them: never a secret.

One helper for all of them (providers' causes used to name sources one way, transfer records
another): no user info at all (a password, but also a token passed as a user name), no query
string (where signed URLs keep their signature: it shows as `?…`), no fragment.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from wtfs.providers.base import Source


def redact_url(url: str) -> str:
    """`url` with scheme, host, port and path only, and `?…` where a query was."""
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. an unclosed IPv6 bracket: show nothing that might be secret
        return f"{url.partition(':')[0]}:…"
    # Written out rather than urlunsplit'd: that drops the empty authority of `local:///x`.
    scheme = f"{parts.scheme}:" if parts.scheme else ""
    has_authority = url[len(scheme) :].startswith("//")
    authority = "//" + parts.netloc.rpartition("@")[2] if has_authority else ""
    query = "?…" if parts.query else ""
    return f"{scheme}{authority}{parts.path}{query}"


def describe(source: Source) -> str:
    """A source's name in logs and causes: its label (a file name), else its redacted URL."""
    return source.label or redact_url(source.url)
