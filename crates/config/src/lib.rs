//! Loading a ContainerPilot v3 config: Go-template rendering, JSON5 parsing and validation into typed specs.
//!
//! Every error names the file, the line and column (in the rendered text),
//! and the field path such as `jobs[2].when.interval`. Nothing is half
//! applied: a config either loads whole or not at all.

mod decode;
mod dns;
pub mod json5;
mod repair;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use autopilot_core::event::{EventCode, GLOBAL, SIGNAL_EVENTS};
use autopilot_core::spec::{
    ArtifactSpec, Backoff, ElectionSpec, EntryStatus, HealthCheck, HealthSpec, JobSpec, Restarts,
    RoleSpec, Roles, SnapshotSpec, Trigger, WatchdogSpec,
};
use decode::{Doc, Field, Obj, child};

pub use decode::{MAX_DURATION, parse_duration};
pub use dns::{DEFAULT_DNS_DOMAIN, DEFAULT_DNS_LISTEN, DnsConfig, dns_domain};

/// The functions a `templates` source file may call beyond the built-ins:
/// the data functions crates/runtime/src/templates.rs installs, plus `env`.
/// Sources are checked against this list (with the built-ins) at load, so a
/// misspelt function fails the config, not a render; runtime asserts that
/// it installs exactly these.
pub const TEMPLATE_DATA_FUNCS: [&str; 9] = [
    "service",
    "services",
    "key",
    "keyOrDefault",
    "ls",
    "tree",
    "leader",
    "file",
    "env",
];

/// The largest config file or template source read; anything bigger is
/// refused before it is read whole.
pub const MAX_FILE_BYTES: u64 = 4 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no config file given: pass -config PATH, or set CONTAINERPILOT or AUTOPILOT_CONFIG")]
    NoPath,
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}:{line}:{column}: {field}: {message}", file = .file.display())]
    Invalid {
        file: PathBuf,
        line: usize,
        column: usize,
        field: String,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub path: PathBuf,
    pub consul: Option<ConsulConfig>,
    /// The catalog URL (`local://`, `etcd://`, `consul://`), an autopilot extension.
    pub catalog: Option<String>,
    pub logging: LoggingConfig,
    pub jobs: Vec<JobSpec>,
    pub watches: Vec<WatchConfig>,
    /// Files rendered from catalog data, an autopilot extension.
    pub templates: Vec<TemplateConfig>,
    pub telemetry: Option<TelemetryConfig>,
    pub control: ControlConfig,
    pub stop_timeout: Duration,
    /// TLS, auth and lease settings for an `etcd://` catalog, an autopilot extension.
    pub etcd: EtcdConfig,
    /// ContainerPilot fields that are accepted but not honoured; the agent
    /// logs each once at start.
    pub warnings: Vec<ConfigWarning>,
    /// `bundle`: the config itself comes as an artifact, an autopilot extension.
    pub bundle: Option<BundleConfig>,
    /// `watchdogs`: node-level checks that feed the repair ladder, an autopilot extension.
    pub watchdogs: Vec<WatchdogSpec>,
    /// `dns`: serve DNS over the catalog from the agent, an autopilot extension.
    pub dns: Option<DnsConfig>,
}

/// `bundle: {name, dest, store, file}`: an artifact holding the config (and
/// its templates); the agent runs `dest/current/<file>` when it exists.
#[derive(Debug, Clone, PartialEq)]
pub struct BundleConfig {
    pub name: String,
    /// Absolute.
    pub dest: PathBuf,
    pub store: String,
    /// The config file's path inside the bundle (relative, no `..`).
    pub file: PathBuf,
}

/// Where an artifact's store comes from when `store` is omitted.
pub const ARTIFACT_STORE_ENV: &str = "AUTOPILOT_ARTIFACT_STORE";

/// A field that loads but has no effect, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    /// The field path, such as `jobs[0].consul.enableTagOverride`.
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// Settings for an `etcd://` catalog. `$AUTOPILOT_ETCD_*` variables override each.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct EtcdConfig {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub lease_ttl: Option<Duration>,
}

/// ContainerPilot's `consul` block: `"host:port"` or an object.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ConsulConfig {
    pub address: String,
    pub scheme: Option<String>,
    pub token: Option<String>,
    pub tls: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Debug,
    Info,
    Warn,
    Error,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogOutput {
    Stdout,
    Stderr,
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggingConfig {
    pub level: Level,
    pub format: LogFormat,
    pub output: LogOutput,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig {
            level: Level::Info,
            format: LogFormat::Text,
            output: LogOutput::Stdout,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct WatchConfig {
    /// The service watched.
    pub name: String,
    /// The safety re-check period; changes arrive without waiting for it.
    pub interval: Duration,
    pub tag: Option<String>,
    pub dc: Option<String>,
    /// Quiet period that coalesces a burst of changes into one event.
    pub debounce: Duration,
    /// The event source jobs name: `watch.<name>`, or `watch.<name>.<tag>`
    /// when several watches share a service name.
    pub source: String,
}

/// One `templates` entry: a file rendered from catalog data.
#[derive(Debug, Clone, PartialEq)]
pub struct TemplateConfig {
    /// The name in logs, metrics and events (`template.<name>`): `name`, or the
    /// destination's file name.
    pub name: String,
    /// Resolved against the config file's directory.
    pub source: PathBuf,
    /// The source text, read and checked when the config loads.
    pub text: String,
    pub dest: PathBuf,
    /// Run after each write that changed the file.
    pub command: Option<Vec<String>>,
    /// Quiet period that coalesces a burst of changes into one render.
    pub wait_min: Duration,
    /// Longest a render waits for the quiet period during a steady stream of changes.
    pub wait_max: Duration,
    /// Mode bits of the destination.
    pub perms: u32,
    /// Rendering starts with this event (`each`: and renders again on every one).
    pub when: Option<TemplateWhen>,
    /// Files and directories the `file` function may read. Nothing else is readable.
    pub files: Vec<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TemplateWhen {
    pub source: String,
    pub code: EventCode,
    pub each: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
    Summary,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MetricConfig {
    /// `namespace_subsystem_name`, the name clients put to.
    pub full_name: String,
    pub help: String,
    pub kind: MetricKind,
}

#[derive(Debug, Clone, PartialEq)]
pub struct TelemetryConfig {
    pub port: u16,
    pub interfaces: Vec<String>,
    pub tags: Vec<String>,
    pub metrics: Vec<MetricConfig>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct ControlConfig {
    pub socket: Option<PathBuf>,
}

/// Finds the config path: `-config`, else `$CONTAINERPILOT`, else `$AUTOPILOT_CONFIG`.
pub fn resolve_path(
    flag: Option<&Path>,
    env: &BTreeMap<String, String>,
) -> Result<PathBuf, ConfigError> {
    flag.map(Path::to_path_buf)
        .or_else(|| {
            ["CONTAINERPILOT", "AUTOPILOT_CONFIG"]
                .iter()
                .find_map(|k| env.get(*k).filter(|v| !v.is_empty()).map(PathBuf::from))
        })
        .ok_or(ConfigError::NoPath)
}

/// Reads and renders the config template, as `-template` prints it.
pub fn render(path: &Path, env: &BTreeMap<String, String>) -> Result<String, ConfigError> {
    let text = read_text(path, "(file)").map_err(|e| match e {
        ReadError::Io(source) => ConfigError::Read {
            path: path.to_path_buf(),
            source,
        },
        ReadError::Invalid(e) => e,
    })?;
    render_str(path, &text, env)
}

enum ReadError {
    Io(std::io::Error),
    Invalid(ConfigError),
}

/// Reads a UTF-8 text file of at most [`MAX_FILE_BYTES`]; bad UTF-8 is an
/// error at the line and column of the first bad byte, under `field`.
fn read_text(path: &Path, field: &str) -> Result<String, ReadError> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(ReadError::Io)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES.saturating_add(1))
        .read_to_end(&mut bytes)
        .map_err(ReadError::Io)?;
    let invalid = |line, column, message: String| {
        ReadError::Invalid(ConfigError::Invalid {
            file: path.to_path_buf(),
            line,
            column,
            field: field.to_string(),
            message,
        })
    };
    if u64::try_from(bytes.len()).map_or(true, |n| n > MAX_FILE_BYTES) {
        return Err(invalid(
            1,
            1,
            format!("the file is larger than {MAX_FILE_BYTES} bytes"),
        ));
    }
    String::from_utf8(bytes).map_err(|e| {
        let good = e.utf8_error().valid_up_to();
        let prefix = String::from_utf8_lossy(&e.as_bytes()[..good]);
        let (line, column) = autopilot_template::line_col(&prefix, good);
        invalid(line, column, "the file is not valid UTF-8".into())
    })
}

fn render_str(
    path: &Path,
    text: &str,
    env: &BTreeMap<String, String>,
) -> Result<String, ConfigError> {
    // The rendered text is parsed whole, so it gets the same bound as the
    // file: that caps the JSON5 tree, too.
    let limits = autopilot_template::Limits {
        max_output: usize::try_from(MAX_FILE_BYTES).unwrap_or(usize::MAX),
        ..Default::default()
    };
    autopilot_template::render_env_with(text, env, &limits).map_err(|e| ConfigError::Invalid {
        file: path.to_path_buf(),
        line: e.line,
        column: e.column,
        field: "template".into(),
        message: e.message,
    })
}

pub fn load(path: &Path, env: &BTreeMap<String, String>) -> Result<Config, ConfigError> {
    let rendered = render(path, env)?;
    parse_rendered(path, &rendered, env)
}

/// Renders and parses config text; `path` is only used in errors.
pub fn load_str(
    path: &Path,
    text: &str,
    env: &BTreeMap<String, String>,
) -> Result<Config, ConfigError> {
    let rendered = render_str(path, text, env)?;
    parse_rendered(path, &rendered, env)
}

fn parse_rendered(
    path: &Path,
    rendered: &str,
    env: &BTreeMap<String, String>,
) -> Result<Config, ConfigError> {
    let default_store = env
        .get(ARTIFACT_STORE_ENV)
        .filter(|s| !s.is_empty())
        .map(String::as_str);
    let doc = Doc {
        file: path,
        src: rendered,
    };
    let root = json5::parse(rendered).map_err(|e| doc.err(e.pos, "(syntax)", e.message))?;
    let mut top = Obj::new(&doc, &root, "")?;
    let mut warnings = Vec::new();

    let consul = top.get("consul").map(|f| consul(&f)).transpose()?;
    let catalog = top.get("catalog").map(|f| catalog_url(&f)).transpose()?;
    let logging = top
        .get("logging")
        .map(|f| logging(&f))
        .transpose()?
        .unwrap_or_default();
    let stop_timeout = top
        .opt("stopTimeout", Field::duration)?
        .unwrap_or(Duration::from_secs(5));
    let control = match top.get("control") {
        Some(f) => {
            let mut o = f.obj()?;
            let socket = o
                .get("socket")
                .map(|f| f.str().map(PathBuf::from))
                .transpose()?;
            o.finish(&["socket"])?;
            ControlConfig { socket }
        }
        None => ControlConfig::default(),
    };
    let telemetry = top.get("telemetry").map(|f| telemetry(&f)).transpose()?;
    let dns = top.get("dns").map(|f| dns::dns(&f)).transpose()?;
    let etcd = top
        .get("etcd")
        .map(|f| etcd(&f))
        .transpose()?
        .unwrap_or_default();

    let mut watches: Vec<WatchConfig> = Vec::new();
    if let Some(f) = top.get("watches") {
        let mut keys = HashSet::new();
        for w in f.array()? {
            let cfg = watch(&w, &mut warnings)?;
            if !keys.insert((cfg.name.clone(), cfg.tag.clone())) {
                return Err(w.err(format!(
                    "duplicate watch of {:?}{}",
                    cfg.name,
                    cfg.tag
                        .as_ref()
                        .map(|t| format!(" with tag {t:?}"))
                        .unwrap_or_default()
                )));
            }
            watches.push(cfg);
        }
        // Watches of one service with different tags keep apart by source.
        for i in 0..watches.len() {
            let shared = watches.iter().filter(|w| w.name == watches[i].name).count() > 1;
            if let (true, Some(tag)) = (shared, watches[i].tag.clone()) {
                watches[i].source = format!("watch.{}.{tag}", watches[i].name);
            }
        }
    }

    let mut jobs = Vec::new();
    let mut job_fields = Vec::new();
    if let Some(f) = top.get("jobs") {
        let mut names = HashSet::new();
        let mut includes = HashSet::new();
        for j in f.array()? {
            let spec = job(&j, stop_timeout, default_store, &mut warnings)?;
            if !names.insert(spec.name.clone()) {
                return Err(doc.err(
                    j.node.pos,
                    &child(&j.path, "name"),
                    format!("duplicate job name {:?}", spec.name),
                ));
            }
            // Each announcing job owns its include files.
            if let Some(a) = &spec.announce
                && !includes.insert(a.include_file(false))
            {
                return Err(doc.err(
                    j.node.pos,
                    &child(&child(&j.path, "announce"), "protocol"),
                    format!(
                        "another job already writes {}: give each announcing job its own 'protocol'",
                        a.include_file(false)
                    ),
                ));
            }
            jobs.push(spec);
            job_fields.push(j);
        }
    }
    let mut templates: Vec<TemplateConfig> = Vec::new();
    let mut template_fields = Vec::new();
    if let Some(f) = top.get("templates") {
        for t in f.array()? {
            let cfg = template(&t, path)?;
            if let Some(other) = templates.iter().find(|o| o.dest == cfg.dest) {
                return Err(t.err(format!(
                    "template {:?} writes {}, as template {:?} already does",
                    cfg.name,
                    cfg.dest.display(),
                    other.name
                )));
            }
            if templates.iter().any(|o| o.name == cfg.name) {
                return Err(t.err(format!("duplicate template name {:?}", cfg.name)));
            }
            templates.push(cfg);
            template_fields.push(t);
        }
    }
    let bundle = top
        .get("bundle")
        .map(|f| bundle(&f, default_store))
        .transpose()?;
    let watchdogs = match top.get("watchdogs") {
        Some(f) => repair::watchdogs(&f, &jobs)?,
        None => Vec::new(),
    };
    // Each unit owns its `dest` whole: a switch's cleanup removes every
    // version directory but two, so one unit inside another's dest would
    // see its files removed (or removed the other's).
    let mut dests: Vec<(&Path, &str)> = Vec::new();
    for (spec, field) in jobs.iter().zip(&job_fields) {
        let Some(a) = &spec.artifact else { continue };
        let unit = format!("job {:?}", spec.name);
        if let Some(msg) = dest_clash(&dests, &a.dest, &unit) {
            let mut o = field.obj()?;
            let mut a = o.require("artifact")?.obj()?;
            return Err(a.require("dest")?.err(msg));
        }
        dests.push((&a.dest, &spec.name));
    }
    if let Some(b) = &bundle
        && let Some(msg) = dest_clash(&dests, &b.dest, "the config bundle")
        && let Some(f) = top.get("bundle")
    {
        return Err(f.obj()?.require("dest")?.err(msg));
    }
    top.finish(&[
        "consul",
        "catalog",
        "logging",
        "jobs",
        "watches",
        "templates",
        "telemetry",
        "control",
        "stopTimeout",
        "etcd",
        "bundle",
        "watchdogs",
        "dns",
    ])?;

    // Every `when.source` must name something that can publish events.
    let job_names: HashSet<&str> = jobs.iter().map(|j| j.name.as_str()).collect();
    for (spec, field) in jobs.iter().zip(&job_fields) {
        let Trigger::Event { source, code, .. } = &spec.trigger else {
            continue;
        };
        if !source_known(source, *code, &watches, &job_names) {
            let mut o = field.obj()?;
            let when = o.require("when")?;
            let mut w = when.obj()?;
            let src_field = w.require("source")?;
            return Err(src_field.err(format!(
                "{source:?} names no job, watch (watch.<name>) or signal ({})",
                SIGNAL_EVENTS.join(", ")
            )));
        }
    }

    if let Some((k, message)) = when_cycle(&jobs) {
        let mut o = job_fields[k].obj()?;
        let mut w = o.require("when")?.obj()?;
        return Err(w.require("source")?.err(message));
    }

    for (t, field) in templates.iter().zip(&template_fields) {
        let Some(w) = &t.when else { continue };
        if !source_known(&w.source, w.code, &watches, &job_names) {
            let mut o = field.obj()?;
            let mut w = o.require("when")?.obj()?;
            return Err(w.require("source")?.err(format!(
                "{:?} names no job, watch (watch.<name>) or signal ({})",
                w_source(&t.when),
                SIGNAL_EVENTS.join(", ")
            )));
        }
    }

    Ok(Config {
        path: path.to_path_buf(),
        consul,
        catalog,
        logging,
        jobs,
        watches,
        templates,
        telemetry,
        control,
        stop_timeout,
        etcd,
        warnings,
        bundle,
        watchdogs,
        dns,
    })
}

/// Why `dest` of `unit` cannot be used beside the artifact `dest`s of the
/// jobs in `taken`: equal to one, or one inside the other.
fn dest_clash(taken: &[(&Path, &str)], dest: &Path, unit: &str) -> Option<String> {
    let (other, job) = taken
        .iter()
        .find(|(d, _)| dest.starts_with(d) || d.starts_with(dest))?;
    let how = if dest == *other {
        "is the same as"
    } else if dest.starts_with(other) {
        "is inside"
    } else {
        "contains"
    };
    Some(format!(
        "{} of {unit} {how} {} of job {job:?}'s artifact: each artifact needs a dest of its own",
        dest.display(),
        other.display()
    ))
}

/// The `name`, `dest` and `store` of an `artifact` or a `bundle`; `store`
/// defaults to `$AUTOPILOT_ARTIFACT_STORE`.
fn artifact_fields(
    o: &mut Obj,
    default_store: Option<&str>,
) -> Result<(String, PathBuf, String), ConfigError> {
    let name_f = o.require("name")?;
    let name = name_f.str()?;
    if !autopilot_core::rollout::valid_name(&name) {
        return Err(name_f.err(format!(
            "{name:?} is not a valid artifact name (a letter or digit, then up to 127 letters, digits, '.', '_' or '-')"
        )));
    }
    let dest_f = o.require("dest")?;
    let dest = PathBuf::from(dest_f.str()?);
    if !dest.is_absolute()
        || dest
            .components()
            .any(|c| c == std::path::Component::ParentDir)
    {
        return Err(dest_f.err(format!(
            "{:?} is not an absolute path without '..'",
            dest.display()
        )));
    }
    let store = match o.get("store") {
        Some(f) => {
            let store = f.str()?;
            if !store.starts_with("file:///") && !store.starts_with("s3://") {
                return Err(f.err(format!(
                    "{store:?} is not an artifact store: expected file:///path or s3://bucket/prefix"
                )));
            }
            store
        }
        None => match default_store {
            Some(s) => s.to_string(),
            None => {
                return Err(o.err(
                    "store",
                    format!("this field is required when ${ARTIFACT_STORE_ENV} is not set"),
                ));
            }
        },
    };
    Ok((name, dest, store))
}

fn artifact(f: &Field, default_store: Option<&str>) -> Result<ArtifactSpec, ConfigError> {
    let mut o = f.obj()?;
    let (name, dest, store) = artifact_fields(&mut o, default_store)?;
    o.finish(&["name", "dest", "store"])?;
    Ok(ArtifactSpec { name, dest, store })
}

fn bundle(f: &Field, default_store: Option<&str>) -> Result<BundleConfig, ConfigError> {
    let mut o = f.obj()?;
    let (name, dest, store) = artifact_fields(&mut o, default_store)?;
    let file_f = o.require("file")?;
    let file = PathBuf::from(file_f.str()?);
    let plain = file
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)));
    if file.as_os_str().is_empty() || !plain {
        return Err(file_f.err(format!(
            "{:?} is not a relative path inside the bundle (no '/', '.' or '..' components)",
            file.display()
        )));
    }
    o.finish(&["name", "dest", "store", "file"])?;
    Ok(BundleConfig {
        name,
        dest,
        store,
        file,
    })
}

fn etcd(f: &Field) -> Result<EtcdConfig, ConfigError> {
    let mut o = f.obj()?;
    let path = |o: &mut Obj, k: &str| o.get(k).map(|v| v.str().map(PathBuf::from)).transpose();
    let cfg = EtcdConfig {
        ca: path(&mut o, "ca")?,
        cert: path(&mut o, "cert")?,
        key: path(&mut o, "key")?,
        username: o.opt("username", Field::str)?,
        password: o.opt("password", Field::str)?,
        lease_ttl: o.opt("leaseTTL", Field::positive_duration)?,
    };
    if cfg.cert.is_some() != cfg.key.is_some() {
        return Err(o.err("cert", "a client certificate needs both 'cert' and 'key'"));
    }
    if cfg.username.is_some() != cfg.password.is_some() {
        return Err(o.err("username", "'username' and 'password' go together"));
    }
    if cfg.lease_ttl.is_some_and(|t| t < Duration::from_secs(2)) {
        return Err(o.err("leaseTTL", "must be at least 2s (etcd's minimum lease TTL)"));
    }
    o.finish(&["ca", "cert", "key", "username", "password", "leaseTTL"])?;
    Ok(cfg)
}

fn consul(f: &Field) -> Result<ConsulConfig, ConfigError> {
    if let json5::Kind::Str(s) = &f.node.kind {
        if s.trim().is_empty() {
            return Err(f.err("the consul address is empty"));
        }
        return Ok(ConsulConfig {
            address: s.clone(),
            ..Default::default()
        });
    }
    let mut o = f.obj()?;
    let address = o.require("address")?.str()?;
    let scheme = o.opt("scheme", Field::str)?;
    if let Some(s) = &scheme
        && s != "http"
        && s != "https"
    {
        return Err(o.err(
            "scheme",
            format!("expected \"http\" or \"https\", found {s:?}"),
        ));
    }
    let token = o.opt("token", Field::str)?;
    let mut tls = BTreeMap::new();
    if let Some(t) = o.get("tls") {
        let mut to = t.obj()?;
        const KEYS: [&str; 6] = [
            "cafile",
            "capath",
            "clientcert",
            "clientkey",
            "servername",
            "verify",
        ];
        for k in KEYS {
            if let Some(v) = to.get(k) {
                let s = if k == "verify" {
                    v.bool()?.to_string()
                } else {
                    v.str()?
                };
                tls.insert(k.to_string(), s);
            }
        }
        to.finish(&KEYS)?;
    }
    o.finish(&["address", "scheme", "token", "tls"])?;
    Ok(ConsulConfig {
        address,
        scheme,
        token,
        tls,
    })
}

fn catalog_url(f: &Field) -> Result<String, ConfigError> {
    let url = f.str()?;
    let ok = ["local://", "etcd://", "consul://"]
        .iter()
        .any(|p| url.starts_with(p) && url.len() > p.len());
    if !ok {
        return Err(f.err(format!(
            "{url:?} is not a catalog URL: expected local:///path, etcd://host:port[,...]/prefix or consul://host:port"
        )));
    }
    Ok(url)
}

fn logging(f: &Field) -> Result<LoggingConfig, ConfigError> {
    let mut o = f.obj()?;
    let mut cfg = LoggingConfig::default();
    if let Some(l) = o.get("level") {
        cfg.level = match l.str()?.to_ascii_uppercase().as_str() {
            "DEBUG" | "TRACE" => Level::Debug,
            "INFO" => Level::Info,
            "WARN" | "WARNING" => Level::Warn,
            "ERROR" | "FATAL" | "PANIC" => Level::Error,
            other => {
                return Err(l.err(format!(
                    "unknown level {other:?}; expected DEBUG, INFO, WARN, ERROR, FATAL or PANIC"
                )));
            }
        };
    }
    if let Some(fm) = o.get("format") {
        cfg.format = match fm.str()?.as_str() {
            "default" | "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => {
                return Err(fm.err(format!(
                    "unknown format {other:?}; expected \"default\", \"text\" or \"json\""
                )));
            }
        };
    }
    if let Some(out) = o.get("output") {
        cfg.output = match out.str()?.as_str() {
            "stdout" => LogOutput::Stdout,
            "stderr" => LogOutput::Stderr,
            "" => return Err(out.err("expected \"stdout\", \"stderr\" or a file path")),
            path => LogOutput::File(PathBuf::from(path)),
        };
    }
    o.finish(&["level", "format", "output"])?;
    Ok(cfg)
}

/// Whether `source` can publish `code`: a signal, a global event, a declared
/// watch (`watch.<name>`) or a job.
fn source_known(
    source: &str,
    code: EventCode,
    watches: &[WatchConfig],
    jobs: &HashSet<&str>,
) -> bool {
    match (source, code) {
        (s, EventCode::Signal) => SIGNAL_EVENTS.contains(&s),
        (GLOBAL, c) => c.is_global(),
        (s, _) if s.starts_with("watch.") => watches.iter().any(|x| x.source == s),
        (s, _) => jobs.contains(s),
    }
}

/// The job that job `i` waits on, if that job must run for the event to
/// come. A job with a `when.timeout` publishes `timerExpired` and `stopped`
/// without running, so waiting on those from it never blocks.
fn blocking_wait(jobs: &[JobSpec], index: &HashMap<&str, usize>, i: usize) -> Option<usize> {
    let Trigger::Event { source, code, .. } = &jobs.get(i)?.trigger else {
        return None;
    };
    let j = *index.get(source.as_str())?;
    let gives_up = matches!(
        jobs.get(j).map(|t| &t.trigger),
        Some(Trigger::Event {
            timeout: Some(_),
            ..
        })
    );
    if gives_up && matches!(code, EventCode::TimerExpired | EventCode::Stopped) && j != i {
        return None;
    }
    Some(j)
}

/// Finds jobs that can never start: a job waiting on itself, a ring of jobs
/// each waiting on the next (whatever the events, `stopping` and `stopped`
/// included: they come only from a job that ran), or a wait for
/// `timerExpired` from a job with no `when.timeout`. Returns the first such
/// job in config order and the message. Each job waits on at most one other,
/// so one walk per job with three-colour marking is linear.
fn when_cycle(jobs: &[JobSpec]) -> Option<(usize, String)> {
    let index: HashMap<&str, usize> = jobs
        .iter()
        .enumerate()
        .map(|(i, j)| (j.name.as_str(), i))
        .collect();
    for (i, job) in jobs.iter().enumerate() {
        if let Trigger::Event {
            source,
            code: EventCode::TimerExpired,
            ..
        } = &job.trigger
            && let Some(&j) = index.get(source.as_str())
            && !matches!(
                jobs[j].trigger,
                Trigger::Event {
                    timeout: Some(_),
                    ..
                }
            )
        {
            return Some((
                i,
                format!("{source:?} has no 'when.timeout', so its timerExpired event never fires"),
            ));
        }
    }
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnPath,
        Done,
    }
    let mut mark = vec![Mark::New; jobs.len()];
    let mut found: Option<Vec<usize>> = None;
    for start in 0..jobs.len() {
        let mut path = Vec::new();
        let mut at = Some(start);
        while let Some(i) = at {
            match mark[i] {
                Mark::Done => break,
                Mark::OnPath => {
                    let from = path.iter().position(|p| *p == i).unwrap_or(0);
                    let ring = path[from..].to_vec();
                    if found
                        .as_ref()
                        .is_none_or(|f: &Vec<usize>| ring.iter().min() < f.iter().min())
                    {
                        found = Some(ring);
                    }
                    break;
                }
                Mark::New => {
                    mark[i] = Mark::OnPath;
                    path.push(i);
                    at = blocking_wait(jobs, &index, i);
                }
            }
        }
        for p in path {
            mark[p] = Mark::Done;
        }
    }
    let ring = found?;
    let first = ring
        .iter()
        .position(|i| Some(i) == ring.iter().min())
        .unwrap_or(0);
    let mut order: Vec<usize> = ring[first..].to_vec();
    order.extend_from_slice(&ring[..first]);
    let k = order[0];
    let message = if order.len() == 1 {
        format!(
            "job {:?} waits on its own event, so it can never start",
            jobs[k].name
        )
    } else {
        let names: Vec<String> = order
            .iter()
            .chain(std::iter::once(&k))
            .map(|i| format!("{:?}", jobs[*i].name))
            .collect();
        format!(
            "'when' cycle: {} (each waits on the next), so none of them can ever start",
            names.join(" -> ")
        )
    };
    Some((k, message))
}

fn w_source(w: &Option<TemplateWhen>) -> &str {
    w.as_ref().map_or("", |w| w.source.as_str())
}

fn template(f: &Field, config_path: &Path) -> Result<TemplateConfig, ConfigError> {
    let mut o = f.obj()?;
    let base = config_path.parent().unwrap_or(Path::new("."));
    let resolve = |p: String| {
        let p = PathBuf::from(p);
        if p.is_absolute() { p } else { base.join(p) }
    };
    let source_f = o.require("source")?;
    let source = resolve(source_f.str()?);
    let text = read_text(&source, "template").map_err(|e| match e {
        ReadError::Io(e) => source_f.err(format!("cannot read {}: {e}", source.display())),
        ReadError::Invalid(e) => e,
    })?;
    // Checked now, so a broken template or an unknown function stops the
    // config loading, not a render later.
    let funcs = autopilot_template::Funcs::with_env(BTreeMap::new());
    autopilot_template::Template::parse(&text)
        .and_then(|t| t.check_functions(funcs.names().chain(TEMPLATE_DATA_FUNCS)))
        .map_err(|e| ConfigError::Invalid {
            file: source.clone(),
            line: e.line,
            column: e.column,
            field: "template".into(),
            message: e.message,
        })?;
    let dest_f = o.require("dest")?;
    let dest = dest_f.str()?;
    if dest.is_empty() {
        return Err(dest_f.err("must be a file path"));
    }
    let dest = resolve(dest);
    let name = match o.opt("name", Field::str)? {
        Some(n) if n.is_empty() => return Err(o.err("name", "must not be empty")),
        Some(n) => n,
        None => dest
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| dest.display().to_string()),
    };
    let command = o.opt("command", Field::exec)?;
    let (wait_min, wait_max) = match o.get("wait") {
        None => (Duration::ZERO, Duration::ZERO),
        Some(w) => {
            let mut w = w.obj()?;
            let min = w.opt("min", Field::duration)?.unwrap_or_default();
            let max = w
                .opt("max", Field::duration)?
                .unwrap_or(min.saturating_mul(4));
            if max < min {
                return Err(w.err("max", "must not be shorter than 'min'"));
            }
            w.finish(&["min", "max"])?;
            (min, max)
        }
    };
    let perms = match o.get("perms") {
        None => 0o644,
        Some(p) => {
            let v = match p.str() {
                Ok(s) => u32::from_str_radix(s.trim_start_matches("0o"), 8)
                    .map_err(|_| p.err(format!("{s:?} is not an octal mode such as \"0644\"")))?,
                Err(_) => p.int(0, 0o7777)? as u32,
            };
            if v > 0o7777 {
                return Err(p.err("mode is larger than 07777"));
            }
            v
        }
    };
    let when = match o.get("when") {
        None => None,
        Some(w) => match when(&w)? {
            Trigger::Event {
                source,
                code,
                each,
                timeout: None,
            } if !source.is_empty() => Some(TemplateWhen { source, code, each }),
            _ => {
                return Err(w.err(
                    "a template's 'when' is {source, once|each}: the event that starts rendering",
                ));
            }
        },
    };
    let files = o.strings("files")?.into_iter().map(resolve).collect();
    o.finish(&[
        "name", "source", "dest", "command", "wait", "perms", "when", "files",
    ])?;
    Ok(TemplateConfig {
        name,
        source,
        text,
        dest,
        command,
        wait_min,
        wait_max,
        perms,
        when,
        files,
    })
}

fn watch(f: &Field, warnings: &mut Vec<ConfigWarning>) -> Result<WatchConfig, ConfigError> {
    let mut o = f.obj()?;
    let name_f = o.require("name")?;
    let name = name_f.str()?;
    check_service_name(&name_f, &name)?;
    let interval = o.require("interval")?.positive_duration()?;
    let tag = o.opt("tag", Field::str)?;
    let dc = o.opt("dc", Field::str)?;
    if dc.is_some() {
        warnings.push(ConfigWarning {
            field: child(&o.path, "dc"),
            message: "ignored: autopilot's catalogs have no datacenters; the watch reads the catalog the agent uses".into(),
        });
    }
    let debounce = o.opt("debounce", Field::duration)?.unwrap_or_default();
    o.finish(&["name", "interval", "tag", "dc", "debounce"])?;
    Ok(WatchConfig {
        source: format!("watch.{name}"),
        name,
        interval,
        tag,
        dc,
        debounce,
    })
}

fn telemetry(f: &Field) -> Result<TelemetryConfig, ConfigError> {
    let mut o = f.obj()?;
    let port = o
        .get("port")
        .map(|p| p.int(1, 65535))
        .transpose()?
        .unwrap_or(9090) as u16;
    let interfaces = o.strings("interfaces")?;
    let tags = o.strings("tags")?;
    let mut metrics = Vec::new();
    let mut seen = HashSet::new();
    if let Some(m) = o.get("metrics") {
        for mf in m.array()? {
            let mut mo = mf.obj()?;
            let name_f = mo.require("name")?;
            let name = name_f.str()?;
            let parts: Vec<String> = ["namespace", "subsystem"]
                .iter()
                .filter_map(|k| mo.get(k).map(|f| f.str()))
                .collect::<Result<Vec<_>, _>>()?
                .into_iter()
                .filter(|s| !s.is_empty())
                .chain(std::iter::once(name.clone()))
                .collect();
            let full_name = parts.join("_");
            if !valid_metric_name(&full_name) {
                return Err(name_f.err(format!(
                    "{full_name:?} is not a valid Prometheus metric name ([a-zA-Z_:][a-zA-Z0-9_:]*)"
                )));
            }
            if !seen.insert(full_name.clone()) {
                return Err(name_f.err(format!("duplicate metric {full_name:?}")));
            }
            let help = mo
                .opt("help", Field::str)?
                .unwrap_or_else(|| full_name.clone());
            let type_f = mo.require("type")?;
            let kind = match type_f.str()?.as_str() {
                "counter" => MetricKind::Counter,
                "gauge" => MetricKind::Gauge,
                "histogram" => MetricKind::Histogram,
                "summary" => MetricKind::Summary,
                other => {
                    return Err(type_f.err(format!(
                        "unknown metric type {other:?}; expected counter, gauge, histogram or summary"
                    )));
                }
            };
            mo.finish(&["namespace", "subsystem", "name", "help", "type"])?;
            metrics.push(MetricConfig {
                full_name,
                help,
                kind,
            });
        }
    }
    o.finish(&["port", "interfaces", "tags", "metrics"])?;
    Ok(TelemetryConfig {
        port,
        interfaces,
        tags,
        metrics,
    })
}

fn valid_metric_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// Why `name` cannot be one path component (a directory or file name under
/// the state root), if it cannot.
fn component_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("it is empty")
    } else if name == "." || name == ".." {
        Some("'.' and '..' name directories")
    } else if name.contains('/') || name.contains('\\') {
        Some("it contains a path separator")
    } else if name.chars().any(|c| c.is_control() || c.is_whitespace()) {
        Some("it contains a space or a control character")
    } else if name.len() > 200 {
        Some("it is longer than 200 bytes")
    } else {
        None
    }
}

/// Refuses a name that becomes a directory or file name and could escape
/// or break the state root (`..`, `a/b`, control characters, empty).
fn check_component(f: &Field, name: &str, what: &str) -> Result<(), ConfigError> {
    match component_problem(name) {
        Some(why) => Err(f.err(format!("{name:?} is not a valid {what}: {why}"))),
        None => Ok(()),
    }
}

/// Consul's service-name rule, which ContainerPilot enforces for advertised jobs.
fn check_service_name(f: &Field, name: &str) -> Result<(), ConfigError> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && name.len() > 1
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '-');
    if !ok {
        return Err(f.err(format!(
            "{name:?} is not a valid service name: it must start with a lower-case letter and contain only letters, digits and '-' (at least 2 characters)"
        )));
    }
    Ok(())
}

const JOB_KEYS: [&str; 22] = [
    "artifact",
    "name",
    "exec",
    "port",
    "interfaces",
    "tags",
    "initial_status",
    "health",
    "when",
    "timeout",
    "restarts",
    "stopTimeout",
    "logging",
    "consul",
    "main",
    "restartBackoff",
    "election",
    "roles",
    "snapshot",
    "repair",
    "announce",
    "dieWithAgent",
];

fn job(
    f: &Field,
    global_stop: Duration,
    default_store: Option<&str>,
    warnings: &mut Vec<ConfigWarning>,
) -> Result<JobSpec, ConfigError> {
    let mut o = f.obj()?;
    let exec = o.opt("exec", Field::exec)?.unwrap_or_default();
    let port = o
        .get("port")
        .map(|p| p.int(1, 65535))
        .transpose()?
        .map(|p| p as u16);
    let name = match o.get("name") {
        Some(n) => {
            let name = n.str()?;
            if port.is_some() {
                check_service_name(&n, &name)?;
            } else {
                check_component(&n, &name, "job name")?;
            }
            name
        }
        None if port.is_none() && !exec.is_empty() => {
            let name = exec[0].clone();
            if component_problem(&name).is_some() {
                return Err(o.err(
                    "name",
                    format!("the command {name:?} cannot name the job (it becomes a file name): set 'name'"),
                ));
            }
            name
        }
        None => return Err(o.err("name", "this field is required")),
    };
    if exec.is_empty() && port.is_none() {
        return Err(o.err("exec", "a job needs an 'exec', or a 'port' to advertise"));
    }
    let interfaces = o.strings("interfaces")?;
    let tags = o.strings("tags")?;
    let initial_status = match o.get("initial_status") {
        None => None,
        Some(s) => Some(match s.str()?.as_str() {
            "passing" => EntryStatus::Passing,
            "warning" => EntryStatus::Warning,
            "critical" => EntryStatus::Critical,
            other => {
                return Err(s.err(format!(
                    "unknown status {other:?}; expected passing, warning or critical"
                )));
            }
        }),
    };
    let health = o.get("health").map(|h| health(&h, warnings)).transpose()?;
    if port.is_some() && health.is_none() && initial_status.is_none() {
        return Err(o.err(
            "port",
            "an advertised job needs 'health' (or 'initial_status') so its catalog entry can be kept alive",
        ));
    }
    let trigger = match o.get("when") {
        None => Trigger::Startup,
        Some(w) => when(&w)?,
    };
    let timeout = match o.get("timeout") {
        Some(t) => Some(t.positive_duration()?),
        None => match trigger {
            // A periodic task never outlives its period.
            Trigger::Interval(every) => Some(every),
            _ => None,
        },
    };
    let restarts = match o.get("restarts") {
        None if matches!(trigger, Trigger::Interval(_)) => Restarts::Unlimited,
        None => Restarts::Never,
        Some(r) => restarts(&r)?,
    };
    let stop_timeout = o
        .opt("stopTimeout", Field::duration)?
        .unwrap_or(global_stop);
    let (raw_logs, stderr_at_info) = match o.get("logging") {
        Some(l) => {
            let mut lo = l.obj()?;
            let raw = lo.opt("raw", Field::bool)?.unwrap_or(false);
            // An autopilot extension: the level of the job's stderr lines.
            let info = match lo.get("stderr") {
                None => false,
                Some(v) => match v.str()?.to_ascii_lowercase().as_str() {
                    "info" => true,
                    "warn" => false,
                    other => {
                        return Err(v.err(format!(
                            "unknown level {other:?}; expected \"info\" or \"warn\""
                        )));
                    }
                },
            };
            lo.finish(&["raw", "stderr"])?;
            (raw, info)
        }
        None => (false, false),
    };
    let (enable_tag_override, deregister_critical_after) = match o.get("consul") {
        Some(c) => {
            let mut co = c.obj()?;
            let eto = co.opt("enableTagOverride", Field::bool)?.unwrap_or(false);
            if eto {
                warnings.push(ConfigWarning {
                    field: child(&co.path, "enableTagOverride"),
                    message: "ignored: autopilot's catalogs have no tag override; an entry's tags are always the job's".into(),
                });
            }
            let dcsa = co.opt("deregisterCriticalServiceAfter", Field::positive_duration)?;
            co.finish(&["enableTagOverride", "deregisterCriticalServiceAfter"])?;
            (eto, dcsa)
        }
        None => (false, None),
    };
    let main = o.opt("main", Field::bool)?.unwrap_or(false);
    let backoff = match o.get("restartBackoff") {
        Some(b) => {
            let mut bo = b.obj()?;
            let mut v = Backoff::default();
            if let Some(x) = bo.get("initial") {
                v.initial = x.positive_duration()?;
            }
            if let Some(x) = bo.get("max") {
                v.max = x.positive_duration()?;
            }
            if let Some(x) = bo.get("resetAfter") {
                v.reset_after = x.duration()?;
            }
            if v.max < v.initial {
                return Err(bo.err("max", "must not be shorter than 'initial'"));
            }
            bo.finish(&["initial", "max", "resetAfter"])?;
            v
        }
        None => Backoff::default(),
    };
    let election = match o.get("election") {
        Some(e) => {
            let mut eo = e.obj()?;
            let name_f = eo.require("name")?;
            let name = name_f.str()?;
            check_component(&name_f, &name, "election name")?;
            let ttl = eo
                .opt("ttl", Field::positive_duration)?
                .unwrap_or(Duration::from_secs(5));
            if ttl < Duration::from_secs(2) {
                return Err(eo.err("ttl", "must be at least 2s (etcd's minimum lease TTL)"));
            }
            let priority = match eo.opt("priority", |f| f.int(0, i64::from(u32::MAX)))? {
                Some(p) => u32::try_from(p).map_err(|_| eo.err("priority", "out of range"))?,
                None => 1,
            };
            let max_lag = match eo.opt("maxLag", |f| f.int(0, i64::MAX))? {
                Some(l) => Some(u64::try_from(l).map_err(|_| eo.err("maxLag", "out of range"))?),
                None => None,
            };
            eo.finish(&["name", "ttl", "priority", "maxLag"])?;
            Some(ElectionSpec {
                name,
                ttl,
                priority,
                max_lag,
            })
        }
        None => None,
    };
    let roles = match o.get("roles") {
        Some(r) => {
            if port.is_none() {
                return Err(r.err("'roles' name the catalog entry, so the job needs a 'port'"));
            }
            if election.is_none() {
                return Err(r.err("'roles' follow an election: set 'election' too"));
            }
            let mut ro = r.obj()?;
            let mut role = |key: &str| -> Result<RoleSpec, ConfigError> {
                let Some(f) = ro.get(key) else {
                    return Ok(RoleSpec::default());
                };
                let mut x = f.obj()?;
                let name = match x.get("name") {
                    Some(n) => {
                        let v = n.str()?;
                        check_service_name(&n, &v)?;
                        Some(v)
                    }
                    None => None,
                };
                let tags = x.opt("tags", Field::strings)?;
                x.finish(&["name", "tags"])?;
                Ok(RoleSpec { name, tags })
            };
            let roles = Roles {
                leader: role("leader")?,
                follower: role("follower")?,
            };
            ro.finish(&["leader", "follower"])?;
            Some(roles)
        }
        None => None,
    };
    let snapshot = match o.get("snapshot") {
        Some(f) => Some(snapshot(&f, &name)?),
        None => None,
    };
    let artifact = o
        .get("artifact")
        .map(|f| artifact(&f, default_store))
        .transpose()?;
    let repair = match o.get("repair") {
        Some(f) => Some(repair::repair(
            &f,
            &repair::JobFacts {
                exec: &exec,
                trigger: &trigger,
                snapshot: snapshot.as_ref(),
            },
            warnings,
        )?),
        None => None,
    };
    let announce = match o.get("announce") {
        Some(f) => {
            if port.is_none() || health.is_none() {
                return Err(f.err(
                    "'announce' follows the job's catalog entry: the job needs a 'port' and a 'health' check",
                ));
            }
            Some(announce(&f)?)
        }
        None => None,
    };
    let die_with_agent = o.opt("dieWithAgent", Field::bool)?.unwrap_or(false);
    o.finish(&JOB_KEYS)?;
    let spec = JobSpec {
        name,
        exec,
        trigger,
        timeout,
        restarts,
        backoff,
        stop_timeout,
        health,
        port,
        interfaces,
        tags,
        initial_status,
        raw_logs,
        stderr_at_info,
        enable_tag_override,
        deregister_critical_after,
        main,
        election,
        roles,
        snapshot,
        reinit: 0,
        artifact,
        artifact_sha: None,
        repair,
        announce,
        die_with_agent,
    };
    Ok(spec)
}

// --- announce (issue 16: the anycast gate) ---

/// Prefixes per job: a bound on what one include file carries.
const MAX_ANNOUNCE_PREFIXES: usize = 256;

fn announce(f: &Field) -> Result<autopilot_core::announce::AnnounceSpec, ConfigError> {
    use autopilot_core::announce::{AnnounceSpec, Prefix};
    let mut o = f.obj()?;
    let list = o.require("prefixes")?;
    let items = list.array()?;
    if items.is_empty() {
        return Err(list.err("at least one prefix is required"));
    }
    if items.len() > MAX_ANNOUNCE_PREFIXES {
        return Err(list.err(format!("at most {MAX_ANNOUNCE_PREFIXES} prefixes per job")));
    }
    let mut prefixes = Vec::new();
    for item in &items {
        let p = Prefix::parse(&item.str()?).map_err(|e| item.err(e))?;
        if prefixes.contains(&p) {
            return Err(item.err(format!("{p} is listed twice")));
        }
        prefixes.push(p);
    }
    if let Some(s) = o.get("speaker") {
        let v = s.str()?;
        if v != "bird" {
            return Err(s.err(format!("unknown speaker {v:?}; expected \"bird\"")));
        }
    }
    let absolute = |o: &mut Obj, key: &str, default: &str| -> Result<String, ConfigError> {
        match o.get(key) {
            None => Ok(default.to_string()),
            Some(v) => {
                let path = v.str()?;
                if !path.starts_with('/') {
                    return Err(v.err(format!("{path:?} is not an absolute path")));
                }
                Ok(path)
            }
        }
    };
    let socket = absolute(&mut o, "socket", "/run/bird/bird.ctl")?;
    let include_dir = absolute(&mut o, "includeDir", "/run/autopilot")?;
    let disable_file = absolute(&mut o, "disableFile", "/etc/autopilot/announce-disable")?;
    let protocol = match o.get("protocol") {
        None => "autopilot".to_string(),
        Some(v) => {
            let p = v.str()?;
            let ok = p.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && p.len() <= 64
                && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !ok {
                return Err(v.err(format!(
                    "{p:?} is not a BIRD protocol name: a letter, then letters, digits or '_' (at most 64)"
                )));
            }
            p
        }
    };
    let loopback = o.opt("loopback", Field::bool)?.unwrap_or(false);
    if loopback
        && let Some(p) = prefixes
            .iter()
            .find(|p| p.len != if p.is_v6() { 128 } else { 32 })
    {
        return Err(o.err(
            "loopback",
            format!("'lo' gets host addresses only: {p} is not a /32 or /128"),
        ));
    }
    let drain = o.opt("drain", Field::duration)?.unwrap_or_default();
    o.finish(&[
        "prefixes",
        "speaker",
        "socket",
        "protocol",
        "includeDir",
        "disableFile",
        "loopback",
        "drain",
    ])?;
    Ok(AnnounceSpec {
        prefixes,
        socket,
        protocol,
        include_dir,
        disable_file,
        loopback,
        drain,
    })
}

fn snapshot(f: &Field, job: &str) -> Result<SnapshotSpec, ConfigError> {
    let mut o = f.obj()?;
    let store_f = o.require("store")?;
    let store = store_f.str()?;
    if !store.starts_with("file:///") && !store.starts_with("s3://") {
        return Err(store_f.err(format!(
            "{store:?} is not a snapshot store: expected file:///path or s3://bucket/prefix"
        )));
    }
    let set = o
        .opt("name", Field::str)?
        .unwrap_or_else(|| job.to_string());
    if set.is_empty()
        || set == "."
        || set == ".."
        || !set
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        return Err(o.err(
            "name",
            format!("{set:?} is not a valid snapshot name (letters, digits, '-', '_', '.')"),
        ));
    }
    let create = o.opt("create", Field::exec)?;
    let restore = o.opt("restore", Field::exec)?;
    let interval = o.opt("interval", Field::positive_duration)?;
    if interval.is_some() && create.is_none() {
        return Err(o.err("interval", "an interval needs a 'create' command"));
    }
    let retain = o.opt("retain", |f| f.int(1, 10_000))?.unwrap_or(3) as u32;
    let leader_only = o.opt("leaderOnly", Field::bool)?.unwrap_or(false);
    let data_dir = o.opt("dataDir", Field::str)?.map(PathBuf::from);
    let data_dir_owner = o.opt("dataDirOwner", Field::str)?;
    if let Some(u) = &data_dir_owner
        && (u.is_empty()
            || u.len() > 32
            || !u
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')))
    {
        return Err(o.err(
            "dataDirOwner",
            format!("{u:?} is not a user name (1-32 letters, digits, '_', '-', '.')"),
        ));
    }
    if data_dir_owner.is_some() && data_dir.is_none() {
        return Err(o.err("dataDirOwner", "'dataDirOwner' needs a 'dataDir'"));
    }
    if restore.is_some() != data_dir.is_some() {
        return Err(o.err(
            "restore",
            "'restore' and 'dataDir' go together: autopilot restores into an empty dataDir",
        ));
    }
    o.finish(&[
        "name",
        "store",
        "create",
        "restore",
        "interval",
        "retain",
        "leaderOnly",
        "dataDir",
        "dataDirOwner",
    ])?;
    Ok(SnapshotSpec {
        set,
        store,
        create,
        restore,
        interval,
        retain,
        leader_only,
        data_dir,
        data_dir_owner,
    })
}

/// The kinds of health check; a check sets exactly one.
const CHECK_KINDS: [&str; 3] = ["exec", "http", "tcp"];

/// The interval of an `http` or `tcp` check that sets none (as Kubernetes'
/// probes); its TTL defaults to three intervals.
const NATIVE_CHECK_INTERVAL: Duration = Duration::from_secs(10);

fn health(f: &Field, warnings: &mut Vec<ConfigWarning>) -> Result<HealthSpec, ConfigError> {
    let mut o = f.obj()?;
    let kinds: Vec<&str> = CHECK_KINDS.into_iter().filter(|k| o.has(k)).collect();
    let kind = match kinds.as_slice() {
        [one] => *one,
        [] => {
            return Err(o.err(
                "exec",
                "this field is required: a health check needs one of 'exec', 'http' or 'tcp'",
            ));
        }
        [first, second, ..] => {
            return Err(o.err(
                second,
                format!(
                    "set only one of 'exec', 'http' and 'tcp' (found '{first}' and '{second}')"
                ),
            ));
        }
    };
    let raw = match o.get("logging") {
        Some(l) => {
            let mut lo = l.obj()?;
            let raw = lo.opt("raw", Field::bool)?.unwrap_or(false);
            if raw && kind != "exec" {
                warnings.push(ConfigWarning {
                    field: child(&lo.path, "raw"),
                    message: format!(
                        "ignored: a '{kind}' check runs no process, so it has no output"
                    ),
                });
            }
            lo.finish(&["raw"])?;
            raw
        }
        None => false,
    };
    if kind != "http" && o.has("expect") {
        return Err(o.err("expect", "'expect' applies only to an 'http' check"));
    }
    let check = match kind {
        "http" => {
            let url_f = o.require("http")?;
            let url = url_f.str()?;
            http_url(&url).map_err(|e| url_f.err(e.to_string()))?;
            let expect = o.opt("expect", |f| f.int(100, 599))?.map(|v| v as u16);
            HealthCheck::Http { url, expect }
        }
        "tcp" => {
            let addr_f = o.require("tcp")?;
            let address = addr_f.str()?;
            host_port(&address).map_err(|e| addr_f.err(e.to_string()))?;
            HealthCheck::Tcp { address }
        }
        _ => HealthCheck::Exec {
            argv: o.require("exec")?.exec()?,
            raw,
        },
    };
    // ContainerPilot's exec checks need both; the native checks default them
    // as Kubernetes and Consul users expect (`health: {tcp: "..."}` alone).
    let (interval, ttl) = if kind == "exec" {
        (
            o.require("interval")?.positive_duration()?,
            o.require("ttl")?.positive_duration()?,
        )
    } else {
        let interval = o
            .opt("interval", Field::positive_duration)?
            .unwrap_or(NATIVE_CHECK_INTERVAL);
        let ttl = o
            .opt("ttl", Field::positive_duration)?
            .unwrap_or_else(|| interval.saturating_mul(3));
        (interval, ttl)
    };
    let timeout = o
        .opt("timeout", Field::positive_duration)?
        // A check with no timeout could hang forever and block every later check.
        .unwrap_or(interval);
    let rise = o
        .get("rise")
        .map(|r| r.int(1, 1000))
        .transpose()?
        .unwrap_or(1) as u32;
    let fall = o
        .get("fall")
        .map(|r| r.int(1, 1000))
        .transpose()?
        .unwrap_or(1) as u32;
    o.finish(&[
        "exec", "http", "tcp", "expect", "interval", "ttl", "timeout", "rise", "fall", "logging",
    ])?;
    Ok(HealthSpec {
        check,
        interval,
        ttl,
        timeout,
        rise,
        fall,
    })
}

/// Why a native check's URL or address cannot be used. The value is quoted
/// with its control characters escaped, so a hostile value cannot forge log lines.
#[derive(Debug, thiserror::Error)]
pub enum AddressError {
    #[error("'{}' is not a valid URL: {source}", .url.escape_debug())]
    InvalidUrl {
        url: String,
        #[source]
        source: http::uri::InvalidUri,
    },
    #[error("'{}': https is not supported by the native check; use an 'exec' check (curl) for TLS", .url.escape_debug())]
    Https { url: String },
    #[error("'{}' is not an http:// URL", .url.escape_debug())]
    NotHttp { url: String },
    #[error("'{}' has no host", .url.escape_debug())]
    NoHost { url: String },
    #[error("'{}': credentials in the URL are not supported", .url.escape_debug())]
    Credentials { url: String },
    #[error("'{}': port 0 is not a valid port", .url.escape_debug())]
    PortZero { url: String },
    #[error("'{}' is not host:port", .address.escape_debug())]
    NotHostPort { address: String },
    #[error("'{}': '{}' is not a port (1-65535)", .address.escape_debug(), .port.escape_debug())]
    BadPort { address: String, port: String },
    #[error("'{}': unbalanced '[' in the host", .address.escape_debug())]
    UnbalancedBracket { address: String },
    #[error("'{}': write an IPv6 address in brackets, as [::1]:5432", .address.escape_debug())]
    BareIpv6 { address: String },
    #[error("'{}' has no valid host", .address.escape_debug())]
    BadHost { address: String },
}

/// Checks an `http` check's URL: `http://host[:port][/path]`. Returns the
/// host, the port and the request target (path and query).
pub fn http_url(url: &str) -> Result<(String, u16, String), AddressError> {
    let u = || url.to_string();
    let uri: http::Uri = url
        .parse()
        .map_err(|source| AddressError::InvalidUrl { url: u(), source })?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(AddressError::Https { url: u() });
        }
        _ => return Err(AddressError::NotHttp { url: u() }),
    }
    let authority = uri
        .authority()
        .ok_or_else(|| AddressError::NoHost { url: u() })?;
    if authority.as_str().contains('@') {
        return Err(AddressError::Credentials { url: u() });
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    if host.is_empty() {
        return Err(AddressError::NoHost { url: u() });
    }
    let port = authority.port_u16().unwrap_or(80);
    if port == 0 {
        return Err(AddressError::PortZero { url: u() });
    }
    let target = uri
        .path_and_query()
        .map_or_else(|| "/".to_string(), |p| p.as_str().to_string());
    let target = if target.is_empty() {
        "/".to_string()
    } else {
        target
    };
    Ok((host, port, target))
}

/// Splits a `tcp` check's `host:port` (`[v6]:port` for an IPv6 address).
pub fn host_port(address: &str) -> Result<(String, u16), AddressError> {
    let a = || address.to_string();
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| AddressError::NotHostPort { address: a() })?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| AddressError::BadPort {
            address: a(),
            port: port.to_string(),
        })?;
    let host = match host.strip_prefix('[') {
        Some(h) => h
            .strip_suffix(']')
            .ok_or_else(|| AddressError::UnbalancedBracket { address: a() })?,
        None if host.contains(':') => {
            return Err(AddressError::BareIpv6 { address: a() });
        }
        None => host,
    };
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(AddressError::BadHost { address: a() });
    }
    Ok((host.to_string(), port))
}

fn when(f: &Field) -> Result<Trigger, ConfigError> {
    let mut o = f.obj()?;
    const KEYS: [&str; 5] = ["source", "once", "each", "interval", "timeout"];
    if o.has("interval") {
        for other in ["once", "each", "source", "timeout"] {
            if o.has(other) {
                return Err(o.err(
                    "interval",
                    format!("'interval' cannot be combined with '{other}'"),
                ));
            }
        }
        let every = o.require("interval")?.positive_duration()?;
        o.finish(&KEYS)?;
        return Ok(Trigger::Interval(every));
    }
    if o.has("once") && o.has("each") {
        return Err(o.err("each", "set only one of 'once' and 'each'"));
    }
    let source_f = o.get("source");
    let source = source_f.as_ref().map(|s| s.str()).transpose()?;
    let timeout = o.opt("timeout", Field::positive_duration)?;
    let (code_f, each) = match (o.get("once"), o.get("each")) {
        (Some(c), None) => (Some(c), false),
        (None, Some(c)) => (Some(c), true),
        _ => (None, true),
    };
    let is_signal = source
        .as_deref()
        .is_some_and(|s| SIGNAL_EVENTS.contains(&s));
    let code = match &code_f {
        Some(c) => {
            let name = c.str()?;
            let code = EventCode::parse(&name).ok_or_else(|| {
                c.err(format!(
                    "unknown event {name:?}; expected one of: {}",
                    EventCode::ALL.map(EventCode::as_str).join(", ")
                ))
            })?;
            if is_signal && code != EventCode::Signal {
                return Err(c.err(format!(
                    "a signal source takes no event other than \"signal\" (found {name:?})"
                )));
            }
            code
        }
        None if is_signal => EventCode::Signal,
        None => {
            return Err(o.err(
                "once",
                "'when' needs 'once' or 'each' (naming an event), or 'interval'",
            ));
        }
    };
    let source = match source {
        Some(s) if s.is_empty() => return Err(o.err("source", "the source is empty")),
        Some(s) => s,
        None if code.is_global() => GLOBAL.to_string(),
        None => {
            return Err(o.err(
                "source",
                format!("'source' is required for the {code:?} event (a job name, watch.<name> or a signal)"),
            ));
        }
    };
    o.finish(&KEYS)?;
    Ok(Trigger::Event {
        source,
        code,
        each,
        timeout,
    })
}

fn restarts(f: &Field) -> Result<Restarts, ConfigError> {
    match &f.node.kind {
        json5::Kind::Str(s) if s == "unlimited" => Ok(Restarts::Unlimited),
        json5::Kind::Str(s) if s == "never" => Ok(Restarts::Never),
        json5::Kind::Str(s) if s.parse::<u32>().is_err() => Err(f.err(format!(
            "expected \"never\", \"unlimited\" or a non-negative integer, found {s:?}"
        ))),
        _ => {
            let n = f.int(0, i64::from(u32::MAX)).map_err(|_| {
                f.err("expected \"never\", \"unlimited\" or a non-negative integer")
            })?;
            Ok(if n == 0 {
                Restarts::Never
            } else {
                Restarts::Count(n as u32)
            })
        }
    }
}

#[cfg(test)]
mod tests;
