//! etcd catalog benchmarks (see docs/benchmarks.md): change propagation,
//! 500 simulated agents registering, and watch fan-out to 500 watchers, all
//! against a real single-node etcd on loopback. Run: `cargo bench -p autopilot-catalog-etcd`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use autopilot_catalog::{Catalog, Registration, Status};
use autopilot_catalog_etcd::{EtcdCatalog, EtcdOptions};
use autopilot_testkit::{Etcd, TempDir};

fn pct(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn reg(id: &str, name: &str, port: u16) -> Registration {
    Registration {
        id: id.into(),
        name: name.into(),
        address: "127.0.0.1".into(),
        port,
        tags: vec![],
        status: Status::Passing,
        ttl: Duration::from_secs(10),
        deregister_critical_after: None,
        seat: None,
    }
}

async fn session(ep: &str, owner: &str) -> Arc<dyn Catalog> {
    let o = EtcdOptions {
        endpoints: vec![ep.to_string()],
        prefix: "/bench".into(),
        lease_ttl: Duration::from_secs(10),
        ..Default::default()
    };
    Arc::new(EtcdCatalog::connect(o, owner).await.expect("connect"))
}

fn main() {
    let dir = TempDir::new("etcd-bench");
    let etcd = Etcd::single(&dir.0);
    let ep = etcd.endpoint();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("rt");
    rt.block_on(async {
        // Propagation: a registration change in one session -> another session notified and has re-read.
        let a = session(&ep, "writer").await;
        let b = session(&ep, "reader").await;
        let mut changes = b.changes();
        let mut lat = Vec::new();
        for i in 0..200 {
            changes.borrow_and_update();
            let t = Instant::now();
            if i % 2 == 0 {
                a.register(&reg("p-1", "prop", 1)).await.expect("register");
            } else {
                a.deregister("p-1").await.expect("deregister");
            }
            changes.changed().await.expect("notified");
            let n = b.instances("prop").await.expect("read").len();
            assert_eq!(n, usize::from(i % 2 == 0));
            lat.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        println!(
            "propagation (register/deregister -> other session notified and re-read), 200 changes: p50 {:.2} ms, p99 {:.2} ms",
            pct(&mut lat, 0.5),
            pct(&mut lat, 0.99)
        );

        // 500 simulated agents (one session each) registering one service each.
        let mut sessions = Vec::new();
        for i in 0..500 {
            sessions.push(session(&ep, &format!("agent-{i}")).await);
        }
        let t = Instant::now();
        let mut tasks = Vec::new();
        for (i, s) in sessions.iter().enumerate() {
            let s = s.clone();
            tasks.push(tokio::spawn(async move {
                s.register(&reg(&format!("svc-{i}"), "fleet", 10000 + i as u16)).await.expect("register")
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        let took = t.elapsed();
        let n = a.instances("fleet").await.expect("read").len();
        println!("500 agents register (lease grant + put each, concurrently): {:.0} ms, {n} visible", took.as_secs_f64() * 1000.0);

        // Fan-out: one change -> all 500 watchers notified.
        let mut rxs: Vec<_> = sessions.iter().map(|s| s.changes()).collect();
        for r in &mut rxs {
            r.borrow_and_update();
        }
        let mut fan = Vec::new();
        for round in 0..5 {
            for r in &mut rxs {
                r.borrow_and_update();
            }
            let t = Instant::now();
            a.register(&reg(&format!("fan-{round}"), "fanout", 1)).await.expect("register");
            let mut handles = Vec::new();
            for mut r in rxs.drain(..) {
                handles.push(tokio::spawn(async move {
                    r.changed().await.expect("notified");
                    (t.elapsed(), r)
                }));
            }
            let mut worst = Duration::ZERO;
            let mut all = Vec::new();
            for h in handles {
                let (d, r) = h.await.expect("task");
                worst = worst.max(d);
                all.push(d.as_secs_f64() * 1000.0);
                rxs.push(r);
            }
            fan.push((pct(&mut all, 0.5), pct(&mut all, 0.99), worst.as_secs_f64() * 1000.0));
        }
        for (i, (p50, p99, max)) in fan.iter().enumerate() {
            println!("fan-out round {i}: 500 watchers notified: p50 {p50:.2} ms, p99 {p99:.2} ms, last {max:.2} ms");
        }
    });
}
