"""Configuration: YAML (+ a few env overrides) loaded once into frozen dataclasses.

Every problem is a `ConfigError` whose message names the key, so the CLI can print one line and
exit 2. Secrets are never read from the command line: the API key comes from `GIRDER_API_KEY`
or from `girder.api_key_file`, and is wrapped in `Secret` so it cannot leak through a repr.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from wtfs.errors import ConfigError

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
    log_level: str = "INFO"
    mount: MountConfig = field(default_factory=MountConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    providers: ProvidersConfig = field(default_factory=ProvidersConfig)

    @property
    def gc_start_bytes(self) -> int:
        return int(self.private_storage_capacity * self.gc_collect_start_fraction)

    @property
    def gc_end_bytes(self) -> int:
        return int(self.private_storage_capacity * self.gc_collect_end_fraction)


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


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"config file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path}: not UTF-8 text") from None
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
    default: float,
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


def _path(value: object, key: str, base: Path) -> Path:
    if not isinstance(value, str | Path) or str(value) == "":
        raise ConfigError(f"{key}: expected a path, got {value!r}")
    path = Path(value).expanduser()
    return path if path.is_absolute() else (base / path)


def _build(raw: Mapping[str, Any], base: Path) -> Config:
    _check_keys(raw, Config, "")
    girder_raw = _section(raw, "girder")
    _check_keys(girder_raw, GirderConfig, "girder.")
    api_url = girder_raw.get("api_url")
    if api_url is not None and not (
        isinstance(api_url, str) and api_url.startswith(("http://", "https://"))
    ):
        raise ConfigError(f"girder.api_url: expected an http(s) URL, got {api_url!r}")
    key_file = girder_raw.get("api_key_file")
    girder = GirderConfig(
        api_url=api_url.rstrip("/") if isinstance(api_url, str) else None,
        api_key_file=_path(key_file, "girder.api_key_file", base) if key_file else None,
        bulk_listing=_bool(girder_raw, "bulk_listing", GirderConfig.bulk_listing, "girder."),
    )

    capacity = parse_size(
        raw.get("private_storage_capacity", Config.private_storage_capacity),
        "private_storage_capacity",
    )
    if capacity <= 0:
        raise ConfigError(f"private_storage_capacity: must be positive, got {capacity}")
    block_size = parse_size(raw.get("block_size", Config.block_size), "block_size")
    if not 1024**2 <= block_size <= 16 * 1024**2:
        raise ConfigError(f"block_size: must be between 1MiB and 16MiB, got {block_size}")
    start = _number(raw, "gc_collect_start_fraction", Config.gc_collect_start_fraction)
    end = _number(raw, "gc_collect_end_fraction", Config.gc_collect_end_fraction)
    for key, frac in (("gc_collect_start_fraction", start), ("gc_collect_end_fraction", end)):
        if not 0 < frac <= 1:
            raise ConfigError(f"{key}: must be in (0, 1], got {frac}")
    if start < end:
        raise ConfigError(
            "gc_collect_start_fraction: must not be below gc_collect_end_fraction "
            f"({start} < {end})"
        )
    metrics_port = raw.get("metrics_port")
    if metrics_port is not None:
        metrics_port = _number(raw, "metrics_port", 0, integer=True, minimum=0)
        if metrics_port > 65535:
            raise ConfigError(f"metrics_port: must be a TCP port, got {metrics_port}")
    log_level = str(raw.get("log_level", "INFO")).upper()
    if log_level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"log_level: expected DEBUG, INFO, WARNING or ERROR, got {log_level!r}")

    return Config(
        girder=girder,
        private_storage_path=_path(
            raw.get("private_storage_path", "~/.cache/wtfs"),
            "private_storage_path",
            base,
        ),
        private_storage_capacity=capacity,
        gc_run_interval=_number(raw, "gc_run_interval", Config.gc_run_interval, minimum=0.05),
        gc_collect_start_fraction=start,
        gc_collect_end_fraction=end,
        block_size=block_size,
        readahead_blocks=_number(raw, "readahead_blocks", 8, integer=True, minimum=0),
        max_concurrent_transfers=_number(
            raw, "max_concurrent_transfers", 8, integer=True, minimum=1
        ),
        transfer_history_max_count=_number(
            raw, "transfer_history_max_count", 10_000, integer=True, minimum=1
        ),
        transfer_history_max_age_days=_number(raw, "transfer_history_max_age_days", 7.0, minimum=0),
        metrics_port=metrics_port,
        log_file=_path(raw["log_file"], "log_file", base) if raw.get("log_file") else None,
        log_level=log_level,
        mount=_build_mount(_section(raw, "mount")),
        network=_build_network(_section(raw, "network")),
        providers=_build_providers(_section(raw, "providers"), base),
    )


def _build_mount(raw: Mapping[str, Any]) -> MountConfig:
    _check_keys(raw, MountConfig, "mount.")
    p = "mount."
    uid = (
        _number(raw, "uid", -1, p, integer=True, minimum=0) if raw.get("uid") is not None else None
    )
    gid = (
        _number(raw, "gid", -1, p, integer=True, minimum=0) if raw.get("gid") is not None else None
    )
    umask = _number(raw, "umask", 0o022, p, integer=True, minimum=0)
    if umask > 0o777:
        raise ConfigError(
            f"mount.umask: expected an octal mode such as 0o022, got {raw['umask']!r}"
        )
    return MountConfig(
        allow_other=_bool(raw, "allow_other", False, p),
        uid=uid,
        gid=gid,
        umask=umask,
        entry_timeout=_number(raw, "entry_timeout", 300.0, p, minimum=0),
        attr_timeout=_number(raw, "attr_timeout", 300.0, p, minimum=0),
        read_ahead_kb=_number(raw, "read_ahead_kb", 1024, p, integer=True, minimum=0),
    )


def _build_network(raw: Mapping[str, Any]) -> NetworkConfig:
    _check_keys(raw, NetworkConfig, "network.")
    p = "network."
    return NetworkConfig(
        connect_timeout=_number(raw, "connect_timeout", 10.0, p, minimum=0.01),
        read_timeout=_number(raw, "read_timeout", 30.0, p, minimum=0.01),
        retry_attempts=_number(raw, "retry_attempts", 6, p, integer=True, minimum=1),
        retry_base_delay=_number(raw, "retry_base_delay", 0.2, p, minimum=0),
        retry_max_delay=_number(raw, "retry_max_delay", 10.0, p, minimum=0),
        read_deadline=_number(raw, "read_deadline", 120.0, p, minimum=0.1),
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
