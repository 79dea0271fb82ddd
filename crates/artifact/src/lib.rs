//! Artifacts: versions of a file or directory stored by sha256 in a snapshot store, recorded in the catalog, fetched, verified and unpacked safely.
//!
//! `push` packs a directory as a deterministic tar (a regular file is
//! stored as is), uploads it to the store's `artifacts` set under its
//! sha256, then records `_fleet/artifacts/<name>/<version>` by
//! compare-and-swap, so a version never changes its bytes. `install`
//! (in `dest.rs`) fetches a version into a job's `dest`, verifies it and
//! unpacks it atomically; `switch` points `dest/current` at it.

mod dest;
mod pack;
mod unpack;

use std::path::{Path, PathBuf};

use autopilot_catalog::{Catalog, CatalogError};
use serde::{Deserialize, Serialize};

/// The stores artifacts live in (those of snapshots), re-exported so
/// callers need no other crate to open one.
pub use autopilot_snapshot::{Store, StoreError, open as open_store};
pub use dest::{Current, check_dest, current, install, switch};

/// The store set artifacts live in (objects named by their sha256).
pub const STORE_SET: &str = "artifacts";

// Where the records live in the catalog's key space.
use autopilot_core::rollout::ARTIFACTS_PREFIX as PREFIX;

/// How an artifact's bytes are laid out.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A directory, packed as a tar archive.
    Tar,
    /// A single regular file, stored as is.
    File,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Tar => "tar",
            Kind::File => "file",
        }
    }
}

/// One version of an artifact, as recorded at `_fleet/artifacts/<name>/<version>`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Record {
    pub name: String,
    pub version: String,
    /// 64 lower-case hex digits: the object's name in the store.
    pub sha256: String,
    pub size: u64,
    pub kind: Kind,
    /// For `kind: file`: the pushed file's basename (the name it gets in `dest/<sha>/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// For `kind: file`: the pushed file's permission bits (`& 0o755`);
    /// absent in records written before it was kept (installed 0755).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
    /// The store URL the object was pushed to.
    pub store: String,
    /// RFC 3339, UTC, milliseconds.
    pub created: String,
    /// Who pushed it (`user@host`).
    pub by: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("artifact {name} {version}: checksum mismatch: expected {expected}, got {got}")]
    Checksum {
        name: String,
        version: String,
        expected: String,
        got: String,
    },
    #[error("artifact {name} {version}: size mismatch: expected {expected} bytes, got {got}")]
    Size {
        name: String,
        version: String,
        expected: u64,
        got: u64,
    },
    /// A path or archive entry that could make us write or point outside
    /// where we mean to.
    #[error("{}: {why}", path.display())]
    Unsafe { path: PathBuf, why: String },
    #[error(
        "invalid {what} {value:?}: 1-128 characters of letters, digits, '.', '_' and '-', starting with a letter or digit"
    )]
    BadName { what: &'static str, value: String },
    #[error("version {version} of {name} already exists with another checksum ({existing})")]
    Exists {
        name: String,
        version: String,
        existing: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Catalog(CatalogError),
    /// A record that others kept rewriting while we tried to record ours:
    /// a request to retry, not an unreachable catalog.
    #[error("catalog key {key} keeps changing; gave up after {tries} tries: try again")]
    Contended { key: String, tries: u32 },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
    #[error("catalog key {key}: unreadable artifact record: {source}")]
    Corrupt {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    /// A record that parses but cannot be used as is.
    #[error("catalog key {key}: invalid artifact record: {why}")]
    Invalid { key: String, why: String },
    /// `switch` to a version that is not on disk.
    #[error("{}: {what} is not installed", dest.display())]
    NotInstalled { dest: PathBuf, what: String },
}

impl From<CatalogError> for Error {
    fn from(e: CatalogError) -> Error {
        Error::Catalog(e)
    }
}

pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let context = context.into();
    move |source| Error::Io { context, source }
}

/// Artifact names and versions: `^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`.
pub use autopilot_core::rollout::valid_name;

fn check_name(what: &'static str, value: &str) -> Result<(), Error> {
    if valid_name(value) {
        Ok(())
    } else {
        Err(Error::BadName {
            what,
            value: value.to_string(),
        })
    }
}

/// Whether `s` is a sha256 as objects and `dest/<sha>` directories are
/// named: 64 lower-case hex digits.
pub fn valid_sha(s: &str) -> bool {
    autopilot_core::rollout::valid_sha256(s)
}

/// `_fleet/artifacts/<name>/<version>`.
pub fn record_key(name: &str, version: &str) -> String {
    autopilot_core::rollout::artifact_key(name, version)
}

impl Record {
    /// Checks what `install` uses as paths: a record from the catalog is
    /// input like any other.
    pub fn validate(&self, key: &str) -> Result<(), Error> {
        let bad = |why: String| {
            Err(Error::Invalid {
                key: key.to_string(),
                why,
            })
        };
        if !valid_name(&self.name) {
            return bad(format!("invalid name {:?}", self.name));
        }
        if !valid_name(&self.version) {
            return bad(format!("invalid version {:?}", self.version));
        }
        if !valid_sha(&self.sha256) {
            return bad(format!(
                "sha256 {:?} is not 64 lower-case hex digits",
                self.sha256
            ));
        }
        match (self.kind, &self.file) {
            (Kind::File, Some(f)) if valid_file_name(f) => Ok(()),
            (Kind::File, Some(f)) => bad(format!("file {f:?} is not a plain file name")),
            (Kind::File, None) => bad("kind file without a file name".into()),
            (Kind::Tar, _) => Ok(()),
        }
    }
}

/// A basename we may create in `dest/<sha>/`: no separator, not `.`/`..`,
/// no NUL or control character.
fn valid_file_name(f: &str) -> bool {
    !f.is_empty()
        && f != "."
        && f != ".."
        && f.len() <= 255
        && !f.contains('/')
        && !f.chars().any(char::is_control)
}

/// A file or directory packed and uploaded, not yet recorded.
#[derive(Debug, Clone)]
pub struct Upload {
    pub sha256: String,
    pub size: u64,
    pub kind: Kind,
    pub file: Option<String>,
    /// For `kind: file`: its permission bits `& 0o755`.
    pub mode: Option<u32>,
    pub store: String,
}

/// Packs `path` (a directory as a tar, a regular file as is) into a 0600
/// temp file, hashes it and stores it as `artifacts/<sha256>`.
pub async fn upload(store: &dyn Store, path: &Path) -> Result<Upload, Error> {
    let meta = tokio::fs::metadata(path)
        .await
        .map_err(io(format!("cannot read {}", path.display())))?;
    let (kind, file, mode) = if meta.is_dir() {
        (Kind::Tar, None, None)
    } else if meta.is_file() {
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| valid_file_name(n))
            .ok_or_else(|| Error::Unsafe {
                path: path.to_path_buf(),
                why: "the file name must be valid UTF-8 without control characters".into(),
            })?;
        let mode = std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o755;
        (Kind::File, Some(name.to_string()), Some(mode))
    } else {
        return Err(Error::Unsafe {
            path: path.to_path_buf(),
            why: "not a regular file or a directory".into(),
        });
    };
    let tmp = autopilot_snapshot::scratch_file(&std::env::temp_dir(), ".artifact-")
        .map_err(io("cannot create a temp file"))?;
    let (src, out) = (path.to_path_buf(), tmp.to_path_buf());
    tokio::task::spawn_blocking(move || match kind {
        Kind::Tar => pack::pack_dir(&src, &out),
        // A copy, so the bytes hashed are the bytes stored even if the
        // file changes meanwhile.
        Kind::File => copy_file(&src, &out),
    })
    .await
    .map_err(|e| Error::Io {
        context: "the packing task failed".into(),
        source: std::io::Error::other(e),
    })??;
    let (sha256, size) = autopilot_snapshot::sha256_file(&tmp)
        .await
        .map_err(io(format!("cannot hash {}", tmp.display())))?;
    store.put(STORE_SET, &sha256, &tmp).await?;
    Ok(Upload {
        sha256,
        size,
        kind,
        file,
        mode,
        store: store.url().to_string(),
    })
}

fn copy_file(src: &Path, out: &Path) -> Result<(), Error> {
    let mut r = std::fs::File::open(src).map_err(io(format!("cannot read {}", src.display())))?;
    let mut w = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(out)
        .map_err(io(format!("cannot write {}", out.display())))?;
    std::io::copy(&mut r, &mut w).map_err(io(format!(
        "cannot copy {} to {}",
        src.display(),
        out.display()
    )))?;
    Ok(())
}

/// Records an upload as version `version` of `name` (default: the first
/// 12 hex digits of its sha256). The same version with the same sha256 is
/// success (the existing record is returned); with another sha256 it is
/// refused with [`Error::Exists`].
pub async fn record(
    catalog: &dyn Catalog,
    name: &str,
    version: Option<&str>,
    up: &Upload,
    by: &str,
) -> Result<Record, Error> {
    check_name("artifact name", name)?;
    let version = version.map_or_else(
        || up.sha256.get(..12).unwrap_or(&up.sha256).to_string(),
        str::to_string,
    );
    check_name("version", &version)?;
    let rec = Record {
        name: name.to_string(),
        version: version.clone(),
        sha256: up.sha256.clone(),
        size: up.size,
        kind: up.kind,
        file: up.file.clone(),
        mode: up.mode,
        store: up.store.clone(),
        created: autopilot_catalog::rfc3339_ms(autopilot_catalog::now_ms()),
        by: by.to_string(),
    };
    let key = record_key(name, &version);
    let json = serde_json::to_string(&rec).map_err(|source| Error::Corrupt {
        key: key.clone(),
        source,
    })?;
    // A record deleted between our failed write and our read is written
    // again: a few rounds, not for ever.
    const TRIES: u32 = 3;
    for _ in 0..TRIES {
        if catalog.kv_cas(&key, None, &json).await? {
            return Ok(rec);
        }
        if let Some(existing) = get(catalog, name, &version).await? {
            if existing.sha256 == rec.sha256 {
                return Ok(existing);
            }
            return Err(Error::Exists {
                name: name.to_string(),
                version,
                existing: existing.sha256,
            });
        }
    }
    Err(Error::Contended { key, tries: TRIES })
}

/// Uploads `path` and records it: [`upload`] then [`record`]. Names are
/// checked before anything is packed.
pub async fn push(
    catalog: &dyn Catalog,
    store: &dyn Store,
    name: &str,
    version: Option<&str>,
    path: &Path,
    by: &str,
) -> Result<Record, Error> {
    check_name("artifact name", name)?;
    if let Some(v) = version {
        check_name("version", v)?;
    }
    let up = upload(store, path).await?;
    record(catalog, name, version, &up, by).await
}

fn parse(key: &str, value: &str) -> Result<Record, Error> {
    let rec: Record = serde_json::from_str(value).map_err(|source| Error::Corrupt {
        key: key.to_string(),
        source,
    })?;
    rec.validate(key)?;
    let want = key.strip_prefix(PREFIX).and_then(|r| r.split_once('/'));
    if want != Some((rec.name.as_str(), rec.version.as_str())) {
        return Err(Error::Invalid {
            key: key.to_string(),
            why: format!(
                "it names version {} of {}, not the one of its key",
                rec.version, rec.name
            ),
        });
    }
    Ok(rec)
}

/// Every version of `name`, newest first, and the records that could not
/// be read (each an error naming its key).
pub async fn list_report(
    catalog: &dyn Catalog,
    name: &str,
) -> Result<(Vec<Record>, Vec<Error>), Error> {
    check_name("artifact name", name)?;
    let mut good = Vec::new();
    let mut bad = Vec::new();
    for (key, value) in catalog.kv_list(&format!("{PREFIX}{name}/")).await? {
        match parse(&key, &value) {
            Ok(r) => good.push(r),
            Err(e) => bad.push(e),
        }
    }
    // RFC 3339 in UTC with fixed digits sorts as text.
    good.sort_by(|a, b| {
        b.created
            .cmp(&a.created)
            .then_with(|| b.version.cmp(&a.version))
    });
    Ok((good, bad))
}

/// Every version of `name`, newest first; unreadable records are skipped
/// with a warning.
pub async fn list(catalog: &dyn Catalog, name: &str) -> Result<Vec<Record>, Error> {
    let (good, bad) = list_report(catalog, name).await?;
    for e in bad {
        tracing::warn!("skipped: {e}");
    }
    Ok(good)
}

/// Version `version` of `name`, if recorded.
pub async fn get(
    catalog: &dyn Catalog,
    name: &str,
    version: &str,
) -> Result<Option<Record>, Error> {
    check_name("artifact name", name)?;
    check_name("version", version)?;
    let key = record_key(name, version);
    match catalog.kv_get(&key).await? {
        Some(v) => parse(&key, &v).map(Some),
        None => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_keys() {
        assert!(valid_name("api"));
        assert!(valid_name("1.2.0-rc_1"));
        assert!(valid_name(&"a".repeat(128)));
        for bad in ["", ".x", "-x", "a/b", "..", "a b", "é", &"a".repeat(129)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
        assert_eq!(record_key("api", "1.2.0"), "_fleet/artifacts/api/1.2.0");
        assert!(valid_sha(&"0a".repeat(32)));
        assert!(!valid_sha(&"0A".repeat(32)));
        assert!(!valid_sha("abc"));
    }

    /// Every message of the chain, as `{:#}` prints it.
    fn chain(e: &dyn std::error::Error) -> String {
        let mut out = e.to_string();
        let mut cur = e.source();
        while let Some(c) = cur {
            out = format!("{out}: {c}");
            cur = c.source();
        }
        out
    }

    #[test]
    fn a_wrapped_error_prints_its_cause_once() {
        let Err(store) = autopilot_snapshot::open("nope") else {
            panic!("a bad store URL opened");
        };
        let msg = store.to_string();
        let e = Error::from(store);
        assert_eq!(chain(&e), msg);
        let cat = CatalogError::Unavailable {
            url: "local:///x".into(),
            message: "down".into(),
        };
        let msg = chain(&cat);
        assert_eq!(chain(&Error::from(cat)), msg);
        let e = Error::Contended {
            key: record_key("api", "1"),
            tries: 3,
        };
        assert!(std::error::Error::source(&e).is_none());
        assert_eq!(
            e.to_string(),
            "catalog key _fleet/artifacts/api/1 keeps changing; gave up after 3 tries: try again"
        );
    }

    #[test]
    fn record_json_has_the_contract_fields() {
        let r = Record {
            name: "api".into(),
            version: "1.2.0".into(),
            sha256: "ab".repeat(32),
            size: 1234,
            kind: Kind::File,
            file: Some("server".into()),
            mode: None,
            store: "file:///s".into(),
            created: "2026-11-28T03:00:00.123Z".into(),
            by: "root@host".into(),
        };
        let v: serde_json::Value = serde_json::to_value(&r).expect("json");
        assert_eq!(v["kind"], "file");
        assert_eq!(v["file"], "server");
        assert_eq!(v["size"], 1234);
        let tar = Record {
            kind: Kind::Tar,
            file: None,
            ..r.clone()
        };
        let s = serde_json::to_string(&tar).expect("json");
        assert!(!s.contains("\"file\""), "{s}");
        let key = record_key("api", "1.2.0");
        assert_eq!(parse(&key, &s).expect("parse"), tar);
        assert!(matches!(
            parse(&record_key("api", "1.3.0"), &s),
            Err(Error::Invalid { .. })
        ));
        let evil = Record {
            file: Some("../x".into()),
            ..r.clone()
        };
        let s = serde_json::to_string(&evil).expect("json");
        assert!(matches!(parse(&key, &s), Err(Error::Invalid { .. })));
        let evil = Record {
            sha256: "../../etc".into(),
            ..r
        };
        let s = serde_json::to_string(&evil).expect("json");
        assert!(matches!(parse(&key, &s), Err(Error::Invalid { .. })));
        assert!(matches!(parse(&key, "{"), Err(Error::Corrupt { .. })));
    }
}
