"""Scheme → provider, filled from the `wtfs.providers` entry-point group.

A third-party package adds a scheme by declaring, in its own pyproject.toml:

    [project.entry-points."wtfs.providers"]
    demo = "wtfs_demo_plugin:DemoProvider"

The entry-point name is informative; the class's `schemes` attribute decides what it serves.
"""

from __future__ import annotations

import logging
from importlib.metadata import entry_points

import trio

from wtfs.errors import TransferFailed
from wtfs.girder.client import GirderClient
from wtfs.providers.base import Provider, ProviderSettings, Source

log = logging.getLogger(__name__)

GROUP = "wtfs.providers"


def discover() -> dict[str, type[Provider]]:
    """Every installed provider class by scheme (later registrations do not override wtfs's)."""
    classes: dict[str, type[Provider]] = {}
    for ep in sorted(
        entry_points(group=GROUP), key=lambda e: (not e.value.startswith("wtfs."), e.name)
    ):
        try:
            cls = ep.load()
        except Exception as exc:  # a broken plugin must not take the daemon down
            log.error("provider plugin %s (%s) failed to load: %s", ep.name, ep.value, exc)
            continue
        if not (isinstance(cls, type) and issubclass(cls, Provider)):
            log.error("provider plugin %s (%s) is not a wtfs Provider", ep.name, ep.value)
            continue
        for scheme in cls.schemes:
            classes.setdefault(scheme.lower(), cls)
    return classes


class ProviderRegistry:
    """One provider instance per class per daemon, created on first use."""

    def __init__(
        self,
        settings: ProviderSettings,
        girder: GirderClient | None,
        classes: dict[str, type[Provider]] | None = None,
    ) -> None:
        self.settings = settings
        self.girder = girder
        self.classes = discover() if classes is None else classes
        self._instances: dict[type[Provider], Provider] = {}

    @property
    def schemes(self) -> list[str]:
        return sorted(self.classes)

    def get(self, source: Source) -> Provider:
        scheme = source.scheme
        cls = self.classes.get(scheme)
        if cls is None:
            known = ", ".join(self.schemes)
            raise TransferFailed(
                f"{source.label or 'item'}: no provider for URL scheme "
                f"{scheme!r} (installed: {known})"
            )
        if cls not in self._instances:
            self._instances[cls] = cls(self.settings, self.girder)
        return self._instances[cls]

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            for provider in self._instances.values():
                try:
                    await provider.aclose()
                except Exception as exc:
                    log.warning("closing provider %s: %s", type(provider).__name__, exc)
