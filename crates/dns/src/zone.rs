//! The answer cache: a zone built in one step from what the catalog holds (passing instances, their tags, election leaders), looked up per query without touching the catalog.
//!
//! Every name is lower-cased when built and looked up through hickory's
//! `LowerName`, so lookups are case-insensitive. Names or labels from the
//! catalog that are not DNS labels are skipped. Every list is capped: the
//! records of one name ([`MAX_RECORDS`]), the names of the zone
//! ([`MAX_NAMES`]), the tags read from one instance ([`MAX_TAGS`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use autopilot_catalog::{Instance, Leader, Status};
use hickory_server::proto::rr::rdata::{A, AAAA, SOA, SRV};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordType};

/// At most this many records of one type in one answer (and as many
/// additional records for an SRV answer).
pub const MAX_RECORDS: usize = 64;
/// At most this many names in the zone; names past it are left out (logged).
pub const MAX_NAMES: usize = 100_000;
/// At most this many tags of one instance become `TAG.NAME.service` names.
pub const MAX_TAGS: usize = 64;

/// What the zone is built from: the user services with their instances (any
/// status) and the elections with their leaders.
#[derive(Debug, Default, Clone)]
pub struct View {
    pub services: Vec<(String, Vec<Instance>)>,
    pub leaders: Vec<(String, Leader)>,
}

/// The records of one name, by type, built once per catalog change.
#[derive(Debug, Default)]
pub struct Node {
    a: Vec<Record>,
    aaaa: Vec<Record>,
    srv: Vec<Record>,
    /// A and AAAA records of the SRV targets.
    extra: Vec<Record>,
    /// Every record above but `extra`, for ANY.
    any: Vec<Record>,
}

/// What a query gets.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome<'z> {
    /// The name is outside the domain: no recursion.
    Refused,
    /// Nothing was read from the catalog yet.
    NotLoaded,
    /// No such name in the domain.
    NxDomain,
    /// The name exists; `answers` may be empty (no data of that type).
    Found {
        answers: &'z [Record],
        additionals: &'z [Record],
    },
}

/// An immutable zone: replaced whole when the catalog changes.
#[derive(Debug)]
pub struct Zone {
    domain: LowerName,
    names: HashMap<LowerName, Node>,
    soa: Record,
    loaded: bool,
    /// Names left out because the zone was full.
    pub dropped: usize,
}

impl Zone {
    /// A zone that answers nothing yet (SERVFAIL inside the domain).
    pub fn empty(domain: &Name, ttl: Duration) -> Zone {
        Zone {
            domain: LowerName::new(domain),
            names: HashMap::new(),
            soa: soa(domain, ttl_secs(ttl), 0),
            loaded: false,
            dropped: 0,
        }
    }

    /// Builds the zone of `domain` from `view`; `serial` numbers the build.
    pub fn build(domain: &Name, ttl: Duration, serial: u32, view: &View) -> Zone {
        let mut b = Builder::new(domain);
        for fixed in ["service", "addr", "leader"] {
            if let Some(n) = b.name(&[fixed]) {
                b.node(n);
            }
        }
        let apex = domain.to_lowercase();
        b.node(apex);
        for (service, instances) in &view.services {
            let Some(svc) = label(service) else {
                continue;
            };
            let plain = b.name(&[&svc, "service"]);
            let srv_name = b.name(&[&format!("_{svc}"), "_tcp", "service"]);
            for n in [&plain, &srv_name].into_iter().flatten() {
                b.node(n.clone());
            }
            for i in instances {
                let tag_names: Vec<Name> = i
                    .tags
                    .iter()
                    .take(MAX_TAGS)
                    .filter_map(|t| label(t))
                    .filter_map(|t| b.name(&[&t, &svc, "service"]))
                    .collect();
                for n in &tag_names {
                    b.node(n.clone());
                }
                let Some(ip) = passing_ip(i) else {
                    continue;
                };
                for n in [&plain, &srv_name].into_iter().flatten().chain(&tag_names) {
                    b.add(n, ip, i.port);
                }
            }
        }
        for (election, leader) in &view.leaders {
            let (Some(e), Ok(ip)) = (label(election), leader.address.parse::<IpAddr>()) else {
                continue;
            };
            if let Some(n) = b.name(&[&e, "leader"]) {
                b.add(&n, ip, leader.port);
            }
        }
        let ttl = ttl_secs(ttl);
        let names = b.finish(ttl);
        Zone {
            domain: LowerName::new(domain),
            names: names.0,
            soa: soa(domain, ttl, serial),
            loaded: true,
            dropped: names.1,
        }
    }

    /// How many names the zone has.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The SOA record, for the authority section of negative answers.
    pub fn soa(&self) -> &Record {
        &self.soa
    }

    /// The answer to one question.
    pub fn lookup(&self, name: &LowerName, qtype: RecordType) -> Outcome<'_> {
        if !self.domain.zone_of(name) {
            return Outcome::Refused;
        }
        if !self.loaded {
            return Outcome::NotLoaded;
        }
        let Some(node) = self.names.get(name) else {
            return Outcome::NxDomain;
        };
        let none: &[Record] = &[];
        let (answers, additionals) = match qtype {
            RecordType::A => (&node.a[..], none),
            RecordType::AAAA => (&node.aaaa[..], none),
            RecordType::SRV => (&node.srv[..], &node.extra[..]),
            RecordType::ANY => (&node.any[..], &node.extra[..]),
            RecordType::SOA if *name == self.domain => (std::slice::from_ref(&self.soa), none),
            _ => (none, none),
        };
        Outcome::Found {
            answers,
            additionals,
        }
    }
}

/// A catalog string as one lower-case DNS label, or `None`: 1-63 letters,
/// digits, `-` or `_`, not starting or ending with `-`.
pub fn label(s: &str) -> Option<String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && !s.starts_with('-')
        && !s.ends_with('-')
        && s.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
    ok.then(|| s.to_ascii_lowercase())
}

/// The name an address answers under: Consul's hex form, `c0a80001.addr.DOMAIN`.
pub fn addr_label(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => format!("{:08x}", u32::from(v4)),
        IpAddr::V6(v6) => format!("{:032x}", u128::from(v6)),
    }
}

fn passing_ip(i: &Instance) -> Option<IpAddr> {
    if i.status != Status::Passing {
        return None;
    }
    i.address.parse().ok()
}

fn ttl_secs(ttl: Duration) -> u32 {
    u32::try_from(ttl.as_secs()).unwrap_or(u32::MAX)
}

fn soa(domain: &Name, ttl: u32, serial: u32) -> Record {
    let sub = |l: &str| {
        Name::from_ascii(l)
            .and_then(|n| n.append_domain(domain))
            .unwrap_or_else(|_| domain.clone())
    };
    Record::from_rdata(
        domain.clone(),
        ttl,
        RData::SOA(SOA::new(
            sub("ns"),
            sub("hostmaster"),
            serial,
            3600,
            600,
            86_400,
            ttl,
        )),
    )
}

/// The addresses and SRV targets of one name while the zone is built.
#[derive(Default)]
struct Pending {
    ips: Vec<IpAddr>,
    srv: Vec<(IpAddr, u16)>,
}

struct Builder {
    domain: Name,
    nodes: HashMap<Name, Pending>,
    dropped: usize,
}

impl Builder {
    fn new(domain: &Name) -> Builder {
        Builder {
            domain: domain.to_lowercase(),
            nodes: HashMap::new(),
            dropped: 0,
        }
    }

    /// `labels` + the domain, or `None` if it is not a valid name (too long).
    fn name(&self, labels: &[&str]) -> Option<Name> {
        let rel = Name::from_labels(labels.iter().map(|l| l.as_bytes())).ok()?;
        rel.append_domain(&self.domain).ok()
    }

    /// Makes sure the name exists (a service with no passing instance answers
    /// with no data, not NXDOMAIN), if the zone has room.
    fn node(&mut self, name: Name) -> bool {
        if self.nodes.contains_key(&name) {
            return true;
        }
        if self.nodes.len() >= MAX_NAMES {
            self.dropped = self.dropped.saturating_add(1);
            return false;
        }
        self.nodes.insert(name, Pending::default());
        true
    }

    fn add(&mut self, name: &Name, ip: IpAddr, port: u16) {
        if !self.node(name.clone()) {
            return;
        }
        let mut target = false;
        if let Some(p) = self.nodes.get_mut(name) {
            if p.ips.len() < MAX_RECORDS && !p.ips.contains(&ip) {
                p.ips.push(ip);
            }
            if p.srv.len() < MAX_RECORDS && !p.srv.contains(&(ip, port)) {
                p.srv.push((ip, port));
                target = true;
            }
        }
        if target
            && let Some(t) = self.name(&[&addr_label(ip), "addr"])
            && self.node(t.clone())
            && let Some(p) = self.nodes.get_mut(&t)
            && p.ips.is_empty()
        {
            p.ips.push(ip);
        }
    }

    fn finish(self, ttl: u32) -> (HashMap<LowerName, Node>, usize) {
        let domain = self.domain;
        let target = |ip: IpAddr| {
            Name::from_labels([addr_label(ip).as_bytes(), b"addr".as_slice()])
                .and_then(|n| n.append_domain(&domain))
                .ok()
        };
        let mut out = HashMap::with_capacity(self.nodes.len());
        for (name, p) in self.nodes {
            let mut node = Node::default();
            for ip in &p.ips {
                match ip {
                    IpAddr::V4(v4) => {
                        node.a
                            .push(Record::from_rdata(name.clone(), ttl, RData::A(A(*v4))))
                    }
                    IpAddr::V6(v6) => node.aaaa.push(Record::from_rdata(
                        name.clone(),
                        ttl,
                        RData::AAAA(AAAA(*v6)),
                    )),
                }
            }
            for (ip, port) in &p.srv {
                let Some(t) = target(*ip) else {
                    continue;
                };
                node.srv.push(Record::from_rdata(
                    name.clone(),
                    ttl,
                    RData::SRV(SRV::new(1, 1, *port, t.clone())),
                ));
                let rdata = match ip {
                    IpAddr::V4(v4) => RData::A(A(*v4)),
                    IpAddr::V6(v6) => RData::AAAA(AAAA(*v6)),
                };
                if !node.extra.iter().any(|r| r.name == t) {
                    node.extra.push(Record::from_rdata(t, ttl, rdata));
                }
            }
            node.any = node
                .a
                .iter()
                .chain(&node.aaaa)
                .chain(&node.srv)
                .cloned()
                .collect();
            out.insert(LowerName::new(&name), node);
        }
        (out, self.dropped)
    }
}
