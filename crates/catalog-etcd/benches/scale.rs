//! Simulated fleet for docs/scale.md: N agent sessions (default 10 000, `AP_SCALE_SESSIONS`)
//! against one real etcd on loopback, each with its own connection, lease, keep-alive stream and
//! watch stream, as an agent has. Measures the start-up burst (connect + register), etcd's
//! request rate, CPU and bytes at idle, and one change fanned out to every session, from etcd's
//! own /metrics. Run: `cargo bench -p autopilot-catalog-etcd --bench scale` (needs `ulimit -n`
//! above 2N + 100: each session is one socket here and one in etcd).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use autopilot_catalog::{Catalog, Registration, Status};
use autopilot_catalog_etcd::{EtcdCatalog, EtcdOptions};
use autopilot_testkit::{Etcd, TempDir};

const TTL: Duration = Duration::from_secs(10);

fn reg(id: &str, name: &str, port: u16) -> Registration {
    Registration {
        id: id.into(),
        name: name.into(),
        address: "127.0.0.1".into(),
        port,
        tags: vec![],
        status: Status::Passing,
        ttl: TTL,
        deregister_critical_after: None,
        seat: None,
    }
}

/// etcd's /metrics: counters summed by metric name and gRPC method (benchmark code: plain HTTP/1.0).
fn metrics(ep: &str) -> BTreeMap<String, f64> {
    let mut s = std::net::TcpStream::connect(ep).expect("metrics connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(s, "GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n").expect("metrics write");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("metrics read");
    let mut out = BTreeMap::new();
    for line in body.lines() {
        let keep = [
            "grpc_server_msg_received_total",
            "etcd_network_client_grpc_sent_bytes_total",
            "etcd_network_client_grpc_received_bytes_total",
        ];
        let Some(name) = keep.iter().find(|k| line.starts_with(*k)) else {
            continue;
        };
        let Some(value) = line.rsplit(' ').next().and_then(|v| v.parse::<f64>().ok()) else {
            continue;
        };
        let method = line
            .split("grpc_method=\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("");
        *out.entry(format!(
            "{name}{}{method}",
            if method.is_empty() { "" } else { "/" }
        ))
        .or_insert(0.0) += value;
    }
    out
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let f: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    get(11) + get(12)
}

fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn rates(a: &BTreeMap<String, f64>, b: &BTreeMap<String, f64>, secs: f64) -> Vec<(String, f64)> {
    b.iter()
        .map(|(k, v)| (k.clone(), (v - a.get(k).copied().unwrap_or(0.0)) / secs))
        .filter(|(_, r)| *r > 0.0)
        .collect()
}

fn main() {
    let n: usize = std::env::var("AP_SCALE_SESSIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let idle = Duration::from_secs(20);
    let dir = TempDir::new("etcd-scale");
    let etcd = Etcd::single(&dir.0);
    let ep = etcd.endpoint();
    let pid = etcd.pid().expect("etcd pid");
    let clk = 100.0; // USER_HZ on Linux
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    println!("sessions: {n}, lease TTL {TTL:?}, one etcd member on loopback ({ep})");
    rt.block_on(async {
        // Start-up burst: every session connects (lease grant, agent key, watch) and registers.
        let m0 = metrics(&ep);
        let c0 = cpu_ticks(pid);
        let t = Instant::now();
        let mut sessions: Vec<Arc<dyn Catalog>> = Vec::with_capacity(n);
        for chunk in (0..n).collect::<Vec<_>>().chunks(200) {
            let mut tasks = Vec::new();
            for &i in chunk {
                let ep = ep.clone();
                tasks.push(tokio::spawn(async move {
                    let o = EtcdOptions {
                        endpoints: vec![ep],
                        prefix: "/scale".into(),
                        lease_ttl: TTL,
                        ..Default::default()
                    };
                    let s: Arc<dyn Catalog> = Arc::new(
                        EtcdCatalog::connect(o, &format!("agent-{i}"))
                            .await
                            .expect("connect"),
                    );
                    s.register(&reg(&format!("app-{i}"), "app", 20000 + (i % 40000) as u16))
                        .await
                        .expect("register");
                    s
                }));
            }
            for task in tasks {
                sessions.push(task.await.expect("task"));
            }
        }
        let burst = t.elapsed();
        let m1 = metrics(&ep);
        let c1 = cpu_ticks(pid);
        let reader = sessions[0].clone();
        let visible = reader.instances("app").await.expect("read").len();
        println!(
            "start-up: {n} sessions connected and registered in {:.1} s ({visible} visible); etcd CPU {:.1} s",
            burst.as_secs_f64(),
            (c1 - c0) as f64 / clk
        );
        for (k, r) in rates(&m0, &m1, burst.as_secs_f64()) {
            println!("  start-up {k}: {:.0}/s ({:.1} per session)", r, r * burst.as_secs_f64() / n as f64);
        }
        // Subscribe every session's change feed (its watch stream is open since connect).
        let mut rxs: Vec<_> = sessions.iter().map(|s| s.changes()).collect();
        for r in &mut rxs {
            r.borrow_and_update();
        }
        // Idle: only keep-alives should reach etcd.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let m2 = metrics(&ep);
        let c2 = cpu_ticks(pid);
        tokio::time::sleep(idle).await;
        let m3 = metrics(&ep);
        let c3 = cpu_ticks(pid);
        println!(
            "idle over {idle:?}: etcd CPU {:.1} % of one core, etcd RSS {} MB; model: {:.0} keep-alives/s (N / (TTL/3))",
            (c3 - c2) as f64 / clk / idle.as_secs_f64() * 100.0,
            rss_kb(pid) / 1024,
            n as f64 / (TTL.as_secs_f64() / 3.0)
        );
        for (k, r) in rates(&m2, &m3, idle.as_secs_f64()) {
            println!("  idle {k}: {r:.1}/s");
        }
        // One change fanned out to every watcher.
        for r in &mut rxs {
            r.borrow_and_update();
        }
        let m4 = metrics(&ep);
        let t = Instant::now();
        reader
            .register(&reg("fan-0", "fanout", 1))
            .await
            .expect("register");
        let mut handles = Vec::new();
        for mut r in rxs.drain(..) {
            handles.push(tokio::spawn(async move {
                let _ = tokio::time::timeout(Duration::from_secs(60), r.changed()).await;
                t.elapsed()
            }));
        }
        let mut all = Vec::new();
        for h in handles {
            all.push(h.await.expect("task").as_secs_f64() * 1000.0);
        }
        all.sort_by(f64::total_cmp);
        let p = |q: f64| all[((all.len() - 1) as f64 * q).round() as usize];
        tokio::time::sleep(Duration::from_secs(1)).await;
        let m5 = metrics(&ep);
        println!(
            "fan-out: one registration -> {n} watch streams notified: p50 {:.0} ms, p99 {:.0} ms, last {:.0} ms",
            p(0.5),
            p(0.99),
            p(1.0)
        );
        let sent = "etcd_network_client_grpc_sent_bytes_total";
        println!(
            "  bytes sent to clients for the change (plus ~1 s of keep-alives): {:.0} ({:.0} per session)",
            m5.get(sent).unwrap_or(&0.0) - m4.get(sent).unwrap_or(&0.0),
            (m5.get(sent).unwrap_or(&0.0) - m4.get(sent).unwrap_or(&0.0)) / n as f64
        );
        drop(sessions);
    });
    rt.shutdown_timeout(Duration::from_secs(5));
}
