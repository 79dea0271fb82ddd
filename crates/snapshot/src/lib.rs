//! Snapshot stores: where snapshots live, addressed by their sha256, written and read as streams.
//!
//! A snapshot object is named by its content checksum, so a reader can
//! always verify what it fetched; a mismatch is never used.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("snapshot store {url}: {message}")]
    Io { url: String, message: String },
    #[error("invalid snapshot store URL {url:?}: {message}")]
    BadUrl { url: String, message: String },
    #[error(
        "snapshot store {url}: unknown scheme {scheme:?}; use file:///path or s3://bucket/prefix"
    )]
    Unsupported { url: String, scheme: String },
}

#[async_trait::async_trait]
pub trait Store: Send + Sync {
    fn url(&self) -> &str;
    /// Stores the file at `src` as snapshot `sha` of `set`, atomically (a
    /// no-op when that object exists: names are content checksums).
    async fn put(&self, set: &str, sha: &str, src: &Path) -> Result<(), StoreError>;
    /// Copies snapshot `sha` of `set` to `dest` (not verified: see [`sha256_file`]).
    async fn get(&self, set: &str, sha: &str, dest: &Path) -> Result<(), StoreError>;
    async fn delete(&self, set: &str, sha: &str) -> Result<(), StoreError>;
    /// Whether the store holds any snapshot of `set`. The objects outlive
    /// the catalog's index: a catalog that lost its data must not make a
    /// set with snapshots look like one that never had any.
    async fn has_snapshots(&self, set: &str) -> Result<bool, StoreError>;
}

pub fn open(url: &str) -> Result<Arc<dyn Store>, StoreError> {
    if let Some(path) = url.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(StoreError::BadUrl {
                url: url.into(),
                message: "a file store needs an absolute path: file:///var/backups/app".into(),
            });
        }
        return Ok(Arc::new(FileStore {
            url: url.to_string(),
            root: PathBuf::from(path),
        }));
    }
    if let Some(rest) = url.strip_prefix("s3://") {
        return S3Store::open(url, rest).map(|s| Arc::new(s) as Arc<dyn Store>);
    }
    match url.split_once("://") {
        Some((scheme, _)) => Err(StoreError::Unsupported {
            url: url.into(),
            scheme: scheme.into(),
        }),
        None => Err(StoreError::BadUrl {
            url: url.into(),
            message: "expected file:///path or s3://bucket/prefix".into(),
        }),
    }
}

/// The sha256 (hex) and size of a file, read in 1 MiB chunks: constant memory
/// whatever the size.
pub async fn sha256_file(path: &Path) -> std::io::Result<(String, u64)> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        let mut f = std::fs::File::open(&path)?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut size = 0u64;
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            size += n as u64;
        }
        Ok((hex::encode(h.finalize()), size))
    })
    .await
    .map_err(std::io::Error::other)?
}

/// A directory: `<root>/<set>/<sha256>.snap`.
pub struct FileStore {
    url: String,
    root: PathBuf,
}

fn valid(part: &str) -> bool {
    !part.is_empty()
        && part != "."
        && part != ".."
        && part
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

impl FileStore {
    fn object(&self, set: &str, sha: &str) -> Result<PathBuf, StoreError> {
        if !valid(set) || !sha.chars().all(|c| c.is_ascii_hexdigit()) || sha.len() != 64 {
            return Err(self.err(format!("invalid snapshot name {set:?}/{sha:?}")));
        }
        Ok(self.root.join(set).join(format!("{sha}.snap")))
    }

    fn err(&self, message: String) -> StoreError {
        StoreError::Io {
            url: self.url.clone(),
            message,
        }
    }
}

/// Creates an empty file in `dir` with an unpredictable name starting with
/// `prefix`, opened `O_CREAT|O_EXCL|O_NOFOLLOW` with mode 0600: a file or
/// symlink someone planted is never followed or reused. Dropping the result
/// removes the file, so an error on any path leaves nothing behind.
pub fn temp_file_in(dir: &Path, prefix: &str) -> std::io::Result<tempfile::NamedTempFile> {
    use std::os::unix::fs::OpenOptionsExt;
    tempfile::Builder::new()
        .prefix(prefix)
        .rand_bytes(12)
        .make_in(dir, |p| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                .mode(0o600)
                .open(p)
        })
}

/// A scratch path for a snapshot or a restore: an empty 0600 file created as
/// [`temp_file_in`] does, removed when the returned path is dropped (also
/// when the upload or the restore fails half-way).
pub fn scratch_file(dir: &Path, prefix: &str) -> std::io::Result<tempfile::TempPath> {
    Ok(temp_file_in(dir, prefix)?.into_temp_path())
}

/// Streams `src` into `dest` through a temp file, fsynced and renamed.
fn copy_atomic(src: &Path, dest: &Path) -> std::io::Result<()> {
    let dir = match dest.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut r = std::fs::File::open(src)?;
    let mut w = temp_file_in(dir, &format!(".{name}.tmp-"))?;
    std::io::copy(&mut r, &mut w)?;
    w.flush()?;
    w.as_file().sync_all()?;
    w.persist(dest).map_err(|e| e.error)?;
    std::fs::File::open(dir)?.sync_all()
}

#[async_trait::async_trait]
impl Store for FileStore {
    fn url(&self) -> &str {
        &self.url
    }

    async fn put(&self, set: &str, sha: &str, src: &Path) -> Result<(), StoreError> {
        let dest = self.object(set, sha)?;
        // Content-addressed: an object with this name already holds these
        // bytes (restores verify it), so there is nothing to upload.
        if tokio::fs::try_exists(&dest).await.unwrap_or(false) {
            return Ok(());
        }
        let src = src.to_path_buf();
        tokio::task::spawn_blocking(move || copy_atomic(&src, &dest))
            .await
            .map_err(|e| self.err(e.to_string()))?
            .map_err(|e| self.err(format!("cannot store {set}/{sha}: {e}")))
    }

    async fn get(&self, set: &str, sha: &str, dest: &Path) -> Result<(), StoreError> {
        let src = self.object(set, sha)?;
        let dest = dest.to_path_buf();
        tokio::task::spawn_blocking(move || copy_atomic(&src, &dest))
            .await
            .map_err(|e| self.err(e.to_string()))?
            .map_err(|e| self.err(format!("cannot fetch {set}/{sha}: {e}")))
    }

    async fn has_snapshots(&self, set: &str) -> Result<bool, StoreError> {
        if !valid(set) {
            return Err(self.err(format!("invalid snapshot set {set:?}")));
        }
        let dir = self.root.join(set);
        let mut entries = match tokio::fs::read_dir(&dir).await {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(self.err(format!("cannot list {}: {e}", dir.display()))),
        };
        while let Some(e) = entries
            .next_entry()
            .await
            .map_err(|e| self.err(format!("cannot list {}: {e}", dir.display())))?
        {
            if e.file_name().to_string_lossy().ends_with(".snap") {
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn delete(&self, set: &str, sha: &str) -> Result<(), StoreError> {
        let p = self.object(set, sha)?;
        match tokio::fs::remove_file(&p).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(self.err(format!("cannot delete {}: {e}", p.display()))),
        }
    }
}

/// S3-compatible object storage: `s3://bucket/prefix`, objects at
/// `<prefix>/<set>/<sha256>.snap`. Credentials and region come from the
/// usual `AWS_*` variables; `$AUTOPILOT_S3_ENDPOINT` points at another
/// S3-compatible service (MinIO, Ceph, ...), plain HTTP allowed.
pub struct S3Store {
    url: String,
    prefix: String,
    s3: Arc<dyn object_store::ObjectStore>,
}

/// Upload part size: large enough for throughput, small enough to bound memory.
const PART: usize = 8 << 20;

impl S3Store {
    fn open(url: &str, rest: &str) -> Result<S3Store, StoreError> {
        let bad = |message: String| StoreError::BadUrl {
            url: url.into(),
            message,
        };
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(bad("no bucket: s3://bucket/prefix".into()));
        }
        // reqwest is built without a TLS provider of its own: the process
        // default is ring's (already installed if another part set it first).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut b = object_store::aws::AmazonS3Builder::from_env().with_bucket_name(bucket);
        if std::env::var("AWS_REGION").is_err() && std::env::var("AWS_DEFAULT_REGION").is_err() {
            b = b.with_region("us-east-1");
        }
        if let Ok(ep) = std::env::var("AUTOPILOT_S3_ENDPOINT")
            && !ep.is_empty()
        {
            b = b
                .with_endpoint(&ep)
                .with_allow_http(ep.starts_with("http://"));
        }
        let s3 = b.build().map_err(|e| bad(e.to_string()))?;
        Ok(S3Store {
            url: url.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
            s3: Arc::new(s3),
        })
    }

    fn path(&self, set: &str, sha: &str) -> Result<object_store::path::Path, StoreError> {
        if !valid(set) || !sha.chars().all(|c| c.is_ascii_hexdigit()) || sha.len() != 64 {
            return Err(self.err(format!("invalid snapshot name {set:?}/{sha:?}")));
        }
        let key = if self.prefix.is_empty() {
            format!("{set}/{sha}.snap")
        } else {
            format!("{}/{set}/{sha}.snap", self.prefix)
        };
        Ok(object_store::path::Path::from(key))
    }

    fn err(&self, message: String) -> StoreError {
        StoreError::Io {
            url: self.url.clone(),
            message,
        }
    }
}

#[async_trait::async_trait]
impl Store for S3Store {
    fn url(&self) -> &str {
        &self.url
    }

    async fn put(&self, set: &str, sha: &str, src: &Path) -> Result<(), StoreError> {
        use object_store::ObjectStoreExt;
        use tokio::io::AsyncReadExt;
        let path = self.path(set, sha)?;
        if self.s3.head(&path).await.is_ok() {
            return Ok(());
        }
        let upload = self
            .s3
            .put_multipart(&path)
            .await
            .map_err(|e| self.err(format!("cannot start the upload of {path}: {e}")))?;
        let mut w = object_store::WriteMultipart::new_with_chunk_size(upload, PART);
        let mut f = tokio::fs::File::open(src)
            .await
            .map_err(|e| self.err(format!("cannot read {}: {e}", src.display())))?;
        loop {
            let mut buf = vec![0u8; PART];
            let mut n = 0;
            while n < PART {
                let got = f
                    .read(&mut buf[n..])
                    .await
                    .map_err(|e| self.err(format!("cannot read {}: {e}", src.display())))?;
                if got == 0 {
                    break;
                }
                n += got;
            }
            if n == 0 {
                break;
            }
            buf.truncate(n);
            // At most a few parts in flight: memory stays bounded.
            w.wait_for_capacity(4)
                .await
                .map_err(|e| self.err(format!("upload of {path} failed: {e}")))?;
            w.put(bytes::Bytes::from(buf));
            if n < PART {
                break;
            }
        }
        w.finish()
            .await
            .map(|_| ())
            .map_err(|e| self.err(format!("upload of {path} failed: {e}")))
    }

    async fn get(&self, set: &str, sha: &str, dest: &Path) -> Result<(), StoreError> {
        use futures_util::StreamExt;
        use object_store::ObjectStoreExt;
        use tokio::io::AsyncWriteExt;
        let path = self.path(set, sha)?;
        let got = self
            .s3
            .get(&path)
            .await
            .map_err(|e| self.err(format!("cannot fetch {path}: {e}")))?;
        let dir = match dest.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let io = |e: std::io::Error| self.err(format!("cannot write {}: {e}", dest.display()));
        // Removed on drop: a failed fetch leaves no partial file behind.
        let (f, tmp) = temp_file_in(dir, &format!(".fetch-{sha}-"))
            .map_err(io)?
            .into_parts();
        let mut f = tokio::fs::File::from_std(f);
        let mut stream = got.into_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| self.err(format!("cannot fetch {path}: {e}")))?;
            f.write_all(&chunk).await.map_err(io)?;
        }
        f.sync_all().await.map_err(io)?;
        drop(f);
        tmp.persist(dest).map_err(|e| io(e.error))
    }

    async fn has_snapshots(&self, set: &str) -> Result<bool, StoreError> {
        use futures_util::StreamExt;
        if !valid(set) {
            return Err(self.err(format!("invalid snapshot set {set:?}")));
        }
        let key = if self.prefix.is_empty() {
            set.to_string()
        } else {
            format!("{}/{set}", self.prefix)
        };
        let prefix = object_store::path::Path::from(key);
        let mut list = self.s3.list(Some(&prefix));
        while let Some(item) = list.next().await {
            let meta = item.map_err(|e| self.err(format!("cannot list {prefix}: {e}")))?;
            if meta.location.as_ref().ends_with(".snap") {
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn delete(&self, set: &str, sha: &str) -> Result<(), StoreError> {
        use object_store::ObjectStoreExt;
        let path = self.path(set, sha)?;
        match self.s3.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(format!("cannot delete {path}: {e}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn file_store_round_trip() {
        let dir = std::env::temp_dir().join(format!("ap-snap-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("dir");
        let src = dir.join("data");
        std::fs::write(&src, b"hello snapshot").expect("write");
        let (sha, size) = sha256_file(&src).await.expect("hash");
        // `printf 'hello snapshot' | sha256sum`
        assert_eq!(
            sha,
            "9459cf481d2126a7dc101213ac71e50b9c39d5ae13b7c4302480f2596c9cfe70"
        );
        assert_eq!(size, 14);
        let store = open(&format!("file://{}", dir.join("store").display())).expect("open");
        store.put("redis", &sha, &src).await.expect("put");
        let back = dir.join("back");
        store.get("redis", &sha, &back).await.expect("get");
        assert_eq!(std::fs::read(&back).expect("read"), b"hello snapshot");
        assert!(
            store.put("../evil", &sha, &src).await.is_err(),
            "no path escapes"
        );
        assert!(store.get("redis", "abc", &back).await.is_err());
        store.delete("redis", &sha).await.expect("delete");
        assert!(store.get("redis", &sha, &back).await.is_err());
        assert!(matches!(
            open("gs://bucket/x"),
            Err(StoreError::Unsupported { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn listing(dir: &Path) -> Vec<String> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).expect("ls").flatten() {
            out.push(e.file_name().to_string_lossy().into_owned());
            if e.file_type().expect("type").is_dir() {
                out.extend(listing(&e.path()));
            }
        }
        out.sort();
        out
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failed_put_leaves_no_temp_file() {
        let dir = tempfile::tempdir().expect("dir");
        let store = open(&format!("file://{}", dir.path().join("store").display())).expect("open");
        let sha = "a".repeat(64);
        std::fs::create_dir_all(dir.path().join("store/db")).expect("set dir");
        // A source that opens but cannot be read: the copy fails after the temp file exists.
        let src = dir.path().join("src-dir");
        std::fs::create_dir(&src).expect("src");
        assert!(store.put("db", &sha, &src).await.is_err());
        // A source that vanished.
        assert!(
            store
                .put("db", &sha, &dir.path().join("gone"))
                .await
                .is_err()
        );
        assert_eq!(listing(&dir.path().join("store")), vec!["db".to_string()]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_planted_symlink_in_the_store_is_not_followed() {
        let dir = tempfile::tempdir().expect("dir");
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "precious").expect("victim");
        let src = dir.path().join("data");
        std::fs::write(&src, b"hello snapshot").expect("write");
        let (sha, _) = sha256_file(&src).await.expect("hash");
        let set = dir.path().join("store/db");
        std::fs::create_dir_all(&set).expect("set dir");
        // The temp name the old code used, predictable from the checksum and pid.
        let planted = set.join(format!(".{sha}.snap.tmp-{}", std::process::id()));
        std::os::unix::fs::symlink(&victim, &planted).expect("plant");
        let store = open(&format!("file://{}", dir.path().join("store").display())).expect("open");
        store.put("db", &sha, &src).await.expect("put");
        assert_eq!(std::fs::read_to_string(&victim).expect("read"), "precious");
        let obj = set.join(format!("{sha}.snap"));
        assert!(!std::fs::symlink_metadata(&obj).expect("meta").is_symlink());
        assert_eq!(std::fs::read(&obj).expect("read"), b"hello snapshot");
        // A scratch file is exclusive, private and removed on drop.
        let scratch = scratch_file(dir.path(), "snapshot-db-").expect("scratch");
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&scratch).expect("meta").permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
        let p = scratch.to_path_buf();
        drop(scratch);
        assert!(!p.exists());
    }
}
