//! A fleet on one etcd: 100 real agents started at once all register, none exits, a change reaches every watch handler, and the idle load is about one keep-alive per agent per TTL/3; one agent with a 30 s lease keeps its single watch stream.
//!
//! Figures (time to all registered, etcd CPU during start-up, idle
//! messages per second) are printed for the record; the assertions are
//! loose so that a slow CI machine passes and a regression (a start-up
//! storm, an agent exiting, a watch woken by every write, a connection
//! dropped for pinging too often) fails.
// Tests start the real binary and etcd as child processes.
#![allow(clippy::disallowed_methods)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use autopilot_catalog::{Catalog, Registration, Status};
use autopilot_testkit::{Etcd, metric_sum};
use common::*;

const AGENTS: usize = 100;
/// The agents' lease TTL: one keep-alive every 2 s each.
const TTL_S: u64 = 6;

/// An agent: one job with a port and a native TCP health check (against
/// `health`, a listener of the test), a watch of `ping` whose handler
/// touches `seen` once it lists `ping-1`.
fn agent_config(port: u16, health: u16) -> String {
    format!(
        r#"{{
  control: {{ socket: "@SOCKET@" }},
  watches: [{{ name: "ping", interval: 600 }}],
  jobs: [
    {{ name: "app", exec: "sleep 600", port: {port}, interfaces: ["static:127.0.0.1"],
       health: {{ tcp: "127.0.0.1:{health}", interval: "500ms", ttl: "5s" }} }},
    {{ name: "seen", when: {{ source: "watch.ping", each: "changed" }},
       exec: ["sh", "-c", "grep -q ping-1 \"$AUTOPILOT_WATCH_FILE\" && touch @DIR@/seen"] }},
  ],
}}"#
    )
}

/// Accepts and drops connections until the test ends: the agents' health
/// checks all pass against it.
fn health_listener() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for c in l.incoming() {
            drop(c);
        }
    });
    port
}

fn catalog(rt: &tokio::runtime::Runtime, endpoint: &str, prefix: &str) -> Arc<dyn Catalog> {
    let opts = autopilot_catalog_etcd::EtcdOptions {
        endpoints: vec![endpoint.to_string()],
        prefix: prefix.into(),
        lease_ttl: Duration::from_secs(60),
        ..Default::default()
    };
    Arc::new(
        rt.block_on(autopilot_catalog_etcd::EtcdCatalog::connect(
            opts,
            "fleet-test",
        ))
        .expect("connect"),
    )
}

/// etcd's received gRPC messages, all methods, and those of one method.
fn received(etcd: &Etcd, method: Option<&str>) -> f64 {
    let text = etcd.metrics().expect("etcd metrics");
    let m = method.map(|m| format!("grpc_method=\"{m}\""));
    let labels: Vec<&str> = m.iter().map(String::as_str).collect();
    metric_sum(&text, "grpc_server_msg_received_total", &labels)
}

fn streams_started(etcd: &Etcd, method: &str) -> f64 {
    let text = etcd.metrics().expect("etcd metrics");
    metric_sum(
        &text,
        "grpc_server_started_total",
        &[&format!("grpc_method=\"{method}\"")],
    )
}

#[test]
fn a_hundred_agents_start_at_once_register_and_idle_quietly() {
    let d = Dir::new("fleet-etcd");
    let etcd = Etcd::single(&d.0);
    let ep = etcd.endpoint();
    let url = format!("etcd://{ep}/fleet");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let cat = catalog(&rt, &ep, "/fleet");
    let health = health_listener();
    let cpu0 = etcd.cpu_time().expect("etcd cpu");
    let ranges0 = received(&etcd, Some("Range"));
    let t0 = Instant::now();
    let mut agents: Vec<(Dir, Agent)> = (0..AGENTS)
        .map(|i| {
            let sub = d.child(&format!("n{i}"));
            let port = 20_000 + u16::try_from(i).expect("port");
            let a = start_with(
                &sub,
                &agent_config(port, health),
                &[],
                &[
                    ("AUTOPILOT_CATALOG", &url),
                    ("AUTOPILOT_HOSTNAME", &format!("n{i}")),
                    ("AUTOPILOT_ETCD_TTL", &format!("{TTL_S}s")),
                ],
            );
            (sub, a)
        })
        .collect();
    // The test's own reads, left out of the agents' count.
    let polls = std::cell::Cell::new(0u32);
    let passing = |cat: &Arc<dyn Catalog>| {
        polls.set(polls.get() + 1);
        rt.block_on(cat.instances("app"))
            .map(|l| l.iter().filter(|i| i.status == Status::Passing).count())
            .unwrap_or(0)
    };
    let registered = wait_for(Duration::from_secs(40), || {
        std::thread::sleep(Duration::from_millis(40));
        passing(&cat) == AGENTS
    });
    let took = t0.elapsed();
    let cpu_start = etcd.cpu_time().expect("etcd cpu").saturating_sub(cpu0);
    let ranges = received(&etcd, Some("Range")) - ranges0 - f64::from(polls.get());
    eprintln!(
        "{AGENTS} agents: all registered after {took:?}; etcd CPU {cpu_start:?}; {ranges} Range requests by the agents ({:.1} each)",
        ranges / AGENTS as f64
    );
    for (sub, a) in agents.iter_mut() {
        assert!(
            a.child
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(None))),
            "agent {} exited; log:\n{}",
            sub.0.display(),
            a.log()
        );
    }
    assert!(
        registered,
        "{} of {AGENTS} registered after {took:?}",
        passing(&cat)
    );
    // Loose: 2 shared cores, debug builds.
    assert!(took < Duration::from_secs(30), "registration took {took:?}");
    // Each agent reads little at start (its intent, its watch): not once
    // per other agent's registration (about 20 each before the watch was
    // demultiplexed, 2.5 after).
    assert!(
        ranges < (AGENTS * 8) as f64,
        "{ranges} Range requests for {AGENTS} agents starting"
    );

    // A change reaches every agent's watch handler.
    let t1 = Instant::now();
    rt.block_on(cat.register(&Registration {
        id: "ping-1".into(),
        name: "ping".into(),
        address: "127.0.0.1".into(),
        port: 1,
        tags: vec![],
        status: Status::Passing,
        ttl: Duration::from_secs(60),
        deregister_critical_after: None,
        seat: None,
    }))
    .expect("register ping");
    let all_seen = wait_for(Duration::from_secs(20), || {
        std::thread::sleep(Duration::from_millis(40));
        agents.iter().all(|(sub, _)| sub.path("seen").exists())
    });
    let seen = agents
        .iter()
        .filter(|(sub, _)| sub.path("seen").exists())
        .count();
    eprintln!(
        "a change reached {seen} of {AGENTS} handlers after {:?}",
        t1.elapsed()
    );
    assert!(all_seen, "only {seen} of {AGENTS} handlers ran");

    // Idle: about one keep-alive per agent per TTL/3 (and a watch progress
    // request when a stream was silent for a while), no reads, no new
    // streams.
    std::thread::sleep(Duration::from_secs(2));
    let window = Duration::from_secs(12);
    let (all0, range0, watch0) = (
        received(&etcd, None),
        received(&etcd, Some("Range")),
        streams_started(&etcd, "Watch"),
    );
    let cpu_idle0 = etcd.cpu_time().expect("etcd cpu");
    std::thread::sleep(window);
    let (all, range, watches) = (
        received(&etcd, None) - all0,
        received(&etcd, Some("Range")) - range0,
        streams_started(&etcd, "Watch") - watch0,
    );
    let cpu_idle = etcd.cpu_time().expect("etcd cpu").saturating_sub(cpu_idle0);
    let keep_alives = AGENTS as f64 * window.as_secs_f64() / (TTL_S as f64 / 3.0);
    eprintln!(
        "idle over {window:?}: {all} messages ({:.2}/s per agent; keep-alives alone {:.2}), {range} Range, {watches} new watch streams, etcd CPU {cpu_idle:?}",
        all / window.as_secs_f64() / AGENTS as f64,
        keep_alives / window.as_secs_f64() / AGENTS as f64
    );
    assert!(
        all <= 2.0 * keep_alives,
        "{all} messages at idle, expected about {keep_alives}"
    );
    assert!(range <= 5.0, "{range} reads at idle");
    assert!(
        watches <= 1.0,
        "{watches} watch streams (re)started at idle"
    );
    for (sub, a) in agents.iter_mut() {
        assert!(
            a.child
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(None))),
            "agent {} exited; log:\n{}",
            sub.0.display(),
            a.log()
        );
    }
    // Stop them all at once (each Drop would wait for its own).
    for (_, a) in &agents {
        a.signal(libc::SIGTERM);
    }
    drop(agents);
}

#[test]
fn an_agent_with_a_30s_lease_keeps_one_watch_stream() {
    let d = Dir::new("fleet-etcd-ping");
    let etcd = Etcd::single(&d.0);
    let url = format!("etcd://{}/ping", etcd.endpoint());
    let health = health_listener();
    let watches0 = streams_started(&etcd, "Watch");
    let mut a = start_with(
        &d,
        &agent_config(20_000, health),
        &[],
        &[
            ("AUTOPILOT_CATALOG", url.as_str()),
            ("AUTOPILOT_HOSTNAME", "solo"),
            ("AUTOPILOT_ETCD_TTL", "30s"),
        ],
    );
    a.ready();
    assert!(wait_for(Duration::from_secs(10), || streams_started(
        &etcd, "Watch"
    ) > watches0));
    let started = streams_started(&etcd, "Watch");
    // Pings below etcd's --grpc-keepalive-min-time (5 s) get the connection
    // closed with GOAWAY "too_many_pings" within seconds of going idle.
    std::thread::sleep(Duration::from_secs(40));
    let restarts = streams_started(&etcd, "Watch") - started;
    assert!(
        matches!(a.child.as_mut().map(|c| c.try_wait()), Some(Ok(None))),
        "agent exited: {}",
        a.log()
    );
    assert_eq!(
        restarts,
        0.0,
        "the watch stream was restarted {restarts} times in 40 s; log:\n{}",
        a.log()
    );
}

/// A candidate of the election `db` (TTL 5 s) whose job is health-checked
/// against `health`.
fn candidate_config(port: u16, health: u16) -> String {
    format!(
        r#"{{
  control: {{ socket: "@SOCKET@" }},
  jobs: [
    {{ name: "db", exec: "sleep 600", port: {port}, interfaces: ["static:127.0.0.1"],
       health: {{ tcp: "127.0.0.1:{health}", interval: "500ms", ttl: "5s" }},
       election: {{ name: "db", ttl: "5s" }} }},
  ],
}}"#
    )
}

#[test]
fn an_idle_election_costs_only_its_renewals() {
    const NODES: usize = 3;
    let d = Dir::new("fleet-etcd-election");
    let etcd = Etcd::single(&d.0);
    let ep = etcd.endpoint();
    let url = format!("etcd://{ep}/el");
    let health = health_listener();
    let mut agents: Vec<Agent> = (0..NODES)
        .map(|i| {
            let sub = d.child(&format!("c{i}"));
            start_with(
                &sub,
                &candidate_config(21_000 + u16::try_from(i).expect("port"), health),
                &[],
                &[
                    ("AUTOPILOT_CATALOG", url.as_str()),
                    ("AUTOPILOT_HOSTNAME", &format!("c{i}")),
                    ("AUTOPILOT_ETCD_TTL", "10s"),
                ],
            )
        })
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let cat = catalog(&rt, &ep, "/el");
    let members = |cat: &Arc<dyn Catalog>| {
        rt.block_on(cat.instances("_members.db"))
            .map(|l| l.iter().filter(|i| i.status == Status::Passing).count())
            .unwrap_or(0)
    };
    assert!(
        wait_for(Duration::from_secs(30), || {
            std::thread::sleep(Duration::from_millis(50));
            members(&cat) == NODES && rt.block_on(cat.leader("db")).ok().flatten().is_some()
        }),
        "no leader with {NODES} passing members"
    );
    // Settled: the candidates have read the seat and records once.
    std::thread::sleep(Duration::from_secs(3));
    let window = Duration::from_secs(15);
    let methods = [
        "LeaseKeepAlive",
        "Range",
        "Txn",
        "Watch",
        "LeaseGrant",
        "Put",
    ];
    let count = |m: &str| received(&etcd, Some(m));
    let before: Vec<f64> = methods.iter().map(|m| count(m)).collect();
    let all0 = received(&etcd, None);
    std::thread::sleep(window);
    let all = received(&etcd, None) - all0;
    let per_min = |n: f64| n * 60.0 / window.as_secs_f64() / NODES as f64;
    let by: Vec<String> = methods
        .iter()
        .zip(&before)
        .map(|(m, b)| format!("{m} {:.1}", per_min(count(m) - b)))
        .collect();
    eprintln!(
        "idle election ({NODES} candidates, election TTL 5 s, lease TTL 10 s): {:.1} messages/min per node ({})",
        per_min(all),
        by.join(", ")
    );
    // Each agent's session keep-alive every 10/3 s, the leader's renewal
    // every 5/3 s: 18 + 36/3 = 30 a minute per node.
    let expected =
        NODES as f64 * window.as_secs_f64() / (10.0 / 3.0) + window.as_secs_f64() / (5.0 / 3.0);
    assert!(
        all <= 2.0 * expected,
        "{all} messages in {window:?}, expected about {expected}"
    );
    let reads = count("Range") - before[1];
    assert!(reads <= 2.0, "{reads} reads at idle");
    for a in agents.iter_mut() {
        assert!(
            a.child
                .as_mut()
                .is_some_and(|c| matches!(c.try_wait(), Ok(None))),
            "agent exited: {}",
            a.log()
        );
    }
}
