//! The S3 store against a real S3-compatible server (moto, on loopback), started here.
// Tests start the real binary and real servers as child processes.
#![allow(clippy::disallowed_methods)]

use std::io::{Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("port")
}

fn http(port: u16, req: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(req.as_bytes()).ok()?;
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    Some(out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(unsafe_code)] // set_var, justified below
async fn s3_store_round_trip_against_a_real_server() {
    let port = free_port();
    let server = Command::new("python3")
        .args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map(Server)
        .expect("start moto's S3 server (pip install 'moto[server]')");
    let deadline = Instant::now() + Duration::from_secs(30);
    while http(
        port,
        "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .is_none()
    {
        assert!(Instant::now() < deadline, "moto_server did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let created = http(
        port,
        "PUT /snaps HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .expect("create bucket");
    assert!(
        created.starts_with("HTTP/1.1 200") || created.starts_with("HTTP/1.0 200"),
        "{created}"
    );
    // SAFETY: this test binary has a single test, so no other thread reads the environment.
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", "test");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "test");
        std::env::set_var("AUTOPILOT_S3_ENDPOINT", format!("http://127.0.0.1:{port}"));
    }
    let dir = std::env::temp_dir().join(format!("ap-s3-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("dir");
    // 20 MiB: three multipart parts.
    let src = dir.join("data");
    let data: Vec<u8> = (0..20 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    std::fs::write(&src, &data).expect("write");
    let (sha, size) = autopilot_snapshot::sha256_file(&src).await.expect("hash");
    assert_eq!(size, data.len() as u64);
    let store = autopilot_snapshot::open("s3://snaps/prod/redis").expect("open");
    store.put("rdb", &sha, &src).await.expect("upload");
    store
        .put("rdb", &sha, &src)
        .await
        .expect("an existing object is not uploaded again");
    let back = dir.join("back");
    store.get("rdb", &sha, &back).await.expect("fetch");
    assert_eq!(
        autopilot_snapshot::sha256_file(&back)
            .await
            .expect("hash")
            .0,
        sha
    );
    store.delete("rdb", &sha).await.expect("delete");
    store
        .delete("rdb", &sha)
        .await
        .expect("deleting twice is fine");
    assert!(store.get("rdb", &sha, &back).await.is_err());
    assert!(autopilot_snapshot::open("s3:///nobucket").is_err());
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}
