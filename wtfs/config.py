"""Configuration: YAML (+ a few env overrides) loaded once into frozen dataclasses.

Every problem is a `ConfigError` whose message names the key, so the CLI can print one line and
exit 2. Secrets are never read from the command line: the API key comes from `GIRDER_API_KEY`
or from `girder.api_key_file`, and is wrapped in `Secret` so it cannot leak through a repr.

The dataclasses here are the one place a default is stated. The loader takes a key's default
from its field; the parts either take their section as it is (the FUSE operations take
`MountConfig`) or have a settings type of their own whose defaults *are* these fields
(`RetryPolicy.attempts = NetworkConfig.retry_attempts`), built from the config in one function
beside it (`provider_settings`, `retry_policy`, `girder_client`, `gc_policy`).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from wtfs.errors import ConfigError

if TYPE_CHECKING:
    from wtfs.gc.evictor import GcPolicy

DEFAULT_CONFIG_PATHS = (Path("wtfs.yaml"), Path("~/.config/wtfs/wtfs.yaml"), Path("/etc/wtfs.yaml"))

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?i?b?)?\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "ki": 1024,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mi": 1024**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gi": 1024**3,
    "gib": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "ti": 1024**4,
    "tib": 1024**4,
}


class Secret:
    """A string that never shows itself in repr/str/logs."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


def parse_size(value: object, key: str) -> int:
    """`10GiB`, `500MB`, `4 MiB`, `1048576` → bytes."""
    if isinstance(value, bool):
        raise ConfigError(f"{key}: expected a size such as 10GiB, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    match = _SIZE_RE.match(str(value))
    if not match or (match.group(2) or "").lower() not in _UNITS:
        raise ConfigError(f"{key}: expected a size such as 10GiB or 500MB, got {value!r}")
    return int(float(match.group(1)) * _UNITS[(match.group(2) or "").lower()])


def format_size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class GirderConfig:
    api_url: str | None = None
    api_key_file: Path | None = None
    #: list folders with the server's wtfs plugin (items with their files, one request per
    #: page) when the server has it; false: always one request per item, as stock Girder needs
    bulk_listing: bool = True
    #: resolved at load time from GIRDER_API_KEY or api_key_file; never from argv
    api_key: Secret | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True)
class MountConfig:
    allow_other: bool = False
    uid: int | None = None  # owner shown for files (default: the daemon's uid)
    gid: int | None = None
    umask: int = 0o022
    entry_timeout: float = 300.0  # the tree is read-only: long kernel caching is safe
    attr_timeout: float = 300.0
    read_ahead_kb: int = 1024
    #: seconds after which an open asks Girder again whether a file has a new version (None:
    #: never; a file is still checked at its first open when its listing came from the
    #: metadata cache, and after `wtfs session refresh`)
    revalidate_after: float | None = None


@dataclass(frozen=True)
class NetworkConfig:
    connect_timeout: float = 10.0
    read_timeout: float = 30.0
    retry_attempts: int = 6
    retry_base_delay: float = 0.2
    retry_max_delay: float = 10.0
    #: a read waiting on the network fails with ETIMEDOUT after this many seconds
    read_deadline: float = 120.0


@dataclass(frozen=True)
class ProvidersConfig:
    allowed_local_roots: tuple[Path, ...] = ()
    http_headers: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    girder: GirderConfig = field(default_factory=GirderConfig)
    private_storage_path: Path = field(default_factory=lambda: Path("~/.cache/wtfs").expanduser())
    private_storage_capacity: int = 10 * 1024**3
    gc_run_interval: float = 60.0
    gc_collect_start_fraction: float = 0.9
    gc_collect_end_fraction: float = 0.5
    block_size: int = 4 * 1024**2
    readahead_blocks: int = 8
    max_concurrent_transfers: int = 8
    transfer_history_max_count: int = 10_000
    transfer_history_max_age_days: float = 7.0
    metrics_port: int | None = None
    log_file: Path | None = None
    #: the store's index: empty for SQLite inside the store (one host); postgresql://... for a
    #: store several hosts share. May hold a password: never printed (wtfs_index.redact)
    index_url: str | None = field(default=None, repr=False)
    #: seconds an owner in another PID namespace or on another host stays alive without a
    #: heartbeat (every second): after that its locks and claims are reclaimed
    lease: float = 20.0
    #: bytes of the store's filesystem kept free for the index and logs; None: 5 % of the
    #: filesystem, between 1 MiB and 256 MiB
    disk_reserve: int | None = None
    log_level: str = "INFO"
    mount: MountConfig = field(default_factory=MountConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    providers: ProvidersConfig = field(default_factory=ProvidersConfig)


def gc_policy(config: Config) -> GcPolicy:
    """The GC's capacity and water marks, for the daemon's scheduler, `wtfs gc` and `wtfs status`.

    Here rather than in the daemon's wiring so the CLI need not import that to run one pass.
    config.py sits below the GC, so the GC's module is imported only when this is called.
    """
    from wtfs.gc.evictor import GcPolicy

    return GcPolicy(
        config.private_storage_capacity,
        config.gc_collect_start_fraction,
        config.gc_collect_end_fraction,
        config.disk_reserve,
    )


# Env overrides for the main keys: name → dotted key.
ENV_OVERRIDES = {
    "WTFS_GIRDER_API_URL": "girder.api_url",
    "WTFS_PRIVATE_STORAGE_PATH": "private_storage_path",
    "WTFS_PRIVATE_STORAGE_CAPACITY": "private_storage_capacity",
    "WTFS_GC_RUN_INTERVAL": "gc_run_interval",
    "WTFS_GC_COLLECT_START_FRACTION": "gc_collect_start_fraction",
    "WTFS_GC_COLLECT_END_FRACTION": "gc_collect_end_fraction",
    "WTFS_BLOCK_SIZE": "block_size",
    "WTFS_METRICS_PORT": "metrics_port",
    "WTFS_LOG_FILE": "log_file",
    "WTFS_INDEX_URL": "index_url",
    "WTFS_LEASE": "lease",
}


def find_config_file(explicit: str | Path | None, env: Mapping[str, str]) -> Path | None:
    if explicit is not None:
        return Path(explicit)
    if env.get("WTFS_CONFIG"):
        return Path(env["WTFS_CONFIG"])
    for candidate in DEFAULT_CONFIG_PATHS:
        path = candidate.expanduser()
        if path.is_file():
            return path
    return None


def load_config(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read, merge env overrides, validate. Raises ConfigError naming the key at fault."""
    env = os.environ if env is None else env
    config_path = find_config_file(path, env)
    raw: dict[str, Any] = {}
    if config_path is not None:
        raw = _read_yaml(config_path)
    for name, dotted in ENV_OVERRIDES.items():
        if env.get(name, "") != "":
            _set_dotted(raw, dotted, env[name])
    config = _build(raw, base=config_path.parent if config_path else Path.cwd())
    return _with_api_key(config, env)


def read_user_file(path: Path, what: str) -> str:
    """The text of a file the user named (`what`: "config file", "session file").

    One wording for both: a file that cannot be read is bad input (exit 2), named with its path.
    """
    try:
        return path.read_text()
    except OSError as exc:
        raise ConfigError(f"{what} {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what} {path}: not UTF-8 text") from None


def _read_yaml(path: Path) -> dict[str, Any]:
    text = read_user_file(path, "config file")
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"config file {path}{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file {path}: expected a mapping of keys, got {type(data).__name__}"
        )
    return data


def _set_dotted(raw: dict[str, Any], dotted: str, value: str) -> None:
    head, _, rest = dotted.partition(".")
    if rest:
        section = raw.setdefault(head, {})
        if not isinstance(section, dict):
            raise ConfigError(f"{head}: expected a mapping")
        section[rest] = value
    else:
        raw[head] = value


def _check_keys(raw: Mapping[str, Any], cls: type, prefix: str) -> None:
    known = {f.name for f in fields(cls)} - {"api_key"}
    for key in raw:
        if key not in known:
            hint = f"{prefix}{key}"
            raise ConfigError(f"{hint}: unknown key (known: {', '.join(sorted(known))})")


def _section(raw: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = raw.get(key, {})
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
    return value


def _number(
    raw: Mapping[str, Any],
    key: str,
    default: float | None,
    prefix: str = "",
    *,
    minimum: float | None = None,
    integer: bool = False,
) -> Any:
    name = prefix + key
    if key not in raw or raw[key] is None:
        return default
    value = raw[key]
    try:
        if isinstance(value, bool):
            raise ValueError
        number = int(value, 0) if integer and isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}: expected a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ConfigError(f"{name}: expected a finite number, got {value!r}")
    if integer:
        if number != int(number):
            raise ConfigError(f"{name}: expected a whole number, got {value!r}")
        number = int(number)
    if minimum is not None and number < minimum:
        raise ConfigError(f"{name}: must be at least {minimum:g}, got {value!r}")
    return number


def _bool(raw: Mapping[str, Any], key: str, default: bool, prefix: str = "") -> bool:
    value = raw.get(key, default)
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
        return value.lower() in ("true", "yes", "1")
    raise ConfigError(f"{prefix}{key}: expected true or false, got {value!r}")


def _default_of(cls: type, name: str) -> Any:
    """The default the config dataclass `cls` states for field `name`.

    The dataclasses above are the one place a default is written down; the loader reads them
    from there rather than repeating them (as the parts do, through the class attributes).
    """
    for f in fields(cls):
        if f.name == name:
            if f.default_factory is not dataclasses.MISSING:
                return f.default_factory()
            if f.default is not dataclasses.MISSING:
                return f.default
            raise AssertionError(f"{cls.__name__}.{name} has no default")
    raise AssertionError(f"{cls.__name__} has no field {name!r}")


class _Keys:
    """One mapping of the config file, read against its dataclass `cls`.

    Unknown keys are refused, and a key left out takes the default `cls` states, so the loader
    says only how each key is checked, never what it defaults to. `prefix` names the section in
    error messages (`mount.`).
    """

    def __init__(self, raw: Mapping[str, Any], cls: type, prefix: str = "") -> None:
        _check_keys(raw, cls, prefix)
        self.raw, self.cls, self.prefix = raw, cls, prefix

    def get(self, key: str) -> Any:
        """The raw value, or the default when the key is absent."""
        return self.raw[key] if key in self.raw else _default_of(self.cls, key)

    def number(self, key: str, *, minimum: float | None = None, integer: bool = False) -> Any:
        """A number; absent or null: the default (which may be None)."""
        default = _default_of(self.cls, key)
        return _number(self.raw, key, default, self.prefix, minimum=minimum, integer=integer)

    def flag(self, key: str) -> bool:
        return _bool(self.raw, key, _default_of(self.cls, key), self.prefix)

    def size(self, key: str) -> int:
        return parse_size(self.get(key), self.prefix + key)

    def path(self, key: str, base: Path) -> Path:
        """A path, relative ones taken from `base`; absent: the default."""
        return _path(self.raw[key], self.prefix + key, base) if key in self.raw else self.get(key)

    def optional_path(self, key: str, base: Path) -> Path | None:
        """A path that may be left out or empty (then None: the feature's own default)."""
        return _path(self.raw[key], self.prefix + key, base) if self.raw.get(key) else None


def _path(value: object, key: str, base: Path) -> Path:
    if not isinstance(value, str | Path) or str(value) == "":
        raise ConfigError(f"{key}: expected a path, got {value!r}")
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path)


def _build(raw: Mapping[str, Any], base: Path) -> Config:
    keys = _Keys(raw, Config)
    girder = _build_girder(_section(raw, "girder"), base)
    capacity = keys.size("private_storage_capacity")
    if capacity <= 0:
        raise ConfigError(f"private_storage_capacity: must be positive, got {capacity}")
    block_size = keys.size("block_size")
    if not 1024**2 <= block_size <= 16 * 1024**2:
        raise ConfigError(f"block_size: must be between 1MiB and 16MiB, got {block_size}")
    start = keys.number("gc_collect_start_fraction")
    end = keys.number("gc_collect_end_fraction")
    for key, frac in (("gc_collect_start_fraction", start), ("gc_collect_end_fraction", end)):
        if not 0 < frac <= 1:
            raise ConfigError(f"{key}: must be in (0, 1], got {frac}")
    if start < end:
        raise ConfigError(
            "gc_collect_start_fraction: must not be below gc_collect_end_fraction "
            f"({start} < {end})"
        )
    metrics_port = keys.number("metrics_port", integer=True, minimum=0)
    if metrics_port is not None and metrics_port > 65535:
        raise ConfigError(f"metrics_port: must be a TCP port, got {metrics_port}")
    log_level = str(keys.get("log_level")).upper()
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"log_level: expected DEBUG, INFO, WARNING or ERROR, got {log_level!r}")

    return Config(
        girder=girder,
        private_storage_path=keys.path("private_storage_path", base),
        private_storage_capacity=capacity,
        gc_run_interval=keys.number("gc_run_interval", minimum=0.05),
        gc_collect_start_fraction=start,
        gc_collect_end_fraction=end,
        block_size=block_size,
        readahead_blocks=keys.number("readahead_blocks", integer=True, minimum=0),
        max_concurrent_transfers=keys.number("max_concurrent_transfers", integer=True, minimum=1),
        transfer_history_max_count=keys.number(
            "transfer_history_max_count", integer=True, minimum=1
        ),
        transfer_history_max_age_days=keys.number("transfer_history_max_age_days", minimum=0),
        metrics_port=metrics_port,
        log_file=keys.optional_path("log_file", base),
        index_url=_index_url(keys.get("index_url")),
        lease=keys.number("lease", minimum=2),
        disk_reserve=(
            None if keys.get("disk_reserve") in (None, "auto") else keys.size("disk_reserve")
        ),
        log_level=log_level,
        mount=_build_mount(_section(raw, "mount")),
        network=_build_network(_section(raw, "network")),
        providers=_build_providers(_section(raw, "providers"), base),
    )


def _index_url(value: object) -> str | None:
    if value in (None, ""):
        return None
    from urllib.parse import urlsplit

    from wtfs_index import redact

    text = str(value)
    if urlsplit(text).scheme.lower() not in ("postgresql", "postgres"):
        raise ConfigError(
            f"index_url: expected postgresql://user@host/database, got {redact(text)!r}"
        )
    return text


def _build_girder(raw: Mapping[str, Any], base: Path) -> GirderConfig:
    keys = _Keys(raw, GirderConfig, "girder.")
    api_url = keys.get("api_url")
    if api_url is not None and not (
        isinstance(api_url, str) and api_url.startswith(("http://", "https://"))
    ):
        raise ConfigError(f"girder.api_url: expected an http(s) URL, got {api_url!r}")
    return GirderConfig(
        api_url=api_url.rstrip("/") if isinstance(api_url, str) else None,
        api_key_file=keys.optional_path("api_key_file", base),
        bulk_listing=keys.flag("bulk_listing"),
    )


def _build_mount(raw: Mapping[str, Any]) -> MountConfig:
    keys = _Keys(raw, MountConfig, "mount.")
    umask = keys.number("umask", integer=True, minimum=0)
    if umask > 0o777:
        raise ConfigError(
            f"mount.umask: expected an octal mode such as 0o022, got {raw['umask']!r}"
        )
    return MountConfig(
        allow_other=keys.flag("allow_other"),
        uid=keys.number("uid", integer=True, minimum=0),
        gid=keys.number("gid", integer=True, minimum=0),
        umask=umask,
        entry_timeout=keys.number("entry_timeout", minimum=0),
        attr_timeout=keys.number("attr_timeout", minimum=0),
        read_ahead_kb=keys.number("read_ahead_kb", integer=True, minimum=0),
        revalidate_after=keys.number("revalidate_after", minimum=0),
    )


def _build_network(raw: Mapping[str, Any]) -> NetworkConfig:
    keys = _Keys(raw, NetworkConfig, "network.")
    return NetworkConfig(
        connect_timeout=keys.number("connect_timeout", minimum=0.01),
        read_timeout=keys.number("read_timeout", minimum=0.01),
        retry_attempts=keys.number("retry_attempts", integer=True, minimum=1),
        retry_base_delay=keys.number("retry_base_delay", minimum=0),
        retry_max_delay=keys.number("retry_max_delay", minimum=0),
        read_deadline=keys.number("read_deadline", minimum=0.1),
    )


def _build_providers(raw: Mapping[str, Any], base: Path) -> ProvidersConfig:
    roots_raw = raw.get("allowed_local_roots", []) or []
    if not isinstance(roots_raw, list):
        raise ConfigError("providers.allowed_local_roots: expected a list of directories")
    roots = []
    for value in roots_raw:
        root = _path(value, "providers.allowed_local_roots", base)
        if not root.is_absolute():
            raise ConfigError(f"providers.allowed_local_roots: {value!r} is not absolute")
        roots.append(root)
    headers = raw.get("http_headers", {}) or {}
    if not isinstance(headers, dict) or not all(
        isinstance(h, dict) and all(isinstance(v, str) for v in h.values())
        for h in headers.values()
    ):
        raise ConfigError("providers.http_headers: expected {host: {Header: value}}")
    options = {k: v for k, v in raw.items() if k not in ("allowed_local_roots", "http_headers")}
    for scheme, value in options.items():
        if not isinstance(value, dict):
            raise ConfigError(f"providers.{scheme}: expected a mapping of options")
    return ProvidersConfig(allowed_local_roots=tuple(roots), http_headers=headers, options=options)


def _with_api_key(config: Config, env: Mapping[str, str]) -> Config:
    key: str | None = env.get("GIRDER_API_KEY") or None
    key_file = config.girder.api_key_file
    if key is None and key_file is not None:
        try:
            key = key_file.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"girder.api_key_file: {key_file}: {exc.strerror or exc}") from None
        if not key:
            raise ConfigError(f"girder.api_key_file: {key_file} is empty")
    if key is None:
        return config
    girder = dataclasses.replace(config.girder, api_key=Secret(key))
    return Config(**{**{f.name: getattr(config, f.name) for f in fields(config)}, "girder": girder})
