//! The agent on real etcd: several agents, a lost member, a full outage with the app untouched, and clear startup errors.
// Tests start the real binary and real servers as child processes.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::{Duration, Instant};

use autopilot_testkit::{Etcd, endpoints};
use common::*;

fn web_config(dir: &Dir, port: u16) -> String {
    format!(
        r#"{{
  control: {{ socket: "@SOCKET@" }},
  watches: [{{ name: "web", interval: 1 }}],
  jobs: [{{ name: "web", exec: "sleep 120", port: {port}, interfaces: ["static:127.0.0.1"],
            health: {{ exec: "true", interval: "200ms", ttl: 2 }} }},
         {{ name: "gone", when: {{ source: "watch.web", each: "unhealthy" }}, exec: "touch @DIR@/all-gone" }}],
  telemetry: {{ port: {tport}, interfaces: ["static:127.0.0.1"] }},
}}"#,
        tport = free_port()
    )
    .replace("@DIR@", &dir.0.display().to_string())
}

fn agent_on(dir: &Dir, name: &str, url: &str, port: u16) -> Agent {
    let sub = dir.child(name);
    let a = start_with(
        &sub,
        &web_config(&sub, port),
        &[],
        &[
            ("AUTOPILOT_CATALOG", url),
            ("AUTOPILOT_HOSTNAME", name),
            ("AUTOPILOT_ETCD_TTL", "3s"),
        ],
    );
    a.ready();
    a
}

#[test]
fn three_agents_on_a_single_node() {
    let d = Dir::new("etcd3");
    let etcd = Etcd::single(&d.0);
    let url = format!("etcd://{}/three", etcd.endpoint());
    let agents: Vec<Agent> = (1..=3)
        .map(|i| agent_on(&d, &format!("h{i}"), &url, 8000 + i))
        .collect();
    assert!(wait_for(Duration::from_secs(10), || passing_ids(
        &url, "web"
    ) == Some(vec![
        "web-h1".into(),
        "web-h2".into(),
        "web-h3".into()
    ])));
    let st = agents[0].status();
    assert_eq!(st["catalog"]["url"], url);
    assert_eq!(st["catalog"]["degraded"], false);
    drop(agents);
    assert_eq!(
        passing_ids(&url, "web"),
        Some(vec![]),
        "graceful stops deregister"
    );
}

#[test]
fn a_lost_member_of_three_is_invisible_to_agents() {
    let d = Dir::new("etcdmember");
    let mut cluster = Etcd::cluster(&d.0, 3);
    let url = format!("etcd://{}/m", endpoints(&cluster));
    let a1 = agent_on(&d, "h1", &url, 8001);
    assert!(wait_for(Duration::from_secs(10), || passing_ids(
        &url, "web"
    ) == Some(vec![
        "web-h1".into()
    ])));
    cluster[0].kill();
    // A new agent registers, the first keeps its entry alive past its lease TTL.
    let a2 = agent_on(&d, "h2", &url, 8002);
    assert!(wait_for(Duration::from_secs(10), || passing_ids(
        &url, "web"
    ) == Some(vec![
        "web-h1".into(),
        "web-h2".into()
    ])));
    std::thread::sleep(Duration::from_secs(4));
    assert_eq!(
        passing_ids(&url, "web"),
        Some(vec!["web-h1".into(), "web-h2".into()])
    );
    assert_eq!(a1.status()["catalog"]["degraded"], false);
    drop((a1, a2));
}

#[test]
fn etcd_down_for_10s_leaves_the_app_alone_and_registrations_return() {
    let d = Dir::new("etcdoutage");
    let mut etcd = Etcd::single(&d.0);
    let url = format!("etcd://{}/outage", etcd.endpoint());
    let a = agent_on(&d, "h1", &url, 8001);
    assert!(wait_for(Duration::from_secs(10), || passing_ids(
        &url, "web"
    ) == Some(vec![
        "web-h1".into()
    ])));
    // The watch's first state (before web registered) was "unhealthy"; from
    // here on it must stay healthy through the outage.
    assert!(wait_for(Duration::from_secs(5), || a.status()["watches"]
        [0]["passing"]
        == 1));
    let _ = std::fs::remove_file(d.path("h1").join("all-gone"));
    let pid = a.status()["jobs"][0]["pid"].as_u64().expect("pid");
    let metrics_addr = {
        let cfg = std::fs::read_to_string(&a.config).expect("cfg");
        let port: u16 = cfg
            .split("telemetry: { port: ")
            .nth(1)
            .and_then(|r| r.split(',').next())
            .and_then(|p| p.trim().parse().ok())
            .expect("port");
        format!("127.0.0.1:{port}")
    };
    let checks = || -> f64 {
        let (_, body) = http_tcp(&metrics_addr, "/metrics").expect("metrics");
        body.lines()
            .filter(|l| l.starts_with("autopilot_health_checks{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    etcd.kill();
    let down = Instant::now();
    assert!(
        wait_for(Duration::from_secs(8), || a.status()["catalog"]["degraded"]
            == true),
        "degraded is reported"
    );
    let (_, body) = http_tcp(&metrics_addr, "/metrics").expect("metrics");
    assert!(body.contains("autopilot_catalog_degraded 1"), "{body}");
    let before = checks();
    std::thread::sleep(Duration::from_secs(10).saturating_sub(down.elapsed()));
    assert!(checks() > before + 5.0, "health checks keep running");
    let st = a.status();
    assert_eq!(
        st["jobs"][0]["pid"].as_u64(),
        Some(pid),
        "the app was not touched"
    );
    assert_eq!(st["jobs"][0]["status"], "running");
    etcd.restart();
    let back = Instant::now();
    assert!(wait_for(Duration::from_secs(5), || passing_ids(
        &url, "web"
    ) == Some(vec![
        "web-h1".into()
    ])));
    let took = back.elapsed();
    eprintln!("registration back {took:?} after etcd answered");
    assert!(
        took < Duration::from_secs(2),
        "registration back within ~1 s (+CLI start): {took:?}"
    );
    assert!(wait_for(
        Duration::from_secs(5),
        || a.status()["catalog"]["degraded"] == false
    ));
    assert!(
        !d.path("h1").join("all-gone").exists(),
        "the watch never reported 'no instances' because etcd was unreachable"
    );
}

#[test]
fn a_silent_cluster_at_start_is_waited_for_and_a_bad_endpoint_fails() {
    let d = Dir::new("etcdbad");
    // A listener that never answers holds the port, so no etcd another test
    // starts meanwhile can take it (a free port is only free until then).
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("addr").port();
    let url = format!("etcd://127.0.0.1:{port}/x");
    let job = r#"{ control: { socket: "@SOCKET@" }, jobs: [{ name: "app", exec: "touch @DIR@/started" }] }"#;
    let quiet = d.child("quiet");
    let mut a = start_with(&quiet, job, &[], &[("AUTOPILOT_CATALOG", &url)]);
    // It waits (retrying with back-off, the failure logged with its
    // count), never exits, and starts no job without the catalog.
    assert!(
        wait_for(Duration::from_secs(20), || a
            .log()
            .contains("connecting to the catalog failed")),
        "{}",
        a.log()
    );
    assert_eq!(a.wait(Duration::from_secs(6)), None, "{}", a.log());
    let log = a.log();
    assert!(
        log.contains(&format!("etcd://127.0.0.1:{port}/x")) && log.contains("retrying"),
        "{log}"
    );
    assert!(!quiet.path("started").exists());
    // A signal ends the wait at once.
    a.signal(libc::SIGTERM);
    assert!(a.wait(Duration::from_secs(5)).is_some(), "{}", a.log());
    // A cluster that answers late: the agent goes on as soon as it does.
    let etcd = Etcd::single(&d.0);
    let proxy = autopilot_testkit::Proxy::start(
        etcd.endpoint()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("etcd port"),
    );
    proxy.cut();
    let late = d.child("late");
    let late_url = format!("etcd://{}/late", proxy.endpoint());
    let mut b = start_with(&late, job, &[], &[("AUTOPILOT_CATALOG", &late_url)]);
    assert!(
        wait_for(Duration::from_secs(20), || b
            .log()
            .contains("connecting to the catalog failed")),
        "{}",
        b.log()
    );
    assert!(!late.path("started").exists());
    proxy.heal();
    assert!(
        wait_for(Duration::from_secs(20), || late.path("started").exists()),
        "{}",
        b.log()
    );
    assert_eq!(b.wait(Duration::from_millis(100)), None, "{}", b.log());
    // A configuration error is fatal at once, with what is wrong.
    let bad = d.child("bad");
    let mut c = start_with(
        &bad,
        job,
        &[],
        &[("AUTOPILOT_CATALOG", "etcd://127.0.0.1:notaport/x")],
    );
    let code = c.wait(Duration::from_secs(20));
    assert!(matches!(code, Some(c) if c != 0), "{code:?}");
    assert!(c.log().contains("invalid endpoint"), "{}", c.log());
    assert!(!bad.path("started").exists());
}
