//! Artifacts end to end on a real embedded catalog and a file:// store: push (idempotent, conflicting, refused), list, install with verification, hostile archives through the store, dest checks, the original version and atomic switches.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use autopilot_artifact::{self as artifact, Current, Error, Kind, Record};
use autopilot_catalog::Catalog;
use autopilot_snapshot::Store;

struct World {
    dir: tempfile::TempDir,
    cat: autopilot_catalog_local::LocalCatalog,
    store: Arc<dyn Store>,
}

impl World {
    fn new() -> World {
        let dir = tempfile::tempdir().expect("tempdir");
        let cat = autopilot_catalog_local::LocalCatalog::open(&dir.path().join("catalog"), "test")
            .expect("catalog");
        let store =
            autopilot_snapshot::open(&format!("file://{}", dir.path().join("store").display()))
                .expect("store");
        World { dir, cat, store }
    }
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
    /// A fresh `dest`, 0755 whatever the umask.
    fn dest(&self, name: &str) -> PathBuf {
        let p = self.path(name);
        std::fs::create_dir(&p).expect("dest");
        chmod(&p, 0o755);
        p
    }
    async fn push(&self, name: &str, version: Option<&str>, path: &Path) -> Result<Record, Error> {
        artifact::push(&self.cat, &*self.store, name, version, path, "tester@host").await
    }
    fn object(&self, sha: &str) -> PathBuf {
        self.path("store/artifacts").join(format!("{sha}.snap"))
    }
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

/// A small tree: a program, a config in a sub-directory, a symlink to it.
fn tree(root: &Path, greeting: &str) {
    std::fs::create_dir_all(root.join("etc")).expect("etc");
    std::fs::write(root.join("run.sh"), "#!/bin/sh\necho hi\n").expect("run");
    chmod(&root.join("run.sh"), 0o750);
    std::fs::write(root.join("etc/greeting"), greeting).expect("greeting");
    std::os::unix::fs::symlink("etc/greeting", root.join("greeting")).expect("link");
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn link(p: &Path) -> String {
    std::fs::read_link(p)
        .expect("readlink")
        .to_string_lossy()
        .into_owned()
}

#[tokio::test]
async fn push_records_once_and_refuses_another_checksum_for_a_version() {
    let w = World::new();
    let src = w.path("src");
    tree(&src, "hello");
    let r = w.push("api", None, &src).await.expect("push");
    assert_eq!(r.kind, Kind::Tar);
    assert_eq!(r.version, r.sha256[..12], "version defaults to the sha");
    assert!(w.object(&r.sha256).exists());
    assert_eq!(r.store, w.store.url());
    assert_eq!(r.by, "tester@host");
    let stored: serde_json::Value = serde_json::from_str(
        &w.cat
            .kv_get(&artifact::record_key("api", &r.version))
            .await
            .expect("get")
            .expect("recorded"),
    )
    .expect("json");
    assert_eq!(stored["sha256"], r.sha256.as_str());
    assert_eq!(stored["kind"], "tar");
    assert!(stored.get("file").is_none());

    // The same tree again: the same bytes (deterministic), the same record.
    let again = w.push("api", None, &src).await.expect("re-push");
    assert_eq!(again, r, "idempotent: the first record is kept");

    let v1 = w.push("api", Some("1.0.0"), &src).await.expect("1.0.0");
    assert_eq!(w.push("api", Some("1.0.0"), &src).await.expect("again"), v1);
    std::fs::write(src.join("etc/greeting"), "changed").expect("change");
    match w.push("api", Some("1.0.0"), &src).await {
        Err(e @ Error::Exists { .. }) => assert_eq!(
            e.to_string(),
            format!(
                "version 1.0.0 of api already exists with another checksum ({})",
                v1.sha256
            )
        ),
        other => panic!("expected a conflict, got {other:?}"),
    }
    let v2 = w.push("api", Some("2.0.0"), &src).await.expect("2.0.0");
    assert_ne!(v2.sha256, v1.sha256);

    // A single file is stored as is.
    let bin = w.path("server");
    std::fs::write(&bin, "binary").expect("bin");
    let f = w.push("srv", Some("1"), &bin).await.expect("file");
    assert_eq!(
        (f.kind, f.file.as_deref(), f.size),
        (Kind::File, Some("server"), 6)
    );
    assert_eq!(
        std::fs::read(w.object(&f.sha256)).expect("object"),
        b"binary"
    );

    // Newest first; a broken record is skipped and reported, not fatal.
    w.cat
        .kv_put(&artifact::record_key("api", "9.9.9"), "{not json")
        .await
        .expect("put");
    let (list, bad) = artifact::list_report(&w.cat, "api").await.expect("list");
    let versions: Vec<&str> = list.iter().map(|r| r.version.as_str()).collect();
    assert_eq!(versions, ["2.0.0", "1.0.0", r.version.as_str()]);
    assert_eq!(bad.len(), 1);
    assert!(
        bad[0].to_string().contains("_fleet/artifacts/api/9.9.9"),
        "{}",
        bad[0]
    );
    assert_eq!(artifact::list(&w.cat, "api").await.expect("list").len(), 3);
    assert!(
        artifact::list(&w.cat, "none")
            .await
            .expect("list")
            .is_empty()
    );
    assert_eq!(
        artifact::get(&w.cat, "api", "2.0.0").await.expect("get"),
        Some(v2)
    );
    assert_eq!(artifact::get(&w.cat, "api", "3").await.expect("get"), None);

    // Bad input is refused before anything is packed.
    assert!(matches!(
        w.push("../api", None, &src).await,
        Err(Error::BadName { .. })
    ));
    assert!(matches!(
        w.push("api", Some("1/2"), &src).await,
        Err(Error::BadName { .. })
    ));
    match w.push("api", None, &w.path("missing")).await {
        Err(e @ Error::Io { .. }) => assert!(e.to_string().contains("missing"), "{e}"),
        other => panic!("expected an I/O error, got {other:?}"),
    }
}

#[tokio::test]
async fn push_refuses_special_files_and_links_out_of_the_tree() {
    let w = World::new();
    let src = w.path("src");
    tree(&src, "x");
    nix::unistd::mkfifo(&src.join("fifo"), nix::sys::stat::Mode::S_IRWXU).expect("mkfifo");
    match w.push("api", None, &src).await {
        Err(Error::Unsafe { path, why }) => {
            assert_eq!(path, src.join("fifo"));
            assert!(why.contains("fifo"), "{why}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    std::fs::remove_file(src.join("fifo")).expect("rm");
    std::os::unix::fs::symlink("/etc/passwd", src.join("etc/pw")).expect("link");
    match w.push("api", None, &src).await {
        Err(Error::Unsafe { path, why }) => {
            assert_eq!(path, src.join("etc/pw"));
            assert!(why.contains("absolute"), "{why}");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    // Nothing was recorded, and no temp file is left behind in the store.
    assert!(
        artifact::list(&w.cat, "api")
            .await
            .expect("list")
            .is_empty()
    );
    assert!(!w.path("store/artifacts").exists());
}

#[tokio::test]
async fn install_verifies_unpacks_and_switch_keeps_current_and_previous() {
    let w = World::new();
    let (a, b, c) = (w.path("a"), w.path("b"), w.path("c"));
    tree(&a, "one");
    tree(&b, "two");
    tree(&c, "three");
    let ra = w.push("api", Some("1"), &a).await.expect("a");
    let rb = w.push("api", Some("2"), &b).await.expect("b");
    let rc = w.push("api", Some("3"), &c).await.expect("c");
    let dest = w.path("opt/api");
    assert_eq!(artifact::current(&dest), Current::Missing);

    let da = artifact::install(&*w.store, &ra, &dest)
        .await
        .expect("install a");
    assert_eq!(da, dest.join(&ra.sha256));
    let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o7777;
    assert_eq!(mode(&dest), 0o755, "dest created 0755");
    assert_eq!(mode(&da), 0o755);
    assert_eq!(mode(&da.join("run.sh")), 0o750, "modes kept");
    assert_eq!(link(&da.join("greeting")), "etc/greeting", "symlinks kept");
    assert_eq!(
        std::fs::read_to_string(da.join("greeting")).expect("read"),
        "one"
    );
    assert_eq!(listing(&dest), vec![ra.sha256.clone()], "no temp file left");
    // A version on disk is reused, not fetched again.
    std::fs::remove_file(w.object(&ra.sha256)).expect("rm object");
    assert_eq!(
        artifact::install(&*w.store, &ra, &dest)
            .await
            .expect("again"),
        da
    );

    artifact::switch(&dest, &Current::Sha(ra.sha256.clone())).expect("switch a");
    assert_eq!(artifact::current(&dest), Current::Sha(ra.sha256.clone()));
    assert_eq!(link(&dest.join("current")), ra.sha256, "relative link");
    assert_eq!(
        std::fs::read_to_string(dest.join("current/etc/greeting")).expect("read"),
        "one"
    );
    artifact::install(&*w.store, &rb, &dest)
        .await
        .expect("install b");
    artifact::switch(&dest, &Current::Sha(rb.sha256.clone())).expect("switch b");
    assert_eq!(link(&dest.join("current")), rb.sha256);
    assert_eq!(link(&dest.join("previous")), ra.sha256);
    // Switching to what runs changes nothing.
    artifact::switch(&dest, &Current::Sha(rb.sha256.clone())).expect("same");
    assert_eq!(link(&dest.join("previous")), ra.sha256);

    artifact::install(&*w.store, &rc, &dest)
        .await
        .expect("install c");
    artifact::switch(&dest, &Current::Sha(rc.sha256.clone())).expect("switch c");
    let mut want = vec![
        rb.sha256.clone(),
        rc.sha256.clone(),
        "current".into(),
        "previous".into(),
    ];
    want.sort();
    assert_eq!(listing(&dest), want, "a's version was collected");
    // Rolling back is a switch to previous.
    artifact::switch(&dest, &Current::Sha(rb.sha256.clone())).expect("back");
    assert_eq!(link(&dest.join("previous")), rc.sha256);
    assert!(matches!(
        artifact::switch(&dest, &Current::Sha(ra.sha256.clone())),
        Err(Error::NotInstalled { .. })
    ));
    assert!(matches!(
        artifact::switch(&dest, &Current::Original),
        Err(Error::NotInstalled { .. })
    ));

    // A single file lands as dest/<sha>/<file>, executable.
    let bin = w.path("server");
    std::fs::write(&bin, "#!/bin/sh\n").expect("bin");
    chmod(&bin, 0o755);
    let rf = w.push("srv", Some("1"), &bin).await.expect("file");
    let sdest = w.dest("srv");
    let d = artifact::install(&*w.store, &rf, &sdest)
        .await
        .expect("install");
    assert_eq!(mode(&d.join("server")), 0o755);
    assert_eq!(listing(&d), ["server"]);
}

#[tokio::test]
async fn a_corrupted_object_is_refused_and_nothing_changes() {
    let w = World::new();
    let (a, b) = (w.path("a"), w.path("b"));
    tree(&a, "one");
    tree(&b, "two");
    let ra = w.push("api", Some("1.2.0"), &a).await.expect("a");
    let rb = w.push("api", Some("1.3.0"), &b).await.expect("b");
    let dest = w.dest("dest");
    artifact::install(&*w.store, &ra, &dest)
        .await
        .expect("install a");
    artifact::switch(&dest, &Current::Sha(ra.sha256.clone())).expect("switch");
    let before = listing(&dest);

    // One byte flipped in the store.
    let obj = w.object(&rb.sha256);
    let mut bytes = std::fs::read(&obj).expect("object");
    bytes[600] ^= 1;
    std::fs::write(&obj, &bytes).expect("corrupt");
    let (got, _) = autopilot_snapshot::sha256_file(&obj).await.expect("hash");
    match artifact::install(&*w.store, &rb, &dest).await {
        Err(e @ Error::Checksum { .. }) => assert_eq!(
            e.to_string(),
            format!(
                "artifact api 1.3.0: checksum mismatch: expected {}, got {got}",
                rb.sha256
            )
        ),
        other => panic!("expected a checksum mismatch, got {other:?}"),
    }
    assert_eq!(
        listing(&dest),
        before,
        "nothing unpacked, the temp file gone"
    );
    assert_eq!(artifact::current(&dest), Current::Sha(ra.sha256.clone()));

    // A record whose size lies is refused too.
    let lying = Record {
        size: ra.size + 1,
        ..ra.clone()
    };
    std::fs::remove_dir_all(dest.join(&ra.sha256)).expect("rm");
    assert!(matches!(
        artifact::install(&*w.store, &lying, &dest).await,
        Err(Error::Size { .. })
    ));
    // And an object missing from the store is a store error.
    std::fs::remove_file(&obj).expect("rm object");
    assert!(matches!(
        artifact::install(&*w.store, &rb, &dest).await,
        Err(Error::Store(_))
    ));
    assert_eq!(listing(&dest), ["current"]);
}

/// A hostile archive put in the store by hand, with a record that matches
/// it: the checksum is right, the content is not.
#[tokio::test]
async fn a_hostile_archive_from_the_store_leaves_nothing_behind() {
    let w = World::new();
    let victim = w.path("victim");
    let mut h = tar::Header::new_old();
    h.as_old_mut().name[..8].copy_from_slice(b"../victi");
    h.as_old_mut().name[8] = b'm';
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(4);
    h.set_mode(0o644);
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    // A good entry first: the refusal comes half-way through the unpack.
    let mut good = tar::Header::new_gnu();
    good.set_size(2);
    good.set_mode(0o644);
    b.append_data(&mut good, "ok/file", &b"ok"[..])
        .expect("append");
    b.append(&h, &b"evil"[..]).expect("append");
    let tar_path = w.path("evil.tar");
    std::fs::write(&tar_path, b.into_inner().expect("tar")).expect("write");
    let (sha, size) = autopilot_snapshot::sha256_file(&tar_path)
        .await
        .expect("hash");
    w.store
        .put(artifact::STORE_SET, &sha, &tar_path)
        .await
        .expect("put");
    let rec = Record {
        name: "api".into(),
        version: "6.6.6".into(),
        sha256: sha,
        size,
        kind: Kind::Tar,
        file: None,
        mode: None,
        store: w.store.url().into(),
        created: "2026-11-28T03:00:00.000Z".into(),
        by: "mallory@host".into(),
    };
    let dest = w.path("deep/dest");
    match artifact::install(&*w.store, &rec, &dest).await {
        Err(e @ Error::Unsafe { .. }) => {
            assert_eq!(
                e.to_string(),
                "../victim: refused archive entry: a path with `..` (artifact api 6.6.6)"
            )
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert!(!victim.exists());
    assert!(listing(&dest).is_empty(), "{:?}", listing(&dest));

    // A record whose names would be paths is refused before any fetch.
    let evil = Record {
        kind: Kind::File,
        file: Some("../../victim".into()),
        ..rec
    };
    assert!(matches!(
        artifact::install(&*w.store, &evil, &dest).await,
        Err(Error::Invalid { .. })
    ));
}

#[tokio::test]
async fn a_dest_others_could_redirect_is_refused() {
    let w = World::new();
    let src = w.path("src");
    tree(&src, "x");
    let r = w.push("api", None, &src).await.expect("push");
    let refused = |res: Result<(), Error>, what: &str| match res {
        Err(e @ Error::Unsafe { .. }) => e.to_string(),
        other => panic!("{what}: expected a refusal, got {other:?}"),
    };

    assert!(refused(artifact::check_dest(Path::new("rel/dest")), "relative").contains("absolute"));

    let real = w.dest("real");
    let sym = w.path("sym");
    std::os::unix::fs::symlink(&real, &sym).expect("symlink");
    let e = refused(artifact::check_dest(&sym), "symlink");
    assert!(e.contains("symlink"), "{e}");
    assert!(matches!(
        artifact::install(&*w.store, &r, &sym).await,
        Err(Error::Unsafe { .. })
    ));
    assert!(
        listing(&real).is_empty(),
        "nothing written through the symlink"
    );
    assert!(matches!(
        artifact::switch(&sym, &Current::Original),
        Err(Error::Unsafe { .. })
    ));

    for mode in [0o777, 0o775, 0o757, 0o1777] {
        let d = w.path(&format!("open-{mode:o}"));
        std::fs::create_dir(&d).expect("dir");
        chmod(&d, mode);
        let e = refused(artifact::check_dest(&d), "writable");
        assert!(e.contains("writable by group or others"), "{e}");
        assert!(matches!(
            artifact::install(&*w.store, &r, &d).await,
            Err(Error::Unsafe { .. })
        ));
        assert!(listing(&d).is_empty());
    }

    let file = w.path("file");
    std::fs::write(&file, "").expect("file");
    assert!(refused(artifact::check_dest(&file), "file").contains("not a directory"));

    // Owned by another user (only root can set that up).
    if nix::unistd::geteuid().is_root() {
        let d = w.dest("theirs");
        nix::unistd::chown(&d, Some(nix::unistd::Uid::from_raw(65534)), None).expect("chown");
        let e = refused(artifact::check_dest(&d), "owner");
        assert!(e.contains("owned by uid 65534"), "{e}");
    }

    // Missing: created 0755, with its parents.
    let fresh = w.path("x/y/z");
    artifact::check_dest(&fresh).expect("create");
    let m = std::fs::symlink_metadata(&fresh).expect("meta");
    assert!(m.is_dir());
    assert_eq!(m.permissions().mode() & 0o7777, 0o755);
}

#[tokio::test]
async fn the_original_directory_is_kept_and_can_be_switched_back_to() {
    let w = World::new();
    let src = w.path("src");
    tree(&src, "new");
    let r = w.push("api", Some("2"), &src).await.expect("push");
    let dest = w.dest("dest");
    // What the image shipped: a real directory at dest/current.
    std::fs::create_dir(dest.join("current")).expect("current");
    std::fs::write(dest.join("current/greeting"), "shipped").expect("write");
    assert_eq!(artifact::current(&dest), Current::Original);

    artifact::install(&*w.store, &r, &dest)
        .await
        .expect("install");
    artifact::switch(&dest, &Current::Sha(r.sha256.clone())).expect("switch");
    assert_eq!(
        std::fs::read_to_string(dest.join("original/greeting")).expect("kept"),
        "shipped"
    );
    assert_eq!(link(&dest.join("previous")), "original");
    assert_eq!(artifact::current(&dest), Current::Sha(r.sha256.clone()));

    artifact::switch(&dest, &Current::Original).expect("back");
    assert_eq!(link(&dest.join("current")), "original");
    assert_eq!(link(&dest.join("previous")), r.sha256);
    assert_eq!(artifact::current(&dest), Current::Original);
    assert_eq!(
        std::fs::read_to_string(dest.join("current/greeting")).expect("read"),
        "shipped"
    );
    // The version stays for a roll forward; original is never collected.
    artifact::switch(&dest, &Current::Sha(r.sha256.clone())).expect("forward");
    assert!(dest.join("original").is_dir());

    // A crash between the first switch's two renames leaves `original`
    // and no `current`: read as the original, repaired by the next switch.
    let d2 = w.dest("d2");
    std::fs::create_dir(d2.join("original")).expect("original");
    assert_eq!(artifact::current(&d2), Current::Original);
    artifact::install(&*w.store, &r, &d2)
        .await
        .expect("install");
    artifact::switch(&d2, &Current::Sha(r.sha256.clone())).expect("switch");
    assert_eq!(link(&d2.join("previous")), "original");

    // Both a directory `current` and an `original`: refused, untouched.
    let d3 = w.dest("d3");
    std::fs::create_dir(d3.join("current")).expect("current");
    std::fs::create_dir(d3.join("original")).expect("original");
    artifact::install(&*w.store, &r, &d3)
        .await
        .expect("install");
    assert!(matches!(
        artifact::switch(&d3, &Current::Sha(r.sha256.clone())),
        Err(Error::Unsafe { .. })
    ));
    assert!(d3.join("current").is_dir() && !d3.join("current").is_symlink());
}

/// The state on disk at any instant is what a crash at that instant
/// leaves: a reader that opens `current/...` in a loop while versions are
/// switched must always find a complete version, never nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn current_always_names_a_complete_version_while_switching() {
    let w = World::new();
    let (a, b) = (w.path("a"), w.path("b"));
    tree(&a, "one");
    tree(&b, "two");
    let ra = w.push("api", Some("1"), &a).await.expect("a");
    let rb = w.push("api", Some("2"), &b).await.expect("b");
    let dest = w.dest("dest");
    artifact::install(&*w.store, &ra, &dest).await.expect("a");
    artifact::switch(&dest, &Current::Sha(ra.sha256.clone())).expect("a");
    artifact::install(&*w.store, &rb, &dest).await.expect("b");
    // A crashed install's leftovers are never taken for a version.
    std::fs::create_dir(dest.join(".unpack-crashed")).expect("leftover");

    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (stop, file) = (stop.clone(), dest.join("current/greeting"));
        std::thread::spawn(move || {
            let mut reads = 0u64;
            while !stop.load(Ordering::Relaxed) {
                match std::fs::read_to_string(&file) {
                    Ok(s) if s == "one" || s == "two" => reads += 1,
                    other => return Err(format!("after {reads} reads: {other:?}")),
                }
            }
            Ok(reads)
        })
    };
    for i in 0..400 {
        let to = if i % 2 == 0 { &rb } else { &ra };
        artifact::switch(&dest, &Current::Sha(to.sha256.clone())).expect("switch");
        let cur = artifact::current(&dest);
        assert!(
            cur == Current::Sha(ra.sha256.clone()) || cur == Current::Sha(rb.sha256.clone()),
            "{cur:?}"
        );
    }
    stop.store(true, Ordering::Relaxed);
    let reads = reader
        .join()
        .expect("reader")
        .expect("every read found a version");
    assert!(reads > 0);
    // Both versions survived every switch (current and previous), and no
    // temp link was left.
    let mut want = vec![
        ra.sha256.clone(),
        rb.sha256.clone(),
        ".unpack-crashed".into(),
        "current".into(),
        "previous".into(),
    ];
    want.sort();
    assert_eq!(listing(&dest), want);
}

#[tokio::test]
async fn a_dest_under_a_directory_others_could_rename_is_refused() {
    let w = World::new();
    let refused = |dest: &Path, what: &str| match artifact::check_dest(dest) {
        Err(e @ Error::Unsafe { .. }) => {
            assert!(!dest.exists(), "{what}: nothing created");
            e.to_string()
        }
        other => panic!("{what}: expected a refusal, got {other:?}"),
    };
    let gw = w.dest("gw");
    chmod(&gw, 0o775);
    let e = refused(&gw.join("dest"), "group-writable parent");
    assert!(
        e.contains("writable by group or others") && e.contains("ancestor"),
        "{e}"
    );
    // Further up counts as much as the parent.
    std::fs::create_dir(gw.join("mid")).expect("mid");
    chmod(&gw.join("mid"), 0o755);
    refused(&gw.join("mid/dest"), "group-writable grandparent");

    let real = w.dest("real");
    std::os::unix::fs::symlink(&real, w.path("sym")).expect("symlink");
    let e = refused(&w.path("sym/dest"), "symlinked parent");
    assert!(e.contains("symlink"), "{e}");
    assert!(listing(&real).is_empty());

    if nix::unistd::geteuid().is_root() {
        let theirs = w.dest("theirs");
        nix::unistd::chown(&theirs, Some(nix::unistd::Uid::from_raw(65534)), None).expect("chown");
        let e = refused(&theirs.join("dest"), "parent owned by another user");
        assert!(e.contains("owned by uid 65534"), "{e}");
    }

    // A sticky directory writable by all (/tmp) is fine above a dest of ours.
    let sticky = w.dest("sticky");
    chmod(&sticky, 0o1777);
    artifact::check_dest(&sticky.join("dest")).expect("under a sticky directory");
    if nix::unistd::geteuid().is_root() {
        let d = sticky.join("theirs");
        std::fs::create_dir(&d).expect("dir");
        chmod(&d, 0o755);
        nix::unistd::chown(&d, Some(nix::unistd::Uid::from_raw(65534)), None).expect("chown");
        assert!(matches!(
            artifact::check_dest(&d),
            Err(Error::Unsafe { .. })
        ));
    }
}

#[tokio::test]
async fn old_versions_go_through_trash_and_leftovers_are_swept() {
    let w = World::new();
    let (a, b, c) = (w.path("a"), w.path("b"), w.path("c"));
    tree(&a, "one");
    tree(&b, "two");
    tree(&c, "three");
    let ra = w.push("api", Some("1"), &a).await.expect("a");
    let rb = w.push("api", Some("2"), &b).await.expect("b");
    let rc = w.push("api", Some("3"), &c).await.expect("c");
    let dest = w.dest("dest");
    artifact::install(&*w.store, &ra, &dest).await.expect("a");
    artifact::switch(&dest, &Current::Sha(ra.sha256.clone())).expect("a");
    // What a gc killed half-way through a removal leaves: a partial tree
    // under a trash name (never under its sha).
    std::fs::create_dir_all(dest.join(".trash-killed/etc")).expect("trash");
    // A crashed fetch long ago, and one that may be a running install's.
    let old = dest.join(".fetch-old");
    std::fs::write(&old, "x").expect("old");
    std::fs::File::options()
        .write(true)
        .open(&old)
        .expect("open")
        .set_modified(std::time::SystemTime::now() - std::time::Duration::from_secs(3600))
        .expect("mtime");
    std::fs::create_dir(dest.join(".unpack-young")).expect("young");
    artifact::install(&*w.store, &rb, &dest).await.expect("b");
    let mut want = vec![
        ".unpack-young".to_string(),
        ra.sha256.clone(),
        rb.sha256.clone(),
        "current".into(),
    ];
    want.sort();
    assert_eq!(listing(&dest), want, "trash and stale scratch swept");
    artifact::switch(&dest, &Current::Sha(rb.sha256.clone())).expect("b");
    artifact::install(&*w.store, &rc, &dest).await.expect("c");
    artifact::switch(&dest, &Current::Sha(rc.sha256.clone())).expect("c");
    let mut want = vec![
        ".unpack-young".to_string(),
        rb.sha256.clone(),
        rc.sha256.clone(),
        "current".into(),
        "previous".into(),
    ];
    want.sort();
    assert_eq!(listing(&dest), want, "a collected, no trash left");
}

#[tokio::test]
async fn a_missing_current_is_made_again_by_a_switch() {
    let w = World::new();
    // Switching to the original while `current` is still the shipped
    // directory: it is renamed, and `current` must name it again.
    let dest = w.dest("dest");
    std::fs::create_dir(dest.join("current")).expect("current");
    std::fs::write(dest.join("current/greeting"), "shipped").expect("write");
    artifact::switch(&dest, &Current::Original).expect("switch");
    assert_eq!(link(&dest.join("current")), "original");
    assert_eq!(
        std::fs::read_to_string(dest.join("current/greeting")).expect("read"),
        "shipped"
    );
    // A crash between the first switch's renames: `original`, no `current`.
    let d2 = w.dest("d2");
    std::fs::create_dir(d2.join("original")).expect("original");
    artifact::switch(&d2, &Current::Original).expect("switch");
    assert_eq!(link(&d2.join("current")), "original");
    assert!(!d2.join("previous").exists(), "no previous to itself");
}

#[tokio::test]
async fn an_object_larger_than_its_record_is_refused_before_it_is_copied() {
    let w = World::new();
    let src = w.path("src");
    tree(&src, "one");
    let r = w.push("api", Some("1"), &src).await.expect("push");
    let obj = w.object(&r.sha256);
    let f = std::fs::File::options()
        .write(true)
        .open(&obj)
        .expect("open");
    f.set_len(r.size + (1 << 20)).expect("grow");
    let dest = w.dest("dest");
    match artifact::install(&*w.store, &r, &dest).await {
        Err(Error::Size { expected, got, .. }) => {
            assert_eq!((expected, got), (r.size, r.size + (1 << 20)));
        }
        other => panic!("expected a size refusal, got {other:?}"),
    }
    assert!(listing(&dest).is_empty(), "{:?}", listing(&dest));
}

#[tokio::test]
async fn a_single_file_keeps_its_mode_and_a_version_without_it_is_installed_again() {
    let w = World::new();
    let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o7777;
    for (pushed, want) in [(0o644, 0o644), (0o750, 0o750), (0o777, 0o755)] {
        let bin = w.path(&format!("f{pushed:o}"));
        std::fs::write(&bin, format!("{pushed}")).expect("bin");
        chmod(&bin, pushed);
        let r = w
            .push("srv", Some(&format!("{pushed:o}")), &bin)
            .await
            .expect("push");
        assert_eq!(r.mode, Some(pushed & 0o755));
        let dest = w.dest(&format!("d{pushed:o}"));
        let d = artifact::install(&*w.store, &r, &dest)
            .await
            .expect("install");
        assert_eq!(mode(&d.join(r.file.as_deref().expect("file"))), want);
    }
    // A record written before modes were kept: 0755 as before.
    let bin = w.path("old");
    std::fs::write(&bin, "old").expect("bin");
    chmod(&bin, 0o644);
    let r = w.push("srv", Some("old"), &bin).await.expect("push");
    let old = Record {
        mode: None,
        ..r.clone()
    };
    let s = serde_json::to_string(&old).expect("json");
    assert!(!s.contains("mode"), "{s}");
    let dest = w.dest("dold");
    let d = artifact::install(&*w.store, &old, &dest)
        .await
        .expect("install");
    assert_eq!(mode(&d.join("old")), 0o755);
    // `dest/<sha>` without its file is not taken as installed.
    std::fs::remove_file(d.join("old")).expect("rm");
    let d = artifact::install(&*w.store, &r, &dest)
        .await
        .expect("again");
    assert_eq!(std::fs::read_to_string(d.join("old")).expect("read"), "old");
}
