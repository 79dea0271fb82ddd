//! Unit tests: the zone built from plain and hostile catalog data, and the server answering real UDP and TCP queries.

use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;
use std::time::Duration;

use autopilot_catalog::{Instance, Leader, Status};
use hickory_server::proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_server::proto::rr::{LowerName, Name, RData, RecordType};
use hickory_server::proto::serialize::binary::{BinDecodable, BinEncodable};

use crate::zone::{MAX_RECORDS, Outcome, View, Zone};

fn inst(id: &str, svc: &str, addr: &str, port: u16, tags: &[&str], status: Status) -> Instance {
    Instance {
        id: id.into(),
        name: svc.into(),
        address: addr.into(),
        port,
        tags: tags.iter().map(|t| t.to_string()).collect(),
        status,
        last_heartbeat: String::new(),
    }
}

fn domain() -> Name {
    crate::parse_domain("autopilot.").unwrap()
}

fn q<'z>(z: &'z Zone, name: &str, t: RecordType) -> Outcome<'z> {
    z.lookup(&LowerName::new(&Name::from_str(name).unwrap()), t)
}

fn ips(o: &Outcome<'_>) -> Vec<String> {
    let Outcome::Found { answers, .. } = o else {
        panic!("not found: {o:?}");
    };
    let mut v: Vec<String> = answers
        .iter()
        .map(|r| match &r.data {
            RData::A(a) => a.0.to_string(),
            RData::AAAA(a) => a.0.to_string(),
            RData::SRV(s) => format!("{} {}", s.target, s.port),
            other => format!("{other:?}"),
        })
        .collect();
    v.sort();
    v
}

fn sample() -> View {
    View {
        services: vec![(
            "Web".into(),
            vec![
                inst(
                    "web-a",
                    "Web",
                    "10.0.0.1",
                    80,
                    &["primary", "x=y"],
                    Status::Passing,
                ),
                inst("web-b", "Web", "10.0.0.2", 81, &[], Status::Passing),
                inst(
                    "web-c",
                    "Web",
                    "10.0.0.3",
                    82,
                    &["primary"],
                    Status::Critical,
                ),
                inst("web-d", "Web", "fd00::1", 83, &[], Status::Passing),
                inst("web-e", "Web", "not-an-ip", 84, &[], Status::Passing),
            ],
        )],
        leaders: vec![(
            "db".into(),
            Leader {
                id: "db-1".into(),
                address: "10.0.1.1".into(),
                port: 5432,
                term: 3,
            },
        )],
    }
}

#[test]
fn answers_passing_instances_tags_and_leaders() {
    let z = Zone::build(&domain(), Duration::ZERO, 1, &sample());
    assert_eq!(
        ips(&q(&z, "web.service.autopilot.", RecordType::A)),
        ["10.0.0.1", "10.0.0.2"]
    );
    // Case-insensitive.
    assert_eq!(
        ips(&q(&z, "WEB.Service.AutoPilot.", RecordType::A)),
        ["10.0.0.1", "10.0.0.2"]
    );
    assert_eq!(
        ips(&q(&z, "web.service.autopilot.", RecordType::AAAA)),
        ["fd00::1"]
    );
    assert_eq!(
        ips(&q(&z, "_web._tcp.service.autopilot.", RecordType::SRV)),
        [
            "0a000001.addr.autopilot. 80",
            "0a000002.addr.autopilot. 81",
            "fd000000000000000000000000000001.addr.autopilot. 83"
        ]
    );
    let Outcome::Found { additionals, .. } = q(&z, "web.service.autopilot.", RecordType::SRV)
    else {
        panic!("no srv");
    };
    assert_eq!(additionals.len(), 3);
    assert_eq!(
        ips(&q(&z, "0a000001.addr.autopilot.", RecordType::A)),
        ["10.0.0.1"]
    );
    assert_eq!(
        ips(&q(&z, "primary.web.service.autopilot.", RecordType::A)),
        ["10.0.0.1"]
    );
    assert_eq!(
        ips(&q(&z, "db.leader.autopilot.", RecordType::A)),
        ["10.0.1.1"]
    );
    assert_eq!(
        ips(&q(&z, "db.leader.autopilot.", RecordType::SRV)),
        ["0a000101.addr.autopilot. 5432"]
    );
    // Known name, no data of that type; unknown names; outside the domain.
    assert_eq!(
        ips(&q(&z, "web.service.autopilot.", RecordType::MX)),
        Vec::<String>::new()
    );
    assert_eq!(
        q(&z, "nope.service.autopilot.", RecordType::A),
        Outcome::NxDomain
    );
    assert_eq!(
        q(&z, "x-y.web.service.autopilot.", RecordType::A),
        Outcome::NxDomain
    );
    assert_eq!(q(&z, "example.com.", RecordType::A), Outcome::Refused);
    assert_eq!(
        ips(&q(&z, "autopilot.", RecordType::SOA)).len(),
        1,
        "the apex answers its SOA"
    );
}

#[test]
fn a_service_with_no_passing_instance_has_no_data_not_nxdomain() {
    let view = View {
        services: vec![(
            "api".into(),
            vec![inst("api-1", "api", "10.0.0.9", 80, &[], Status::Critical)],
        )],
        leaders: vec![],
    };
    let z = Zone::build(&domain(), Duration::ZERO, 1, &view);
    assert_eq!(
        ips(&q(&z, "api.service.autopilot.", RecordType::A)),
        Vec::<String>::new()
    );
}

#[test]
fn an_empty_zone_is_not_loaded_inside_the_domain() {
    let z = Zone::empty(&domain(), Duration::ZERO);
    assert_eq!(
        q(&z, "web.service.autopilot.", RecordType::A),
        Outcome::NotLoaded
    );
    assert_eq!(q(&z, "example.org.", RecordType::A), Outcome::Refused);
}

#[test]
fn hostile_catalog_data_is_skipped_and_bounded() {
    let long = "a".repeat(1000);
    let many_tags: Vec<String> = (0..10_000).map(|i| format!("t{i}")).collect();
    let many_tag_refs: Vec<&str> = many_tags.iter().map(String::as_str).collect();
    let mut big = Vec::new();
    for i in 0..1000u32 {
        let [a, b, c, d] = (0x0a00_0000u32 + i).to_be_bytes();
        big.push(inst(
            &format!("big-{i}"),
            "big",
            &format!("{a}.{b}.{c}.{d}"),
            80,
            &many_tag_refs,
            Status::Passing,
        ));
    }
    let view = View {
        services: vec![
            (
                "a.b".into(),
                vec![inst("x", "a.b", "10.0.0.1", 1, &[], Status::Passing)],
            ),
            (
                "has space".into(),
                vec![inst("y", "has space", "10.0.0.1", 1, &[], Status::Passing)],
            ),
            (
                long.clone(),
                vec![inst(
                    "z",
                    &long,
                    "10.0.0.1",
                    1,
                    &[&long, "ok"],
                    Status::Passing,
                )],
            ),
            ("".into(), vec![]),
            ("-bad".into(), vec![]),
            ("big".into(), big),
        ],
        leaders: vec![(
            "bad.election".into(),
            Leader {
                id: "l".into(),
                address: "10.9.9.9".into(),
                port: 1,
                term: 1,
            },
        )],
    };
    let z = Zone::build(&domain(), Duration::ZERO, 1, &view);
    assert_eq!(
        q(&z, "b.service.autopilot.", RecordType::A),
        Outcome::NxDomain
    );
    assert_eq!(
        q(&z, "a.b.service.autopilot.", RecordType::A),
        Outcome::NxDomain
    );
    assert_eq!(
        q(&z, "bad.election.leader.autopilot.", RecordType::A),
        Outcome::NxDomain
    );
    // Every answer is capped, tags per instance are capped, and so the zone.
    assert_eq!(
        ips(&q(&z, "big.service.autopilot.", RecordType::A)).len(),
        MAX_RECORDS
    );
    assert_eq!(
        ips(&q(&z, "big.service.autopilot.", RecordType::SRV)).len(),
        MAX_RECORDS
    );
    assert_eq!(
        ips(&q(&z, "t5.big.service.autopilot.", RecordType::A)).len(),
        MAX_RECORDS
    );
    assert_eq!(
        q(&z, "t9999.big.service.autopilot.", RecordType::A),
        Outcome::NxDomain
    );
    assert!(z.len() < 1000, "{} names", z.len());
}

#[test]
fn the_zone_stops_growing_at_its_cap() {
    let svcs: Vec<(String, Vec<Instance>)> = (0..crate::zone::MAX_NAMES + 10)
        .map(|i| (format!("s{i}"), Vec::new()))
        .collect();
    let z = Zone::build(
        &domain(),
        Duration::ZERO,
        1,
        &View {
            services: svcs,
            leaders: vec![],
        },
    );
    assert_eq!(z.len(), crate::zone::MAX_NAMES);
    assert!(z.dropped > 0);
}

#[test]
fn domains_are_checked() {
    assert_eq!(
        crate::parse_domain("Consul").unwrap().to_string(),
        "consul."
    );
    assert!(crate::parse_domain("").is_err());
    assert!(crate::parse_domain(".").is_err());
    assert!(crate::parse_domain("a..b").is_err());
    assert!(crate::parse_domain("bad domain.").is_err());
}

fn query(name: &str, t: RecordType, id: u16) -> Vec<u8> {
    let mut m = Message::new(id, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(Name::from_str(name).unwrap(), t));
    m.to_bytes().unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn serves_udp_and_tcp_with_truncation_from_a_real_catalog() {
    use autopilot_catalog::{Catalog, Registration};
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir().unwrap();
    let cat: Arc<dyn Catalog> = Arc::new(
        autopilot_catalog_local::LocalCatalog::open(&dir.path().join("cat"), "dns-test").unwrap(),
    );
    for i in 0..100u8 {
        cat.register(&Registration {
            id: format!("many-{i}"),
            name: "many".into(),
            address: IpAddr::V4(Ipv4Addr::new(10, 1, 0, i)).to_string(),
            port: 80,
            tags: vec![],
            status: Status::Passing,
            ttl: Duration::from_secs(60),
            deregister_critical_after: None,
            seat: None,
        })
        .await
        .unwrap();
    }
    let cfg = crate::DnsConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        domain: "autopilot.".into(),
        ttl: Duration::ZERO,
    };
    let server = crate::DnsServer::bind(&cfg, cat.clone()).await.unwrap();
    let addr = server.local_addr();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(server.run(async move {
        let _ = stop_rx.await;
    }));
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    // Poll until the first zone is read (SERVFAIL before).
    let reply = loop {
        sock.send_to(&query("many.service.autopilot.", RecordType::A, 7), addr)
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(2), sock.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let m = Message::from_bytes(&buf[..n]).unwrap();
        if m.metadata.response_code != ResponseCode::ServFail {
            break m;
        }
        assert!(tokio::time::Instant::now() < deadline, "never loaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(reply.metadata.id, 7);
    assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
    assert!(reply.metadata.authoritative);
    // 64 A records do not fit in 512 bytes: truncated, TC set.
    assert!(reply.metadata.truncation, "expected TC over UDP");
    assert!(reply.answers.len() < MAX_RECORDS);

    // Over TCP the whole capped answer comes back.
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let q = query("many.service.autopilot.", RecordType::A, 8);
    let len = u16::try_from(q.len()).unwrap().to_be_bytes();
    tcp.write_all(&len).await.unwrap();
    tcp.write_all(&q).await.unwrap();
    let mut lb = [0u8; 2];
    tcp.read_exact(&mut lb).await.unwrap();
    let mut body = vec![0u8; usize::from(u16::from_be_bytes(lb))];
    tcp.read_exact(&mut body).await.unwrap();
    let m = Message::from_bytes(&body).unwrap();
    assert!(!m.metadata.truncation);
    assert_eq!(m.answers.len(), MAX_RECORDS);

    // Outside the domain: REFUSED; unknown inside: NXDOMAIN with the SOA.
    for (name, code) in [
        ("example.com.", ResponseCode::Refused),
        ("nope.service.autopilot.", ResponseCode::NXDomain),
    ] {
        sock.send_to(&query(name, RecordType::A, 9), addr)
            .await
            .unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(2), sock.recv(&mut buf))
            .await
            .unwrap()
            .unwrap();
        let m = Message::from_bytes(&buf[..n]).unwrap();
        assert_eq!(m.metadata.response_code, code, "{name}");
    }
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(5), serving)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test(flavor = "current_thread")]
async fn tcp_connections_are_capped_and_freed() {
    use autopilot_catalog::Catalog;
    use std::sync::Arc;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let dir = tempfile::tempdir().unwrap();
    let cat: Arc<dyn Catalog> = Arc::new(
        autopilot_catalog_local::LocalCatalog::open(&dir.path().join("cat"), "dns-tcp").unwrap(),
    );
    let cfg = crate::DnsConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        domain: "autopilot.".into(),
        ttl: Duration::ZERO,
    };
    let server = crate::DnsServer::bind(&cfg, cat).await.unwrap();
    let addr = server.local_addr();
    let serving = tokio::spawn(server.run(std::future::pending()));
    // One query over a connection: Some(rcode) or None when it was closed.
    async fn ask(c: &mut tokio::net::TcpStream) -> Option<ResponseCode> {
        let q = query("autopilot.", RecordType::SOA, 1);
        c.write_all(&u16::try_from(q.len()).unwrap().to_be_bytes())
            .await
            .ok()?;
        c.write_all(&q).await.ok()?;
        let mut lb = [0u8; 2];
        tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut lb))
            .await
            .ok()?
            .ok()?;
        let mut body = vec![0u8; usize::from(u16::from_be_bytes(lb))];
        c.read_exact(&mut body).await.ok()?;
        Some(Message::from_bytes(&body).ok()?.metadata.response_code)
    }
    let mut open = Vec::new();
    for _ in 0..crate::tcp::MAX_CONNECTIONS {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert!(
            ask(&mut c).await.is_some(),
            "a connection under the cap answers"
        );
        open.push(c);
    }
    let mut over = tokio::net::TcpStream::connect(addr).await.unwrap();
    assert_eq!(
        ask(&mut over).await,
        None,
        "the connection over the cap is closed"
    );
    drop(open.pop());
    // The freed slot is taken again (its task ends when it sees the close).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
        if ask(&mut c).await.is_some() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot was never freed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    serving.abort();
}
