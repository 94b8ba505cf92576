"""Pytest helpers around the local dev Girder (`wtfs_devgirder`).

Meant for session-scoped fixtures in ``tests/conftest.py``::

    @pytest.fixture(scope="session")
    def girder(tmp_path_factory):
        with start_local_girder(tmp_path_factory) as g:
            yield g

    @pytest.fixture(scope="session")
    def sample(girder, tmp_path_factory):
        return seed_local_girder(girder, tmp_path_factory)
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from wtfs_devgirder.control import LocalGirder, write_secret
from wtfs_devgirder.seed import SampleData, seed_sample_data

logger = logging.getLogger(__name__)


def start_local_girder(
    tmp_path_factory: pytest.TempPathFactory,
    name: str = "girder",
    timeout: float = 60,
    *,
    plugins: bool = True,
) -> LocalGirder:
    """Start a fresh dev Girder in a new temporary directory. The caller must `stop()` it.

    ``plugins=False``: a stock Girder (the wtfs plugin installed but not loaded).
    """
    workdir = tmp_path_factory.mktemp(name)
    girder = LocalGirder.start(workdir, timeout=timeout, plugins=plugins)
    logger.info("started %r in %s", girder, workdir)
    return girder


def seed_local_girder(girder: LocalGirder, tmp_path_factory: pytest.TempPathFactory) -> SampleData:
    """Create the ``wtfs-demo`` sample collection in ``girder`` (once per Girder)."""
    return seed_sample_data(girder.client(), tmp_path_factory.mktemp("seed"))


@contextmanager
def local_girder(
    tmp_path_factory: pytest.TempPathFactory, name: str = "girder", seed: bool = False
) -> Iterator[tuple[LocalGirder, SampleData | None]]:
    """A dev Girder (optionally seeded) that is stopped on exit, whatever happens."""
    girder = start_local_girder(tmp_path_factory, name)
    try:
        sample = seed_local_girder(girder, tmp_path_factory) if seed else None
        yield girder, sample
    finally:
        girder.stop()


@dataclass
class GirderUser:
    """A user made through Girder's REST API, with a token and an API key (in a 0600 file)."""

    login: str
    id: str
    token: str = field(repr=False)
    api_key_file: Path

    def http(self, girder: LocalGirder) -> httpx.Client:
        """An httpx client of ``girder``'s API acting as this user (the caller closes it)."""
        return httpx.Client(
            base_url=girder.api_url + "/", headers={"Girder-Token": self.token}, timeout=60
        )


def create_user(girder: LocalGirder, login: str, workdir: Path) -> GirderUser:
    """A new, non-admin user of ``girder``, created by its admin as any Girder admin would."""
    password = secrets.token_urlsafe(12)
    admin = {"Girder-Token": girder.token()}
    with httpx.Client(base_url=girder.api_url + "/", timeout=60) as http:
        made = http.post(  # in the body: a URL (and an error quoting it) must not hold a password
            "user",
            headers=admin,
            data={
                "login": login,
                "email": f"{login}@wtfs.invalid",
                "firstName": login.title(),
                "lastName": "Tester",
                "password": password,
            },
        )
        assert made.status_code == 200, made.text
        assert made.json()["admin"] is False
        auth = http.get("user/authentication", auth=(login, password))
        auth.raise_for_status()
        token = str(auth.json()["authToken"]["token"])
        key = http.post("api_key", headers={"Girder-Token": token}, params={"name": "wtfs-test"})
        key.raise_for_status()
    key_file = write_secret(workdir / f"api_key-{login}", str(key.json()["key"]))
    return GirderUser(login, str(made.json()["_id"]), token, key_file)
