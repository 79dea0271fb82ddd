//! The embedded catalog: one SQLite database in WAL mode that every agent on the machine shares, with change wake-ups over unix datagram sockets.
//!
//! Why SQLite: it is the best-kept embedded store that several processes
//! can write at once (WAL mode, file locks, busy timeouts), and every
//! transaction is atomic and survives `kill -9` at any instant. Entries
//! carry an expiry refreshed by their agent's keep-alive; readers never see
//! an expired entry, and any agent deletes expired ones. An entry bound to
//! an election seat is visible only while that seat row is live, so it
//! ends in the same instant as the seat. Expiries are CLOCK_BOOTTIME
//! milliseconds (a wall-clock step cannot move them); rows from another
//! boot are purged on open. The directory is 0700 and the database 0600;
//! a directory others can write to is refused.
//!
//! Change notification, built so that an idle machine costs the same
//! whatever the number of agents: every *visible* change (an entry added,
//! removed or changed, a key, a lock, a seat, an expiry) bumps a revision
//! in the same transaction; a keep-alive (refreshing expiries and the
//! displayed heartbeat) does not. After a commit that bumped it, the
//! writer sends one byte to each watcher socket in `<dir>/watchers/`
//! ([`wake`]); each open catalog binds one there (0600, a random name,
//! removed on drop; a dead agent's is removed by the next writer that
//! finds nobody listening). A woken watcher reads the revision and its
//! `changes()` moves only if the revision did. Every [`POLL`] a watcher
//! also reads the revision by itself, covering a lost wake-up. The
//! earlier design (inotify on the directory) woke every agent on every
//! write, heartbeats included (N agents: N² wake-ups), and needed one
//! inotify instance per agent, so the 128th agent of a user failed with
//! EMFILE (`fs.inotify.max_user_instances`).
//!
//! Expiry: a watcher sleeps until the earliest expiry it knows of (or the
//! poll), and on waking checks with one read whether anything has
//! expired; only then does it write (delete, bump, wake everyone). A full
//! sweep (a write) runs once per [`FULL_SWEEP_MS`] across the machine: the
//! `swept` row says when the last one ran, so N agents do not all sweep.

mod wake;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use autopilot_catalog::{
    Candidate, Catalog, CatalogError, Instance, Leader, Registration, ServiceSummary, Status,
    now_ms, rfc3339_ms,
};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::watch;

/// The tables as this version writes them (schema 2). A schema-1 catalog
/// is migrated by `migrate`; `CREATE ... IF NOT EXISTS` leaves it alone.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT OR IGNORE INTO meta (key, value) VALUES ('rev', 0), ('schema', 2);
CREATE TABLE IF NOT EXISTS instances (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    address TEXT NOT NULL,
    port INTEGER NOT NULL,
    tags TEXT NOT NULL,
    status TEXT NOT NULL,
    ttl_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL,
    last_heartbeat_ms INTEGER NOT NULL,
    critical_since_ms INTEGER,
    deregister_after_ms INTEGER,
    owner TEXT NOT NULL,
    seat_election TEXT,
    seat_term INTEGER
);
CREATE INDEX IF NOT EXISTS instances_by_name ON instances (name);
CREATE INDEX IF NOT EXISTS instances_by_owner ON instances (owner);
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS locks (name TEXT PRIMARY KEY, owner TEXT NOT NULL, expires_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS elections (
    name TEXT PRIMARY KEY, owner TEXT NOT NULL, id TEXT NOT NULL, address TEXT NOT NULL,
    port INTEGER NOT NULL, term INTEGER NOT NULL, expires_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS election_terms (name TEXT PRIMARY KEY, term INTEGER NOT NULL);
";

/// The schema version this code writes.
const SCHEMA_VERSION: i64 = 2;

/// An entry is visible while unexpired and, when bound to a seat, while
/// that seat row exists with the same owner and term and is unexpired.
/// Evaluated with the same `now` as the seat's own expiry, so the entry
/// and the seat end in the same instant. `?N` is the time parameter.
macro_rules! live {
    ($now:literal) => {
        concat!(
            "(instances.expires_ms > ",
            $now,
            " AND (instances.seat_election IS NULL OR EXISTS (SELECT 1 FROM elections e
               WHERE e.name = instances.seat_election AND e.owner = instances.owner
                 AND e.term = instances.seat_term AND e.expires_ms > ",
            $now,
            ")))"
        )
    };
}

/// How long a lock outlives its holder's last keep-alive.
const LOCK_TTL_MS: i64 = 3_000;

/// The longest a `lock` waiter sleeps between attempts, in case a
/// wake-up is ever missed.
const SAFETY_RECHECK: Duration = Duration::from_secs(5);

/// How often a watcher reads the revision without being woken: the bound
/// on a change's delay when its wake-up was lost. One indexed read.
pub const POLL: Duration = Duration::from_secs(2);

/// How often, across all the agents on the machine, a full sweep runs
/// even though no known expiry is due (boot-clock milliseconds).
pub const FULL_SWEEP_MS: i64 = 30_000;

/// The back-off between failed sweeps grows from the first to the second.
const BACKOFF_MIN: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

pub struct LocalCatalog {
    url: String,
    conn: Arc<Mutex<Connection>>,
    owner: String,
    changes: watch::Receiver<u64>,
    notifier: tokio::task::JoinHandle<()>,
    /// Wakes every watcher after a commit that bumped the revision.
    waker: Arc<wake::Waker>,
    /// This catalog's watcher socket file, removed on drop.
    _socket: Option<wake::SocketFile>,
    /// How many times the notifier has read the catalog (its idle cost).
    checks: Arc<std::sync::atomic::AtomicU64>,
    /// Counts this open in [`OPEN_DBS`] while it lives.
    _counted: OpenDb,
}

impl Drop for LocalCatalog {
    fn drop(&mut self) {
        self.notifier.abort();
    }
}

/// Milliseconds on CLOCK_BOOTTIME, the time base of every expiry.
///
/// Shared by all processes on the machine like the wall clock, but a
/// wall-clock step (NTP, an operator, a faked clock) cannot move it, so a
/// seat or entry can never expire early or late because a clock jumped.
/// It counts from boot, so rows are only comparable within one boot: the
/// boot id in `meta` says which boot the rows belong to.
fn clock_ms() -> i64 {
    match nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME) {
        Ok(t) => t
            .tv_sec()
            .saturating_mul(1000)
            .saturating_add(t.tv_nsec() / 1_000_000),
        // Linux has had CLOCK_BOOTTIME since 2.6.39; without it nothing
        // could expire correctly, and 0 makes every row look expired
        // (entries vanish) rather than immortal.
        Err(_) => 0,
    }
}

const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";

fn boot_id() -> std::io::Result<String> {
    Ok(std::fs::read_to_string(BOOT_ID)?.trim().to_string())
}

/// Creates the catalog directory 0700 if it is missing, and refuses one
/// that another user could write to or that belongs to someone else: its
/// database holds key/value data and decides who is leader.
fn prepare_dir(dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| format!("cannot create the catalog directory {}: {e}", dir.display()))?;
        // The umask may have taken bits we asked for; set exactly 0700.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(|e| {
            format!(
                "cannot set the mode of the catalog directory {}: {e}",
                dir.display()
            )
        })?;
    }
    let meta = std::fs::metadata(dir)
        .map_err(|e| format!("cannot use the catalog directory {}: {e}", dir.display()))?;
    if !meta.is_dir() {
        return Err(format!(
            "the catalog path {} is not a directory",
            dir.display()
        ));
    }
    let mode = meta.mode() & 0o7777;
    let me = nix::unistd::geteuid().as_raw();
    if mode & 0o022 != 0 || (meta.uid() != me && meta.uid() != 0) {
        return Err(format!(
            "refusing the catalog directory {}: mode {mode:04o}, owner uid {}; it must be owned by uid {me} or root and not writable by group or others (chmod go-w)",
            dir.display(),
            meta.uid()
        ));
    }
    Ok(())
}

/// Creates `file` 0600 (or tightens an existing one of ours to 0600)
/// before SQLite opens it; SQLite gives the -wal and -shm files the
/// database's mode. Never follows a symlink at the database path.
fn prepare_file(file: &Path, create: bool) -> Result<(), String> {
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true)
        .write(true)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW | nix::libc::O_CLOEXEC);
    if create {
        opts.create(true);
    }
    let f = match opts.open(file) {
        Ok(f) => f,
        Err(e) if !create && e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("cannot open {}: {e}", file.display())),
    };
    let meta = f
        .metadata()
        .map_err(|e| format!("cannot open {}: {e}", file.display()))?;
    if !meta.is_file() {
        return Err(format!("{} is not a regular file", file.display()));
    }
    if meta.uid() == nix::unistd::geteuid().as_raw() && meta.mode() & 0o7777 != 0o600 {
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(|e| format!("cannot set the mode of {}: {e}", file.display()))?;
    }
    Ok(())
}

/// Why opening failed: a store error (retried when busy) or a refusal.
enum Setup {
    Sql(rusqlite::Error),
    Refused(String),
}

impl From<rusqlite::Error> for Setup {
    fn from(e: rusqlite::Error) -> Setup {
        Setup::Sql(e)
    }
}

/// Brings the schema to `SCHEMA_VERSION` and purges rows whose times are
/// from another boot (or from schema 1's wall-clock base): their agents
/// are dead, and their expiries mean nothing on this boot's clock.
/// Election terms and key/value data are kept.
fn migrate(conn: &Connection, dir: &Path, boot: &str) -> Result<(), Setup> {
    // IMMEDIATE: the write lock up front, so two agents migrating at once
    // serialise instead of both altering the table.
    let tx = rusqlite::Transaction::new_unchecked(conn, rusqlite::TransactionBehavior::Immediate)?;
    tx.execute_batch(SCHEMA)?;
    let version: i64 = tx.query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
        r.get(0)
    })?;
    if version > SCHEMA_VERSION {
        return Err(Setup::Refused(format!(
            "{} has catalog schema {version}, newer than this agent's {SCHEMA_VERSION}",
            dir.join("catalog.db").display()
        )));
    }
    if version < 2 {
        tx.execute_batch(
            "ALTER TABLE instances ADD COLUMN seat_election TEXT;
             ALTER TABLE instances ADD COLUMN seat_term INTEGER;
             UPDATE meta SET value = 2 WHERE key = 'schema';",
        )?;
    }
    let stored: Option<rusqlite::types::Value> = tx
        .query_row("SELECT value FROM meta WHERE key = 'boot'", [], |r| {
            r.get(0)
        })
        .optional()?;
    if stored != Some(rusqlite::types::Value::Text(boot.to_string())) {
        let purged = tx.execute("DELETE FROM instances", [])?
            + tx.execute("DELETE FROM elections", [])?
            + tx.execute("DELETE FROM locks", [])?;
        tx.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('boot', ?1)",
            params![boot],
        )?;
        bump(&tx)?;
        if purged > 0 {
            tracing::info!(
                "catalog {}: removed {purged} entries, seats and locks from a previous boot or clock base",
                dir.display()
            );
        }
    }
    tx.commit()?;
    Ok(())
}

/// The catalog directories (device, inode) this process has databases open
/// in, with how many. Closing *any* descriptor of a file drops every POSIX
/// lock this process holds on it, SQLite's included: `prepare_file` on a
/// database another connection of this process has open would let another
/// process checkpoint and delete the WAL under that connection, which then
/// reads a stale snapshot for ever. So files are prepared only by the
/// first open in a process (SQLite itself shares locks between its own
/// connections to one file).
static OPEN_DBS: Mutex<BTreeMap<(u64, u64), usize>> = Mutex::new(BTreeMap::new());

/// One open database counted in [`OPEN_DBS`]; dropping it uncounts it.
struct OpenDb((u64, u64));

impl Drop for OpenDb {
    fn drop(&mut self) {
        let mut open = lock(&OPEN_DBS);
        if let Some(n) = open.get_mut(&self.0) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.0);
            }
        }
    }
}

fn open_db(dir: &Path, url: &str) -> Result<(Connection, OpenDb), CatalogError> {
    use std::os::unix::fs::MetadataExt;
    let invalid = |message: String| CatalogError::Invalid {
        url: url.to_string(),
        message,
    };
    prepare_dir(dir).map_err(invalid)?;
    let file = dir.join("catalog.db");
    let key = std::fs::metadata(dir)
        .map(|m| (m.dev(), m.ino()))
        .map_err(|e| {
            invalid(format!(
                "cannot use the catalog directory {}: {e}",
                dir.display()
            ))
        })?;
    let (conn, counted) = {
        let mut open = lock(&OPEN_DBS);
        let n = open.entry(key).or_insert(0);
        if *n == 0 {
            prepare_file(&file, true).map_err(invalid)?;
            for side in ["catalog.db-wal", "catalog.db-shm"] {
                prepare_file(&dir.join(side), false).map_err(invalid)?;
            }
        }
        let conn = Connection::open(&file)
            .map_err(|e| invalid(format!("cannot open {}: {e}", file.display())))?;
        *n = n.saturating_add(1);
        (conn, OpenDb(key))
    };
    let boot = boot_id().map_err(|e| invalid(format!("cannot read the boot id {BOOT_ID}: {e}")))?;
    let setup = || -> Result<(), Setup> {
        conn.busy_timeout(Duration::from_secs(5))?;
        let mode: String = conn.pragma_query_value(None, "journal_mode", |r| r.get(0))?;
        if !mode.eq_ignore_ascii_case("wal") {
            conn.pragma_update(None, "journal_mode", "WAL")?;
        }
        // WAL + NORMAL: every commit is atomic and survives the process
        // being killed at any instant; an OS crash may lose the last commits.
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // Also proves the file is writable now, not at the first registration.
        migrate(&conn, dir, &boot)
    };
    // Agents starting at the same instant race to create the schema and
    // switch to WAL, which needs a lock the busy handler does not always
    // wait for: retry those, fail at once on anything else.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match setup() {
            Ok(()) => break,
            Err(Setup::Sql(rusqlite::Error::SqliteFailure(e, _)))
                if matches!(
                    e.code,
                    rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked
                ) && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(Setup::Sql(e)) => {
                return Err(invalid(format!("cannot use {}: {e}", file.display())));
            }
            Err(Setup::Refused(m)) => return Err(invalid(m)),
        }
    }
    Ok((conn, counted))
}

impl LocalCatalog {
    /// Opens (creating if needed) the catalog in `dir` for one agent
    /// session named `owner`. Must be called inside a tokio runtime.
    pub fn open(dir: &Path, owner: &str) -> Result<LocalCatalog, CatalogError> {
        let url = format!("local://{}", dir.display());
        let (conn, counted) = open_db(dir, &url)?;
        let conn = Arc::new(Mutex::new(conn));
        let waker = Arc::new(wake::Waker::new(dir));
        // A migration that purged another boot's rows bumped the revision.
        if BUMPED.replace(false) {
            waker.wake_all();
        }
        // No socket (a path too long for one, no descriptors left): this
        // catalog still works, and learns of changes by its poll.
        let (listener, socket) = match wake::bind(dir) {
            Ok((l, f)) => (Some(l), Some(f)),
            Err(e) => {
                let hint = match e.raw_os_error() {
                    Some(nix::libc::EMFILE | nix::libc::ENFILE) => {
                        " (out of file descriptors: raise `ulimit -n` or LimitNOFILE=)"
                    }
                    _ if e.kind() == std::io::ErrorKind::InvalidInput => {
                        " (a unix socket path holds at most 107 bytes: use a shorter catalog directory)"
                    }
                    _ => "",
                };
                tracing::warn!(
                    "catalog {url}: cannot bind a change socket in {}: {e}{hint}; reading changes every {}s instead",
                    dir.join(wake::WATCHERS).display(),
                    POLL.as_secs()
                );
                (None, None)
            }
        };
        let rev0 = {
            let c = lock(&conn);
            read_rev(&c).unwrap_or(0)
        };
        let (tx, rx) = watch::channel(rev0);
        let checks = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let notifier = tokio::spawn(notify_loop(
            conn.clone(),
            listener,
            waker.clone(),
            tx,
            dir.to_path_buf(),
            checks.clone(),
        ));
        Ok(LocalCatalog {
            url,
            conn,
            owner: owner.to_string(),
            changes: rx,
            notifier,
            waker,
            _socket: socket,
            checks,
            _counted: counted,
        })
    }

    /// Opens the catalog in `dir` only if it already exists, for readers
    /// that must not create one (a mistyped path is an error, not an empty
    /// catalog). A missing catalog is `Unavailable`.
    pub fn open_existing(dir: &Path, owner: &str) -> Result<LocalCatalog, CatalogError> {
        // An existing directory is checked first (it creates nothing): an
        // unsafe one is refused with the reason, as `open` would.
        if dir.exists() {
            prepare_dir(dir).map_err(|message| CatalogError::Invalid {
                url: format!("local://{}", dir.display()),
                message,
            })?;
        }
        let file = dir.join("catalog.db");
        match std::fs::symlink_metadata(&file) {
            Ok(m) if m.is_file() => Self::open(dir, owner),
            Ok(_) => Err(CatalogError::Invalid {
                url: format!("local://{}", dir.display()),
                message: format!("{} is not a regular file", file.display()),
            }),
            Err(e) => Err(CatalogError::Unavailable {
                url: format!("local://{}", dir.display()),
                message: format!(
                    "no catalog at {} (wrong path, or no agent has used it yet): {e}",
                    file.display()
                ),
            }),
        }
    }

    /// How many times this catalog's notifier has read the catalog since
    /// it was opened: its wake-ups (a visible change, a due expiry, the
    /// poll). A measure of its idle cost; heartbeats never add to it.
    pub fn wakeups(&self) -> u64 {
        self.checks.load(std::sync::atomic::Ordering::Relaxed)
    }

    async fn with<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, CatalogError> {
        let (conn, waker) = (self.conn.clone(), self.waker.clone());
        let url = self.url.clone();
        tokio::task::spawn_blocking(move || run_and_wake(&conn, &waker, f))
            .await
            .map_err(|e| CatalogError::Unavailable {
                url: url.clone(),
                message: format!("catalog task failed: {e}"),
            })?
            .map_err(|e| CatalogError::Unavailable {
                url,
                message: e.to_string(),
            })
    }
}

fn lock<T>(c: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    c.lock().unwrap_or_else(|e| e.into_inner())
}

fn read_rev(c: &Connection) -> rusqlite::Result<u64> {
    c.query_row("SELECT value FROM meta WHERE key = 'rev'", [], |r| {
        r.get::<_, i64>(0)
    })
    .map(|v| v as u64)
}

thread_local! {
    /// Set by [`bump`]: the statement on this thread bumped the revision,
    /// so once its transaction is over the watchers are woken.
    static BUMPED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Marks a visible change: the revision moves in the caller's transaction,
/// and the watchers are woken after it ([`run_and_wake`]). Keep-alives
/// never call it.
fn bump(tx: &rusqlite::Transaction) -> rusqlite::Result<()> {
    tx.execute("UPDATE meta SET value = value + 1 WHERE key = 'rev'", [])?;
    BUMPED.set(true);
    Ok(())
}

/// Runs `f` on the connection, then, if it succeeded and bumped the
/// revision, wakes every watcher (with the connection already released).
/// A bump whose transaction rolled back wakes them for nothing: they read
/// an unchanged revision and stay quiet.
fn run_and_wake<T>(
    conn: &Mutex<Connection>,
    waker: &wake::Waker,
    f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
) -> rusqlite::Result<T> {
    let (result, bumped) = {
        let mut c = lock(conn);
        BUMPED.set(false);
        let r = f(&mut c);
        (r, BUMPED.replace(false))
    };
    if bumped && result.is_ok() {
        waker.wake_all();
    }
    result
}

/// The earliest instant (boot-clock ms) something expires: an entry, a
/// seat, a lock, or a critical entry's deregistration.
fn next_expiry(c: &Connection) -> rusqlite::Result<Option<i64>> {
    c.query_row(
        "SELECT MIN(t) FROM (
            SELECT MIN(expires_ms) AS t FROM instances
            UNION ALL
            SELECT MIN(expires_ms) FROM elections
            UNION ALL
            SELECT MIN(expires_ms) FROM locks
            UNION ALL
            SELECT MIN(critical_since_ms + deregister_after_ms) FROM instances
              WHERE critical_since_ms IS NOT NULL AND deregister_after_ms IS NOT NULL)",
        [],
        |r| r.get(0),
    )
}

/// A watcher's turn, one read in the common case: the revision and the
/// next expiry. It writes (sweeps) only when something has expired, or
/// when no agent on the machine has swept for [`FULL_SWEEP_MS`].
fn check(c: &mut Connection) -> rusqlite::Result<(u64, Option<u64>)> {
    let now = clock_ms();
    let (rev, next, swept) = {
        let tx = c.transaction()?;
        let rev = read_rev(&tx)?;
        let next = next_expiry(&tx)?;
        let swept = swept_at(&tx, now)?;
        tx.commit()?;
        (rev, next, swept)
    };
    let due = next.is_some_and(|t| t <= now) || full_sweep_due(swept, now);
    if due {
        return sweep(c);
    }
    Ok((rev, next.map(|t| t.max(0) as u64)))
}

/// When the last full sweep ran on this boot's clock; text, or a value
/// from another boot's clock, reads as never.
fn swept_at(c: &Connection, now: i64) -> rusqlite::Result<Option<i64>> {
    Ok(
        c.query_row("SELECT value FROM meta WHERE key = 'swept'", [], |r| {
            r.get::<_, rusqlite::types::Value>(0)
        })
        .optional()?
        .and_then(|v| match v {
            rusqlite::types::Value::Integer(t) if t <= now => Some(t),
            _ => None,
        }),
    )
}

fn full_sweep_due(swept: Option<i64>, now: i64) -> bool {
    swept.is_none_or(|t| t.saturating_add(FULL_SWEEP_MS) <= now)
}

/// Deletes expired entries and those critical for too long; returns the
/// current revision and the next time something will expire. It writes
/// only what changed: when N agents wake for the same expiry, the first
/// deletes and wakes everyone, and the others' deletes find nothing. A
/// full sweep records itself in `swept`, checked again under the write
/// lock so that one runs per interval across the machine.
fn sweep(c: &mut Connection) -> rusqlite::Result<(u64, Option<u64>)> {
    let now = clock_ms();
    let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    if full_sweep_due(swept_at(&tx, now)?, now) {
        tx.execute(
            "INSERT OR REPLACE INTO meta (key, value) VALUES ('swept', ?1)",
            params![now],
        )?;
    }
    // Entries whose seat ended go too (they are already invisible).
    let removed = tx.execute(
        concat!(
            "DELETE FROM instances WHERE NOT ",
            live!("?1"),
            " OR (critical_since_ms IS NOT NULL AND deregister_after_ms IS NOT NULL
               AND critical_since_ms + deregister_after_ms <= ?1)"
        ),
        params![now],
    )?;
    // Expired leaders and locks go too, so waiters and followers are woken.
    let removed = removed
        + tx.execute("DELETE FROM elections WHERE expires_ms <= ?1", params![now])?
        + tx.execute("DELETE FROM locks WHERE expires_ms <= ?1", params![now])?;
    if removed > 0 {
        bump(&tx)?;
    }
    let next = next_expiry(&tx)?;
    let rev = read_rev(&tx)?;
    tx.commit()?;
    Ok((rev, next.map(|t| t.max(0) as u64)))
}

/// Waits for a wake-up on `listener`; without one, never (the poll runs).
async fn woken(listener: Option<&tokio::net::UnixDatagram>) -> std::io::Result<()> {
    match listener {
        Some(l) => l.readable().await,
        None => std::future::pending().await,
    }
}

async fn notify_loop(
    conn: Arc<Mutex<Connection>>,
    listener: Option<tokio::net::UnixDatagram>,
    waker: Arc<wake::Waker>,
    tx: watch::Sender<u64>,
    dir: PathBuf,
    checks: Arc<std::sync::atomic::AtomicU64>,
) {
    // A failed check (a full disk, a lock held too long) is retried after
    // a growing back-off, and logged as one outage (start, a counted
    // reminder every 10 s, recovery).
    let url = format!("local://{}", dir.display());
    let mut outage = autopilot_catalog::Outage::default();
    let mut backoff = Duration::ZERO;
    loop {
        if let Some(l) = &listener {
            // Whatever was queued is covered by this check.
            wake::drain(l);
        }
        checks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (c, w) = (conn.clone(), waker.clone());
        let checked = tokio::task::spawn_blocking(move || run_and_wake(&c, &w, check)).await;
        let next = match checked {
            Ok(Ok((rev, next))) => {
                if outage.is_failing() {
                    outage.recovered(&url, "sweeping expired entries");
                    backoff = Duration::ZERO;
                }
                tx.send_if_modified(|cur| {
                    let changed = *cur != rev;
                    *cur = rev;
                    changed
                });
                next
            }
            Ok(Err(e)) => {
                outage.failed(&url, "sweeping expired entries", &e.to_string());
                backoff = (backoff * 2).clamp(BACKOFF_MIN, BACKOFF_MAX);
                None
            }
            Err(_) => None,
        };
        if outage.is_failing() {
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = tx.closed() => return,
            }
            continue;
        }
        let wait = next
            .map(|t| Duration::from_millis(t.saturating_sub(clock_ms().max(0) as u64) + 1))
            .unwrap_or(POLL)
            .min(POLL);
        tokio::select! {
            ready = woken(listener.as_ref()) => {
                if let Err(e) = ready {
                    tracing::warn!("catalog {url}: change socket failed: {e}");
                    tokio::time::sleep(POLL).await;
                }
            }
            _ = tokio::time::sleep(wait) => {}
            _ = tx.closed() => return,
        }
    }
}

fn parse_instance(r: &rusqlite::Row) -> rusqlite::Result<Instance> {
    let tags: String = r.get(4)?;
    let status: String = r.get(5)?;
    Ok(Instance {
        id: r.get(0)?,
        name: r.get(1)?,
        address: r.get(2)?,
        port: u16::try_from(r.get::<_, i64>(3)?).unwrap_or(0),
        // Data written by other processes is not trusted: bad fields degrade, never crash.
        tags: serde_json::from_str(&tags).unwrap_or_default(),
        status: Status::parse(&status).unwrap_or(Status::Critical),
        last_heartbeat: rfc3339_ms(r.get::<_, i64>(6)?.max(0) as u64),
    })
}

#[async_trait::async_trait]
impl Catalog for LocalCatalog {
    fn lock_ttl(&self) -> Duration {
        Duration::from_millis(LOCK_TTL_MS.unsigned_abs())
    }

    fn url(&self) -> &str {
        &self.url
    }

    async fn register(&self, reg: &Registration) -> Result<(), CatalogError> {
        let reg = reg.clone();
        let owner = self.owner.clone();
        let url = self.url.clone();
        let (id, seat) = (reg.id.clone(), reg.seat.clone());
        let held = self
            .with(move |c| {
                let now = clock_ms();
                let ttl = i64::try_from(reg.ttl.as_millis()).unwrap_or(i64::MAX);
                let critical = (reg.status == Status::Critical).then_some(now);
                // IMMEDIATE: the seat cannot change hands between the check
                // and the write.
                let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                if let Some(seat) = &reg.seat {
                    let held: bool = tx.query_row(
                        "SELECT EXISTS (SELECT 1 FROM elections
                       WHERE name = ?1 AND owner = ?2 AND term = ?3 AND expires_ms > ?4)",
                        params![
                            seat.election,
                            owner,
                            i64::try_from(seat.term).unwrap_or(-1),
                            now
                        ],
                        |r| r.get(0),
                    )?;
                    if !held {
                        return Ok(false);
                    }
                }
                tx.execute(
                    "INSERT OR REPLACE INTO instances
                 (id, name, address, port, tags, status, ttl_ms, expires_ms, last_heartbeat_ms,
                  critical_since_ms, deregister_after_ms, owner, seat_election, seat_term)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
                    params![
                        reg.id,
                        reg.name,
                        reg.address,
                        reg.port,
                        serde_json::to_string(&reg.tags).unwrap_or_else(|_| "[]".into()),
                        reg.status.as_str(),
                        ttl,
                        now.saturating_add(ttl),
                        // Displayed only: wall-clock time.
                        now_ms() as i64,
                        critical,
                        reg.deregister_critical_after
                            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
                        owner,
                        reg.seat.as_ref().map(|s| s.election.as_str()),
                        reg.seat
                            .as_ref()
                            .map(|s| i64::try_from(s.term).unwrap_or(-1)),
                    ],
                )?;
                bump(&tx)?;
                tx.commit()?;
                Ok(true)
            })
            .await?;
        match (held, seat) {
            (false, Some(seat)) => Err(CatalogError::SeatLost {
                url,
                id,
                election: seat.election,
                term: seat.term,
            }),
            _ => Ok(()),
        }
    }

    async fn set_status(&self, id: &str, status: Status) -> Result<bool, CatalogError> {
        let (id, owner) = (id.to_string(), self.owner.clone());
        self.with(move |c| {
            let now = clock_ms();
            // IMMEDIATE: a read upgraded to a write fails at once (no busy
            // wait) when another agent committed in between.
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let cur: Option<String> = tx
                .query_row(
                    concat!(
                        "SELECT status FROM instances WHERE id = ?1 AND owner = ?2 AND ",
                        live!("?3")
                    ),
                    params![id, owner, now],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(cur) = cur else { return Ok(false) };
            if cur != status.as_str() {
                tx.execute(
                    "UPDATE instances SET status = ?1,
                       critical_since_ms = CASE WHEN ?1 = 'critical' THEN COALESCE(critical_since_ms, ?2) ELSE NULL END
                     WHERE id = ?3 AND owner = ?4",
                    params![status.as_str(), now, id, owner],
                )?;
                bump(&tx)?;
            }
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn deregister(&self, id: &str) -> Result<(), CatalogError> {
        let (id, owner) = (id.to_string(), self.owner.clone());
        self.with(move |c| {
            let tx = c.transaction()?;
            if tx.execute(
                "DELETE FROM instances WHERE id = ?1 AND owner = ?2",
                params![id, owner],
            )? > 0
            {
                bump(&tx)?;
            }
            tx.commit()
        })
        .await
    }

    async fn keep_alive(&self) -> Result<usize, CatalogError> {
        let owner = self.owner.clone();
        self.with(move |c| {
            let now = clock_ms();
            let tx = c.transaction()?;
            // Only live entries count: one whose seat is gone stays gone.
            let n = tx.execute(
                concat!(
                    "UPDATE instances SET expires_ms = ?1 + ttl_ms, last_heartbeat_ms = ?3
                     WHERE owner = ?2 AND ",
                    live!("?1")
                ),
                params![now, owner, now_ms() as i64],
            )?;
            tx.execute(
                "UPDATE locks SET expires_ms = ?1 + ?3 WHERE owner = ?2 AND expires_ms > ?1",
                params![now, owner, LOCK_TTL_MS],
            )?;
            tx.commit()?;
            Ok(n)
        })
        .await
    }

    async fn services(&self) -> Result<Vec<ServiceSummary>, CatalogError> {
        self.with(|c| {
            let mut st = c.prepare(concat!(
                "SELECT name, COUNT(*), SUM(status = 'passing') FROM instances WHERE ",
                live!("?1"),
                " GROUP BY name ORDER BY name"
            ))?;
            let rows = st.query_map(params![clock_ms()], |r| {
                Ok(ServiceSummary {
                    name: r.get(0)?,
                    instances: r.get::<_, i64>(1)? as usize,
                    passing: r.get::<_, i64>(2)? as usize,
                })
            })?;
            rows.collect()
        })
        .await
    }

    async fn instances(&self, service: &str) -> Result<Vec<Instance>, CatalogError> {
        let service = service.to_string();
        self.with(move |c| {
            let mut st = c.prepare(concat!(
                "SELECT id, name, address, port, tags, status, last_heartbeat_ms FROM instances
                     WHERE name = ?1 AND ",
                live!("?2"),
                " ORDER BY id"
            ))?;
            let rows = st.query_map(params![service, clock_ms()], parse_instance)?;
            rows.collect()
        })
        .await
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    async fn kv_get(&self, key: &str) -> Result<Option<String>, CatalogError> {
        autopilot_catalog::check_key(&self.url, key)?;
        let key = key.to_string();
        self.with(move |c| {
            c.query_row("SELECT value FROM kv WHERE key = ?1", params![key], |r| {
                r.get(0)
            })
            .optional()
        })
        .await
    }

    async fn kv_put(&self, key: &str, value: &str) -> Result<(), CatalogError> {
        autopilot_catalog::check_key(&self.url, key)?;
        let (key, value) = (key.to_string(), value.to_string());
        self.with(move |c| {
            // Key writes bump the revision too: templates re-render on them.
            let tx = c.transaction()?;
            tx.execute(
                "INSERT OR REPLACE INTO kv (key, value) VALUES (?1, ?2)",
                params![key, value],
            )?;
            bump(&tx)?;
            tx.commit()
        })
        .await
    }

    async fn kv_cas(
        &self,
        key: &str,
        expected: Option<&str>,
        value: &str,
    ) -> Result<bool, CatalogError> {
        autopilot_catalog::check_key(&self.url, key)?;
        let (key, expected, value) = (
            key.to_string(),
            expected.map(str::to_string),
            value.to_string(),
        );
        self.with(move |c| {
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let cur: Option<String> = tx
                .query_row("SELECT value FROM kv WHERE key = ?1", params![key], |r| {
                    r.get(0)
                })
                .optional()?;
            if cur != expected {
                return Ok(false);
            }
            tx.execute(
                "INSERT OR REPLACE INTO kv (key, value) VALUES (?1, ?2)",
                params![key, value],
            )?;
            bump(&tx)?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn kv_delete(&self, key: &str) -> Result<bool, CatalogError> {
        autopilot_catalog::check_key(&self.url, key)?;
        let key = key.to_string();
        self.with(move |c| {
            let tx = c.transaction()?;
            let n = tx.execute("DELETE FROM kv WHERE key = ?1", params![key])?;
            if n > 0 {
                bump(&tx)?;
            }
            tx.commit()?;
            Ok(n > 0)
        })
        .await
    }

    async fn kv_delete_if(&self, key: &str, expected: &str) -> Result<bool, CatalogError> {
        autopilot_catalog::check_key(&self.url, key)?;
        let (key, expected) = (key.to_string(), expected.to_string());
        self.with(move |c| {
            let tx = c.transaction()?;
            let n = tx.execute(
                "DELETE FROM kv WHERE key = ?1 AND value = ?2",
                params![key, expected],
            )?;
            if n > 0 {
                bump(&tx)?;
            }
            tx.commit()?;
            Ok(n > 0)
        })
        .await
    }

    async fn kv_list(&self, prefix: &str) -> Result<Vec<(String, String)>, CatalogError> {
        let prefix = prefix.to_string();
        self.with(move |c| {
            // substr, not LIKE: keys may hold % and _.
            let mut st = c.prepare(
                "SELECT key, value FROM kv WHERE substr(key, 1, length(?1)) = ?1 ORDER BY key",
            )?;
            let rows = st.query_map(params![prefix], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })
        .await
    }

    async fn lock(&self, name: &str) -> Result<(), CatalogError> {
        autopilot_catalog::check_key(&self.url, name)?;
        let mut changes = self.changes.clone();
        loop {
            changes.borrow_and_update();
            let (n, owner) = (name.to_string(), self.owner.clone());
            // Some(wait) when someone else holds it: how long until it could expire.
            let held = self
                .with(move |c| {
                    let now = clock_ms();
                    let tx =
                        c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
                    tx.execute(
                        "DELETE FROM locks WHERE name = ?1 AND expires_ms <= ?2",
                        params![n, now],
                    )?;
                    let cur: Option<(String, i64)> = tx
                        .query_row(
                            "SELECT owner, expires_ms FROM locks WHERE name = ?1",
                            params![n],
                            |r| Ok((r.get(0)?, r.get(1)?)),
                        )
                        .optional()?;
                    let wait = match cur {
                        Some((o, _)) if o == owner => None,
                        Some((_, exp)) => Some(Duration::from_millis((exp - now).max(1) as u64)),
                        None => {
                            tx.execute(
                                "INSERT INTO locks (name, owner, expires_ms) VALUES (?1, ?2, ?3)",
                                params![n, owner, now + LOCK_TTL_MS],
                            )?;
                            bump(&tx)?;
                            None
                        }
                    };
                    tx.commit()?;
                    Ok(wait)
                })
                .await?;
            let Some(wait) = held else { return Ok(()) };
            // Woken by the holder's unlock, or when its lock could expire.
            tokio::select! {
                _ = changes.changed() => {}
                _ = tokio::time::sleep(wait.min(SAFETY_RECHECK)) => {}
            }
        }
    }

    async fn try_lock(&self, name: &str) -> Result<bool, CatalogError> {
        autopilot_catalog::check_key(&self.url, name)?;
        let (n, owner) = (name.to_string(), self.owner.clone());
        // One IMMEDIATE transaction, as `lock` takes, without the wait: an
        // expired holder is cleared, then the lock is ours, free, or another's.
        self.with(move |c| {
            let now = clock_ms();
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            tx.execute(
                "DELETE FROM locks WHERE name = ?1 AND expires_ms <= ?2",
                params![n, now],
            )?;
            let cur: Option<String> = tx
                .query_row("SELECT owner FROM locks WHERE name = ?1", params![n], |r| {
                    r.get(0)
                })
                .optional()?;
            let held = match cur {
                Some(o) => o == owner,
                None => {
                    tx.execute(
                        "INSERT INTO locks (name, owner, expires_ms) VALUES (?1, ?2, ?3)",
                        params![n, owner, now + LOCK_TTL_MS],
                    )?;
                    bump(&tx)?;
                    true
                }
            };
            tx.commit()?;
            Ok(held)
        })
        .await
    }

    async fn campaign(
        &self,
        election: &str,
        me: &Candidate,
        ttl: Duration,
    ) -> Result<Option<u64>, CatalogError> {
        autopilot_catalog::check_key(&self.url, election)?;
        let (name, owner, me) = (election.to_string(), self.owner.clone(), me.clone());
        let ttl_ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
        self.with(move |c| {
            let now = clock_ms();
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let cur: Option<(String, i64, i64)> = tx
                .query_row(
                    "SELECT owner, term, expires_ms FROM elections WHERE name = ?1",
                    params![name],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            let term = match cur {
                Some((o, term, exp)) if o == owner && exp > now => {
                    tx.execute(
                        "UPDATE elections SET expires_ms = ?1 WHERE name = ?2",
                        params![now.saturating_add(ttl_ms), name],
                    )?;
                    Some(term)
                }
                Some((_, _, exp)) if exp > now => None,
                _ => {
                    let prev: i64 = tx
                        .query_row(
                            "SELECT term FROM election_terms WHERE name = ?1",
                            params![name],
                            |r| r.get(0),
                        )
                        .optional()?
                        .unwrap_or(0);
                    let term = prev.saturating_add(1);
                    // The entries bound to the seat that ended end with it
                    // (readers already stopped seeing them at its expiry).
                    tx.execute(
                        "DELETE FROM instances WHERE seat_election = ?1",
                        params![name],
                    )?;
                    tx.execute(
                        "INSERT OR REPLACE INTO election_terms (name, term) VALUES (?1, ?2)",
                        params![name, term],
                    )?;
                    tx.execute(
                        "INSERT OR REPLACE INTO elections (name, owner, id, address, port, term, expires_ms)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                        params![name, owner, me.id, me.address, me.port, term, now.saturating_add(ttl_ms)],
                    )?;
                    bump(&tx)?;
                    Some(term)
                }
            };
            tx.commit()?;
            Ok(term.map(|t| t as u64))
        })
        .await
    }

    async fn resign(&self, election: &str) -> Result<(), CatalogError> {
        let (name, owner) = (election.to_string(), self.owner.clone());
        self.with(move |c| {
            let tx = c.transaction()?;
            // The seat and the entries bound to it go in one transaction:
            // no reader sees one without the other.
            let bound = tx.execute(
                "DELETE FROM instances WHERE seat_election = ?1 AND owner = ?2",
                params![name, owner],
            )?;
            if tx.execute(
                "DELETE FROM elections WHERE name = ?1 AND owner = ?2",
                params![name, owner],
            )? + bound
                > 0
            {
                bump(&tx)?;
            }
            tx.commit()
        })
        .await
    }

    async fn leader(&self, election: &str) -> Result<Option<Leader>, CatalogError> {
        let name = election.to_string();
        self.with(move |c| {
            c.query_row(
                "SELECT id, address, port, term FROM elections WHERE name = ?1 AND expires_ms > ?2",
                params![name, clock_ms()],
                |r| {
                    Ok(Leader {
                        id: r.get(0)?,
                        address: r.get(1)?,
                        port: u16::try_from(r.get::<_, i64>(2)?).unwrap_or(0),
                        term: r.get::<_, i64>(3)?.max(0) as u64,
                    })
                },
            )
            .optional()
        })
        .await
    }

    async fn end_seat(&self, election: &str, leader: &Leader) -> Result<bool, CatalogError> {
        autopilot_catalog::check_key(&self.url, election)?;
        let (name, id) = (election.to_string(), leader.id.clone());
        let term = i64::try_from(leader.term).unwrap_or(i64::MAX);
        self.with(move |c| {
            let now = clock_ms();
            let tx = c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            // Only the live seat of that id at that term: a seat won again
            // since has another term and is never touched.
            let owner: Option<String> = tx
                .query_row(
                    "DELETE FROM elections WHERE name = ?1 AND id = ?2 AND term = ?3
                     AND expires_ms > ?4 RETURNING owner",
                    params![name, id, term, now],
                    |r| r.get(0),
                )
                .optional()?;
            let Some(owner) = owner else {
                return Ok(false);
            };
            // Its bound entries go in the same transaction (readers stop
            // seeing them with the seat row anyway).
            tx.execute(
                "DELETE FROM instances WHERE seat_election = ?1 AND owner = ?2 AND seat_term = ?3",
                params![name, owner, term],
            )?;
            // Watchers wake and campaign for the free seat at once.
            bump(&tx)?;
            tx.commit()?;
            Ok(true)
        })
        .await
    }

    async fn holds_lock(&self, name: &str) -> Result<bool, CatalogError> {
        let (n, owner) = (name.to_string(), self.owner.clone());
        self.with(move |c| {
            c.query_row(
                "SELECT COUNT(*) FROM locks WHERE name = ?1 AND owner = ?2 AND expires_ms > ?3",
                params![n, owner, clock_ms()],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n > 0)
        })
        .await
    }

    async fn unlock(&self, name: &str) -> Result<(), CatalogError> {
        let (n, owner) = (name.to_string(), self.owner.clone());
        self.with(move |c| {
            let tx = c.transaction()?;
            if tx.execute(
                "DELETE FROM locks WHERE name = ?1 AND owner = ?2",
                params![n, owner],
            )? > 0
            {
                bump(&tx)?;
            }
            tx.commit()
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ap-local-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance() {
        let d = dir("conf");
        let open = |agent: String| {
            let d = d.clone();
            async move {
                Arc::new(LocalCatalog::open(&d, &format!("agent-{agent}")).expect("open"))
                    as Arc<dyn Catalog>
            }
        };
        autopilot_catalog::conformance::run_all(open, "local", Duration::from_secs(1)).await;
        let _ = std::fs::remove_dir_all(&d);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn holds_lock_is_true_only_for_the_live_owner() {
        let d = dir("holds");
        let a = LocalCatalog::open(&d, "a").expect("open a");
        let b = LocalCatalog::open(&d, "b").expect("open b");
        assert!(!a.holds_lock("l").await.expect("check"));
        a.lock("l").await.expect("lock");
        assert!(a.holds_lock("l").await.expect("check"));
        assert!(!b.holds_lock("l").await.expect("check"), "not b's lock");
        a.unlock("l").await.expect("unlock");
        assert!(!a.holds_lock("l").await.expect("check"), "released");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn corrupt_and_unwritable_paths_are_reported() {
        let d = dir("corrupt");
        std::fs::create_dir_all(&d).expect("dir");
        std::fs::write(
            d.join("catalog.db"),
            b"this is not a database, it is garbage ...........",
        )
        .expect("write");
        let e = LocalCatalog::open(&d, "x").err().expect("error");
        let s = e.to_string();
        assert!(
            s.starts_with("catalog local://") && s.contains(&d.display().to_string()),
            "{s}"
        );
        let _ = std::fs::remove_dir_all(&d);

        let e = LocalCatalog::open(Path::new("/proc/autopilot-cannot-be-here"), "x")
            .err()
            .expect("error");
        assert!(
            e.to_string().contains("/proc/autopilot-cannot-be-here"),
            "{e}"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn many_agents_opening_at_once_all_succeed() {
        let d = dir("race");
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let d = d.clone();
                std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("rt");
                    rt.block_on(async { LocalCatalog::open(&d, &format!("a{i}")).map(|_| ()) })
                })
            })
            .collect();
        for h in handles {
            h.join().expect("thread").expect("open");
        }
        let _ = std::fs::remove_dir_all(&d);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn committed_entries_survive_reopening() {
        let d = dir("durable");
        {
            let c = LocalCatalog::open(&d, "a").expect("open");
            c.register(&entry("x-1")).await.expect("register");
        }
        let c = LocalCatalog::open(&d, "b").expect("reopen");
        assert_eq!(c.instances("x").await.expect("read").len(), 1);
        let _ = std::fs::remove_dir_all(&d);
    }

    /// The schema of the first release (meta 'schema' = 1), with wall-clock expiries.
    const SCHEMA_1: &str = "
        CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
        INSERT INTO meta (key, value) VALUES ('rev', 7), ('schema', 1);
        CREATE TABLE instances (id TEXT PRIMARY KEY, name TEXT NOT NULL, address TEXT NOT NULL,
            port INTEGER NOT NULL, tags TEXT NOT NULL, status TEXT NOT NULL, ttl_ms INTEGER NOT NULL,
            expires_ms INTEGER NOT NULL, last_heartbeat_ms INTEGER NOT NULL,
            critical_since_ms INTEGER, deregister_after_ms INTEGER, owner TEXT NOT NULL);
        CREATE TABLE kv (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE locks (name TEXT PRIMARY KEY, owner TEXT NOT NULL, expires_ms INTEGER NOT NULL);
        CREATE TABLE elections (name TEXT PRIMARY KEY, owner TEXT NOT NULL, id TEXT NOT NULL,
            address TEXT NOT NULL, port INTEGER NOT NULL, term INTEGER NOT NULL, expires_ms INTEGER NOT NULL);
        CREATE TABLE election_terms (name TEXT PRIMARY KEY, term INTEGER NOT NULL);
        INSERT INTO instances VALUES ('x-1', 'x', '10.0.0.1', 1, '[]', 'passing', 60000,
            9999999999999, 0, NULL, NULL, 'old-agent');
        INSERT INTO kv VALUES ('k', 'v');
        INSERT INTO locks VALUES ('l', 'old-agent', 9999999999999);
        INSERT INTO elections VALUES ('e', 'old-agent', 'x-1', '10.0.0.1', 1, 5, 9999999999999);
        INSERT INTO election_terms VALUES ('e', 5);
    ";

    fn entry(id: &str) -> Registration {
        Registration {
            id: id.into(),
            name: "x".into(),
            address: "10.0.0.1".into(),
            port: 1,
            tags: vec![],
            status: Status::Passing,
            ttl: Duration::from_secs(60),
            deregister_critical_after: None,
            seat: None,
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_schema_1_catalog_is_migrated_and_its_wall_clock_rows_purged() {
        let d = dir("migrate");
        std::fs::create_dir_all(&d).expect("dir");
        Connection::open(d.join("catalog.db"))
            .expect("old db")
            .execute_batch(SCHEMA_1)
            .expect("old schema");
        let c = LocalCatalog::open(&d, "a").expect("open migrates");
        // The old rows' wall-clock expiries mean nothing on the boot clock: gone.
        assert!(c.instances("x").await.expect("read").is_empty());
        assert!(c.leader("e").await.expect("leader").is_none());
        // Data and terms survive: the next term is still higher.
        assert_eq!(c.kv_get("k").await.expect("kv").as_deref(), Some("v"));
        let me = Candidate {
            id: "x-2".into(),
            address: "10.0.0.2".into(),
            port: 2,
        };
        let term = c.campaign("e", &me, Duration::from_secs(5)).await;
        assert_eq!(term.expect("campaign"), Some(6));
        c.lock("l").await.expect("the old lock was purged");
        // The new columns work.
        c.register(&Registration {
            seat: Some(autopilot_catalog::Seat {
                election: "e".into(),
                term: 6,
            }),
            ..entry("x-2")
        })
        .await
        .expect("bound entry");
        assert_eq!(c.instances("x").await.expect("read").len(), 1);
        let schema: i64 = lock(&c.conn)
            .query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
                r.get(0)
            })
            .expect("schema");
        assert_eq!(schema, SCHEMA_VERSION);
        drop(c);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn rows_from_another_boot_are_purged_and_this_boots_are_kept() {
        let d = dir("boot");
        let c = LocalCatalog::open(&d, "a").expect("open");
        c.register(&entry("x-1")).await.expect("register");
        drop(c);
        // Same boot: a reopened catalog keeps its live rows.
        let c = LocalCatalog::open(&d, "b").expect("reopen");
        assert_eq!(c.instances("x").await.expect("read").len(), 1);
        lock(&c.conn)
            .execute(
                "UPDATE meta SET value = 'another-boot' WHERE key = 'boot'",
                [],
            )
            .expect("pretend a reboot");
        drop(c);
        let c = LocalCatalog::open(&d, "c").expect("reopen");
        assert!(c.instances("x").await.expect("read").is_empty());
        drop(c);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_newer_schema_is_refused() {
        let d = dir("newer");
        drop(LocalCatalog::open(&d, "a").expect("open"));
        Connection::open(d.join("catalog.db"))
            .expect("db")
            .execute("UPDATE meta SET value = 99 WHERE key = 'schema'", [])
            .expect("bump schema");
        let e = LocalCatalog::open(&d, "b").err().expect("refused");
        assert!(e.to_string().contains("schema 99"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }

    /// Waits for `rx` to move, up to `within`; returns how long it took.
    async fn moved(rx: &mut watch::Receiver<u64>, within: Duration) -> Option<Duration> {
        let t = std::time::Instant::now();
        tokio::time::timeout(within, rx.changed())
            .await
            .ok()?
            .ok()?;
        Some(t.elapsed())
    }

    /// Below [`POLL`]: a change seen this fast came by its wake-up.
    const WOKEN: Duration = Duration::from_millis(1000);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn heartbeats_wake_nobody_and_visible_changes_wake_at_once() {
        let d = dir("wake");
        let a = LocalCatalog::open(&d, "a").expect("open a");
        let b = LocalCatalog::open(&d, "b").expect("open b");
        let mut rx = b.changes();
        rx.borrow_and_update();
        a.register(&entry("x-1")).await.expect("register");
        assert!(moved(&mut rx, WOKEN).await.is_some(), "register wakes");

        // Keep-alives for longer than a poll: the revision never moves,
        // and the other handle is not even woken (its poll only).
        rx.borrow_and_update();
        let checks = || b.wakeups();
        let before = checks();
        let until = std::time::Instant::now() + POLL + Duration::from_millis(500);
        let mut beats = 0;
        while std::time::Instant::now() < until {
            assert_eq!(a.keep_alive().await.expect("keep-alive"), 1);
            beats += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(
            !rx.has_changed().expect("notifier alive"),
            "a heartbeat moved another handle's changes()"
        );
        let woken = checks() - before;
        assert!(
            woken <= 2,
            "{beats} heartbeats woke the other handle {woken} times"
        );

        // Each kind of visible change wakes the other handle at once.
        assert!(a.set_status("x-1", Status::Critical).await.expect("status"));
        assert!(moved(&mut rx, WOKEN).await.is_some(), "status change");
        rx.borrow_and_update();
        a.kv_put("k", "v").await.expect("kv");
        assert!(moved(&mut rx, WOKEN).await.is_some(), "key write");
        rx.borrow_and_update();
        a.lock("l").await.expect("lock");
        assert!(moved(&mut rx, WOKEN).await.is_some(), "lock");
        rx.borrow_and_update();
        let me = Candidate {
            id: "x-1".into(),
            address: "10.0.0.1".into(),
            port: 1,
        };
        a.campaign("e", &me, Duration::from_secs(30))
            .await
            .expect("campaign");
        assert!(moved(&mut rx, WOKEN).await.is_some(), "seat won");
        rx.borrow_and_update();
        a.deregister("x-1").await.expect("deregister");
        assert!(moved(&mut rx, WOKEN).await.is_some(), "deregister");

        // An expiry: nobody keeps the entry alive, any handle deletes it
        // and everyone hears of it.
        rx.borrow_and_update();
        a.register(&Registration {
            ttl: Duration::from_millis(300),
            ..entry("x-2")
        })
        .await
        .expect("register");
        assert!(moved(&mut rx, WOKEN).await.is_some(), "register");
        rx.borrow_and_update();
        let t = std::time::Instant::now();
        assert!(
            moved(&mut rx, Duration::from_secs(2)).await.is_some(),
            "expiry wakes"
        );
        assert!(b.instances("x").await.expect("read").is_empty());
        assert!(
            t.elapsed() < Duration::from_millis(1500),
            "{:?}",
            t.elapsed()
        );
        drop((a, b));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn more_handles_than_inotify_instances_all_hear_a_change() {
        // Above the default fs.inotify.max_user_instances (128): no
        // instance per handle any more, one socket each.
        const N: usize = 200;
        let d = dir("many");
        let handles: Vec<LocalCatalog> = (0..N)
            .map(|i| LocalCatalog::open(&d, &format!("a{i}")).expect("open"))
            .collect();
        let socks = std::fs::read_dir(d.join(wake::WATCHERS))
            .expect("watchers")
            .count();
        assert_eq!(socks, N, "one socket per handle");
        let mut rxs: Vec<_> = handles.iter().map(|h| h.changes()).collect();
        for rx in &mut rxs {
            rx.borrow_and_update();
        }
        let t = std::time::Instant::now();
        handles[0].register(&entry("x-1")).await.expect("register");
        for (i, rx) in rxs.iter_mut().enumerate() {
            let left = Duration::from_secs(5).saturating_sub(t.elapsed());
            assert!(moved(rx, left).await.is_some(), "handle {i} never woke");
        }
        eprintln!("{N} handles woken in {:?}", t.elapsed());
        drop(rxs);
        drop(handles);
        let left = std::fs::read_dir(d.join(wake::WATCHERS))
            .expect("watchers")
            .count();
        assert_eq!(left, 0, "every socket removed with its handle");
        let _ = std::fs::remove_dir_all(&d);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_dead_watchers_socket_is_removed_by_the_next_writer() {
        let d = dir("stale");
        let a = LocalCatalog::open(&d, "a").expect("open");
        // A watcher killed without removing its socket: a file nobody binds.
        let stale = d.join(wake::WATCHERS).join("0123456789abcdef.sock");
        drop(std::os::unix::net::UnixDatagram::bind(&stale).expect("bind"));
        assert!(stale.exists());
        a.kv_put("k", "v").await.expect("kv");
        assert!(!stale.exists(), "the stale socket is gone");
        // A keep-alive wakes nobody, so it sends nothing.
        drop(std::os::unix::net::UnixDatagram::bind(&stale).expect("bind"));
        a.keep_alive().await.expect("keep-alive");
        assert!(stale.exists(), "a keep-alive sent a wake-up");
        drop(a);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_directory_too_long_for_a_socket_falls_back_to_the_poll() {
        // A unix socket path holds at most 107 bytes.
        let d = dir(&"long".repeat(25));
        let a = LocalCatalog::open(&d, "a").expect("open without a socket");
        let b = LocalCatalog::open(&d, "b").expect("open without a socket");
        assert!(b._socket.is_none(), "no socket at {}", d.display());
        let mut rx = b.changes();
        rx.borrow_and_update();
        a.register(&entry("x-1")).await.expect("register");
        assert!(
            moved(&mut rx, POLL + Duration::from_secs(1))
                .await
                .is_some(),
            "the poll sees the change"
        );
        drop((a, b));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_watcher_socket_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let d = dir("sockmode");
        let a = LocalCatalog::open(&d, "a").expect("open");
        let w = d.join(wake::WATCHERS);
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&w), 0o700);
        let sock = std::fs::read_dir(&w)
            .expect("watchers")
            .next()
            .expect("a socket")
            .expect("entry")
            .path();
        assert_eq!(mode(&sock), 0o600);
        drop(a);
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn the_boot_clock_ignores_the_wall_clock() {
        // CLOCK_BOOTTIME counts from boot: far below any wall-clock epoch value.
        let t = clock_ms();
        assert!(t > 0 && (t as u64) < now_ms() / 2, "{t}");
    }
}
