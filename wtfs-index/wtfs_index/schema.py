"""The index's tables, written once for both backends.

A backend's dialect fills in the column types it spells differently (`Dialect.types`): an
identity key, a double, a 64-bit and a 16-bit integer. SQLite's affinity stores every integer in
up to 64 bits, so one text serves both, and a column added here is added on both at once.
"""

from __future__ import annotations

from collections.abc import Mapping

TABLES = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS owners (
    owner_id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    host TEXT NOT NULL,
    boot_id TEXT,
    pidns TEXT,
    pid {big},
    pid_start {big},
    mountpoint TEXT,
    session_id TEXT,
    session_origin TEXT,
    started {real} NOT NULL,
    heartbeat {real} NOT NULL,
    expires {real} NOT NULL,
    stats TEXT NOT NULL DEFAULT '{{}}'
);
CREATE TABLE IF NOT EXISTS entries (
    key TEXT PRIMARY KEY,
    source_key TEXT NOT NULL,
    version TEXT NOT NULL,
    content_hash TEXT,
    item_id TEXT NOT NULL,
    file_name TEXT NOT NULL UNIQUE,
    size {big} NOT NULL,
    checksum TEXT,
    source TEXT NOT NULL,
    path TEXT NOT NULL DEFAULT '',
    ranges TEXT NOT NULL DEFAULT '[]',
    gen {big} NOT NULL DEFAULT 0,
    present {big} NOT NULL DEFAULT 0,
    complete {small} NOT NULL DEFAULT 0,
    windowed {small} NOT NULL DEFAULT 0,
    superseded {small} NOT NULL DEFAULT 0,
    atime {real} NOT NULL,
    created {real} NOT NULL
);
-- The LRU order of eviction (the GC's walk skips empty entries by present without the table).
CREATE INDEX IF NOT EXISTS entries_atime_key_present ON entries(atime, key, present);
CREATE INDEX IF NOT EXISTS entries_source ON entries(source_key);
-- Older versions waiting for their last lock to go: few, looked for on every new entry.
CREATE INDEX IF NOT EXISTS entries_superseded ON entries(key) WHERE superseded = 1;
CREATE INDEX IF NOT EXISTS entries_hash ON entries(content_hash) WHERE content_hash IS NOT NULL;
CREATE TABLE IF NOT EXISTS locks (
    id {id},
    item_id TEXT NOT NULL,
    entry_key TEXT,
    session_id TEXT NOT NULL,
    owner_id TEXT NOT NULL,
    kind TEXT NOT NULL DEFAULT 'read',
    pin_start {big},
    pin_end {big},
    mountpoint TEXT,
    path TEXT,
    created {real} NOT NULL,
    expires {real}
);
CREATE INDEX IF NOT EXISTS locks_item ON locks(item_id);
CREATE INDEX IF NOT EXISTS locks_entry ON locks(entry_key);
CREATE INDEX IF NOT EXISTS locks_owner ON locks(owner_id);
CREATE INDEX IF NOT EXISTS locks_session ON locks(session_id);
CREATE TABLE IF NOT EXISTS claims (
    id {id},
    key TEXT NOT NULL,
    span_start {big} NOT NULL,
    span_end {big} NOT NULL,
    bytes {big} NOT NULL,
    owner_id TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS claims_key ON claims(key);
CREATE TABLE IF NOT EXISTS transfers (
    id {id},
    key TEXT NOT NULL,
    item_id TEXT NOT NULL,
    path TEXT NOT NULL,
    session_id TEXT NOT NULL,
    owner_id TEXT NOT NULL,
    source TEXT NOT NULL,
    status {small} NOT NULL,
    size {big} NOT NULL,
    start_offset {big} NOT NULL DEFAULT 0,
    transferred {big} NOT NULL DEFAULT 0,
    start_time {real},
    end_time {real},
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    created {real} NOT NULL,
    retry_requested {small} NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS transfers_status ON transfers(status);
-- Per-entry records of a wtfs before `eviction_batches` (or of one still running on a shared
-- store): read and pruned with the batches.
CREATE TABLE IF NOT EXISTS evictions (
    id {id},
    key TEXT NOT NULL,
    item_id TEXT NOT NULL,
    path TEXT NOT NULL,
    bytes {big} NOT NULL,
    time {real} NOT NULL,
    reason TEXT NOT NULL,
    by_owner TEXT NOT NULL
);
-- What one GC pass, window or deletion evicted, one row however many entries it took: their
-- records, most recently used first, in `evicted` (JSON [[key, item_id, path, bytes], ...]).
-- A row per entry made a pass over 47,000 entries spend 0.2 s of its 0.5 s inserting rows on
-- PostgreSQL (`wtfs_index.base.eviction_records` reads it).
CREATE TABLE IF NOT EXISTS eviction_batches (
    id {id},
    time {real} NOT NULL,
    reason TEXT NOT NULL,
    by_owner TEXT NOT NULL,
    entries {big} NOT NULL,
    bytes {big} NOT NULL,
    evicted TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS unlinking (
    id {id},
    owner_id TEXT NOT NULL,
    bytes {big} NOT NULL,
    files TEXT NOT NULL,
    punches TEXT NOT NULL DEFAULT '[]',
    time {real} NOT NULL
);
-- Spans of an unlinking batch not punched yet: nobody may fetch them again meanwhile.
CREATE TABLE IF NOT EXISTS punching (
    batch_id {big} NOT NULL,
    key TEXT NOT NULL,
    span_start {big} NOT NULL,
    span_end {big} NOT NULL
);
CREATE INDEX IF NOT EXISTS punching_key ON punching(key);
CREATE INDEX IF NOT EXISTS punching_batch ON punching(batch_id);
CREATE TABLE IF NOT EXISTS failures (
    id {id},
    time {real} NOT NULL,
    kind TEXT NOT NULL,
    key TEXT,
    cause TEXT NOT NULL,
    owner_id TEXT NOT NULL
);
-- `wtfs prefetch` runs: asked of a mount (mountpoint set) or run by the command itself.
CREATE TABLE IF NOT EXISTS prefetches (
    id {id},
    session_id TEXT NOT NULL,
    mountpoint TEXT,
    paths TEXT NOT NULL,
    owner_id TEXT,
    state TEXT NOT NULL,
    files_total {big} NOT NULL DEFAULT 0,
    files_done {big} NOT NULL DEFAULT 0,
    files_failed {big} NOT NULL DEFAULT 0,
    bytes_total {big} NOT NULL DEFAULT 0,
    bytes_done {big} NOT NULL DEFAULT 0,
    bytes_fetched {big} NOT NULL DEFAULT 0,
    current TEXT,
    error TEXT,
    cancel {small} NOT NULL DEFAULT 0,
    created {real} NOT NULL,
    started {real},
    updated {real} NOT NULL,
    ended {real}
);
CREATE INDEX IF NOT EXISTS prefetches_state ON prefetches(state);
CREATE TABLE IF NOT EXISTS prefetch_files (
    prefetch_id {big} NOT NULL,
    path TEXT NOT NULL,
    size {big} NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    fetched {big} NOT NULL DEFAULT 0,
    error TEXT,
    PRIMARY KEY (prefetch_id, path)
);
-- The store's present bytes (`PRESENT_TOTAL_ROW`): one row, kept by triggers on entries.
CREATE TABLE IF NOT EXISTS present_total (
    one {small} PRIMARY KEY CHECK (one = 1),
    bytes {big} NOT NULL
)
"""


def statements(types: Mapping[str, str]) -> list[str]:
    """The schema's statements (idempotent: `IF NOT EXISTS`), with `types` filled in."""
    return [s for s in TABLES.format(**types).split(";") if s.strip()]


#: The row of `present_total`, the store's present bytes, summed from the entries once, in the
#: transaction that makes the triggers that keep it (`present_total_triggers`); it returns a row
#: only when this transaction made the row. Every reservation asks for the usage, and a SUM over
#: the entries cost 3.7 ms per 4 MiB block on SQLite with 100,000 entries (a scan of the whole
#: LRU index). Triggers rather than the writers keep it, so that no write of `present` can miss
#: it, an older wtfs's on the same store included.
PRESENT_TOTAL_ROW = (
    "INSERT INTO present_total (one, bytes) SELECT 1, COALESCE(SUM(present), 0) FROM entries"
    " WHERE true ON CONFLICT (one) DO NOTHING RETURNING one"  # SQLite's upsert needs the WHERE
)
_SQLITE_TRIGGERS = [
    "CREATE TRIGGER IF NOT EXISTS present_insert AFTER INSERT ON entries WHEN NEW.present <> 0"
    " BEGIN UPDATE present_total SET bytes = bytes + NEW.present; END",
    "CREATE TRIGGER IF NOT EXISTS present_update AFTER UPDATE OF present ON entries"
    " WHEN NEW.present <> OLD.present"
    " BEGIN UPDATE present_total SET bytes = bytes + NEW.present - OLD.present; END",
    "CREATE TRIGGER IF NOT EXISTS present_delete AFTER DELETE ON entries WHEN OLD.present <> 0"
    " BEGIN UPDATE present_total SET bytes = bytes - OLD.present; END",
]
# On PostgreSQL every change of one row leaves a row version behind, and within a transaction
# the next change steps over all of them: one row changed once per entry by a GC pass deleting
# tens of thousands, or a bulk insert, took seconds. Insertions and deletions are counted once
# per statement, over its transition table; an update of `present` changes one entry or a few
# (a commit, a window's drop), and is counted per row, only when `present` moved: the opens
# that move an entry's atime call nothing.
_POSTGRES_TRIGGERS = [
    # Each branch names only its own transition table: plpgsql plans a statement when it
    # first runs it, and a deletion has no new_rows.
    """CREATE OR REPLACE FUNCTION wtfs_present_counted() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE delta BIGINT;
BEGIN
    IF TG_OP = 'INSERT' THEN
        delta := (SELECT COALESCE(SUM(present), 0) FROM new_rows);
    ELSE
        delta := -(SELECT COALESCE(SUM(present), 0) FROM old_rows);
    END IF;
    IF delta <> 0 THEN
        UPDATE present_total SET bytes = bytes + delta;
    END IF;
    RETURN NULL;
END $$""",
    """CREATE OR REPLACE FUNCTION wtfs_present_moved() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE present_total SET bytes = bytes + NEW.present - OLD.present;
    RETURN NULL;
END $$""",
    "CREATE TRIGGER present_insert AFTER INSERT ON entries REFERENCING NEW TABLE AS new_rows"
    " FOR EACH STATEMENT EXECUTE FUNCTION wtfs_present_counted()",
    "CREATE TRIGGER present_update AFTER UPDATE OF present ON entries FOR EACH ROW"
    " WHEN (NEW.present <> OLD.present) EXECUTE FUNCTION wtfs_present_moved()",
    "CREATE TRIGGER present_delete AFTER DELETE ON entries REFERENCING OLD TABLE AS old_rows"
    " FOR EACH STATEMENT EXECUTE FUNCTION wtfs_present_counted()",
]


def present_total_triggers(dialect: str) -> list[str]:
    """The statements that make the triggers keeping `present_total`, for a backend named
    `dialect`."""
    return _POSTGRES_TRIGGERS if dialect == "postgresql" else _SQLITE_TRIGGERS
