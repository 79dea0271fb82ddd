//! DNS over the catalog end to end: real etcd, real agents, the real `autopilot dns` and the agent's `dns` block, queried with the real `dig`.
//!
//! Two agents register the service `web` (one instance tagged `primary`)
//! and one of them runs a job with an election. `dig` checks A, SRV
//! (`NAME.service` and `_NAME._tcp.service`, with the targets' addresses in
//! the additional section), the tag filter, the leader name, NXDOMAIN and
//! REFUSED; then one instance's health check starts failing and the test
//! measures how long after the catalog shows it critical it is gone from
//! the answers (asserted under 1 s). With etcd down the last good answers
//! stay; when it is back, a change shows again. A config with a `dns` block whose port
//! is taken fails to start with exit 2 naming `dns.listen`.
// Tests start the real binary, etcd and dig as child processes.
#![allow(clippy::disallowed_methods)]

mod common;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use autopilot_testkit::{Etcd, free_port};
use common::*;

/// A running `autopilot dns`, killed on drop.
struct DnsProc(Child);

impl Drop for DnsProc {
    fn drop(&mut self) {
        kill(i32::try_from(self.0.id()).unwrap_or(0), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `dig @127.0.0.1 -p PORT NAME TYPE` with extra flags; the whole output.
fn dig(port: u16, name: &str, qtype: &str, flags: &[&str]) -> String {
    let out = Command::new("dig")
        .arg("@127.0.0.1")
        .args(["-p", &port.to_string(), name, qtype, "+time=1", "+tries=1"])
        .args(flags)
        .output()
        .expect("run dig (Debian package bind9-dnsutils)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `dig +short`, sorted lines.
fn short(port: u16, name: &str, qtype: &str) -> Vec<String> {
    let mut v: Vec<String> = dig(port, name, qtype, &["+short"])
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with(';'))
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

fn status(port: u16, name: &str) -> String {
    let out = dig(port, name, "A", &[]);
    out.split("status: ")
        .nth(1)
        .and_then(|s| s.split(',').next())
        .unwrap_or("no answer")
        .to_string()
}

/// An IPv4 address as its `.addr` label.
fn hex(ip: &str) -> String {
    let ip: std::net::Ipv4Addr = ip.parse().unwrap();
    format!("{:08x}", u32::from(ip))
}

fn agent_config(ip: &str, port: u16, tags: &str, extra_job: &str, dns: &str) -> String {
    format!(
        r#"{{
  control: {{ socket: "@SOCKET@" }},
  {dns}
  jobs: [
    {{ name: "web", exec: "sleep 300", port: {port}, interfaces: ["static:{ip}"], tags: {tags},
       health: {{ exec: "test ! -e @DIR@/sick", interval: "100ms", ttl: 3 }} }},
    {extra_job}
  ]
}}"#
    )
}

#[test]
fn dig_answers_services_tags_leaders_and_drops_a_failing_instance_within_a_second() {
    let d = Dir::new("dns");
    let mut etcd = Etcd::single(&d.0);
    let url = format!("etcd://{}/dns", etcd.endpoint());
    let (dns_port, agent_dns_port) = (free_port(), free_port());
    let node = |host: &str, cfg: String| {
        let dir = d.child(host);
        let a = start_with(
            &dir,
            &cfg,
            &[],
            &[
                ("AUTOPILOT_CATALOG", url.as_str()),
                ("AUTOPILOT_HOSTNAME", host),
                ("AUTOPILOT_ETCD_TTL", "3s"),
            ],
        );
        a.ready();
        (dir, a)
    };
    let (_dir_a, agent_a) = node(
        "a",
        agent_config(
            "127.0.0.2",
            8080,
            r#"["primary", "not a label"]"#,
            r#"{ name: "db", exec: "sleep 300", port: 5432, interfaces: ["static:127.0.0.2"],
                health: { exec: "true", interval: "100ms", ttl: 3 },
                election: { name: "db-primary", ttl: "2s" } },"#,
            &format!(r#"dns: {{ listen: "127.0.0.1:{agent_dns_port}", domain: "autopilot." }},"#),
        ),
    );
    let (dir_b, _agent_b) = node("b", agent_config("127.0.0.3", 8081, "[]", "", ""));

    // The standalone server on the same catalog (read-only).
    let log = std::fs::File::create(d.path("dns.log")).unwrap();
    let dns = DnsProc(
        Command::new(bin())
            .args([
                "dns",
                "--listen",
                &format!("127.0.0.1:{dns_port}"),
                "--domain",
                "autopilot.",
                "--catalog",
                &url,
            ])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap(),
    );

    let both = vec!["127.0.0.2".to_string(), "127.0.0.3".to_string()];
    assert!(
        wait_for(Duration::from_secs(20), || short(
            dns_port,
            "web.service.autopilot.",
            "A"
        ) == both),
        "web never answered both instances: {:?}\nlog:\n{}",
        short(dns_port, "web.service.autopilot.", "A"),
        std::fs::read_to_string(d.path("dns.log")).unwrap_or_default()
    );
    // Case-insensitive.
    assert_eq!(short(dns_port, "WEB.Service.AUTOPILOT.", "A"), both);
    // SRV under both names: ports and per-instance targets that resolve.
    let srv = vec![
        "1 1 8080 7f000002.addr.autopilot.".to_string(),
        "1 1 8081 7f000003.addr.autopilot.".to_string(),
    ];
    assert_eq!(short(dns_port, "web.service.autopilot.", "SRV"), srv);
    assert_eq!(short(dns_port, "_web._tcp.service.autopilot.", "SRV"), srv);
    assert_eq!(
        short(dns_port, "7f000003.addr.autopilot.", "A"),
        ["127.0.0.3"]
    );
    let full = dig(dns_port, "_web._tcp.service.autopilot.", "SRV", &[]);
    assert!(
        ["127.0.0.2", "127.0.0.3"].iter().all(|ip| full
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()[..]
                == [&format!("{}.addr.autopilot.", hex(ip)), "0", "IN", "A", ip][..])),
        "the SRV answer carries the targets' addresses:\n{full}"
    );
    // The tag filter; a tag that is no DNS label is skipped.
    assert_eq!(
        short(dns_port, "primary.web.service.autopilot.", "A"),
        ["127.0.0.2"]
    );
    // The election's leader.
    assert!(
        wait_for(Duration::from_secs(10), || short(
            dns_port,
            "db-primary.leader.autopilot.",
            "A"
        ) == ["127.0.0.2"]),
        "no leader answer: {:?}",
        short(dns_port, "db-primary.leader.autopilot.", "A")
    );
    assert_eq!(
        short(dns_port, "db-primary.leader.autopilot.", "SRV"),
        ["1 1 5432 7f000002.addr.autopilot."]
    );
    // Unknown names in the domain: NXDOMAIN; outside it: REFUSED.
    assert_eq!(status(dns_port, "nope.service.autopilot."), "NXDOMAIN");
    assert_eq!(
        status(dns_port, "nope.primary.web.service.autopilot."),
        "NXDOMAIN"
    );
    assert_eq!(status(dns_port, "example.com."), "REFUSED");
    // TTL 0 by default.
    let answer = dig(
        dns_port,
        "web.service.autopilot.",
        "A",
        &["+noall", "+answer"],
    );
    let ttls: Vec<&str> = answer
        .lines()
        .filter_map(|l| l.split_whitespace().nth(1))
        .collect();
    assert_eq!(ttls, ["0", "0"], "{answer}");
    // Over TCP too.
    assert_eq!(
        dig(dns_port, "web.service.autopilot.", "A", &["+tcp", "+short"])
            .lines()
            .count(),
        2
    );
    // The agent's `dns` block serves the same answers.
    assert!(
        wait_for(Duration::from_secs(10), || short(
            agent_dns_port,
            "web.service.autopilot.",
            "A"
        ) == both),
        "the agent's dns block never answered; log:\n{}",
        agent_a.log()
    );
    assert_eq!(
        short(agent_dns_port, "db-primary.leader.autopilot.", "A"),
        ["127.0.0.2"]
    );

    // Instance b's check starts failing. One thread watches the catalog,
    // this one watches both DNS servers; each records when it saw the change.
    dir_b.write("sick", "");
    let cat_url = url.clone();
    let catalog_seen = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if passing_ids(&cat_url, "web").is_some_and(|ids| ids == ["web-a"]) {
                return Some(Instant::now());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    });
    let mut gone = [None, None];
    let deadline = Instant::now() + Duration::from_secs(20);
    while gone.iter().any(Option::is_none) && Instant::now() < deadline {
        for (k, port) in [dns_port, agent_dns_port].into_iter().enumerate() {
            if gone[k].is_none() && short(port, "web.service.autopilot.", "A") == ["127.0.0.2"] {
                gone[k] = Some(Instant::now());
            }
        }
    }
    let seen = catalog_seen
        .join()
        .unwrap()
        .expect("the catalog never showed web-b critical");
    for (k, which) in ["autopilot dns", "the agent's dns block"]
        .iter()
        .enumerate()
    {
        let at = gone[k].unwrap_or_else(|| panic!("{which}: web-b never left the answers"));
        let lag = at.saturating_duration_since(seen);
        println!(
            "{which}: web-b left the answers {} ms after the catalog showed it critical",
            lag.as_millis()
        );
        assert!(lag < Duration::from_secs(1), "{which}: {lag:?}");
    }
    // It comes back when it passes again.
    std::fs::remove_file(dir_b.path("sick")).unwrap();
    assert!(wait_for(Duration::from_secs(10), || short(
        dns_port,
        "web.service.autopilot.",
        "A"
    ) == both));

    // The catalog goes away: the last good answers stay (stale beats empty).
    etcd.kill();
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        assert_eq!(short(dns_port, "web.service.autopilot.", "A"), both);
    }
    // It comes back: the server reads it again and sees b fail once more.
    etcd.restart();
    dir_b.write("sick", "");
    assert!(
        wait_for(Duration::from_secs(30), || short(
            dns_port,
            "web.service.autopilot.",
            "A"
        ) == ["127.0.0.2"]),
        "never caught up after the catalog came back; log:\n{}",
        std::fs::read_to_string(d.path("dns.log")).unwrap_or_default()
    );
    drop(dns);
}

#[test]
fn a_dns_block_whose_port_is_taken_fails_at_start_naming_the_field() {
    let d = Dir::new("dns-taken");
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut a = start(
        &d,
        &format!(
            r#"{{ control: {{ socket: "@SOCKET@" }}, dns: {{ listen: "127.0.0.1:{port}" }},
                 jobs: [{{ name: "app", exec: "sleep 30" }}] }}"#
        ),
    );
    assert_eq!(
        a.wait(Duration::from_secs(10)),
        Some(2),
        "log:\n{}",
        a.log()
    );
    let log = a.log();
    assert!(
        log.contains("dns.listen") && log.contains(&format!("127.0.0.1:{port}")),
        "{log}"
    );
}

#[test]
fn bad_dns_flags_exit_2_naming_the_flag() {
    for (args, flag) in [
        (&["dns", "--listen", "localhost"][..], "--listen"),
        (&["dns", "--domain", "a..b"][..], "--domain"),
        (&["dns", "--ttl", "soon"][..], "--ttl"),
    ] {
        let out = Command::new(bin())
            .args(args)
            .env("AUTOPILOT_CATALOG", "local:///nonexistent/never-opened")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(flag), "{args:?}: {err}");
    }
}
