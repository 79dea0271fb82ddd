//! Snapshots and restore-before-start: taking a snapshot under a cluster-wide lock and recording it in the catalog, restoring the newest verified one, waiting for one, or winning the one-time bootstrap, and a repair's reimage (verify first, then move the data aside and restore).
//!
//! Catalog keys (in the key/value space): `snapshots/<set>/index` holds the
//! recorded snapshots, newest first, as JSON; `snapshots/<set>/bootstrap`
//! names the one node that initialised fresh; `snapshots/<set>/force-bootstrap`
//! is a person's explicit order that one instance start fresh although
//! snapshots were recorded (none of them usable).
//!
//! The rule that keeps data: once the index exists (even empty or
//! unreadable), a node with an empty data directory never starts empty on
//! its own. It restores, or waits and says why.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use autopilot_catalog::Catalog;
use autopilot_core::SnapshotSpec;
use autopilot_process::{Exit, SpawnSpec, Spawner};
use serde::{Deserialize, Serialize};

/// One recorded snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapMeta {
    pub sha256: String,
    pub size: u64,
    pub created_ms: u64,
    /// The instance that took it.
    pub by: String,
}

/// What the flows need from the agent.
#[derive(Clone)]
pub struct Ctx {
    pub catalog: Arc<dyn Catalog>,
    pub spawner: Spawner,
    /// The job's child environment.
    pub env: Vec<(String, String)>,
    /// This instance's ID (`<job>-<hostname>`).
    pub me: String,
    /// Where temporary snapshot files go (the agent's private directory).
    pub scratch: PathBuf,
    /// What the restore is waiting for, for `/status` (`None` when not waiting).
    pub progress: Arc<std::sync::Mutex<Option<String>>>,
}

impl Ctx {
    fn report(&self, why: Option<String>) {
        *self.progress.lock().unwrap_or_else(|e| e.into_inner()) = why;
    }
}

fn index_key(set: &str) -> String {
    format!("snapshots/{set}/index")
}

fn bootstrap_key(set: &str) -> String {
    format!("snapshots/{set}/bootstrap")
}

fn force_key(set: &str) -> String {
    format!("snapshots/{set}/force-bootstrap")
}

async fn run(
    ctx: &Ctx,
    argv: &[String],
    extra: &[(&str, String)],
    tag: &str,
) -> Result<(), String> {
    let mut env = ctx.env.clone();
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.clone())));
    let child = ctx
        .spawner
        .spawn(&SpawnSpec {
            argv: argv.to_vec(),
            env,
            raw_output: false,
            tag: tag.to_string(),
        })
        .map_err(|e| e.to_string())?;
    match child.exit.await {
        Ok(Exit::Code(0)) => Ok(()),
        Ok(Exit::Code(c)) => Err(format!("{tag} exited with {c}")),
        Ok(Exit::Signal(s)) => Err(format!("{tag} was killed by signal {s}")),
        Err(_) => Err(format!("{tag}: exit status lost")),
    }
}

async fn read_index(ctx: &Ctx, set: &str) -> Result<(Option<String>, Vec<SnapMeta>), String> {
    let raw = ctx
        .catalog
        .kv_get(&index_key(set))
        .await
        .map_err(|e| e.to_string())?;
    // Hostile or damaged data reads as "no snapshots", never as a crash.
    let list = raw
        .as_deref()
        .and_then(|r| serde_json::from_str(r).ok())
        .unwrap_or_default();
    Ok((raw, list))
}

/// Runs the create command, uploads the result under its sha256, and only
/// then records it as the newest (a compare-and-swap on the index), pruning
/// what falls beyond `retain`. One snapshot of a set runs at a time,
/// cluster-wide. With `only_if_none`, does nothing when one already exists.
pub async fn take(
    ctx: &Ctx,
    spec: &SnapshotSpec,
    only_if_none: bool,
) -> Result<Option<SnapMeta>, String> {
    let Some(create) = &spec.create else {
        return Ok(None);
    };
    let store = autopilot_snapshot::open(&spec.store).map_err(|e| e.to_string())?;
    let lock = format!("snapshot/{}", spec.set);
    ctx.catalog.lock(&lock).await.map_err(|e| e.to_string())?;
    let result = async {
        if only_if_none && !read_index(ctx, &spec.set).await?.1.is_empty() {
            return Ok(None);
        }
        std::fs::create_dir_all(&ctx.scratch).map_err(|e| e.to_string())?;
        // An empty 0600 file with an unpredictable name, removed when
        // dropped: whatever fails below, nothing is left behind.
        let tmp = autopilot_snapshot::scratch_file(&ctx.scratch, &format!("snapshot-{}-", spec.set))
            .map_err(|e| format!("cannot create a file in {}: {e}", ctx.scratch.display()))?;
        let uploaded = async {
            run(ctx, create, &[("AUTOPILOT_SNAPSHOT_FILE", tmp.display().to_string())], &format!("snapshot.{}", spec.set)).await?;
            if std::fs::metadata(&tmp).map(|m| m.len() == 0).unwrap_or(true) {
                return Err("the create command wrote nothing to $AUTOPILOT_SNAPSHOT_FILE".to_string());
            }
            let (sha256, size) = autopilot_snapshot::sha256_file(&tmp).await.map_err(|e| e.to_string())?;
            store.put(&spec.set, &sha256, &tmp).await.map_err(|e| e.to_string())?;
            Ok((sha256, size))
        }
        .await;
        drop(tmp);
        let (sha256, size) = uploaded?;
        let meta = SnapMeta {
            sha256,
            size,
            created_ms: autopilot_catalog::now_ms(),
            by: ctx.me.clone(),
        };
        loop {
            let (raw, mut list) = read_index(ctx, &spec.set).await?;
            list.retain(|m| m.sha256 != meta.sha256);
            list.insert(0, meta.clone());
            let pruned = list.split_off((spec.retain as usize).min(list.len()));
            let json = serde_json::to_string(&list).map_err(|e| e.to_string())?;
            if ctx
                .catalog
                .kv_cas(&index_key(&spec.set), raw.as_deref(), &json)
                .await
                .map_err(|e| e.to_string())?
            {
                for p in pruned {
                    if let Err(e) = store.delete(&spec.set, &p.sha256).await {
                        tracing::warn!(set = %spec.set, "cannot prune snapshot {}: {e}", p.sha256);
                    }
                }
                break;
            }
        }
        tracing::info!(set = %spec.set, sha256 = %meta.sha256, size = meta.size, "snapshot recorded");
        Ok(Some(meta))
    }
    .await;
    if let Err(e) = ctx.catalog.unlock(&lock).await {
        tracing::warn!("cannot release {lock}: {e}");
    }
    result
}

/// Whether a data directory is empty (or absent). One that cannot be
/// listed (a flaky mount, wrong owner) is not empty: restoring over it could
/// bury real data.
fn is_empty_dir(p: &Path) -> Result<bool, String> {
    match std::fs::read_dir(p) {
        Ok(mut d) => Ok(d.next().is_none()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(format!(
            "cannot tell whether the data directory {} is empty: {e}",
            p.display()
        )),
    }
}

/// A bootstrap claim older than this, with still no snapshot and no
/// leader, belongs to a node that died before its first snapshot: another
/// node may take it over, so a cold start never waits forever.
const STALE_CLAIM: Duration = Duration::from_secs(60);

/// Tries to become the one node that initialises fresh. The claim is
/// `<instance> <ms>`, written by compare-and-swap from absent (or from a
/// stale claim), so exactly one node wins it. Only called while the index
/// shows no snapshot was ever recorded, and a stale claim is taken over
/// only if that is still so.
async fn claim_bootstrap(ctx: &Ctx, set: &str) -> bool {
    let key = bootstrap_key(set);
    let now = autopilot_catalog::now_ms();
    let mine = format!("{} {now}", ctx.me);
    let current = match ctx.catalog.kv_get(&key).await {
        Ok(c) => c,
        Err(_) => return false,
    };
    let expected = match &current {
        None => None,
        Some(c) if c.split(' ').next() == Some(ctx.me.as_str()) => return true,
        Some(c) => {
            let at: u64 = c
                .rsplit(' ')
                .next()
                .and_then(|t| t.parse().ok())
                .unwrap_or(0);
            if now.saturating_sub(at) < u64::try_from(STALE_CLAIM.as_millis()).unwrap_or(u64::MAX) {
                return false;
            }
            // The claimant died before its first snapshot, unless one was
            // recorded meanwhile: then there is data, and no takeover.
            if !matches!(read_index(ctx, set).await, Ok((None, _))) {
                return false;
            }
            tracing::warn!(set, claim = %c, "taking over a stale bootstrap claim");
            Some(c.as_str())
        }
    };
    matches!(ctx.catalog.kv_cas(&key, expected, &mine).await, Ok(true))
}

/// Whether a person ordered this instance to start fresh despite recorded
/// snapshots; the order is consumed (deleted by compare-and-swap) so it
/// applies once.
async fn forced(ctx: &Ctx, set: &str) -> bool {
    let key = force_key(set);
    match ctx.catalog.kv_get(&key).await {
        Ok(Some(v)) if v.trim() == ctx.me => {
            // Consume it: replace with a record of who used it and when.
            let used = format!("used by {} at {}", ctx.me, autopilot_catalog::now_ms());
            matches!(ctx.catalog.kv_cas(&key, Some(&v), &used).await, Ok(true))
        }
        _ => false,
    }
}

/// Before a job's first start: if its data directory is empty, restore the
/// newest snapshot whose checksum verifies (a mismatch is never used; the
/// next older one is tried).
///
/// With no usable snapshot, it never starts empty on a guess:
/// - the catalog cannot be read: wait and retry;
/// - the index exists (snapshots were recorded) but none can be fetched and
///   verified: wait and retry, reporting why, until one can, or until a
///   person orders this instance to start fresh with
///   `autopilot kv put snapshots/<set>/force-bootstrap <instance-id>`;
/// - no snapshot was ever recorded: wait for one while a leader exists or
///   another node bootstrapped; otherwise win the one-time bootstrap.
pub async fn restore(ctx: &Ctx, spec: &SnapshotSpec, election: Option<&str>) -> Result<(), String> {
    let (Some(restore), Some(data)) = (&spec.restore, &spec.data_dir) else {
        return Ok(());
    };
    if !is_empty_dir(data)? {
        tracing::info!(dir = %data.display(), "data present; nothing to restore");
        return Ok(());
    }
    std::fs::create_dir_all(data).map_err(|e| format!("cannot create {}: {e}", data.display()))?;
    std::fs::create_dir_all(&ctx.scratch).map_err(|e| e.to_string())?;
    let store = autopilot_snapshot::open(&spec.store).map_err(|e| e.to_string())?;
    let mut backoff = Duration::from_millis(200);
    // The set's keys (index, bootstrap claim, force-bootstrap) and the
    // election's seat: nothing else wakes the wait.
    let mut prefixes = vec![format!("kv/snapshots/{}/", spec.set)];
    if let Some(e) = election {
        prefixes.push(format!("elections/{e}"));
    }
    let mut changes = crate::catalog::changes_under_any(ctx.catalog.as_ref(), &prefixes);
    let mut told = String::new();
    let mut attempts: u64 = 0;
    loop {
        changes.borrow_and_update();
        attempts = attempts.saturating_add(1);
        let why = match read_index(ctx, &spec.set).await {
            Err(e) => format!("cannot read the snapshot index: {e}"),
            Ok((raw, list)) => {
                let mut problems = Vec::new();
                for meta in &list {
                    let tmp = match autopilot_snapshot::scratch_file(
                        &ctx.scratch,
                        &format!("restore-{}-", spec.set),
                    ) {
                        Ok(t) => t,
                        Err(e) => {
                            return Err(format!(
                                "cannot create a file in {}: {e}",
                                ctx.scratch.display()
                            ));
                        }
                    };
                    let verified =
                        fetch_verified(store.as_ref(), &spec.set, &meta.sha256, &tmp).await;
                    if let Err(p) = verified {
                        tracing::warn!(set = %spec.set, "snapshot unusable: {p}");
                        problems.push(p);
                        continue;
                    }
                    let extra = [
                        ("AUTOPILOT_SNAPSHOT_FILE", tmp.display().to_string()),
                        ("AUTOPILOT_DATA_DIR", data.display().to_string()),
                    ];
                    let res = run(ctx, restore, &extra, &format!("restore.{}", spec.set)).await;
                    drop(tmp);
                    res?;
                    tracing::info!(set = %spec.set, sha256 = %meta.sha256, "restored before start");
                    ctx.report(None);
                    return Ok(());
                }
                if raw.is_some() {
                    // Snapshots exist (or existed): starting empty would
                    // lose them. Only a person's explicit order overrides.
                    if forced(ctx, &spec.set).await {
                        tracing::warn!(set = %spec.set, instance = %ctx.me, "no usable snapshot; starting fresh as ordered by snapshots/{}/force-bootstrap", spec.set);
                        ctx.report(None);
                        return Ok(());
                    }
                    let recorded =
                        if list.is_empty() && raw.as_deref().is_some_and(|r| r.trim() != "[]") {
                            "the snapshot index is unreadable".to_string()
                        } else {
                            format!("{} snapshot(s) recorded, none usable", list.len())
                        };
                    let mut why = recorded;
                    if !problems.is_empty() {
                        why.push_str(": ");
                        why.push_str(&problems.join("; "));
                    }
                    why.push_str(&format!(
                        "; not starting empty (to start fresh anyway: autopilot kv put {} {})",
                        force_key(&spec.set),
                        ctx.me
                    ));
                    why
                } else {
                    // No index: the set never had a snapshot, unless the
                    // catalog lost its data (etcd restored empty). The objects
                    // in the store outlive it, so they are asked too.
                    let stored = store.has_snapshots(&spec.set).await;
                    // A leader that cannot be read is not "no leader".
                    let leader = match election {
                        Some(e) => ctx.catalog.leader(e).await.map(|l| l.is_some()),
                        None => Ok(false),
                    };
                    match (stored, leader) {
                        (Ok(true), _) => {
                            if forced(ctx, &spec.set).await {
                                tracing::warn!(set = %spec.set, instance = %ctx.me, "no snapshot index; starting fresh as ordered by snapshots/{}/force-bootstrap", spec.set);
                                ctx.report(None);
                                return Ok(());
                            }
                            format!(
                                "the catalog has no snapshot index but the store {} holds snapshots of this set (did the catalog lose its data?); not starting empty: waiting for the leader to record one (to start fresh anyway: autopilot kv put {} {})",
                                spec.store,
                                force_key(&spec.set),
                                ctx.me
                            )
                        }
                        (Err(e), _) => {
                            format!("cannot list the snapshot store: {e}; not starting empty")
                        }
                        (_, Err(e)) => format!("cannot read the leader: {e}; waiting"),
                        (Ok(false), Ok(true)) => {
                            "waiting for the leader's first snapshot".to_string()
                        }
                        (Ok(false), Ok(false)) => {
                            if claim_bootstrap(ctx, &spec.set).await {
                                tracing::info!(set = %spec.set, "no snapshot and no leader: this node bootstraps fresh");
                                ctx.report(None);
                                return Ok(());
                            }
                            "waiting for a first snapshot".to_string()
                        }
                    }
                }
            }
        };
        if why != told {
            tracing::warn!(set = %spec.set, attempts, "restore before start: {why}");
            told.clone_from(&why);
        }
        ctx.report(Some(why));
        tokio::select! {
            _ = changes.changed() => {}
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// Downloads snapshot `sha256` of `set` into `tmp` and checks its checksum.
async fn fetch_verified(
    store: &dyn autopilot_snapshot::Store,
    set: &str,
    sha256: &str,
    tmp: &Path,
) -> Result<(), String> {
    store
        .get(set, sha256, tmp)
        .await
        .map_err(|e| format!("{}: cannot fetch: {e}", short(sha256)))?;
    match autopilot_snapshot::sha256_file(tmp).await {
        Ok((sha, _)) if sha == sha256 => Ok(()),
        Ok((sha, _)) => Err(format!(
            "{}: checksum mismatch (got {})",
            short(sha256),
            short(&sha)
        )),
        Err(e) => Err(format!("{}: cannot read: {e}", short(sha256))),
    }
}

fn short(sha: &str) -> &str {
    sha.get(..12).unwrap_or(sha)
}

/// How a reimage went (see [`reimage`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reimaged {
    /// The old data was moved to `aside` and the newest verified snapshot restored.
    Restored { aside: PathBuf, sha256: String },
    /// No snapshot could be fetched and verified: nothing was touched (why).
    NoSnapshot(String),
}

/// A repair's reimage: finds and verifies the newest snapshot *first*
/// (downloaded and checksummed into the scratch directory); only then moves
/// `dataDir` aside to `<dataDir>.reimage-<unix secs>` (a rename: same
/// filesystem, kept), recreates it empty with the old mode and owner, and
/// runs the restore command into it. With no verified snapshot nothing is
/// moved. `Err` is a failure after the data was moved aside (the job's
/// normal restore before start then fills the empty directory).
pub async fn reimage(ctx: &Ctx, spec: &SnapshotSpec) -> Result<Reimaged, String> {
    let (Some(restore), Some(data)) = (&spec.restore, &spec.data_dir) else {
        return Ok(Reimaged::NoSnapshot(
            "the job's snapshot has no restore command or dataDir".to_string(),
        ));
    };
    std::fs::create_dir_all(&ctx.scratch).map_err(|e| e.to_string())?;
    let store = autopilot_snapshot::open(&spec.store).map_err(|e| e.to_string())?;
    let list = match tokio::time::timeout(Duration::from_secs(2), read_index(ctx, &spec.set)).await
    {
        Ok(Ok((_, list))) => list,
        Ok(Err(e)) => {
            return Ok(Reimaged::NoSnapshot(format!(
                "cannot read the snapshot index: {e}"
            )));
        }
        Err(_) => {
            return Ok(Reimaged::NoSnapshot(
                "cannot read the snapshot index: no answer within 2s".to_string(),
            ));
        }
    };
    let mut problems = Vec::new();
    let mut verified = None;
    for meta in &list {
        let tmp = autopilot_snapshot::scratch_file(&ctx.scratch, &format!("reimage-{}-", spec.set))
            .map_err(|e| format!("cannot create a file in {}: {e}", ctx.scratch.display()))?;
        let check = fetch_verified(store.as_ref(), &spec.set, &meta.sha256, &tmp).await;
        match check {
            Ok(()) => {
                verified = Some((tmp, meta.sha256.clone()));
                break;
            }
            Err(p) => {
                tracing::warn!(set = %spec.set, "snapshot unusable for a reimage: {p}");
                problems.push(p);
            }
        }
    }
    let Some((tmp, sha256)) = verified else {
        let why = if list.is_empty() {
            "no snapshot recorded".to_string()
        } else {
            format!(
                "{} snapshot(s) recorded, none verified: {}",
                list.len(),
                problems.join("; ")
            )
        };
        return Ok(Reimaged::NoSnapshot(why));
    };
    let aside = aside_path(data, autopilot_catalog::now_ms() / 1000);
    let meta = std::fs::metadata(data).ok();
    match std::fs::rename(data, &aside) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Ok(Reimaged::NoSnapshot(format!(
                "cannot move {} aside: {e}",
                data.display()
            )));
        }
    }
    std::fs::create_dir(data).map_err(|e| format!("cannot create {}: {e}", data.display()))?;
    if let Some(m) = &meta {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        std::fs::set_permissions(data, std::fs::Permissions::from_mode(m.mode() & 0o7777))
            .map_err(|e| format!("cannot set the mode of {}: {e}", data.display()))?;
        if let Err(e) = std::os::unix::fs::chown(data, Some(m.uid()), Some(m.gid())) {
            // Only root may give a directory away; the agent's own is fine.
            if e.kind() != std::io::ErrorKind::PermissionDenied {
                return Err(format!("cannot set the owner of {}: {e}", data.display()));
            }
        }
    }
    tracing::warn!(dir = %data.display(), aside = %aside.display(), "reimage: data directory moved aside; restoring the newest verified snapshot");
    let extra = [
        ("AUTOPILOT_SNAPSHOT_FILE", tmp.display().to_string()),
        ("AUTOPILOT_DATA_DIR", data.display().to_string()),
    ];
    let res = run(ctx, restore, &extra, &format!("restore.{}", spec.set)).await;
    drop(tmp);
    res?;
    tracing::info!(set = %spec.set, sha256 = %sha256, "reimage: restored");
    Ok(Reimaged::Restored { aside, sha256 })
}

/// `<dataDir>.reimage-<secs>`, beside it (a later one in the same second gets a suffix).
fn aside_path(data: &Path, secs: u64) -> PathBuf {
    // Rebuilt from its components: a trailing slash would put it inside.
    let data: PathBuf = data.components().collect();
    let base = format!("{}.reimage-{secs}", data.display());
    let mut p = PathBuf::from(&base);
    let mut n: u32 = 1;
    while p.exists() && n < 1000 {
        p = PathBuf::from(format!("{base}.{n}"));
        n = n.saturating_add(1);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_aside_directory_is_a_sibling_even_with_a_trailing_slash() {
        assert_eq!(
            aside_path(Path::new("/nonexistent/data/"), 7),
            PathBuf::from("/nonexistent/data.reimage-7")
        );
    }
}
