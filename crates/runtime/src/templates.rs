//! Config-file templates: the catalog functions templates read data with, rendering, writing only on change, and running the template's command.
//!
//! A template sees only what it is handed: catalog reads, the agent's
//! environment, and the files its config grants. The template language has
//! no way to run a program; the command is the config's, not the template's.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use autopilot_catalog::{Catalog, CatalogError, Instance, Status};
use autopilot_config::TemplateConfig;
use autopilot_process::{Exit, SpawnSpec, Spawner};
use autopilot_template::{Funcs, Template, Value, arg1 as one, arg2 as two};
use tokio::sync::watch;

use crate::metrics::Metrics;

/// How long one catalog read inside a render may take.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest file the `file` function returns.
const MAX_FILE: u64 = 1 << 20;
/// Retry delays for a failing command or an unreachable catalog.
const RETRY_MIN: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// How long a template's command may run before it is killed.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// What a template may read besides the catalog.
#[derive(Debug, Clone, Default)]
pub struct Grants {
    /// What `env` and `.VAR` see.
    pub env: BTreeMap<String, String>,
    /// Files and directories `file` may read.
    pub files: Vec<PathBuf>,
}

/// Why a render produced no output.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RenderError {
    /// Data the template needs does not exist yet (`key` of a missing key).
    #[error("{template}: waiting for {what}")]
    Waiting { template: String, what: String },
    /// The catalog could not be read; the next change or retry renders again.
    #[error("{template}: {message}")]
    Unavailable { template: String, message: String },
    /// The template itself failed (a bad call, a forbidden file).
    #[error("{template}:{line}:{column}: {message}")]
    Template {
        template: String,
        line: usize,
        column: usize,
        message: String,
    },
}

#[derive(Default)]
struct Reads {
    waiting: Option<String>,
    unavailable: Option<String>,
}

/// Renders `tpl` once. Must run on a blocking thread (`spawn_blocking` or a
/// plain thread): the data functions wait for the catalog through `handle`.
pub fn render_blocking(
    name: &str,
    tpl: &Template,
    catalog: &Arc<dyn Catalog>,
    handle: &tokio::runtime::Handle,
    grants: &Grants,
) -> Result<String, RenderError> {
    let reads = Arc::new(Mutex::new(Reads::default()));
    let funcs = data_funcs(catalog.clone(), handle.clone(), grants, reads.clone());
    let data = Value::Map(
        grants
            .env
            .iter()
            .map(|(k, v)| (k.clone(), Value::Str(v.clone())))
            .collect(),
    );
    let res = tpl.render(&data, &funcs);
    let reads = std::mem::take(&mut *reads.lock().unwrap_or_else(|e| e.into_inner()));
    match res {
        Ok(text) => Ok(text),
        Err(_) if reads.unavailable.is_some() => Err(RenderError::Unavailable {
            template: name.into(),
            message: reads.unavailable.unwrap_or_default(),
        }),
        Err(_) if reads.waiting.is_some() => Err(RenderError::Waiting {
            template: name.into(),
            what: reads.waiting.unwrap_or_default(),
        }),
        Err(e) => Err(RenderError::Template {
            template: name.into(),
            line: e.line,
            column: e.column,
            message: e.message,
        }),
    }
}

/// The built-in helpers plus the data functions over `catalog`.
fn data_funcs(
    catalog: Arc<dyn Catalog>,
    handle: tokio::runtime::Handle,
    grants: &Grants,
    reads: Arc<Mutex<Reads>>,
) -> Funcs {
    let mut f = Funcs::with_env(grants.env.clone());
    // Every catalog read goes through here: bounded in time, and a failure
    // is remembered so the caller can tell "catalog down" from "bad template".
    let read = {
        let reads = reads.clone();
        move |e: CatalogError| {
            let msg = e.to_string();
            reads
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .unavailable
                .get_or_insert(msg.clone());
            msg
        }
    };
    let block = {
        let handle = handle.clone();
        let url = catalog.url().to_string();
        move |fut: std::pin::Pin<
            Box<dyn Future<Output = Result<Value, CatalogError>> + Send + '_>,
        >| {
            handle.block_on(async {
                match tokio::time::timeout(READ_TIMEOUT, fut).await {
                    Ok(r) => r,
                    Err(_) => Err(CatalogError::Unavailable {
                        url: url.clone(),
                        message: format!("no answer within {}", crate::logging::dur(READ_TIMEOUT)),
                    }),
                }
            })
        }
    };
    let (c, b, r) = (catalog.clone(), block.clone(), read.clone());
    f.insert("service", move |a| {
        let [spec] = one(a, "service")?;
        let q = ServiceQuery::parse(&spec.to_string())?;
        let c = c.clone();
        b(Box::pin(async move {
            let list = c.instances(&q.name).await?;
            Ok(Value::List(
                list.iter()
                    .filter(|i| q.statuses.is_empty() || q.statuses.contains(&i.status))
                    .filter(|i| q.tag.as_ref().is_none_or(|t| i.tags.contains(t)))
                    .filter(|i| plausible(i))
                    .map(instance_value)
                    .collect(),
            ))
        }))
        .map_err(&r)
    });
    let (c, b, r) = (catalog.clone(), block.clone(), read.clone());
    f.insert("services", move |a| {
        if !a.is_empty() {
            return Err(format!("services takes no arguments, got {}", a.len()));
        }
        let c = c.clone();
        b(Box::pin(async move {
            let list = c.services().await?;
            Ok(Value::List(
                list.into_iter()
                    .map(|s| {
                        map([
                            ("Name", Value::Str(s.name)),
                            ("Instances", Value::Int(s.instances as i64)),
                            ("Passing", Value::Int(s.passing as i64)),
                        ])
                    })
                    .collect(),
            ))
        }))
        .map_err(&r)
    });
    let (c, b, r, w) = (catalog.clone(), block.clone(), read.clone(), reads.clone());
    f.insert("key", move |a| {
        let [k] = one(a, "key")?;
        let key = k.to_string();
        let c = c.clone();
        let k2 = key.clone();
        let v = b(Box::pin(async move {
            Ok(c.kv_get(&k2).await?.map(Value::Str).unwrap_or_default())
        }))
        .map_err(&r)?;
        if v == Value::Nil {
            // Like consul-template: a template naming a key renders once the key exists.
            w.lock()
                .unwrap_or_else(|e| e.into_inner())
                .waiting
                .get_or_insert(format!("key {key:?}"));
            return Err(format!("key {key:?} does not exist (yet)"));
        }
        Ok(v)
    });
    let (c, b, r) = (catalog.clone(), block.clone(), read.clone());
    f.insert("keyOrDefault", move |a| {
        let [k, def] = two(a, "keyOrDefault")?;
        let (key, def) = (k.to_string(), def.clone());
        let c = c.clone();
        b(Box::pin(async move {
            Ok(c.kv_get(&key).await?.map(Value::Str).unwrap_or(def))
        }))
        .map_err(&r)
    });
    for (name, recursive) in [("ls", false), ("tree", true)] {
        let (c, b, r) = (catalog.clone(), block.clone(), read.clone());
        f.insert(name, move |a| {
            let [p] = one(a, name)?;
            let mut prefix = p.to_string();
            if !prefix.is_empty() && !prefix.ends_with('/') {
                prefix.push('/');
            }
            let c = c.clone();
            b(Box::pin(async move {
                let pairs = c.kv_list(&prefix).await?;
                Ok(Value::List(
                    pairs
                        .into_iter()
                        .filter_map(|(k, v)| {
                            let rest = k.strip_prefix(&prefix)?.to_string();
                            // `ls` lists one level, as consul-template's does.
                            let keep = !rest.is_empty() && (recursive || !rest.contains('/'));
                            keep.then(|| map([("Key", Value::Str(rest)), ("Value", Value::Str(v))]))
                        })
                        .collect(),
                ))
            }))
            .map_err(&r)
        });
    }
    let (c, b, r) = (catalog, block, read);
    f.insert("leader", move |a| {
        let [e] = one(a, "leader")?;
        let election = e.to_string();
        let c = c.clone();
        b(Box::pin(async move {
            Ok(match c.leader(&election).await? {
                Some(l) => map([
                    ("ID", Value::Str(l.id)),
                    ("Address", Value::Str(l.address)),
                    ("Port", Value::Int(i64::from(l.port))),
                    ("Term", Value::Int(l.term as i64)),
                ]),
                None => Value::Nil,
            })
        }))
        .map_err(&r)
    });
    let allowed = grants.files.clone();
    f.insert("file", move |a| {
        let [p] = one(a, "file")?;
        read_granted(Path::new(&p.to_string()), &allowed)
    });
    f
}

/// Reads a file if it lies inside a granted path. The file is opened once,
/// beneath a descriptor of the granted directory (`openat2` with
/// `RESOLVE_BENEATH`), so neither `../`, a symlink, nor a directory swapped
/// between a check and the open can step outside the grant. A granted single
/// file is opened beneath its directory without following a final symlink.
/// Only regular files are read (a FIFO or a device would block or never
/// end), at most [`MAX_FILE`] bytes.
pub fn read_granted(path: &Path, allowed: &[PathBuf]) -> Result<Value, String> {
    let shown = path.display();
    let refused = || {
        format!(
            "file {shown}: not readable by this template (grant it in the template's \"files\")"
        )
    };
    let want = std::path::absolute(path).map_err(|e| format!("file {shown}: {e}"))?;
    let mut last = None;
    for g in allowed {
        let Ok(g) = std::path::absolute(g) else {
            continue;
        };
        // Lexical: `Path::starts_with` compares whole components.
        let Ok(rel) = want.strip_prefix(&g) else {
            continue;
        };
        match open_beneath(&g, rel) {
            Ok(Some(f)) => return read_regular(f, &shown),
            Ok(None) => continue,
            Err(e) => last = Some(e),
        }
    }
    match last {
        Some(nix::errno::Errno::ENOSYS) => Err(format!(
            "file {shown}: this kernel lacks openat2, which reading files safely needs"
        )),
        Some(nix::errno::Errno::EXDEV | nix::errno::Errno::ELOOP) => Err(refused()),
        Some(e) => Err(format!("file {shown}: {}", std::io::Error::from(e))),
        None => Err(refused()),
    }
}

/// Opens `rel` beneath the granted `grant`: `Ok(None)` when the grant does not
/// cover it (a file grant only covers itself).
fn open_beneath(
    grant: &Path,
    rel: &Path,
) -> Result<Option<std::os::fd::OwnedFd>, nix::errno::Errno> {
    use nix::fcntl::{OFlag, OpenHow, ResolveFlag, open, openat2};
    use nix::sys::stat::Mode;
    let dir_flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    // O_NONBLOCK: opening a FIFO must not wait for a writer.
    let file_flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    let resolve = ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_MAGICLINKS;
    // The grant's own path is the config's: it is trusted, links and all.
    match open(grant, dir_flags, Mode::empty()) {
        Ok(dir) => {
            if rel.as_os_str().is_empty() {
                return Ok(None);
            }
            let how = OpenHow::new().flags(file_flags).resolve(resolve);
            openat2(&dir, rel, how).map(Some)
        }
        Err(nix::errno::Errno::ENOTDIR) => {
            // A single file: only the grant itself, never a final symlink.
            if !rel.as_os_str().is_empty() {
                return Ok(None);
            }
            let (Some(parent), Some(name)) = (grant.parent(), grant.file_name()) else {
                return Ok(None);
            };
            let dir = open(parent, dir_flags, Mode::empty())?;
            let how = OpenHow::new()
                .flags(file_flags | OFlag::O_NOFOLLOW)
                .resolve(resolve);
            openat2(&dir, Path::new(name), how).map(Some)
        }
        Err(e) => Err(e),
    }
}

/// Reads an opened file if it is a regular one, within [`MAX_FILE`].
fn read_regular(fd: std::os::fd::OwnedFd, shown: &dyn std::fmt::Display) -> Result<Value, String> {
    use std::io::Read;
    use std::os::unix::fs::FileTypeExt;
    let f = std::fs::File::from(fd);
    let meta = f.metadata().map_err(|e| format!("file {shown}: {e}"))?;
    let ft = meta.file_type();
    if !ft.is_file() {
        let kind = if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_socket() {
            "a socket"
        } else if ft.is_block_device() || ft.is_char_device() {
            "a device"
        } else {
            "not a regular file"
        };
        return Err(format!("file {shown}: {kind}; only regular files are read"));
    }
    if meta.len() > MAX_FILE {
        return Err(format!("file {shown}: larger than {MAX_FILE} bytes"));
    }
    let mut buf = Vec::new();
    // The cap holds even if the file grows after the check.
    f.take(MAX_FILE + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("file {shown}: {e}"))?;
    if buf.len() as u64 > MAX_FILE {
        return Err(format!("file {shown}: larger than {MAX_FILE} bytes"));
    }
    String::from_utf8(buf)
        .map(Value::Str)
        .map_err(|_| format!("file {shown}: not UTF-8 text"))
}

/// `service "tag.name|filter"`: the tag is everything before the last dot
/// (tags may contain dots, service names may not); the filter is `any` or a
/// comma-separated list of statuses, `passing` by default.
#[derive(Debug, PartialEq)]
struct ServiceQuery {
    name: String,
    tag: Option<String>,
    /// Empty: any status.
    statuses: Vec<Status>,
}

impl ServiceQuery {
    fn parse(s: &str) -> Result<Self, String> {
        let (spec, filter) = s.split_once('|').unwrap_or((s, "passing"));
        // A datacenter suffix (`@dc1`) is accepted and ignored, as watches' `dc` is.
        let spec = spec.split_once('@').map_or(spec, |(a, _)| a).trim();
        let (tag, name) = match spec.rsplit_once('.') {
            Some((t, n)) => (Some(t.to_string()), n.to_string()),
            None => (None, spec.to_string()),
        };
        if name.is_empty() {
            return Err(format!("service {s:?}: no service name"));
        }
        let statuses = match filter.trim() {
            "any" => Vec::new(),
            list => list
                .split(',')
                .map(|p| {
                    Status::parse(p.trim()).ok_or_else(|| {
                        format!("service {s:?}: unknown status {p:?} (passing, warning, critical, maintenance or any)")
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        Ok(ServiceQuery {
            name,
            tag,
            statuses,
        })
    }
}

/// Rendered files are often configs (nginx, haproxy) where a newline or a
/// `;` in an address would inject directives; an entry that no agent could
/// have written is left out rather than rendered.
fn plausible(i: &Instance) -> bool {
    let host_ok = i.address.parse::<std::net::IpAddr>().is_ok()
        || (!i.address.is_empty()
            && i.address.len() <= 253
            && i.address
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-'));
    let text_ok = |s: &str| !s.chars().any(|c| c.is_control());
    if !(host_ok && text_ok(&i.id) && text_ok(&i.name) && i.tags.iter().all(|t| text_ok(t))) {
        tracing::warn!(id = %i.id.escape_debug(), "skipping a catalog entry with an implausible address, name or tag");
        return false;
    }
    true
}

fn instance_value(i: &Instance) -> Value {
    map([
        ("ID", Value::Str(i.id.clone())),
        ("Name", Value::Str(i.name.clone())),
        ("Address", Value::Str(i.address.clone())),
        ("Port", Value::Int(i64::from(i.port))),
        ("Tags", Value::from(i.tags.clone())),
        ("Status", Value::Str(i.status.as_str().to_string())),
    ])
}

fn map<const N: usize>(kv: [(&str, Value); N]) -> Value {
    Value::Map(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
}

/// Writes `text` to `dest` (atomically, with `mode`) unless the file already
/// holds exactly that. Returns whether it wrote. Comparing with the file, not
/// with the last render, makes a restarted agent converge without a write.
pub fn write_if_changed(dest: &Path, text: &str, mode: u32) -> std::io::Result<bool> {
    if let Ok(old) = std::fs::read(dest) {
        let same_mode = std::fs::metadata(dest)
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777 == mode)
            .unwrap_or(false);
        if old == text.as_bytes() && same_mode {
            return Ok(false);
        }
    }
    if let Some(dir) = dest.parent() {
        std::fs::create_dir_all(dir)?;
    }
    crate::fsutil::write_atomic_mode(dest, text.as_bytes(), Some(mode))?;
    Ok(true)
}

/// What a template task needs from the agent.
#[derive(Clone)]
pub struct Ctx {
    pub catalog: Arc<dyn Catalog>,
    pub spawner: Spawner,
    pub metrics: Arc<Metrics>,
    /// Environment of the command, and what the template's `env` sees.
    pub env: BTreeMap<String, String>,
}

/// Renders `cfg` now and after every catalog change (coalesced by `wait`),
/// writing on change and then running the command until it succeeds.
/// `pokes` counts the template's `when` events; a gated template waits for
/// the first, and an `each` template renders again on every one.
pub fn spawn(
    cfg: TemplateConfig,
    ctx: Ctx,
    mut pokes: watch::Receiver<u64>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let tpl = match Template::parse(&cfg.text) {
            Ok(t) => Arc::new(t),
            Err(e) => {
                // Checked at load; only a changed file on disk gets here.
                tracing::error!(template = %cfg.name, "{}: {e}", cfg.source.display());
                return;
            }
        };
        if cfg.when.is_some() {
            while *pokes.borrow_and_update() == 0 {
                if pokes.changed().await.is_err() {
                    return;
                }
            }
        }
        let each = cfg.when.as_ref().is_some_and(|w| w.each);
        let grants = Grants {
            env: ctx.env.clone(),
            files: cfg.files.clone(),
        };
        let mut changes = ctx.catalog.changes();
        let mut command_due = false;
        let mut retry = RETRY_MIN;
        let mut last_error = String::new();
        loop {
            changes.borrow_and_update();
            pokes.borrow_and_update();
            let mut again: Option<Duration> = None;
            let out = {
                let (tpl, catalog, grants, name) = (
                    tpl.clone(),
                    ctx.catalog.clone(),
                    grants.clone(),
                    cfg.name.clone(),
                );
                let handle = tokio::runtime::Handle::current();
                tokio::task::spawn_blocking(move || {
                    render_blocking(&name, &tpl, &catalog, &handle, &grants)
                })
                .await
                .unwrap_or_else(|e| {
                    Err(RenderError::Unavailable {
                        template: cfg.name.clone(),
                        message: format!("render task failed: {e}"),
                    })
                })
            };
            let result = match out {
                Ok(text) => match write_if_changed(&cfg.dest, &text, cfg.perms) {
                    Ok(true) => {
                        tracing::info!(template = %cfg.name, dest = %cfg.dest.display(), bytes = text.len(), "rendered");
                        command_due = cfg.command.is_some();
                        last_error.clear();
                        "written"
                    }
                    Ok(false) => {
                        last_error.clear();
                        "unchanged"
                    }
                    Err(e) => {
                        tracing::error!(template = %cfg.name, "cannot write {}: {e}", cfg.dest.display());
                        again = Some(retry);
                        "failed"
                    }
                },
                Err(e) => {
                    let msg = e.to_string();
                    // Report each distinct problem once, not on every change.
                    if msg != last_error {
                        match &e {
                            RenderError::Waiting { .. } => tracing::info!("{msg}"),
                            _ => tracing::error!("{msg}"),
                        }
                        last_error = msg;
                    }
                    if matches!(e, RenderError::Unavailable { .. }) {
                        again = Some(retry);
                    }
                    if matches!(e, RenderError::Waiting { .. }) {
                        "waiting"
                    } else {
                        "failed"
                    }
                }
            };
            ctx.metrics.record(
                "autopilot_template_renders",
                &[("template", &cfg.name), ("result", result)],
                1.0,
            );
            if command_due && let Some(argv) = &cfg.command {
                match run_command(&ctx, &cfg.name, argv).await {
                    Ok(()) => command_due = false,
                    Err(e) => {
                        tracing::error!(template = %cfg.name, "command failed ({e}); retrying in {}", crate::logging::dur(retry));
                        ctx.metrics.record(
                            "autopilot_template_command_failures",
                            &[("template", &cfg.name)],
                            1.0,
                        );
                        again = Some(retry);
                    }
                }
            }
            retry = match again {
                Some(d) => (d * 2).min(RETRY_MAX),
                None => RETRY_MIN,
            };
            let first = tokio::select! {
                r = changes.changed() => if r.is_err() { return } else { tokio::time::Instant::now() },
                r = pokes.changed(), if each => if r.is_err() { return } else { tokio::time::Instant::now() },
                _ = sleep_opt(again) => tokio::time::Instant::now(),
            };
            // `wait`: render once the changes pause for `min`, or at `max` at the latest.
            if !cfg.wait_min.is_zero() {
                let latest = first + cfg.wait_max;
                loop {
                    let quiet = (tokio::time::Instant::now() + cfg.wait_min).min(latest);
                    tokio::select! {
                        r = changes.changed() => if r.is_err() { return },
                        _ = tokio::time::sleep_until(quiet) => break,
                    }
                }
            }
        }
    })
}

async fn sleep_opt(d: Option<Duration>) {
    match d {
        Some(d) => tokio::time::sleep(d).await,
        None => std::future::pending().await,
    }
}

async fn run_command(ctx: &Ctx, name: &str, argv: &[String]) -> Result<(), String> {
    let child = ctx
        .spawner
        .spawn(&SpawnSpec {
            argv: argv.to_vec(),
            env: ctx.env.clone().into_iter().collect(),
            raw_output: false,
            tag: format!("template.{name}"),
        })
        .map_err(|e| e.to_string())?;
    let pid = child.pid;
    match tokio::time::timeout(COMMAND_TIMEOUT, child.exit).await {
        Ok(Ok(Exit::Code(0))) => Ok(()),
        Ok(Ok(Exit::Code(c))) => Err(format!("exit code {c}")),
        Ok(Ok(Exit::Signal(s))) => Err(format!("killed by signal {s}")),
        Ok(Err(_)) => Err("exit status lost".into()),
        Err(_) => {
            let _ = autopilot_process::signal_group(pid, autopilot_process::Sig::Kill);
            Err(format!("still running after {COMMAND_TIMEOUT:?}; killed"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The config checks template sources against this list at load, so it
    /// must name exactly the functions a render installs.
    #[tokio::test(flavor = "current_thread")]
    async fn the_data_functions_are_the_ones_the_config_checks_against() {
        let dir = tempfile::tempdir().expect("dir");
        let catalog: Arc<dyn Catalog> = Arc::new(
            autopilot_catalog_local::LocalCatalog::open(dir.path(), "t").expect("catalog"),
        );
        let funcs = data_funcs(
            catalog,
            tokio::runtime::Handle::current(),
            &Grants::default(),
            Arc::default(),
        );
        let base = Funcs::builtin();
        let builtin: std::collections::BTreeSet<&str> = base.names().collect();
        let installed: std::collections::BTreeSet<&str> =
            funcs.names().filter(|n| !builtin.contains(n)).collect();
        let listed: std::collections::BTreeSet<&str> =
            autopilot_config::TEMPLATE_DATA_FUNCS.into_iter().collect();
        assert_eq!(installed, listed);
    }

    #[test]
    fn service_queries() {
        let q = ServiceQuery::parse("backend").unwrap();
        assert_eq!(q.name, "backend");
        assert_eq!(q.tag, None);
        assert_eq!(q.statuses, vec![Status::Passing]);
        let q = ServiceQuery::parse("v1.2.backend|any").unwrap();
        assert_eq!(
            (q.tag.as_deref(), q.name.as_str()),
            (Some("v1.2"), "backend")
        );
        assert!(q.statuses.is_empty());
        let q = ServiceQuery::parse("db@dc1|passing,warning").unwrap();
        assert_eq!(q.name, "db");
        assert_eq!(q.statuses, vec![Status::Passing, Status::Warning]);
        assert!(
            ServiceQuery::parse("db|bogus")
                .unwrap_err()
                .contains("bogus")
        );
        assert!(ServiceQuery::parse("tag.").is_err());
    }

    #[test]
    fn implausible_entries_are_not_rendered() {
        let base = Instance {
            id: "web-a".into(),
            name: "web".into(),
            address: "10.0.0.1".into(),
            port: 80,
            tags: vec!["v1".into()],
            status: Status::Passing,
            last_heartbeat: String::new(),
        };
        assert!(plausible(&base));
        assert!(plausible(&Instance {
            address: "web-1.example".into(),
            ..base.clone()
        }));
        for address in ["1.2.3.4; include /etc/passwd", "a\nb", ""] {
            assert!(!plausible(&Instance {
                address: address.into(),
                ..base.clone()
            }));
        }
        assert!(!plausible(&Instance {
            tags: vec!["x\ny".into()],
            ..base
        }));
    }

    #[test]
    fn files_outside_the_grant_are_refused() {
        let dir = std::env::temp_dir().join(format!("autopilot-tpl-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("ok")).unwrap();
        std::fs::write(dir.join("ok/a"), "yes").unwrap();
        std::fs::write(dir.join("secret"), "no").unwrap();
        std::os::unix::fs::symlink(dir.join("secret"), dir.join("ok/link")).unwrap();
        let grant = vec![dir.join("ok")];
        assert_eq!(
            read_granted(&dir.join("ok/a"), &grant).unwrap(),
            Value::from("yes")
        );
        for bad in ["secret", "ok/../secret", "ok/link"] {
            let e = read_granted(&dir.join(bad), &grant).unwrap_err();
            assert!(e.contains("not readable"), "{bad}: {e}");
        }
        assert!(read_granted(Path::new("/etc/passwd"), &[]).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn writes_only_on_change() {
        let dir = std::env::temp_dir().join(format!("autopilot-tplw-{}", std::process::id()));
        let f = dir.join("sub/out.conf");
        assert!(write_if_changed(&f, "a", 0o640).unwrap());
        assert!(!write_if_changed(&f, "a", 0o640).unwrap());
        assert!(write_if_changed(&f, "a", 0o600).unwrap());
        assert!(write_if_changed(&f, "b", 0o600).unwrap());
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&f).unwrap().permissions());
        assert_eq!(mode & 0o7777, 0o600);
        assert_eq!(std::fs::read_to_string(&f).unwrap(), "b");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
