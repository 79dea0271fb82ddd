//! Snapshot throughput on a 1 GiB file: hashing, upload to a file:// store, fetch, and the
//! peak RSS while doing it (streaming: no full copy in memory). Run:
//! `cargo bench -p autopilot-snapshot` (needs about 3 GiB of free space in $TMPDIR).
// Tests start the real binary and real servers as child processes.
#![allow(clippy::disallowed_methods)]

use std::io::Write;
use std::time::Instant;

#[allow(unsafe_code)]
fn peak_rss_mb() -> f64 {
    // SAFETY: getrusage fills the struct we pass; no other memory is touched.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    ru.ru_maxrss as f64 / 1024.0
}

fn main() {
    const SIZE: usize = 1 << 30;
    let dir = std::env::temp_dir().join(format!("ap-snap-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    let src = dir.join("data");
    {
        // Incompressible-looking content, written in 8 MiB chunks.
        let mut f = std::fs::File::create(&src).expect("create");
        let mut chunk = vec![0u8; 8 << 20];
        let mut x: u64 = 0x9e3779b97f4a7c15;
        for _ in 0..SIZE / chunk.len() {
            for b in chunk.chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                b.copy_from_slice(&x.to_le_bytes());
            }
            f.write_all(&chunk).expect("write");
        }
        f.sync_all().expect("sync");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        let gib = SIZE as f64 / (1u64 << 30) as f64;
        let t = Instant::now();
        let (sha, size) = autopilot_snapshot::sha256_file(&src).await.expect("hash");
        let hash_s = t.elapsed().as_secs_f64();
        assert_eq!(size as usize, SIZE);
        let store = autopilot_snapshot::open(&format!("file://{}", dir.join("store").display()))
            .expect("store");
        let t = Instant::now();
        store.put("bench", &sha, &src).await.expect("put");
        let put_s = t.elapsed().as_secs_f64();
        let back = dir.join("restored");
        let t = Instant::now();
        store.get("bench", &sha, &back).await.expect("get");
        let (sha2, _) = autopilot_snapshot::sha256_file(&back)
            .await
            .expect("verify");
        let get_s = t.elapsed().as_secs_f64();
        assert_eq!(sha, sha2);
        println!(
            "1 GiB snapshot: sha256 {:.2} s ({:.0} MiB/s)",
            hash_s,
            1024.0 * gib / hash_s
        );
        println!(
            "upload to file:// store (copy + fsync + rename): {:.2} s ({:.0} MiB/s)",
            put_s,
            1024.0 * gib / put_s
        );
        println!(
            "restore fetch + verify: {:.2} s ({:.0} MiB/s)",
            get_s,
            1024.0 * gib / get_s
        );
        println!(
            "upload total (hash + upload): {:.0} MiB/s",
            1024.0 * gib / (hash_s + put_s)
        );
        println!("peak RSS of the whole run: {:.1} MiB", peak_rss_mb());
    });
    let t = Instant::now();
    let st = std::process::Command::new("cp")
        .arg(&src)
        .arg(dir.join("cp-ref"))
        .status()
        .expect("cp");
    let _ = std::process::Command::new("sync").status();
    assert!(st.success());
    println!(
        "reference: cp + sync of the same file: {:.2} s",
        t.elapsed().as_secs_f64()
    );
    let _ = std::fs::remove_dir_all(&dir);
}
