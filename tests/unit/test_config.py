"""Configuration: YAML + env overrides → one frozen, validated Config; errors name the key."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from wtfs import config as config_module
from wtfs.config import Config, Secret, gc_policy, load_config, parse_size
from wtfs.errors import ConfigError
from wtfs.providers.base import ProviderSettings, provider_settings
from wtfs.providers.retry import RetryPolicy, retry_policy


def write(tmp_path: Path, text: str, name: str = "wtfs.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> Config:
    return load_config(write(tmp_path, text), env=env or {})


# -- sizes ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("10GiB", 10 * 1024**3),
        ("10 GiB", 10 * 1024**3),
        ("10gib", 10 * 1024**3),
        ("10Gi", 10 * 1024**3),
        ("500MB", 500 * 1000**2),
        ("500M", 500 * 1000**2),
        ("4 MiB", 4 * 1024**2),
        ("1.5KiB", 1536),
        ("2TB", 2 * 1000**4),
        ("1048576", 1048576),
        ("7B", 7),
        (1048576, 1048576),
        (3.0, 3),
    ],
)
def test_sizes_accept_decimal_and_binary_units(text: object, expected: int) -> None:
    assert parse_size(text, "some_key") == expected


@pytest.mark.parametrize(
    "bad", ["ten GiB", "10 XB", "10 PiB", "GiB", "-5", "", "1,5GiB", True, None]
)
def test_an_unreadable_size_is_a_config_error_naming_the_key(bad: object) -> None:
    with pytest.raises(ConfigError) as info:
        parse_size(bad, "private_storage_capacity")
    assert str(info.value).startswith("private_storage_capacity: ")


# -- defaults and values --------------------------------------------------------------------------


def test_an_empty_file_gives_the_documented_defaults(tmp_path: Path) -> None:
    config = load(tmp_path, "")
    assert config.private_storage_capacity == 10 * 1024**3
    assert config.gc_collect_start_fraction == 0.9
    assert config.gc_collect_end_fraction == 0.5
    assert config.block_size == 4 * 1024**2
    marks = gc_policy(config)
    assert (marks.start_bytes, marks.end_bytes) == (int(10 * 1024**3 * 0.9), 10 * 1024**3 // 2)
    assert config.girder.api_key is None
    assert config.log_level == "INFO"


def test_the_loader_and_the_parts_take_their_defaults_from_the_dataclasses(
    tmp_path: Path,
) -> None:
    # Every default is stated once, on the config dataclasses: an empty file is Config(), and
    # the parts' own settings types default to what a default Config builds for them.
    config = load(tmp_path, "mount: {}\nnetwork: {}\ngirder: {}\n")
    assert config == Config()
    assert retry_policy(config) == RetryPolicy()
    assert provider_settings(config) == ProviderSettings()


def test_the_example_config_states_the_defaults_there_are() -> None:
    # config/wtfs.example.yaml documents every key with its default (but for girder's URL and
    # key file, which are examples): it must say what the dataclasses say.
    example = Path(__file__).resolve().parents[2] / "config" / "wtfs.example.yaml"
    config = load_config(example, env={"GIRDER_API_KEY": "not read from the example's file"})
    assert config.girder.bulk_listing == Config().girder.bulk_listing
    assert dataclasses.replace(config, girder=Config().girder) == Config()


def test_no_config_file_anywhere_gives_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(config_module, "DEFAULT_CONFIG_PATHS", (tmp_path / "absent.yaml",))
    config = load_config(None, env={})
    assert config.private_storage_capacity == 10 * 1024**3
    assert config.gc_run_interval == 60.0


def test_config_is_frozen(tmp_path: Path) -> None:
    config = load(tmp_path, "private_storage_capacity: 1GiB\n")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.private_storage_capacity = 5  # type: ignore[misc]


def test_yaml_values_are_read_and_converted(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """
girder:
  api_url: https://girder.example.org/api/v1/
private_storage_path: /var/cache/wtfs-test
private_storage_capacity: 2GiB
gc_run_interval: 5
gc_collect_start_fraction: 0.8
gc_collect_end_fraction: 0.3
block_size: 8MiB
metrics_port: 9100
log_level: debug
mount:
  allow_other: yes
  uid: 1000
  umask: 0o077
network:
  retry_attempts: 3
  read_deadline: 2.5
""",
    )
    assert config.girder.api_url == "https://girder.example.org/api/v1"
    assert config.private_storage_path == Path("/var/cache/wtfs-test")
    assert config.private_storage_capacity == 2 * 1024**3
    assert config.gc_run_interval == 5.0
    assert (config.gc_collect_start_fraction, config.gc_collect_end_fraction) == (0.8, 0.3)
    assert config.block_size == 8 * 1024**2
    assert config.metrics_port == 9100
    assert config.log_level == "DEBUG"
    assert config.mount.allow_other is True
    assert config.mount.uid == 1000
    assert config.mount.umask == 0o077
    assert config.network.retry_attempts == 3
    assert config.network.read_deadline == 2.5


def test_relative_paths_are_resolved_against_the_config_files_directory(tmp_path: Path) -> None:
    config = load(tmp_path, "private_storage_path: store\nlog_file: logs/wtfs.log\n")
    assert config.private_storage_path == tmp_path / "store"
    assert config.log_file == tmp_path / "logs" / "wtfs.log"


# -- env overrides --------------------------------------------------------------------------------


def test_env_overrides_win_over_the_file(tmp_path: Path) -> None:
    text = "private_storage_capacity: 1GiB\ngirder:\n  api_url: http://a/api\n"
    config = load(
        tmp_path,
        text,
        env={
            "WTFS_PRIVATE_STORAGE_CAPACITY": "3GiB",
            "WTFS_GIRDER_API_URL": "https://b.example/api/v1",
            "WTFS_GC_RUN_INTERVAL": "2.5",
            "WTFS_GC_COLLECT_START_FRACTION": "0.95",
            "WTFS_GC_COLLECT_END_FRACTION": "0.25",
            "WTFS_BLOCK_SIZE": "2MiB",
            "WTFS_METRICS_PORT": "9200",
            "WTFS_PRIVATE_STORAGE_PATH": "/tmp/wtfs-env-store",
            "WTFS_LOG_FILE": "/tmp/wtfs-env.log",
        },
    )
    assert config.private_storage_capacity == 3 * 1024**3
    assert config.girder.api_url == "https://b.example/api/v1"
    assert config.gc_run_interval == 2.5
    assert config.gc_collect_start_fraction == 0.95
    assert config.gc_collect_end_fraction == 0.25
    assert config.block_size == 2 * 1024**2
    assert config.metrics_port == 9200
    assert config.private_storage_path == Path("/tmp/wtfs-env-store")
    assert config.log_file == Path("/tmp/wtfs-env.log")


def test_every_documented_env_override_maps_to_a_real_key() -> None:
    known = {f.name for f in dataclasses.fields(Config)}
    for name, dotted in config_module.ENV_OVERRIDES.items():
        head, _, rest = dotted.partition(".")
        assert head in known, name
        if rest:
            section = getattr(Config(), head)
            assert rest in {f.name for f in dataclasses.fields(section)}, name


def test_an_empty_env_override_is_ignored(tmp_path: Path) -> None:
    config = load(
        tmp_path, "private_storage_capacity: 1GiB\n", env={"WTFS_PRIVATE_STORAGE_CAPACITY": ""}
    )
    assert config.private_storage_capacity == 1024**3


def test_a_bad_env_override_is_reported_under_its_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^gc_collect_end_fraction: "):
        load(tmp_path, "", env={"WTFS_GC_COLLECT_END_FRACTION": "half"})


# -- the API key ----------------------------------------------------------------------------------


def test_api_key_comes_from_the_environment(tmp_path: Path) -> None:
    config = load(tmp_path, "", env={"GIRDER_API_KEY": "s3cr3t-from-env"})
    assert config.girder.api_key == Secret("s3cr3t-from-env")
    assert config.girder.api_key is not None
    assert config.girder.api_key.reveal() == "s3cr3t-from-env"


def test_api_key_file_is_read_and_stripped(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("  s3cr3t-from-file\n")
    config = load(tmp_path, "girder:\n  api_key_file: key\n")
    assert config.girder.api_key_file == tmp_path / "key"
    assert config.girder.api_key is not None
    assert config.girder.api_key.reveal() == "s3cr3t-from-file"


def test_the_environment_key_wins_over_the_key_file(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("from-file\n")
    config = load(tmp_path, "girder:\n  api_key_file: key\n", env={"GIRDER_API_KEY": "from-env"})
    assert config.girder.api_key is not None
    assert config.girder.api_key.reveal() == "from-env"


def test_a_missing_key_file_is_an_error_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"^girder\.api_key_file: "):
        load(tmp_path, "girder:\n  api_key_file: nowhere\n")


def test_an_empty_key_file_is_an_error_naming_the_key(tmp_path: Path) -> None:
    (tmp_path / "key").write_text("\n\n")
    with pytest.raises(ConfigError, match=r"^girder\.api_key_file: .* is empty"):
        load(tmp_path, "girder:\n  api_key_file: key\n")


def test_the_api_key_never_shows_in_repr_or_str(tmp_path: Path) -> None:
    value = "hunter2-very-secret"
    config = load(tmp_path, "", env={"GIRDER_API_KEY": value})
    assert config.girder.api_key is not None
    for text in (
        repr(config),
        str(config),
        repr(config.girder),
        str(config.girder),
        repr(config.girder.api_key),
        str(config.girder.api_key),
        f"{config.girder.api_key}",
    ):
        assert value not in text
    assert "***" in repr(config.girder.api_key)


def test_secrets_compare_by_value() -> None:
    assert Secret("a") == Secret("a")
    assert Secret("a") != Secret("b")
    assert Secret("a") != "a"


# -- every bad value is a ConfigError whose message starts with the key --------------------------


BAD_VALUES = [
    ("private_storage_capacity: lots\n", "private_storage_capacity"),
    ("private_storage_capacity: 0\n", "private_storage_capacity"),
    ("private_storage_capacity: -1\n", "private_storage_capacity"),
    ("private_storage_capacity: .inf\n", "private_storage_capacity"),
    ("block_size: 512KiB\n", "block_size"),
    ("block_size: 64MiB\n", "block_size"),
    ("block_size: big\n", "block_size"),
    ("gc_collect_start_fraction: 0\n", "gc_collect_start_fraction"),
    ("gc_collect_start_fraction: 1.5\n", "gc_collect_start_fraction"),
    ("gc_collect_start_fraction: lots\n", "gc_collect_start_fraction"),
    ("gc_collect_end_fraction: -0.1\n", "gc_collect_end_fraction"),
    ("gc_collect_end_fraction: .nan\n", "gc_collect_end_fraction"),
    ("gc_collect_start_fraction: 0.4\ngc_collect_end_fraction: 0.6\n", "gc_collect_start_fraction"),
    ("gc_run_interval: 0\n", "gc_run_interval"),
    ("gc_run_interval: soon\n", "gc_run_interval"),
    ("gc_run_interval: true\n", "gc_run_interval"),
    ("gc_run_interval: .nan\n", "gc_run_interval"),
    ("readahead_blocks: 2.5\n", "readahead_blocks"),
    ("readahead_blocks: -1\n", "readahead_blocks"),
    ("readahead_blocks: .inf\n", "readahead_blocks"),
    ("readahead_blocks: .nan\n", "readahead_blocks"),
    ("max_concurrent_transfers: 0\n", "max_concurrent_transfers"),
    ("transfer_history_max_count: 0\n", "transfer_history_max_count"),
    ("transfer_history_max_age_days: -1\n", "transfer_history_max_age_days"),
    ("metrics_port: 70000\n", "metrics_port"),
    ("metrics_port: -1\n", "metrics_port"),
    ("metrics_port: http\n", "metrics_port"),
    ("log_level: LOUD\n", "log_level"),
    ("private_storage_path: ''\n", "private_storage_path"),
    ("private_storage_path: 5\n", "private_storage_path"),
    ("no_such_key: 1\n", "no_such_key"),
    ("girder: 5\n", "girder"),
    ("girder:\n  api_url: ftp://example.org\n", "girder.api_url"),
    ("girder:\n  api_url: 5\n", "girder.api_url"),
    ("girder:\n  password: x\n", "girder.password"),
    ("mount:\n  allow_other: maybe\n", "mount.allow_other"),
    ("mount:\n  umask: 0o1777\n", "mount.umask"),
    ("mount:\n  uid: -1\n", "mount.uid"),
    ("mount:\n  gid: root\n", "mount.gid"),
    ("mount:\n  nope: 1\n", "mount.nope"),
    ("mount:\n  revalidate_after: -1\n", "mount.revalidate_after"),
    ("mount:\n  revalidate_after: soon\n", "mount.revalidate_after"),
    ("disk_reserve: lots\n", "disk_reserve"),
    ("mount: [1, 2]\n", "mount"),
    ("network:\n  connect_timeout: 0\n", "network.connect_timeout"),
    ("network:\n  retry_attempts: 0\n", "network.retry_attempts"),
    ("network:\n  read_deadline: .nan\n", "network.read_deadline"),
    ("network:\n  nope: 1\n", "network.nope"),
    ("providers:\n  allowed_local_roots: /data\n", "providers.allowed_local_roots"),
    ("providers:\n  http_headers: {example.org: 5}\n", "providers.http_headers"),
    ("providers:\n  sftp: 5\n", "providers.sftp"),
]


@pytest.mark.parametrize(
    ("text", "key"), BAD_VALUES, ids=[" ".join(t.split()) for t, _ in BAD_VALUES]
)
def test_a_bad_value_is_a_config_error_starting_with_its_key(
    tmp_path: Path, text: str, key: str
) -> None:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text)
    assert str(info.value).startswith(f"{key}: "), str(info.value)


def test_a_config_error_carries_einval() -> None:
    import errno

    assert ConfigError("x").errno == errno.EINVAL


# -- the file itself ------------------------------------------------------------------------------


def test_a_missing_config_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file"):
        load_config(tmp_path / "absent.yaml", env={})


def test_malformed_yaml_is_a_config_error_with_a_line_number(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config file .* line 2"):
        load(tmp_path, "block_size: 4MiB\nmount: a: b\nlog_level: INFO\n")


def test_a_yaml_list_instead_of_a_mapping_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="expected a mapping"):
        load(tmp_path, "- a\n- b\n")


def test_a_config_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "wtfs.yaml"
    path.write_bytes(b"block_size: \xff\xfe4MiB\n")
    with pytest.raises(ConfigError, match="config file"):
        load_config(path, env={})


def test_wtfs_config_env_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "private_storage_capacity: 5MiB\n", name="elsewhere.yaml")
    config = load_config(None, env={"WTFS_CONFIG": str(path)})
    assert config.private_storage_capacity == 5 * 1024**2


def test_revalidation_is_off_unless_asked_and_disk_reserve_is_auto_unless_given(
    tmp_path: Path,
) -> None:
    assert load(tmp_path, "{}\n").mount.revalidate_after is None
    assert load(tmp_path, "mount:\n  revalidate_after: 0\n").mount.revalidate_after == 0
    assert load(tmp_path, "disk_reserve: auto\n").disk_reserve is None
    assert load(tmp_path, "disk_reserve: 64MiB\n").disk_reserve == 64 * 1024**2
