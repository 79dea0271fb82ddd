//! The nginx blueprint (examples/nginx) end to end: real nginx and real backends under autopilot, on the embedded catalog.
// Tests start the real binary and real servers as child processes.
#![allow(clippy::disallowed_methods)]

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;

/// The backends' health-check interval in examples/nginx/backend.json5.
const HEALTH_INTERVAL: Duration = Duration::from_secs(1);

struct Site {
    dir: Dir,
    nginx_port: u16,
}

impl Site {
    fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "AUTOPILOT_CATALOG".into(),
                format!("local://{}", self.dir.path("catalog").display()),
            ),
            ("AUTOPILOT_INTERFACE".into(), "static:127.0.0.1".into()),
            ("TMPDIR".into(), self.dir.0.display().to_string()),
            (
                "AUTOPILOT_STATE_DIR".into(),
                self.dir.path("state").display().to_string(),
            ),
        ]
    }

    fn backend(&self, name: &str, port: u16) -> Agent {
        let mut env = self.env();
        env.push(("BACKEND_PORT".into(), port.to_string()));
        env.push(("AUTOPILOT_HOSTNAME".into(), name.into()));
        let vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let a = start_example(
            "nginx",
            "backend.json5",
            &self.dir.path(&format!("{name}.log")),
            &self.dir.path(&format!("autopilot-backend-{port}.sock")),
            &vars,
        );
        a.ready();
        a
    }

    fn nginx(&self) -> Agent {
        let state = self.dir.path("nginx");
        let mut env = self.env();
        env.push(("NGINX_STATE".into(), state.display().to_string()));
        env.push(("NGINX_PORT".into(), self.nginx_port.to_string()));
        env.push(("NGINX_ADDR".into(), "127.0.0.1".into()));
        env.push(("AUTOPILOT_HOSTNAME".into(), "lb".into()));
        let vars: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        start_example(
            "nginx",
            "nginx.json5",
            &self.dir.path("nginx.log"),
            &state.join("autopilot.sock"),
            &vars,
        )
    }

    fn get(&self) -> Option<(u16, String)> {
        http_tcp(&format!("127.0.0.1:{}", self.nginx_port), "/")
    }

    /// Which backends answer `n` requests through nginx.
    fn spread(&self, n: usize) -> BTreeMap<String, usize> {
        let mut seen = BTreeMap::new();
        for _ in 0..n {
            let who = match self.get() {
                Some((200, body)) => body.trim().to_string(),
                other => format!("error {other:?}"),
            };
            *seen.entry(who).or_default() += 1;
        }
        seen
    }

    fn conf(&self) -> String {
        std::fs::read_to_string(self.dir.path("nginx/nginx.conf")).unwrap_or_default()
    }
}

#[test]
fn nginx_routes_to_healthy_backends_only() {
    assert!(
        std::process::Command::new("nginx")
            .arg("-v")
            .output()
            .is_ok(),
        "nginx is not installed: run ./scripts/test, which installs it"
    );
    let site = Site {
        dir: Dir::new("bp-nginx"),
        nginx_port: free_port(),
    };
    let ports: Vec<u16> = (0..4).map(|_| free_port()).collect();
    let mut b1 = site.backend("b1", ports[0]);
    let b2 = site.backend("b2", ports[1]);
    let _b3 = site.backend("b3", ports[2]);
    let lb = site.nginx();

    // All three backends get traffic.
    let all3 = ["b1", "b2", "b3"];
    assert!(
        wait_for(Duration::from_secs(15), || {
            let s = site.spread(12);
            all3.iter().all(|b| s.contains_key(*b))
        }),
        "spread {:?}\nconf:\n{}\nlog:\n{}",
        site.spread(12),
        site.conf(),
        lb.log()
    );

    // kill -9 of b2's server: nginx stops routing to it within one health interval.
    let pid = b2.job_pid("backend").expect("b2 pid");
    let gone = format!("server 127.0.0.1:{} ", ports[1]);
    assert!(site.conf().contains(&gone), "{}", site.conf());
    let killed = Instant::now();
    kill(pid, libc::SIGKILL);
    assert!(
        wait_for(HEALTH_INTERVAL, || !site.conf().contains(&gone)),
        "b2 still in the upstream after {HEALTH_INTERVAL:?}:\n{}",
        site.conf()
    );
    let removal = killed.elapsed();
    // The reload is asynchronous: give nginx's new worker a moment to take over.
    std::thread::sleep(Duration::from_millis(100));
    let s = site.spread(20);
    assert!(!s.contains_key("b2"), "b2 still routed to: {s:?}");
    assert_eq!(
        s.values().sum::<usize>(),
        s.get("b1").unwrap_or(&0) + s.get("b3").unwrap_or(&0),
        "{s:?}"
    );
    eprintln!("backend removal after kill -9: {removal:?} (render + reload of nginx)");

    // A fourth backend receives traffic once it is healthy.
    let _b4 = site.backend("b4", ports[3]);
    assert!(
        wait_for(Duration::from_secs(10), || site
            .spread(8)
            .contains_key("b4")),
        "b4 never routed to:\n{}",
        site.conf()
    );

    // A graceful stop of b1 under continuous load: no request fails.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let load = {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let addr = format!("127.0.0.1:{}", site.nginx_port);
        std::thread::spawn(move || {
            let mut errors = Vec::new();
            while !stop.load(Ordering::SeqCst) {
                match http_tcp(&addr, "/") {
                    Some((200, _)) => ok.fetch_add(1, Ordering::SeqCst),
                    other => {
                        errors.push(format!("{other:?}"));
                        failed.fetch_add(1, Ordering::SeqCst)
                    }
                };
            }
            errors
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    b1.signal(libc::SIGTERM);
    assert!(
        b1.wait(Duration::from_secs(10)).is_some(),
        "b1 did not stop"
    );
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    let errors = load.join().expect("load thread");
    let (ok, failed) = (ok.load(Ordering::SeqCst), failed.load(Ordering::SeqCst));
    assert_eq!(
        failed,
        0,
        "{failed} of {} requests failed: {errors:?}",
        ok + failed
    );
    assert!(ok > 50, "only {ok} requests in the graceful-stop window");
    assert!(!site.spread(10).contains_key("b1"));
}
