//! The etcd v3 catalog: the one place that holds the connection and the agent's session (its lease), and the watch stream.
//!
//! Key layout (see `docs/etcd-layout.md`), under a prefix (default `/autopilot`):
//! - `<prefix>/instances/<service>/<id>`: one JSON entry per registered job,
//!   attached to its agent's lease;
//! - `<prefix>/agents/<session>`: one per live agent, on the same lease.
//!
//! Every agent has one lease. Its entries are puts on that lease, status
//! changes are puts to the same key, and one keep-alive stream keeps
//! everything alive. When the lease is lost (etcd was unreachable or stalled
//! longer than the TTL, or restarted empty) a new one is granted and every
//! entry of the session is written again, so registrations come back as soon
//! as etcd does; locks held on it are lost, lock waiters queue again.
//! An entry bound to an election seat lives on the seat's lease instead, and
//! dies with the seat. Every request has a deadline.
//!
//! One watch stream per agent covers only what readers need
//! (`elections/`, `instances/`, `kv/` and `locks/`: one key range), and is
//! demultiplexed here: [`Catalog::changes_under`] receivers are bumped only
//! by events under their prefix, so a write wakes the readers of that key,
//! not every task of every agent.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use autopilot_catalog::{
    Candidate, Catalog, CatalogError, Instance, Leader, Registration, Seat, ServiceSummary, Status,
    now_ms, rfc3339_ms,
};
use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, GetOptions, Identity,
    LeaseKeepAliveStream, LeaseKeeper, LockOptions, PutOptions, SortOrder, SortTarget, TlsOptions,
    Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{Mutex, watch};

/// Every request gives up after this long, so an unreachable cluster turns
/// into a retryable error quickly instead of a hang.
const OP_TIMEOUT: Duration = Duration::from_secs(2);

/// A lock wait is asked again this often, so a stalled connection is found
/// out (and a replaced lease noticed) while waiting.
const LOCK_WAIT: Duration = Duration::from_secs(2);

/// A watch stream silent this long is asked for its progress, which must
/// come within `OP_TIMEOUT`: a stalled connection is not a quiet one. A dead
/// connection is found sooner by the HTTP/2 pings (`PING_INTERVAL` +
/// `PING_TIMEOUT`); this catches a stream the server stopped serving on a
/// live connection, at a cost of one message per agent per 30 s at idle.
const WATCH_IDLE: Duration = Duration::from_secs(30);

/// HTTP/2 keep-alive pings: at least etcd's `--grpc-keepalive-min-time`
/// (5 s by default), or etcd answers GOAWAY "too_many_pings" and drops the
/// connection with every stream on it. A stalled cluster is still found
/// out quickly: every request has its own deadline, and a silent watch is
/// asked for its progress.
const PING_INTERVAL: Duration = Duration::from_secs(10);
const PING_TIMEOUT: Duration = Duration::from_secs(5);

/// The sub-trees of the prefix the watch stream covers, as one key range:
/// `elections/` < `instances/` < `kv/` < `locks/` sort together, and
/// `agents/` (sessions) and `terms/` (written with the seat) fall outside.
const WATCH_FROM: &str = "elections/";
const WATCH_TO: &str = "locks0";

/// How to reach and authenticate to etcd.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EtcdOptions {
    pub endpoints: Vec<String>,
    pub prefix: String,
    /// CA certificate (PEM) to verify the servers; enables TLS.
    pub ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for client-certificate auth.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<String>,
    /// The agent's lease TTL.
    pub lease_ttl: Duration,
}

/// An entry as stored under `<prefix>/instances/<service>/<id>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Entry {
    id: String,
    name: String,
    address: String,
    port: u16,
    tags: Vec<String>,
    status: Status,
    /// The session that owns the entry.
    owner: String,
    registered_ms: u64,
    #[serde(default)]
    critical_since_ms: Option<u64>,
    #[serde(default)]
    deregister_after_ms: Option<u64>,
    /// The election seat the entry is bound to: it is written on that
    /// seat's lease, never on the session's (not stored in etcd).
    #[serde(skip)]
    seat: Option<Seat>,
}

struct Session {
    lease: Option<i64>,
    keeper: Option<(LeaseKeeper, LeaseKeepAliveStream)>,
    /// This agent's entries by ID, rewritten on every new session lease
    /// (except seat-bound ones, which live on their seat's lease).
    owned: BTreeMap<String, Entry>,
    last_keep_alive_ms: u64,
    /// When etcd last confirmed the lease (granted or kept alive), by the
    /// monotonic clock: a lease not confirmed for a whole TTL is expired.
    confirmed: Option<std::time::Instant>,
    /// Locks held, by name: the ownership key etcd returned.
    locks: BTreeMap<String, Vec<u8>>,
    /// Elections led, by name: the election's own lease (its TTL is the
    /// election's, not the session's), the term won, and the seat key's
    /// create revision (what seat-bound writes compare against).
    elections: BTreeMap<String, (i64, u64, i64)>,
}

/// The value of `<prefix>/elections/<name>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct LeaderValue {
    id: String,
    address: String,
    port: u16,
    owner: String,
    /// The fencing token. Seats written before terms were counted have none:
    /// their key's create revision is their term.
    #[serde(default)]
    term: u64,
}

/// The connection: one client per endpoint and a pinned current endpoint.
/// Requests go to the pinned endpoint; a connection failure moves the pin
/// to the next one and retries, so losing a member costs a retry and a log
/// line, not an error. (etcd-client's own balancer keeps sending requests
/// to a dead member.)
struct Conn {
    url: String,
    endpoints: Vec<String>,
    options: ConnectOptions,
    clients: Vec<Mutex<Option<Client>>>,
    pinned: std::sync::atomic::AtomicUsize,
    /// Attempts per request: two per endpoint, plus one.
    attempts: usize,
}

impl Conn {
    async fn client(&self, idx: usize) -> Result<Client, CatalogError> {
        let mut slot = self.clients[idx].lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let ep = self.endpoints[idx].clone();
        let connected = tokio::time::timeout(
            OP_TIMEOUT,
            Client::connect([ep.clone()], Some(self.options.clone())),
        )
        .await;
        match connected {
            Ok(Ok(c)) => {
                *slot = Some(c.clone());
                Ok(c)
            }
            Ok(Err(e)) if is_auth_error(&e) => Err(CatalogError::Invalid {
                url: self.url.clone(),
                message: format!("authentication failed: {}", describe(&e)),
            }),
            // An endpoint that is not a URL never connects: a config error.
            Ok(Err(
                e @ (etcd_client::Error::InvalidUri(_) | etcd_client::Error::InvalidArgs(_)),
            )) => Err(CatalogError::Invalid {
                url: self.url.clone(),
                message: format!("invalid endpoint {ep}: {}", describe(&e)),
            }),
            Ok(Err(e)) => Err(CatalogError::Unavailable {
                url: self.url.clone(),
                message: format!("{ep}: {}", describe(&e)),
            }),
            Err(_) => Err(CatalogError::Unavailable {
                url: self.url.clone(),
                message: format!("{ep}: no answer within {}s", OP_TIMEOUT.as_secs()),
            }),
        }
    }

    /// Moves the pin off a failed endpoint (unless another request already did).
    fn fail(&self, idx: usize, why: &str) {
        let next = (idx + 1) % self.endpoints.len();
        let moved = self
            .pinned
            .compare_exchange(
                idx,
                next,
                std::sync::atomic::Ordering::SeqCst,
                std::sync::atomic::Ordering::SeqCst,
            )
            .is_ok();
        if moved && self.endpoints.len() > 1 {
            tracing::warn!(
                catalog = %self.url,
                "etcd endpoint {} failed ({why}); failing over to {}",
                self.endpoints[idx],
                self.endpoints[next]
            );
        }
    }

    async fn put(
        &self,
        key: String,
        value: String,
        lease: Option<i64>,
    ) -> Result<(), CatalogError> {
        let opts = lease.map(|l| PutOptions::new().with_lease(l));
        self.call(|mut c| {
            let (k, v, o) = (key.clone(), value.clone(), opts.clone());
            async move { c.put(k, v, o).await }
        })
        .await
        .map(|_| ())
    }

    /// Returns how many keys it deleted.
    async fn delete(&self, key: String) -> Result<i64, CatalogError> {
        self.call(|mut c| {
            let k = key.clone();
            async move { c.delete(k, None).await }
        })
        .await
        .map(|r| r.deleted())
    }

    async fn get(
        &self,
        key: String,
        prefix: bool,
    ) -> Result<etcd_client::GetResponse, CatalogError> {
        self.call(|mut c| {
            let k = key.clone();
            let opts = prefix.then(|| GetOptions::new().with_prefix());
            async move { c.get(k, opts).await }
        })
        .await
    }

    /// Runs one request on the pinned endpoint, failing over on connection
    /// errors. Every write here is idempotent, so retrying is safe.
    async fn call<T, F, Fut>(&self, mut f: F) -> Result<T, CatalogError>
    where
        F: FnMut(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let mut last = String::new();
        let mut backoff =
            autopilot_catalog::Backoff::new(Duration::from_millis(50), Duration::from_millis(400));
        for attempt in 0..self.attempts {
            if attempt >= self.endpoints.len() {
                // Every endpoint failed once: the cluster may be electing a
                // leader. Back off a little (jittered) before going round again.
                tokio::time::sleep(backoff.next_delay()).await;
            }
            let idx = self.pinned.load(std::sync::atomic::Ordering::SeqCst) % self.endpoints.len();
            let client = match self.client(idx).await {
                Ok(c) => c,
                Err(CatalogError::Unavailable { message, .. }) => {
                    self.fail(idx, &message);
                    last = message;
                    continue;
                }
                Err(e) => return Err(e),
            };
            match timed(&self.url, f(client)).await {
                Err(CatalogError::Unavailable { message, .. }) if is_transport(&message) => {
                    self.fail(idx, &message);
                    last = message;
                }
                other => return other,
            }
        }
        Err(CatalogError::Unavailable {
            url: self.url.clone(),
            message: last,
        })
    }
}

pub struct EtcdCatalog {
    url: String,
    prefix: String,
    owner: String,
    conn: std::sync::Arc<Conn>,
    lease_ttl: Duration,
    session: Mutex<Session>,
    changes: watch::Receiver<u64>,
    /// Per-prefix change counters fed by the watch stream.
    notifier: std::sync::Arc<Notifier>,
    /// One keep-alive stream per election lease held, for its life.
    election_keepers: Mutex<BTreeMap<String, (i64, LeaseKeeper, LeaseKeepAliveStream)>>,
    /// Bumped with every new session lease, so lock waiters re-queue on it.
    lease_epoch: watch::Sender<u64>,
    /// The highest term this agent has seen per election: after etcd lost
    /// its data (the term counter with it), new terms still start above it.
    terms_seen: std::sync::Mutex<BTreeMap<String, u64>>,
    watcher: tokio::task::JoinHandle<()>,
}

impl Drop for EtcdCatalog {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

fn describe(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            let msg = s.message();
            if msg.is_empty() {
                format!("{:?}", s.code())
            } else {
                msg.to_string()
            }
        }
        other => {
            // Transport errors bury the cause; surface the innermost one.
            let mut text = other.to_string();
            let mut src: Option<&dyn std::error::Error> = std::error::Error::source(other);
            while let Some(s) = src {
                text = s.to_string();
                src = s.source();
            }
            text
        }
    }
}

/// A failure worth retrying at once: the connection failed, or the cluster
/// is between leaders. Every write here is idempotent, so a retry after a
/// timeout is safe.
fn is_transport(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "connect",
        "transport",
        "unavailable",
        "broken pipe",
        "connection",
        "no answer within",
        "timeout",
        "timed out",
        "leader",
        "canceled",
        "http2",
        "h2 protocol",
        "reset",
    ]
    .iter()
    .any(|w| m.contains(w))
}

fn is_auth_error(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s)
        // gRPC codes 16 (unauthenticated) and 7 (permission denied).
        if matches!(i32::from(s.code()), 16 | 7)
            || s.message().contains("authentication failed")
            || s.message().contains("permission denied")
            || s.message().contains("user name is empty"))
}

async fn timed<T>(
    url: &str,
    fut: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, CatalogError> {
    match tokio::time::timeout(OP_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) if is_auth_error(&e) => Err(CatalogError::Invalid {
            url: url.to_string(),
            message: describe(&e),
        }),
        Ok(Err(e)) => Err(CatalogError::Unavailable {
            url: url.to_string(),
            message: describe(&e),
        }),
        Err(_) => Err(CatalogError::Unavailable {
            url: url.to_string(),
            message: format!("no answer within {}s", OP_TIMEOUT.as_secs()),
        }),
    }
}

/// What a PEM file must hold.
#[derive(Clone, Copy)]
enum Pem {
    Certificate,
    Key,
}

/// Reads a PEM file and checks that it holds what it should, so a wrong
/// file is named here rather than failing later as a transport error.
fn read_pem(url: &str, what: &str, path: &PathBuf, kind: Pem) -> Result<Vec<u8>, CatalogError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let invalid = |message: String| CatalogError::Invalid {
        url: url.to_string(),
        message,
    };
    let bytes = std::fs::read(path)
        .map_err(|e| invalid(format!("cannot read the {what} {}: {e}", path.display())))?;
    let ok = match kind {
        Pem::Certificate => {
            let mut certs = CertificateDer::pem_slice_iter(&bytes);
            matches!(certs.next(), Some(Ok(_))) && certs.all(|c| c.is_ok())
        }
        Pem::Key => PrivateKeyDer::from_pem_slice(&bytes).is_ok(),
    };
    if !ok {
        let want = match kind {
            Pem::Certificate => "PEM certificate (-----BEGIN CERTIFICATE-----)",
            Pem::Key => "PEM private key (-----BEGIN PRIVATE KEY-----)",
        };
        return Err(invalid(format!(
            "the {what} {} is not a {want}",
            path.display()
        )));
    }
    Ok(bytes)
}

/// Refuses a client certificate outside its validity period here: a TLS 1.3
/// server checks it after the handshake and just drops the connection, so
/// the server's reason never reaches us.
fn check_validity(url: &str, path: &std::path::Path, pem: &[u8]) -> Result<(), CatalogError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let Some(Ok(der)) = CertificateDer::pem_slice_iter(pem).next() else {
        return Ok(());
    };
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der.as_ref()) else {
        return Ok(());
    };
    let validity = cert.validity();
    let now = x509_parser::time::ASN1Time::now();
    let problem = if now > validity.not_after {
        Some(format!("expired on {}", validity.not_after))
    } else if now < validity.not_before {
        Some(format!("is not valid until {}", validity.not_before))
    } else {
        None
    };
    match problem {
        Some(p) => Err(CatalogError::Invalid {
            url: url.to_string(),
            message: format!(
                "the client certificate {} {p}; the server would refuse it",
                path.display()
            ),
        }),
        None => Ok(()),
    }
}

/// Turns a TLS failure into what is wrong and which file to look at; `None`
/// when the message is not about TLS (the cluster is down or silent).
fn explain_tls(message: &str, opts: &EtcdOptions) -> Option<String> {
    let file = |p: &Option<PathBuf>, none: &str| {
        p.as_ref()
            .map_or_else(|| none.to_string(), |p| p.display().to_string())
    };
    let ca = file(&opts.ca, "the system's trusted roots");
    let cert = file(&opts.cert, "(none given)");
    let hosts = opts.endpoints.join(", ");
    let server = message.contains("invalid peer certificate");
    let alert = message.contains("alert");
    let has = |words: &[&str]| words.iter().any(|w| message.contains(w));
    let hint = if server && has(&["UnknownIssuer", "BadSignature", "unknown issuer"]) {
        format!("the server's certificate is not signed by the CA in {ca}")
    } else if server && has(&["Expired", "expired"]) {
        format!("the server's certificate has expired (verified with the CA in {ca})")
    } else if server && has(&["NotValidYet", "not valid yet"]) {
        format!("the server's certificate is not valid yet (verified with the CA in {ca})")
    } else if server && has(&["NotValidForName", "not valid for name"]) {
        format!(
            "the server's certificate is not valid for the host name it was reached by ({hosts}; verified with the CA in {ca})"
        )
    } else if alert && message.contains("CertificateExpired") {
        format!("the server refused the client certificate {cert}: it has expired")
    } else if alert
        && [
            "BadCertificate",
            "UnknownCA",
            "CertificateRequired",
            "DecryptError",
        ]
        .iter()
        .any(|a| message.contains(a))
    {
        format!(
            "the server refused the client certificate {cert} (not signed by a CA it trusts, or missing)"
        )
    } else if opts.cert.is_some()
        && ["canceled", "reset", "broken pipe", "closed"]
            .iter()
            .any(|w| message.to_ascii_lowercase().contains(w))
    {
        // A TLS 1.3 server checks the client certificate after the
        // handshake and just drops the connection: the alert is lost.
        format!(
            "the server dropped the connection after the TLS handshake: it probably refused the client certificate {cert} (expired, not yet valid, or not signed by a CA it trusts)"
        )
    } else if message.contains("InvalidContentType") || message.contains("CorruptMessage") {
        format!("the server at {hosts} does not speak TLS (CA {ca} given)")
    } else if server || alert || has(&["tls", "TLS", "certificate", "handshake"]) {
        // A TLS failure this list does not know is still a TLS failure: a
        // config error, not an unreachable cluster.
        format!("the TLS handshake with {hosts} failed (CA {ca}, client certificate {cert})")
    } else {
        return None;
    };
    Some(format!("{hint} ({message})"))
}

impl EtcdCatalog {
    /// Connects, checks that the prefix can be read and written with these
    /// credentials, and starts the watch stream. A configuration error (bad
    /// prefix, endpoint URL, TLS material, credentials or permissions) is
    /// [`CatalogError::Invalid`]; a cluster that refuses connections or does
    /// not answer is [`CatalogError::Unavailable`].
    pub async fn connect(opts: EtcdOptions, owner: &str) -> Result<EtcdCatalog, CatalogError> {
        Self::open(opts, owner, true).await
    }

    /// [`EtcdCatalog::connect`] for a reader: the start-up check only reads,
    /// so a user with a read-only role can connect, and connecting writes
    /// nothing (no revision, no watcher woken).
    pub async fn connect_read_only(
        opts: EtcdOptions,
        owner: &str,
    ) -> Result<EtcdCatalog, CatalogError> {
        Self::open(opts, owner, false).await
    }

    async fn open(
        opts: EtcdOptions,
        owner: &str,
        write: bool,
    ) -> Result<EtcdCatalog, CatalogError> {
        let url = format!("etcd://{}{}", opts.endpoints.join(","), opts.prefix);
        let invalid = |message: String| CatalogError::Invalid {
            url: url.clone(),
            message,
        };
        if !opts.prefix.starts_with('/') || opts.prefix.contains("//") {
            return Err(invalid(format!(
                "the key prefix {:?} must start with '/' and have no empty segments",
                opts.prefix
            )));
        }
        let mut connect = ConnectOptions::new()
            .with_connect_timeout(OP_TIMEOUT)
            .with_timeout(OP_TIMEOUT)
            .with_keep_alive(PING_INTERVAL, PING_TIMEOUT);
        let tls = opts.ca.is_some() || opts.cert.is_some();
        if tls {
            let mut t = TlsOptions::new();
            if let Some(ca) = &opts.ca {
                t = t.ca_certificate(Certificate::from_pem(read_pem(
                    &url,
                    "CA certificate",
                    ca,
                    Pem::Certificate,
                )?));
            }
            match (&opts.cert, &opts.key) {
                (Some(c), Some(k)) => {
                    let cert = read_pem(&url, "client certificate", c, Pem::Certificate)?;
                    check_validity(&url, c, &cert)?;
                    t = t.identity(Identity::from_pem(
                        cert,
                        read_pem(&url, "client key", k, Pem::Key)?,
                    ));
                }
                (None, None) => {}
                _ => {
                    return Err(invalid(
                        "a client certificate needs both cert and key".into(),
                    ));
                }
            }
            connect = connect.with_tls(t);
        }
        if let (Some(u), Some(p)) = (&opts.username, &opts.password) {
            connect = connect.with_user(u.clone(), p.clone());
        }
        let scheme = if tls { "https" } else { "http" };
        let endpoints: Vec<String> = opts
            .endpoints
            .iter()
            .map(|e| {
                if e.contains("://") {
                    e.clone()
                } else {
                    format!("{scheme}://{e}")
                }
            })
            .collect();
        // A port that is not a port connects nowhere: a config error, not
        // an unreachable cluster (the client only finds out on connect).
        for e in &endpoints {
            let authority = e.split_once("://").map_or(e.as_str(), |(_, r)| r);
            let authority = authority.split('/').next().unwrap_or(authority);
            let port = match authority.rsplit_once(':') {
                Some((host, port)) if !host.ends_with(':') && !port.ends_with(']') => Some(port),
                _ => None,
            };
            if let Some(port) = port
                && !port.parse::<u16>().is_ok_and(|p| p != 0)
            {
                return Err(invalid(format!(
                    "invalid endpoint {e}: the port \"{port}\" is not a number from 1 to 65535"
                )));
            }
        }
        let n = endpoints.len();
        let conn = std::sync::Arc::new(Conn {
            url: url.clone(),
            clients: (0..n).map(|_| Mutex::new(None)).collect(),
            endpoints,
            options: connect,
            pinned: std::sync::atomic::AtomicUsize::new(0),
            attempts: 2 * n + 1,
        });
        // One request proves reachability, credentials and permissions
        // before any job starts, and writes nothing (no revision, no watcher
        // woken, whatever the number of agents starting): a reader reads one
        // key; a writer sends a transaction whose condition can never hold
        // (a create revision below 0) with a put on the success side and the
        // same read on the other. etcd checks the permissions of both sides
        // of a transaction before evaluating it, so a user who may not write
        // the prefix is refused, yet nothing is ever written.
        let probe = format!("{}/agents/{owner}", opts.prefix);
        let prefix = opts.prefix.clone();
        let checked = conn
            .call(|mut client| {
                let (prefix, probe) = (prefix.clone(), probe.clone());
                async move {
                    let read = GetOptions::new()
                        .with_prefix()
                        .with_keys_only()
                        .with_limit(1);
                    let header = if write {
                        let txn = Txn::new()
                            .when([Compare::create_revision(probe.clone(), CompareOp::Less, 0)])
                            .and_then([TxnOp::put(probe, "", None)])
                            .or_else([TxnOp::get(format!("{prefix}/"), Some(read))]);
                        client.txn(txn).await?.header().cloned()
                    } else {
                        client
                            .get(format!("{prefix}/"), Some(read))
                            .await?
                            .header()
                            .cloned()
                    };
                    Ok(header.map(|h| h.revision()).unwrap_or(0))
                }
            })
            .await;
        let rev = match checked {
            Ok(rev) => rev,
            Err(CatalogError::Invalid { message, .. }) if message.contains("permission denied") => {
                return Err(invalid(format!(
                    "not allowed to use the prefix {}: {message}",
                    opts.prefix
                )));
            }
            Err(CatalogError::Invalid { message, .. })
                if message.starts_with("authentication failed")
                    || message.starts_with("invalid endpoint") =>
            {
                return Err(invalid(message));
            }
            Err(CatalogError::Invalid { message, .. }) => {
                return Err(invalid(format!("authentication failed: {message}")));
            }
            // A TLS mistake is a config error; a cluster that is down or
            // silent is unreachable (retrying may help, exit 3 in the CLI).
            Err(CatalogError::Unavailable { message, .. }) => {
                let eps = opts.endpoints.join(", ");
                return Err(match explain_tls(&message, &opts) {
                    Some(tls) => invalid(format!("cannot use the cluster ({eps}): {tls}")),
                    None => CatalogError::Unavailable {
                        url: url.clone(),
                        message: format!("cannot reach the cluster ({eps}): {message}"),
                    },
                });
            }
            Err(e) => return Err(e),
        };
        let (tx, rx) = watch::channel(0u64);
        let notifier = std::sync::Arc::new(Notifier {
            all: tx,
            under: std::sync::Mutex::new(Vec::new()),
        });
        let watcher = tokio::spawn(watch_loop(
            conn.clone(),
            (
                format!("{}/{WATCH_FROM}", opts.prefix),
                format!("{}/{WATCH_TO}", opts.prefix),
            ),
            rev,
            notifier.clone(),
        ));
        Ok(EtcdCatalog {
            url,
            prefix: opts.prefix,
            owner: owner.to_string(),
            conn,
            lease_ttl: opts.lease_ttl.max(Duration::from_secs(1)),
            session: Mutex::new(Session {
                lease: None,
                keeper: None,
                owned: BTreeMap::new(),
                last_keep_alive_ms: 0,
                confirmed: None,
                locks: BTreeMap::new(),
                elections: BTreeMap::new(),
            }),
            changes: rx,
            notifier,
            election_keepers: Mutex::new(BTreeMap::new()),
            lease_epoch: watch::channel(0u64).0,
            terms_seen: std::sync::Mutex::new(BTreeMap::new()),
            watcher,
        })
    }

    /// A service's entries with the lease each is attached to.
    async fn entries(&self, service: &str) -> Result<Vec<(Entry, i64)>, CatalogError> {
        let resp = self
            .conn
            .get(format!("{}/instances/{service}/", self.prefix), true)
            .await?;
        Ok(resp
            .kvs()
            .iter()
            .filter_map(|kv| parse_entry(kv.value()).map(|e| (e, kv.lease())))
            .filter(|(e, _)| e.name == service)
            .collect())
    }

    /// [`Catalog::instances`] with every instance's real last heartbeat,
    /// read from its lease without any write: a keep-alive resets the
    /// lease's remaining TTL to the granted one, so the last keep-alive was
    /// `granted - remaining` seconds ago (1 s resolution). One
    /// LeaseTimeToLive request per distinct lease (one per agent), so this
    /// is for people (`autopilot catalog instances`), not for watches.
    pub async fn instances_with_heartbeats(
        &self,
        service: &str,
    ) -> Result<Vec<Instance>, CatalogError> {
        let mine_ms = self.session.lock().await.last_keep_alive_ms;
        let entries = self.entries(service).await?;
        let mut beats: BTreeMap<i64, u64> = BTreeMap::new();
        for (e, lease) in &entries {
            if e.owner == self.owner || *lease == 0 || beats.contains_key(lease) {
                continue;
            }
            let id = *lease;
            let resp = self
                .conn
                .call(|mut c| async move { c.lease_time_to_live(id, None).await })
                .await?;
            // A lease that just expired (ttl -1) keeps the last write's time.
            let beat = if resp.ttl() >= 0 {
                let since_s = resp.granted_ttl().saturating_sub(resp.ttl()).max(0);
                let since_ms = u64::try_from(since_s).unwrap_or(0).saturating_mul(1000);
                now_ms().saturating_sub(since_ms)
            } else {
                0
            };
            beats.insert(id, beat);
        }
        let mut out: Vec<Instance> = entries
            .into_iter()
            .map(|(e, lease)| {
                let beat = if e.owner == self.owner {
                    mine_ms
                } else {
                    beats.get(&lease).copied().unwrap_or(0)
                };
                let hb = beat.max(e.registered_ms);
                to_instance(e, hb)
            })
            .collect();
        out.sort();
        Ok(out)
    }

    fn kv_key(&self, key: &str) -> String {
        format!("{}/kv/{key}", self.prefix)
    }

    fn key(&self, e: &Entry) -> String {
        format!("{}/instances/{}/{}", self.prefix, e.name, e.id)
    }

    async fn put_entry(&self, e: &Entry, lease: i64) -> Result<(), CatalogError> {
        self.conn.put(self.key(e), json(e), Some(lease)).await
    }

    fn unavailable(&self, message: String) -> CatalogError {
        CatalogError::Unavailable {
            url: self.url.clone(),
            message,
        }
    }

    /// Makes sure the session has a live lease; a new lease gets the agents
    /// key and every owned entry written again, except seat-bound ones
    /// (they live on their seat's lease, and die with it).
    async fn ensure_lease(&self, s: &mut Session) -> Result<i64, CatalogError> {
        // etcd expires a lease a TTL after the last keep-alive it processed,
        // which was before the last one confirmed here. Past that, the lease
        // is dead even if etcd (back from a stall) has not reaped it yet:
        // writing on it would make entries vanish again a moment later.
        if let (Some(l), Some(at)) = (s.lease, s.confirmed)
            && at.elapsed() > self.lease_ttl
        {
            self.lost_lease(s, &format!("not kept alive for {:?}", at.elapsed()));
            // Revoking frees what the old lease still holds; best effort,
            // bounded by the request deadline.
            let conn = self.conn.clone();
            tokio::spawn(async move {
                let _ = conn
                    .call(|mut c| async move { c.lease_revoke(l).await })
                    .await;
            });
        }
        if let Some(l) = s.lease {
            return Ok(l);
        }
        let ttl = self.lease_ttl.as_secs().max(1) as i64;
        let lease = self
            .conn
            .call(|mut c| async move { c.lease_grant(ttl, None).await })
            .await?
            .id();
        let agent =
            serde_json::json!({ "session": self.owner, "lease": lease, "started_ms": now_ms() })
                .to_string();
        let agent_key = format!("{}/agents/{}", self.prefix, self.owner);
        self.conn.put(agent_key, agent, Some(lease)).await?;
        let mut restored = 0usize;
        for e in s.owned.values().filter(|e| e.seat.is_none()) {
            self.put_entry(e, lease).await?;
            restored += 1;
        }
        if restored > 0 {
            tracing::info!(catalog = %self.url, entries = restored, "new lease; registrations restored");
        }
        s.lease = Some(lease);
        s.keeper = None;
        s.last_keep_alive_ms = now_ms();
        s.confirmed = Some(std::time::Instant::now());
        // Lock waiters queued on the old lease queue again on this one.
        self.lease_epoch.send_modify(|n| *n = n.wrapping_add(1));
        Ok(lease)
    }

    /// Writes one entry: a seat-bound one on its seat's lease, any other on
    /// the session's lease, renewing that lease once if etcd says it is gone.
    async fn write(&self, s: &mut Session, e: &Entry) -> Result<(), CatalogError> {
        if let Some(seat) = &e.seat {
            return self.write_bound(s, e, seat).await;
        }
        for attempt in 0..2 {
            let lease = self.ensure_lease(s).await?;
            match self.put_entry(e, lease).await {
                Ok(_) => return Ok(()),
                Err(CatalogError::Unavailable { message, .. })
                    if attempt == 0 && is_lease_gone(&message) =>
                {
                    self.lost_lease(s, &message);
                }
                Err(err) => return Err(err),
            }
        }
        Err(self.unavailable("the lease keeps expiring".into()))
    }

    /// Writes a seat-bound entry on the election's lease, in a transaction
    /// that succeeds only while the seat key is the one won at that term.
    /// Anything else is `SeatLost`, and nothing is written.
    async fn write_bound(
        &self,
        s: &mut Session,
        e: &Entry,
        seat: &Seat,
    ) -> Result<(), CatalogError> {
        let lost = || CatalogError::SeatLost {
            url: self.url.clone(),
            id: e.id.clone(),
            election: seat.election.clone(),
            term: seat.term,
        };
        let Some(&(lease, term, rev)) = s.elections.get(&seat.election) else {
            return Err(lost());
        };
        if term != seat.term {
            return Err(lost());
        }
        let seat_key = self.election_key(&seat.election);
        let (k, v) = (self.key(e), json(e));
        let resp = self
            .conn
            .call(|mut c| {
                let txn = Txn::new()
                    .when([Compare::create_revision(
                        seat_key.clone(),
                        CompareOp::Equal,
                        rev,
                    )])
                    .and_then([TxnOp::put(
                        k.clone(),
                        v.clone(),
                        Some(PutOptions::new().with_lease(lease)),
                    )]);
                async move { c.txn(txn).await }
            })
            .await;
        match resp {
            Ok(r) if r.succeeded() => Ok(()),
            Ok(_) => {
                self.forget_seat(s, &seat.election);
                Err(lost())
            }
            Err(CatalogError::Unavailable { message, .. }) if is_lease_gone(&message) => {
                self.forget_seat(s, &seat.election);
                Err(lost())
            }
            Err(err) => Err(err),
        }
    }

    /// One keep-alive on the session's lease over its stream (opened on
    /// demand); every step has a deadline. Returns the TTL etcd granted (0:
    /// the lease is gone).
    async fn renew(&self, s: &mut Session, lease: i64) -> Result<i64, CatalogError> {
        if s.keeper.is_none() {
            let pair = self
                .conn
                .call(|mut c| async move { c.lease_keep_alive(lease).await })
                .await?;
            s.keeper = Some(pair);
        }
        let Some((keeper, stream)) = s.keeper.as_mut() else {
            return Err(self.unavailable("no keep-alive stream".into()));
        };
        timed(&self.url, keeper.keep_alive()).await?;
        match tokio::time::timeout(OP_TIMEOUT, stream.message()).await {
            Ok(Ok(Some(resp))) => Ok(resp.ttl()),
            Ok(Ok(None)) => Err(self.unavailable("the keep-alive stream closed".into())),
            Ok(Err(e)) => Err(self.unavailable(describe(&e))),
            Err(_) => Err(self.unavailable(format!(
                "no keep-alive answer within {}s",
                OP_TIMEOUT.as_secs()
            ))),
        }
    }

    /// One keep-alive on an election's lease over its own stream, opened
    /// on the first renewal and kept while it works. Returns the TTL etcd
    /// granted (0: the lease is gone).
    async fn renew_seat(&self, election: &str, lease: i64) -> Result<i64, CatalogError> {
        let mut keepers = self.election_keepers.lock().await;
        let kept = keepers
            .remove(election)
            .filter(|(l, _, _)| *l == lease)
            .map(|(_, k, st)| (k, st));
        let (mut keeper, mut stream) = match kept {
            Some(pair) => pair,
            None => {
                self.conn
                    .call(|mut c| async move { c.lease_keep_alive(lease).await })
                    .await?
            }
        };
        timed(&self.url, keeper.keep_alive()).await?;
        let ttl = match tokio::time::timeout(OP_TIMEOUT, stream.message()).await {
            Ok(Ok(Some(resp))) => resp.ttl(),
            Ok(Ok(None)) => return Err(self.unavailable("the keep-alive stream closed".into())),
            Ok(Err(e)) => return Err(self.unavailable(describe(&e))),
            Err(_) => {
                return Err(self.unavailable(format!(
                    "no keep-alive answer within {}s",
                    OP_TIMEOUT.as_secs()
                )));
            }
        };
        if ttl > 0 {
            keepers.insert(election.to_string(), (lease, keeper, stream));
        }
        Ok(ttl)
    }

    /// The session's lease is gone (expired or the cluster forgot it). Its
    /// entries are rewritten on the next lease; locks held on it are lost:
    /// someone else may hold them now, so they are never silently taken back.
    fn lost_lease(&self, s: &mut Session, why: &str) {
        if let Some(lease) = s.lease.take() {
            if s.owned.is_empty() && s.locks.is_empty() {
                // Nothing lived on it (the last entry was removed, so no
                // keep-alive was due): an idle lease lapsing loses nothing.
                tracing::debug!(catalog = %self.url, "idle session lease {lease:x} lapsed ({why}); taking a new one");
            } else {
                tracing::warn!(catalog = %self.url, "session lease {lease:x} lost ({why}); taking a new one and registering again");
            }
        }
        s.keeper = None;
        for name in std::mem::take(&mut s.locks).keys() {
            tracing::warn!(catalog = %self.url, lock = %name, "lock lost with the session lease; released, not re-acquired");
        }
    }

    /// A seat this session held is gone (resigned, expired, or replaced):
    /// its bound entries went with its lease.
    fn forget_seat(&self, s: &mut Session, election: &str) {
        s.elections.remove(election);
        s.owned
            .retain(|_, e| e.seat.as_ref().is_none_or(|seat| seat.election != election));
    }

    fn election_key(&self, election: &str) -> String {
        format!("{}/elections/{election}", self.prefix)
    }

    /// The election's term counter: the last term granted. It has no lease,
    /// so it outlives every seat.
    fn term_key(&self, election: &str) -> String {
        format!("{}/terms/{election}", self.prefix)
    }

    fn saw_term(&self, election: &str, term: u64) {
        let mut seen = self.terms_seen.lock().unwrap_or_else(|e| e.into_inner());
        let t = seen.entry(election.to_string()).or_default();
        *t = (*t).max(term);
    }

    fn seen_term(&self, election: &str) -> u64 {
        self.terms_seen
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(election)
            .copied()
            .unwrap_or(0)
    }
}

/// etcd no longer knows the lease (it expired, or the cluster lost its data).
fn is_lease_gone(message: &str) -> bool {
    message.contains("lease not found")
}

fn json(e: &Entry) -> String {
    serde_json::to_string(e).unwrap_or_default()
}

/// Data from the cluster is not trusted: unparsable entries are skipped.
fn parse_entry(v: &[u8]) -> Option<Entry> {
    serde_json::from_slice(v).ok()
}

fn to_instance(e: Entry, heartbeat_ms: u64) -> Instance {
    Instance {
        id: e.id,
        name: e.name,
        address: e.address,
        port: e.port,
        tags: e.tags,
        status: e.status,
        last_heartbeat: rfc3339_ms(heartbeat_ms),
    }
}

/// The change counters the watch stream feeds: one for everything it
/// covers ([`Catalog::changes`]) and one per prefix asked for
/// ([`Catalog::changes_under`]), shared by every receiver of that prefix.
struct Notifier {
    all: watch::Sender<u64>,
    /// Full key prefixes (with the catalog's prefix) and their counters.
    under: std::sync::Mutex<Vec<(Vec<u8>, watch::Sender<u64>)>>,
}

impl Notifier {
    fn subscribe(&self, full_prefix: &str) -> watch::Receiver<u64> {
        let mut under = self.under.lock().unwrap_or_else(|e| e.into_inner());
        // Counters nobody listens to any more are dropped here (bounded by
        // the number of distinct prefixes live readers ask for).
        under.retain(|(_, tx)| tx.receiver_count() > 0);
        if let Some((_, tx)) = under.iter().find(|(p, _)| p == full_prefix.as_bytes()) {
            return tx.subscribe();
        }
        let (tx, rx) = watch::channel(0u64);
        under.push((full_prefix.as_bytes().to_vec(), tx));
        rx
    }

    /// Bumps the counters whose prefix starts one of `keys` (each once),
    /// and the counter of everything if there was any key.
    fn keys(&self, keys: &[&[u8]]) {
        if keys.is_empty() {
            return;
        }
        self.all.send_modify(|n| *n = n.wrapping_add(1));
        let under = self.under.lock().unwrap_or_else(|e| e.into_inner());
        for (p, tx) in under.iter() {
            if keys.iter().any(|k| k.starts_with(p)) {
                tx.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
    }

    /// Bumps every counter: the stream resumed, was compacted or the
    /// cluster was reset, so anything may have changed.
    fn everything(&self) {
        self.all.send_modify(|n| *n = n.wrapping_add(1));
        let under = self.under.lock().unwrap_or_else(|e| e.into_inner());
        for (_, tx) in under.iter() {
            tx.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Whether the catalog (which holds a receiver of `all`) is gone.
    fn closed(&self) -> bool {
        self.all.is_closed()
    }
}

/// Follows every change in the watched range from a known revision. After a
/// broken stream it resumes from the last revision seen, so no change is
/// missed; if that revision was compacted away, or the cluster was reset
/// (its revision went backwards or its cluster ID changed, as after a
/// restart with an empty data dir), it notifies (readers re-read
/// everything) and resumes from the present. Every wait has a deadline: a
/// silent stream is asked for its progress, which must come in time.
/// Retries back off exponentially with full jitter (50 ms to 1 s), so a
/// fleet whose cluster came back does not reconnect in one wave.
async fn watch_loop(
    conn: std::sync::Arc<Conn>,
    range: (String, String),
    start_rev: i64,
    notifier: std::sync::Arc<Notifier>,
) {
    let url = conn.url.clone();
    let mut rev = start_rev;
    let mut cluster: Option<u64> = None;
    // Capped at 1 s: watches see changes again within about a second of the
    // cluster's return, and 1000 agents reconnect at most 1000 times a second.
    let mut backoff =
        autopilot_catalog::Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
    let mut outage = autopilot_catalog::Outage::default();
    let (from, to) = range;
    loop {
        let idx = conn.pinned.load(std::sync::atomic::Ordering::SeqCst) % conn.endpoints.len();
        let opts = WatchOptions::new()
            .with_range(to.clone())
            .with_start_revision(rev.saturating_add(1));
        let stream = match conn.client(idx).await {
            Ok(mut c) => tokio::time::timeout(OP_TIMEOUT, c.watch(from.clone(), Some(opts)))
                .await
                .map_err(|_| format!("no answer within {}s", OP_TIMEOUT.as_secs()))
                .and_then(|r| r.map_err(|e| describe(&e))),
            Err(e) => Err(e.to_string()),
        };
        let mut stream = match stream {
            Ok(s) => s,
            Err(why) => {
                conn.fail(idx, &why);
                outage.failed(&url, "the watch stream", &why);
                tokio::time::sleep(backoff.next_delay()).await;
                if notifier.closed() {
                    return;
                }
                continue;
            }
        };
        if outage.is_failing() {
            outage.recovered(&url, "the watch stream");
            // Whatever happened meanwhile is replayed below; one extra
            // notification makes readers re-check after the outage too.
            notifier.everything();
        }
        backoff.reset();
        let why = loop {
            let msg = match tokio::time::timeout(WATCH_IDLE, stream.message()).await {
                Ok(m) => m,
                Err(_) => {
                    if let Err(e) = stream.request_progress().await {
                        break describe(&e);
                    }
                    match tokio::time::timeout(OP_TIMEOUT, stream.message()).await {
                        Ok(m) => m,
                        Err(_) => {
                            break format!("no progress answer within {}s", OP_TIMEOUT.as_secs());
                        }
                    }
                }
            };
            let resp = match msg {
                Ok(Some(r)) => r,
                Ok(None) => break "the stream closed".to_string(),
                Err(e) => break describe(&e),
            };
            if let Some(h) = resp.header() {
                let (id, now) = (h.cluster_id(), h.revision());
                let reset = cluster.is_some_and(|c| c != id) || now < rev;
                cluster = Some(id);
                if reset {
                    tracing::warn!(
                        catalog = %url,
                        "the cluster was reset (cluster id {id:x}, revision {now} after {rev}); watching from the present"
                    );
                    rev = now;
                    notifier.everything();
                    break "the cluster was reset".to_string();
                }
            }
            if resp.compact_revision() > 0 {
                tracing::warn!(catalog = %url, "watch revision {} was compacted; re-reading", rev + 1);
                rev = resp.compact_revision() - 1;
                notifier.everything();
                break "compacted".to_string();
            }
            if resp.canceled() {
                break format!("canceled: {}", resp.cancel_reason());
            }
            let mut keys: Vec<&[u8]> = Vec::new();
            for ev in resp.events() {
                if let Some(kv) = ev.kv() {
                    rev = rev.max(kv.mod_revision());
                    keys.push(kv.key());
                }
            }
            notifier.keys(&keys);
            if notifier.closed() {
                return;
            }
        };
        if notifier.closed() {
            return;
        }
        outage.failed(&url, "the watch stream", &why);
        // A stream that broke is resumed at once the first time (a dropped
        // connection), then with back-off.
        if outage.failures() > 1 {
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }
}

#[async_trait::async_trait]
impl Catalog for EtcdCatalog {
    fn url(&self) -> &str {
        &self.url
    }

    async fn register(&self, reg: &Registration) -> Result<(), CatalogError> {
        let now = now_ms();
        let entry = Entry {
            id: reg.id.clone(),
            name: reg.name.clone(),
            address: reg.address.clone(),
            port: reg.port,
            tags: reg.tags.clone(),
            status: reg.status,
            owner: self.owner.clone(),
            registered_ms: now,
            critical_since_ms: (reg.status == Status::Critical).then_some(now),
            deregister_after_ms: reg
                .deregister_critical_after
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            seat: reg.seat.clone(),
        };
        let mut s = self.session.lock().await;
        // A seat not held at that term refuses the entry before anything
        // (the old entry included) is touched.
        if let Some(seat) = &entry.seat
            && s.elections.get(&seat.election).map(|&(_, t, _)| t) != Some(seat.term)
        {
            return Err(CatalogError::SeatLost {
                url: self.url.clone(),
                id: entry.id.clone(),
                election: seat.election.clone(),
                term: seat.term,
            });
        }
        // A re-registration under another service name leaves no stale key.
        if let Some(old) = s.owned.get(&reg.id).cloned()
            && old.name != entry.name
        {
            self.conn.delete(self.key(&old)).await?;
        }
        self.write(&mut s, &entry).await?;
        s.owned.insert(entry.id.clone(), entry);
        Ok(())
    }

    async fn set_status(&self, id: &str, status: Status) -> Result<bool, CatalogError> {
        let mut s = self.session.lock().await;
        let Some(mut e) = s.owned.get(id).cloned() else {
            return Ok(false);
        };
        if e.status == status {
            return Ok(true);
        }
        e.status = status;
        e.critical_since_ms = match status {
            Status::Critical => e.critical_since_ms.or(Some(now_ms())),
            _ => None,
        };
        self.write(&mut s, &e).await?;
        s.owned.insert(id.to_string(), e);
        Ok(true)
    }

    async fn deregister(&self, id: &str) -> Result<(), CatalogError> {
        let mut s = self.session.lock().await;
        let Some(e) = s.owned.get(id).cloned() else {
            return Ok(());
        };
        self.conn.delete(self.key(&e)).await?;
        s.owned.remove(id);
        Ok(())
    }

    async fn keep_alive(&self) -> Result<usize, CatalogError> {
        let mut s = self.session.lock().await;
        if s.owned.is_empty() && s.lease.is_none() {
            return Ok(0);
        }
        let lease = self.ensure_lease(&mut s).await?;
        let renewed = self.renew(&mut s, lease).await;
        match renewed {
            Ok(ttl) if ttl > 0 => {
                s.last_keep_alive_ms = now_ms();
                s.confirmed = Some(std::time::Instant::now());
            }
            // The lease expired while etcd was unreachable or stalled, or the
            // cluster lost its data: take a new one and write every entry
            // again (etcd answers an unknown lease with a zero TTL or with
            // "lease not found", depending on where it is noticed).
            Ok(_) => {
                self.lost_lease(&mut s, "expired");
                self.ensure_lease(&mut s).await?;
            }
            Err(CatalogError::Unavailable { message, .. }) if is_lease_gone(&message) => {
                self.lost_lease(&mut s, &message);
                self.ensure_lease(&mut s).await?;
            }
            Err(e) => {
                s.keeper = None;
                return Err(e);
            }
        }
        // deregisterCriticalServiceAfter: the owner removes its own entries
        // that stayed critical too long (a dead owner's lease does the rest).
        let now = now_ms();
        let expired: Vec<Entry> = s
            .owned
            .values()
            .filter(|e| matches!((e.critical_since_ms, e.deregister_after_ms), (Some(since), Some(after)) if since + after <= now))
            .cloned()
            .collect();
        for e in expired {
            self.conn.delete(self.key(&e)).await?;
            s.owned.remove(&e.id);
        }
        Ok(s.owned.len())
    }

    fn keep_alive_interval(&self) -> Option<Duration> {
        Some(self.lease_ttl / 3)
    }

    fn lock_ttl(&self) -> Duration {
        // Locks live on the session's lease.
        self.lease_ttl
    }

    async fn services(&self) -> Result<Vec<ServiceSummary>, CatalogError> {
        let resp = self
            .conn
            .get(format!("{}/instances/", self.prefix), true)
            .await?;
        let mut by: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for kv in resp.kvs() {
            if let Some(e) = parse_entry(kv.value()) {
                let slot = by.entry(e.name.clone()).or_default();
                slot.0 += 1;
                slot.1 += usize::from(e.status == Status::Passing);
            }
        }
        Ok(by
            .into_iter()
            .map(|(name, (instances, passing))| ServiceSummary {
                name,
                instances,
                passing,
            })
            .collect())
    }

    async fn instances_with_heartbeats(
        &self,
        service: &str,
    ) -> Result<Vec<Instance>, CatalogError> {
        // The inherent method (a path names it before the trait's).
        EtcdCatalog::instances_with_heartbeats(self, service).await
    }

    async fn instances(&self, service: &str) -> Result<Vec<Instance>, CatalogError> {
        let mine_ms = self.session.lock().await.last_keep_alive_ms;
        let mut out: Vec<Instance> = self
            .entries(service)
            .await?
            .into_iter()
            .map(|(e, _)| {
                // etcd keeps no per-key heartbeat; ours is known, others' is
                // the last write here (see `instances_with_heartbeats`).
                let hb = if e.owner == self.owner {
                    mine_ms.max(e.registered_ms)
                } else {
                    e.registered_ms
                };
                to_instance(e, hb)
            })
            .collect();
        out.sort();
        Ok(out)
    }

    fn changes(&self) -> watch::Receiver<u64> {
        self.changes.clone()
    }

    fn changes_under(&self, prefix: &str) -> watch::Receiver<u64> {
        self.notifier
            .subscribe(&format!("{}/{prefix}", self.prefix))
    }

    async fn kv_get(&self, key: &str) -> Result<Option<String>, CatalogError> {
        autopilot_catalog::check_key(&self.url, key)?;
        let k = self.kv_key(key);
        let resp = self.conn.get(k, false).await?;
        Ok(resp
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    async fn kv_put(&self, key: &str, value: &str) -> Result<(), CatalogError> {
        autopilot_catalog::check_key(&self.url, key)?;
        self.conn
            .put(self.kv_key(key), value.to_string(), None)
            .await
    }

    async fn kv_cas(
        &self,
        key: &str,
        expected: Option<&str>,
        value: &str,
    ) -> Result<bool, CatalogError> {
        autopilot_catalog::check_key(&self.url, key)?;
        let (k, v) = (self.kv_key(key), value.to_string());
        let cond = match expected {
            // Absent: the key was never created (or was deleted).
            None => Compare::create_revision(k.clone(), CompareOp::Equal, 0),
            Some(e) => Compare::value(k.clone(), CompareOp::Equal, e.to_string()),
        };
        let resp = self
            .conn
            .call(|mut c| {
                let txn = Txn::new().when([cond.clone()]).and_then([TxnOp::put(
                    k.clone(),
                    v.clone(),
                    None,
                )]);
                async move { c.txn(txn).await }
            })
            .await?;
        Ok(resp.succeeded())
    }

    async fn kv_delete(&self, key: &str) -> Result<bool, CatalogError> {
        autopilot_catalog::check_key(&self.url, key)?;
        Ok(self.conn.delete(self.kv_key(key)).await? > 0)
    }

    async fn kv_delete_if(&self, key: &str, expected: &str) -> Result<bool, CatalogError> {
        autopilot_catalog::check_key(&self.url, key)?;
        let k = self.kv_key(key);
        let cond = Compare::value(k.clone(), CompareOp::Equal, expected.to_string());
        let resp = self
            .conn
            .call(|mut c| {
                let txn = Txn::new()
                    .when([cond.clone()])
                    .and_then([TxnOp::delete(k.clone(), None)]);
                async move { c.txn(txn).await }
            })
            .await?;
        Ok(resp.succeeded())
    }

    async fn kv_list(&self, prefix: &str) -> Result<Vec<(String, String)>, CatalogError> {
        let base = self.kv_key("");
        let resp = self.conn.get(self.kv_key(prefix), true).await?;
        let mut out: Vec<(String, String)> = resp
            .kvs()
            .iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                (
                    key.strip_prefix(&base).unwrap_or(&key).to_string(),
                    String::from_utf8_lossy(kv.value()).into_owned(),
                )
            })
            .collect();
        out.sort();
        Ok(out)
    }

    async fn lock(&self, name: &str) -> Result<(), CatalogError> {
        autopilot_catalog::check_key(&self.url, name)?;
        // etcd queues waiters in revision order and grants the lock to the
        // next one when the holder unlocks or its lease expires. The wait is
        // asked in bounded requests (the connection's request timeout, and
        // LOCK_WAIT here), so a stalled member cannot hang us.
        let key = format!("{}/locks/{name}", self.prefix);
        let mut epoch = self.lease_epoch.subscribe();
        loop {
            let lease = {
                let mut s = self.session.lock().await;
                if s.locks.contains_key(name) {
                    return Ok(());
                }
                let lease = self.ensure_lease(&mut s).await;
                // Only a lease replaced after this one re-queues us.
                epoch.borrow_and_update();
                lease
            };
            let idx = self.conn.pinned.load(std::sync::atomic::Ordering::SeqCst)
                % self.conn.endpoints.len();
            let client = match lease {
                Ok(lease) => self.conn.client(idx).await.map(|c| (lease, c)),
                Err(e) => Err(e),
            };
            // A waiter outlives an outage: it waits, it does not fail.
            let (lease, mut c) = match client {
                Ok(pair) => pair,
                Err(CatalogError::Unavailable { .. }) => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                Err(e) => return Err(e),
            };
            let asked = c.lock(key.clone(), Some(LockOptions::new().with_lease(lease)));
            let outcome = tokio::select! {
                r = tokio::time::timeout(LOCK_WAIT, asked) => r,
                // The session lease was replaced: a waiter on the old one
                // would wait forever (or win a lock that dies at once).
                _ = epoch.changed() => {
                    tracing::info!(catalog = %self.url, lock = %name, "session lease replaced; waiting for the lock again on the new lease");
                    continue;
                }
            };
            match outcome {
                // Asking again keeps waiting; the deadline only proves the
                // connection still answers.
                Err(_) => {}
                Ok(Ok(resp)) => {
                    let mut s = self.session.lock().await;
                    if s.lease != Some(lease) {
                        // Granted on a lease that is already gone: not held.
                        tracing::warn!(catalog = %self.url, lock = %name, "lock granted on a lost lease; waiting again");
                        continue;
                    }
                    s.locks.insert(name.to_string(), resp.key().to_vec());
                    return Ok(());
                }
                Ok(Err(e)) if is_lease_gone(&describe(&e)) => {
                    let mut s = self.session.lock().await;
                    if s.lease == Some(lease) {
                        self.lost_lease(&mut s, &describe(&e));
                    }
                }
                Ok(Err(e)) if is_transport(&describe(&e)) => {
                    let why = describe(&e);
                    if !why.to_ascii_lowercase().contains("timeout") {
                        self.conn.fail(idx, &why);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                }
                Ok(Err(e)) => return Err(self.unavailable(describe(&e))),
            }
        }
    }

    async fn try_lock(&self, name: &str) -> Result<bool, CatalogError> {
        autopilot_catalog::check_key(&self.url, name)?;
        // The keys etcd's lock service uses (`<lock>/<lease hex>`, the lowest
        // create revision holds it), so `lock`, `unlock` and lock waiters
        // see a lock taken here as their own. One transaction puts ours only
        // while the prefix is empty (nobody holds or waits), else reads the
        // holder: never a queued key of ours that could be granted later.
        let prefix = format!("{}/locks/{name}/", self.prefix);
        let mut s = self.session.lock().await;
        if s.locks.contains_key(name) {
            return Ok(true);
        }
        for attempt in 0..2 {
            let lease = self.ensure_lease(&mut s).await?;
            let mine = format!("{prefix}{lease:x}");
            let resp = self
                .conn
                .call(|mut c| {
                    let txn = Txn::new()
                        .when([
                            Compare::create_revision(prefix.clone(), CompareOp::Equal, 0)
                                .with_prefix(),
                        ])
                        .and_then([TxnOp::put(
                            mine.clone(),
                            "",
                            Some(PutOptions::new().with_lease(lease)),
                        )])
                        .or_else([TxnOp::get(
                            prefix.clone(),
                            Some(
                                GetOptions::new()
                                    .with_prefix()
                                    .with_sort(SortTarget::Create, SortOrder::Ascend)
                                    .with_limit(1),
                            ),
                        )]);
                    async move { c.txn(txn).await }
                })
                .await;
            let resp = match resp {
                Ok(r) => r,
                Err(CatalogError::Unavailable { message, .. })
                    if attempt == 0 && is_lease_gone(&message) =>
                {
                    self.lost_lease(&mut s, &message);
                    continue;
                }
                Err(e) => return Err(e),
            };
            // Taken now, or ours already (a call cut short after its write,
            // or this session's own `lock` granted): the lowest key is ours.
            let held = resp.succeeded()
                || resp.op_responses().iter().any(|r| {
                    matches!(r, TxnOpResponse::Get(g)
                        if g.kvs().first().is_some_and(|kv| kv.key() == mine.as_bytes()))
                });
            if held {
                s.locks.insert(name.to_string(), mine.into_bytes());
            }
            return Ok(held);
        }
        Err(self.unavailable(format!("lock {name}: the lease keeps expiring")))
    }

    async fn campaign(
        &self,
        election: &str,
        me: &Candidate,
        ttl: Duration,
    ) -> Result<Option<u64>, CatalogError> {
        autopilot_catalog::check_key(&self.url, election)?;
        let key = format!("{}/elections/{election}", self.prefix);
        let held = self.session.lock().await.elections.get(election).copied();
        if let Some((lease, term, _)) = held {
            // Renewal: one keep-alive on the election's lease, over the
            // stream opened for it when it was won (one stream per lease for
            // its life; reopened only after it failed).
            let alive = self.renew_seat(election, lease).await;
            match alive {
                Ok(ttl) if ttl > 0 => return Ok(Some(term)),
                // The lease is gone (a zero TTL, or "lease not found"): the
                // seat was lost, so campaign anew below.
                Ok(_) => {}
                Err(CatalogError::Unavailable { message, .. }) if is_lease_gone(&message) => {}
                // Anything else (an unreachable or stalled cluster): the
                // seat may still be ours; only etcd saying so ends it.
                Err(e) => return Err(e),
            }
            let mut s = self.session.lock().await;
            self.forget_seat(&mut s, election);
        }
        // The term is a counter advanced in the same transaction that takes
        // the seat, so it strictly increases with every new leader; it
        // starts above any term this agent has seen, so it keeps growing
        // even after etcd lost its data (and the counter with it).
        let term_key = self.term_key(election);
        let counter = self.conn.get(term_key.clone(), false).await?;
        let (last, counter_rev) = counter.kvs().first().map_or((0, 0), |kv| {
            let v = String::from_utf8_lossy(kv.value())
                .trim()
                .parse::<u64>()
                .unwrap_or(0);
            (v, kv.mod_revision())
        });
        let term = last
            .max(self.seen_term(election))
            .checked_add(1)
            .ok_or_else(|| self.unavailable(format!("the term of {election} cannot grow")))?;
        let ttl_s = i64::try_from(ttl.as_secs().max(1)).unwrap_or(i64::MAX);
        let lease = self
            .conn
            .call(|mut c| async move { c.lease_grant(ttl_s, None).await })
            .await?
            .id();
        let value = serde_json::to_string(&LeaderValue {
            id: me.id.clone(),
            address: me.address.clone(),
            port: me.port,
            owner: self.owner.clone(),
            term,
        })
        .unwrap_or_default();
        let counter_unchanged = if counter_rev == 0 {
            Compare::create_revision(term_key.clone(), CompareOp::Equal, 0)
        } else {
            Compare::mod_revision(term_key.clone(), CompareOp::Equal, counter_rev)
        };
        let resp = self
            .conn
            .call(|mut c| {
                let txn = Txn::new()
                    .when([
                        Compare::create_revision(key.clone(), CompareOp::Equal, 0),
                        counter_unchanged.clone(),
                    ])
                    .and_then([
                        TxnOp::put(
                            key.clone(),
                            value.clone(),
                            Some(PutOptions::new().with_lease(lease)),
                        ),
                        TxnOp::put(term_key.clone(), term.to_string(), None),
                    ]);
                async move { c.txn(txn).await }
            })
            .await?;
        if !resp.succeeded() {
            let _ = self
                .conn
                .call(|mut c| async move { c.lease_revoke(lease).await })
                .await;
            return Ok(None);
        }
        // The seat key's create revision: what seat-bound writes check.
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        self.saw_term(election, term);
        self.session
            .lock()
            .await
            .elections
            .insert(election.to_string(), (lease, term, rev));
        Ok(Some(term))
    }

    async fn resign(&self, election: &str) -> Result<(), CatalogError> {
        let Some((lease, _, _)) = self.session.lock().await.elections.get(election).copied() else {
            return Ok(());
        };
        self.election_keepers.lock().await.remove(election);
        // Revoking the lease deletes the key in the same step. The seat is
        // forgotten only once that is done, so an interrupted resignation
        // can be repeated (an agent resigns again on its way out).
        match self
            .conn
            .call(|mut c| async move { c.lease_revoke(lease).await })
            .await
        {
            Ok(_) => {}
            Err(CatalogError::Unavailable { message, .. })
                if message.contains("lease not found") => {}
            Err(e) => return Err(e),
        }
        let mut s = self.session.lock().await;
        self.forget_seat(&mut s, election);
        Ok(())
    }

    async fn leader(&self, election: &str) -> Result<Option<Leader>, CatalogError> {
        let resp = self
            .conn
            .get(format!("{}/elections/{election}", self.prefix), false)
            .await?;
        let leader = resp.kvs().first().and_then(|kv| {
            let v: LeaderValue = serde_json::from_slice(kv.value()).ok()?;
            let term = if v.term > 0 {
                v.term
            } else {
                u64::try_from(kv.create_revision()).unwrap_or(0)
            };
            Some(Leader {
                id: v.id,
                address: v.address,
                port: v.port,
                term,
            })
        });
        if let Some(l) = &leader {
            self.saw_term(election, l.term);
        }
        Ok(leader)
    }

    async fn end_seat(&self, election: &str, leader: &Leader) -> Result<bool, CatalogError> {
        autopilot_catalog::check_key(&self.url, election)?;
        let key = self.election_key(election);
        let resp = self.conn.get(key.clone(), false).await?;
        let Some(kv) = resp.kvs().first() else {
            return Ok(false);
        };
        let Ok(v) = serde_json::from_slice::<LeaderValue>(kv.value()) else {
            return Ok(false);
        };
        let term = if v.term > 0 {
            v.term
        } else {
            u64::try_from(kv.create_revision()).unwrap_or(0)
        };
        if v.id != leader.id || term != leader.term {
            return Ok(false);
        }
        let (lease, mod_rev) = (kv.lease(), kv.mod_revision());
        let ended = if lease != 0 {
            // The seat key's own lease: a seat won again since is on another
            // lease, so revoking this one can never end it. The seat and the
            // entries bound to it go in one step.
            match self
                .conn
                .call(|mut c| async move { c.lease_revoke(lease).await })
                .await
            {
                Ok(_) => true,
                // It expired or was revoked meanwhile: not ended by us.
                Err(CatalogError::Unavailable { message, .. }) if is_lease_gone(&message) => false,
                Err(e) => return Err(e),
            }
        } else {
            // A seat with no lease (not written by us): delete it only if
            // it is still the version read.
            let resp = self
                .conn
                .call(|mut c| {
                    let txn = Txn::new()
                        .when([Compare::mod_revision(
                            key.clone(),
                            CompareOp::Equal,
                            mod_rev,
                        )])
                        .and_then([TxnOp::delete(key.clone(), None)]);
                    async move { c.txn(txn).await }
                })
                .await?;
            resp.succeeded()
        };
        if ended {
            let mut s = self.session.lock().await;
            if s.elections.get(election).map(|&(l, _, _)| l) == Some(lease) {
                self.forget_seat(&mut s, election);
            }
        }
        Ok(ended)
    }

    async fn holds_lock(&self, name: &str) -> Result<bool, CatalogError> {
        // The session must still track it (a lost lease drops it) and its
        // key must still exist (the lease may be gone before we noticed).
        let Some(key) = self.session.lock().await.locks.get(name).cloned() else {
            return Ok(false);
        };
        let key = String::from_utf8(key)
            .map_err(|_| self.unavailable(format!("lock {name}: key is not UTF-8")))?;
        let resp = self.conn.get(key, false).await?;
        Ok(!resp.kvs().is_empty())
    }

    async fn unlock(&self, name: &str) -> Result<(), CatalogError> {
        let Some(key) = self.session.lock().await.locks.remove(name) else {
            return Ok(());
        };
        self.conn
            .call(|mut c| {
                let k = key.clone();
                async move { c.unlock(k).await }
            })
            .await
            .map(|_| ())
    }
}
