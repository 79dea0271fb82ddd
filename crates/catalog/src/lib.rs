//! The service catalog abstraction: entry types, the `Catalog` trait every backend implements, and catalog URL selection.
//!
//! The trait is shaped for a strongly consistent store with leases and
//! watches: an agent owns its entries through one session, keeps them all
//! alive with one keep-alive, and learns of changes through a revision
//! counter rather than by polling.

pub mod conformance;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Passing,
    Warning,
    Critical,
    Maintenance,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Passing => "passing",
            Status::Warning => "warning",
            Status::Critical => "critical",
            Status::Maintenance => "maintenance",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        [
            Status::Passing,
            Status::Warning,
            Status::Critical,
            Status::Maintenance,
        ]
        .into_iter()
        .find(|x| x.as_str() == s)
    }
}

/// What an agent publishes for one of its jobs.
#[derive(Debug, Clone, PartialEq)]
pub struct Registration {
    /// `<job>-<hostname>`.
    pub id: String,
    pub name: String,
    pub address: String,
    pub port: u16,
    pub tags: Vec<String>,
    pub status: Status,
    /// How long the entry outlives its agent's last keep-alive.
    pub ttl: Duration,
    /// Remove the entry once it has been critical this long.
    pub deregister_critical_after: Option<Duration>,
    /// Binds the entry to an election seat: it lives only while this
    /// session holds `seat.election` at `seat.term`, and disappears in the
    /// same step as the seat (etcd: the seat's lease; embedded: the seat
    /// row's lifetime). So no reader ever sees a dead leader's entry beside
    /// the new leader's.
    pub seat: Option<Seat>,
}

/// An election seat an entry is bound to (see [`Registration::seat`]).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Seat {
    pub election: String,
    /// The term the seat was won with: a seat won again is a new seat.
    pub term: u64,
}

/// One entry as read back from the catalog.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Instance {
    pub id: String,
    pub name: String,
    pub address: String,
    pub port: u16,
    pub tags: Vec<String>,
    pub status: Status,
    /// RFC 3339, UTC, millisecond precision.
    pub last_heartbeat: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceSummary {
    pub name: String,
    pub instances: usize,
    pub passing: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The store could not be reached or answered with an error; retrying may help.
    #[error("catalog {url}: {message}")]
    Unavailable { url: String, message: String },
    /// The store is unusable as configured (bad path, corrupt data, bad credentials).
    #[error("catalog {url}: {message}")]
    Invalid { url: String, message: String },
    #[error("invalid catalog URL '{url}': {message}")]
    BadUrl { url: String, message: String },
    #[error("catalog {url}: the {backend} backend is not available yet; use a local:// catalog")]
    Unsupported { url: String, backend: String },
    /// A seat-bound entry was written while this session does not hold
    /// that seat (it was lost or never won). Retrying cannot help; the
    /// entry stays absent until it is registered again unbound or with a
    /// seat that is held.
    #[error(
        "catalog {url}: entry {id} is bound to the seat of {election} (term {term}), which this agent does not hold"
    )]
    SeatLost {
        url: String,
        id: String,
        election: String,
        term: u64,
    },
}

#[async_trait::async_trait]
pub trait Catalog: Send + Sync {
    /// The URL this catalog was opened from, for messages.
    fn url(&self) -> &str;

    /// Creates or replaces an entry, owned by this agent's session.
    async fn register(&self, reg: &Registration) -> Result<(), CatalogError>;

    /// Changes an entry's status; `Ok(false)` if this session has no such entry.
    async fn set_status(&self, id: &str, status: Status) -> Result<bool, CatalogError>;

    /// Removes an entry of this session (a no-op if it is gone).
    async fn deregister(&self, id: &str) -> Result<(), CatalogError>;

    /// Keeps every entry of this session alive: one request, whatever the
    /// number of entries. Returns how many entries it refreshed.
    async fn keep_alive(&self) -> Result<usize, CatalogError>;

    /// How often `keep_alive` should be called; `None` lets the caller derive
    /// it from the entries' TTLs.
    fn keep_alive_interval(&self) -> Option<Duration> {
        None
    }

    async fn services(&self) -> Result<Vec<ServiceSummary>, CatalogError>;

    /// Every live (unexpired) instance of a service, any status, sorted by ID.
    async fn instances(&self, service: &str) -> Result<Vec<Instance>, CatalogError>;

    /// [`Catalog::instances`] with each instance's real last heartbeat, for
    /// people (the CLI, the cockpit), not for watches: a backend that keeps
    /// heartbeats apart from the entries (etcd: in the leases) reads them.
    async fn instances_with_heartbeats(
        &self,
        service: &str,
    ) -> Result<Vec<Instance>, CatalogError> {
        self.instances(service).await
    }

    /// A revision that changes whenever any instance, key or leader may have
    /// changed, expiries included. Watchers and templates re-read on change;
    /// no polling.
    fn changes(&self) -> watch::Receiver<u64>;

    /// Like [`Catalog::changes`], but bumped only for changes under `prefix`
    /// of the catalog's logical key space: `instances/<service>/`,
    /// `elections/<name>`, `kv/<key>` or `locks/<name>` (a prefix of a key,
    /// compared byte by byte; an empty prefix means everything). A backend
    /// that cannot tell (the default) returns [`Catalog::changes`]: waking
    /// too often is allowed, missing a change is not. A resumed or compacted
    /// watch, or a reset cluster, bumps every receiver. Subscribe before
    /// reading, as with `changes`.
    fn changes_under(&self, prefix: &str) -> watch::Receiver<u64> {
        let _ = prefix;
        self.changes()
    }

    // ---- key/value, for hooks (`autopilot kv`) ---------------------------

    async fn kv_get(&self, key: &str) -> Result<Option<String>, CatalogError>;

    async fn kv_put(&self, key: &str, value: &str) -> Result<(), CatalogError>;

    /// Writes `value` only if the key currently holds `expected` (`None`:
    /// only if it is absent). Returns whether it wrote.
    async fn kv_cas(
        &self,
        key: &str,
        expected: Option<&str>,
        value: &str,
    ) -> Result<bool, CatalogError>;

    /// Returns whether the key existed.
    async fn kv_delete(&self, key: &str) -> Result<bool, CatalogError>;

    /// Deletes the key only if it holds `expected` (in one step: a value
    /// written since is never deleted). Returns whether it deleted.
    ///
    /// The default refuses, as [`Catalog::end_seat`]'s does.
    async fn kv_delete_if(&self, key: &str, expected: &str) -> Result<bool, CatalogError> {
        let _ = expected;
        Err(CatalogError::Invalid {
            url: self.url().to_string(),
            message: format!("this catalog cannot delete {key:?} conditionally"),
        })
    }

    /// Every key starting with `prefix`, sorted, with its value.
    async fn kv_list(&self, prefix: &str) -> Result<Vec<(String, String)>, CatalogError>;

    // ---- cluster-wide locks (`autopilot lock`) ----------------------------

    /// Waits until this session holds the lock `name`; the lock lives while
    /// the session is kept alive, so a dead holder's lock expires.
    async fn lock(&self, name: &str) -> Result<(), CatalogError>;

    /// Takes the lock `name` only if nobody holds it, never waiting: `Ok(true)`
    /// when this session holds it after the call (it already did, or took it
    /// now). A lock taken here is the same session-bound lock as
    /// [`Catalog::lock`]'s: [`Catalog::holds_lock`] sees it,
    /// [`Catalog::unlock`] releases it, and it dies with the session. A
    /// session waiting in `lock` for the same name never makes this one win
    /// while another session holds it, nor the other way round.
    ///
    /// The default refuses, as [`Catalog::kv_delete_if`]'s does.
    async fn try_lock(&self, name: &str) -> Result<bool, CatalogError> {
        Err(CatalogError::Invalid {
            url: self.url().to_string(),
            message: format!("this catalog cannot try the lock {name:?} without waiting"),
        })
    }

    async fn unlock(&self, name: &str) -> Result<(), CatalogError>;

    /// Whether this session still holds the lock `name` in the catalog. A
    /// keep-alive may succeed on a replacement session after the old one
    /// (and its locks) was lost, so holders ask this after each keep-alive.
    async fn holds_lock(&self, name: &str) -> Result<bool, CatalogError>;

    /// How long a held lock outlives this session's last successful
    /// keep-alive: a holder that cannot keep its session alive must assume
    /// the lock is gone after this long.
    fn lock_ttl(&self) -> Duration;

    // ---- leader election ---------------------------------------------------

    /// One attempt to lead `election` for `ttl`: wins if nobody leads, renews
    /// if this session already leads. Returns the term (the fencing token)
    /// when this session leads after the call. Terms strictly increase with
    /// each new leader.
    async fn campaign(
        &self,
        election: &str,
        me: &Candidate,
        ttl: Duration,
    ) -> Result<Option<u64>, CatalogError>;

    /// Gives up leadership at once (a no-op if this session does not lead).
    async fn resign(&self, election: &str) -> Result<(), CatalogError>;

    /// The current leader, if any.
    async fn leader(&self, election: &str) -> Result<Option<Leader>, CatalogError>;

    /// Ends `leader`'s seat of `election` at once, only if the seat is still held by `leader.id` at
    /// `leader.term` (a seat won again since is never touched). Returns whether it ended a seat.
    /// etcd: revokes the seat key's own lease (the seat and its bound entries go in one step);
    /// embedded: deletes the seat row (its bound entries go with it).
    ///
    /// The default refuses: a wrapper or test double that cannot end seats
    /// says so rather than pretending it did.
    async fn end_seat(&self, election: &str, leader: &Leader) -> Result<bool, CatalogError> {
        Err(CatalogError::Invalid {
            url: self.url().to_string(),
            message: format!(
                "this catalog cannot end the seat of {election} (leader {}, term {})",
                leader.id, leader.term
            ),
        })
    }
}

/// Who is campaigning: the instance ID (`<job>-<hostname>`) and where it serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Candidate {
    pub id: String,
    pub address: String,
    pub port: u16,
}

/// The leader of an election, as `autopilot leader NAME --json` prints it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leader {
    pub id: String,
    pub address: String,
    pub port: u16,
    /// The fencing token.
    pub term: u64,
}

/// A failure that repeats, logged with its count rather than once and then
/// silence: a warning at the first failure, another every [`Outage::REPEAT_WARN`]
/// while it lasts (with the number of attempts and the duration), and an info
/// with the count on recovery. Shared by everything that retries the catalog.
#[derive(Debug, Default)]
pub struct Outage {
    /// When it began: monotonic for durations, wall clock for `/status`.
    since: Option<(std::time::Instant, SystemTime)>,
    failures: u64,
    last_warn: Option<std::time::Instant>,
}

impl Outage {
    pub const REPEAT_WARN: Duration = Duration::from_secs(10);

    /// Records a failed attempt at `what` on the catalog `url`.
    pub fn failed(&mut self, url: &str, what: &str, why: &str) {
        let now = std::time::Instant::now();
        self.failures = self.failures.saturating_add(1);
        let (since, _) = *self.since.get_or_insert((now, SystemTime::now()));
        match self.last_warn {
            None => {
                tracing::warn!(catalog = %url, "{what} failed: {why}; retrying");
                self.last_warn = Some(now);
            }
            Some(t) if now.duration_since(t) >= Self::REPEAT_WARN => {
                tracing::warn!(
                    catalog = %url,
                    failures = self.failures,
                    "{what} still failing after {} attempts over {}s: {why}",
                    self.failures,
                    now.duration_since(since).as_secs()
                );
                self.last_warn = Some(now);
            }
            Some(_) => {}
        }
    }

    /// Ends the outage, if there was one, logging how long it lasted.
    pub fn recovered(&mut self, url: &str, what: &str) {
        if let Some((since, _)) = self.since.take() {
            tracing::info!(
                catalog = %url,
                failures = self.failures,
                "{what} works again after {} failed attempts over {}ms",
                self.failures,
                since.elapsed().as_millis()
            );
        }
        self.failures = 0;
        self.last_warn = None;
    }

    pub fn is_failing(&self) -> bool {
        self.since.is_some()
    }

    /// Failed attempts in the current outage.
    pub fn failures(&self) -> u64 {
        self.failures
    }

    /// When the current outage began (wall clock).
    pub fn since(&self) -> Option<SystemTime> {
        self.since.map(|(_, wall)| wall)
    }
}

/// Exponential back-off with full jitter, for every retry loop against the
/// catalog: each delay is drawn uniformly from `[0, current]`, and `current`
/// doubles from `min` to `max` with each failure. Many agents retrying the
/// same cluster after an outage (or at a fleet start) so spread out instead
/// of arriving in waves.
#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
    rng: u64,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Backoff {
        use std::hash::{BuildHasher, Hasher};
        // A per-process random seed (std's hash keys), mixed with the time
        // and an address so two back-offs of one process differ too.
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u128(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0),
        );
        let local = 0u8;
        h.write_usize(std::ptr::addr_of!(local) as usize);
        Backoff {
            min,
            max: max.max(min),
            current: min,
            rng: h.finish() | 1,
        }
    }

    /// A uniform draw from `[0, 1]` scaled to `d` (xorshift64*).
    fn jitter(&mut self, d: Duration) -> Duration {
        let mut x = self.rng;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng = x;
        let r = x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11; // 53 bits
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        // nanos * r / 2^53 without overflow.
        let scaled = (u128::from(nanos) * u128::from(r)) >> 53;
        Duration::from_nanos(u64::try_from(scaled).unwrap_or(nanos))
    }

    /// The delay before the next attempt; the one after may be twice as long.
    pub fn next_delay(&mut self) -> Duration {
        let cap = self.current;
        self.current = self.current.saturating_mul(2).min(self.max);
        self.jitter(cap)
    }

    /// A delay drawn from `[d/2, d]`: a fixed period spread out.
    pub fn spread(&mut self, d: Duration) -> Duration {
        let half = d / 2;
        half + self.jitter(d - half)
    }

    /// After a success: the next failure starts again from `min`.
    pub fn reset(&mut self) {
        self.current = self.min;
    }
}

/// Keys for `kv_*` and lock names: non-empty, printable, no NUL.
pub fn check_key(url: &str, key: &str) -> Result<(), CatalogError> {
    if key.is_empty() || key.len() > 1024 || key.chars().any(|c| c.is_control()) {
        return Err(CatalogError::Invalid {
            url: url.to_string(),
            message: format!("invalid key {key:?}: it must be 1-1024 printable characters"),
        });
    }
    Ok(())
}

/// A parsed catalog URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogUrl {
    Local(PathBuf),
    Etcd {
        endpoints: Vec<String>,
        prefix: String,
    },
    Consul {
        address: String,
    },
}

pub fn parse_url(url: &str) -> Result<CatalogUrl, CatalogError> {
    let bad = |message: &str| CatalogError::BadUrl {
        url: url.to_string(),
        message: message.to_string(),
    };
    if let Some(path) = url.strip_prefix("local://") {
        if !path.starts_with('/') {
            return Err(bad(
                "a local catalog needs an absolute path: local:///var/lib/autopilot/catalog",
            ));
        }
        return Ok(CatalogUrl::Local(PathBuf::from(path)));
    }
    if let Some(rest) = url.strip_prefix("etcd://") {
        let (hosts, prefix) = match rest.split_once('/') {
            Some((h, p)) => (h, format!("/{}", p.trim_matches('/'))),
            None => (rest, "/autopilot".to_string()),
        };
        let endpoints: Vec<String> = hosts
            .split(',')
            .filter(|h| !h.is_empty())
            .map(str::to_string)
            .collect();
        if endpoints.is_empty() {
            return Err(bad(
                "no etcd endpoints: etcd://host1:2379,host2:2379/prefix",
            ));
        }
        let prefix = if prefix == "/" {
            "/autopilot".to_string()
        } else {
            prefix
        };
        return Ok(CatalogUrl::Etcd { endpoints, prefix });
    }
    if let Some(addr) = url.strip_prefix("consul://") {
        if addr.is_empty() {
            return Err(bad("no consul address: consul://host:8500"));
        }
        return Ok(CatalogUrl::Consul {
            address: addr.trim_end_matches('/').to_string(),
        });
    }
    Err(bad(
        "expected local:///path, etcd://host:port[,...]/prefix or consul://host:port",
    ))
}

/// The catalog used when nothing is configured: a fixed path for root, the
/// XDG state directory otherwise.
pub fn default_url(env: &BTreeMap<String, String>, is_root: bool) -> String {
    if is_root {
        return "local:///var/lib/autopilot/catalog".to_string();
    }
    let state = env
        .get("XDG_STATE_HOME")
        .filter(|s| s.starts_with('/'))
        .cloned()
        .or_else(|| env.get("HOME").map(|h| format!("{h}/.local/state")))
        .unwrap_or_else(|| "/tmp".to_string());
    format!("local://{state}/autopilot")
}

/// Picks the catalog: an explicit choice (`--catalog`), then
/// `$AUTOPILOT_CATALOG`, then the config's `catalog`, then the default.
pub fn select_url(
    explicit: Option<&str>,
    env: &BTreeMap<String, String>,
    config: Option<&str>,
    is_root: bool,
) -> String {
    explicit
        .map(str::to_string)
        .or_else(|| {
            env.get("AUTOPILOT_CATALOG")
                .filter(|s| !s.is_empty())
                .cloned()
        })
        .or_else(|| config.map(str::to_string))
        .unwrap_or_else(|| default_url(env, is_root))
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Formats milliseconds since the epoch as RFC 3339 in UTC.
pub fn rfc3339_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil-from-days (Howard Hinnant's algorithm), valid for the proleptic Gregorian calendar.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("local:///srv/lab/catalog").ok(),
            Some(CatalogUrl::Local("/srv/lab/catalog".into()))
        );
        assert!(parse_url("local://relative").is_err());
        assert_eq!(
            parse_url("etcd://a:2379,b:2379/env1").ok(),
            Some(CatalogUrl::Etcd {
                endpoints: vec!["a:2379".into(), "b:2379".into()],
                prefix: "/env1".into()
            })
        );
        assert_eq!(
            parse_url("etcd://a:2379").ok(),
            Some(CatalogUrl::Etcd {
                endpoints: vec!["a:2379".into()],
                prefix: "/autopilot".into()
            })
        );
        assert!(parse_url("zk://x").is_err());
        let mut env = BTreeMap::new();
        env.insert("HOME".to_string(), "/home/u".to_string());
        assert_eq!(
            default_url(&env, false),
            "local:///home/u/.local/state/autopilot"
        );
        env.insert("XDG_STATE_HOME".to_string(), "/st".to_string());
        assert_eq!(default_url(&env, false), "local:///st/autopilot");
        assert_eq!(
            default_url(&env, true),
            "local:///var/lib/autopilot/catalog"
        );
        assert_eq!(
            select_url(None, &env, Some("local:///c"), false),
            "local:///c"
        );
        env.insert("AUTOPILOT_CATALOG".to_string(), "local:///e".to_string());
        assert_eq!(
            select_url(None, &env, Some("local:///c"), false),
            "local:///e"
        );
        assert_eq!(
            select_url(Some("local:///f"), &env, Some("local:///c"), false),
            "local:///f"
        );
    }

    #[test]
    fn backoff_is_jittered_and_bounded() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(5));
        let mut b = Backoff::new(min, max);
        let mut caps = Vec::new();
        for _ in 0..12 {
            caps.push(b.current);
            let d = b.next_delay();
            assert!(d <= *caps.last().unwrap(), "{d:?} above {caps:?}");
        }
        assert_eq!(caps[0], min);
        assert_eq!(caps[1], min * 2);
        assert_eq!(*caps.last().unwrap(), max);
        // Not a fixed sequence: 200 draws from [0, 5s] are not all equal.
        let draws: std::collections::BTreeSet<_> = (0..200).map(|_| b.next_delay()).collect();
        assert!(draws.len() > 100, "{}", draws.len());
        assert!(draws.iter().any(|d| *d < max / 2) && draws.iter().any(|d| *d > max / 2));
        b.reset();
        assert!(b.next_delay() <= min);
        let s = b.spread(Duration::from_secs(2));
        assert!(s >= Duration::from_secs(1) && s <= Duration::from_secs(2));
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_ms(1_795_000_000_123), "2026-11-18T11:06:40.123Z");
        assert_eq!(rfc3339_ms(951_782_400_000), "2000-02-29T00:00:00.000Z");
    }
}
