//! Resolving ContainerPilot `interfaces` specifications to the IP address a job advertises.

use std::net::IpAddr;

/// Used when a job lists no interfaces: eth0 as in ContainerPilot, then any
/// non-loopback IPv4 address, then loopback, so a laptop without eth0 works.
pub const DEFAULT_INTERFACES: [&str; 3] = ["eth0:inet", "inet", "static:127.0.0.1"];

/// The host's addresses as (interface, ip), sorted by interface name and
/// then by address bytes, the order ContainerPilot documents.
pub fn host_addresses() -> Vec<(String, IpAddr)> {
    let mut out = Vec::new();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs {
            let Some(sa) = a.address else { continue };
            let ip = if let Some(v4) = sa.as_sockaddr_in() {
                IpAddr::V4(v4.ip())
            } else if let Some(v6) = sa.as_sockaddr_in6() {
                IpAddr::V6(v6.ip())
            } else {
                continue;
            };
            out.push((a.interface_name, ip));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| octets(&a.1).cmp(&octets(&b.1))));
    out.dedup();
    out
}

fn octets(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v) => v.octets().to_vec(),
        IpAddr::V6(v) => v.octets().to_vec(),
    }
}

/// The first address matching the first matching specification.
pub fn resolve(specs: &[String], addrs: &[(String, IpAddr)]) -> Result<IpAddr, String> {
    let defaults: Vec<String> = DEFAULT_INTERFACES.iter().map(|s| s.to_string()).collect();
    let specs = if specs.is_empty() {
        &defaults[..]
    } else {
        specs
    };
    for spec in specs {
        if let Some(ip) = match_one(spec, addrs)? {
            return Ok(ip);
        }
    }
    Err(format!(
        "none of the interface specifications {specs:?} matched an address on this host"
    ))
}

fn match_one(spec: &str, addrs: &[(String, IpAddr)]) -> Result<Option<IpAddr>, String> {
    if let Some(ip) = spec.strip_prefix("static:") {
        return ip
            .parse()
            .map(Some)
            .map_err(|_| format!("{spec:?}: {ip:?} is not an IP address"));
    }
    match spec {
        "inet" => {
            return Ok(addrs
                .iter()
                .find(|(_, ip)| ip.is_ipv4() && !ip.is_loopback())
                .map(|(_, ip)| *ip));
        }
        "inet6" => {
            return Ok(addrs
                .iter()
                .find(|(_, ip)| ip.is_ipv6() && !ip.is_loopback())
                .map(|(_, ip)| *ip));
        }
        _ => {}
    }
    if let Some((net, bits)) = spec.split_once('/') {
        let net: IpAddr = net
            .parse()
            .map_err(|_| format!("{spec:?}: {net:?} is not a network address"))?;
        let bits: u32 = bits
            .parse()
            .ok()
            .filter(|b| *b <= if net.is_ipv4() { 32 } else { 128 })
            .ok_or_else(|| format!("{spec:?}: bad prefix length"))?;
        return Ok(addrs
            .iter()
            .find(|(_, ip)| in_net(ip, &net, bits))
            .map(|(_, ip)| *ip));
    }
    if let Some((name, rest)) = spec.split_once('[') {
        let idx: usize = rest
            .strip_suffix(']')
            .and_then(|i| i.parse().ok())
            .ok_or_else(|| format!("{spec:?}: expected NAME[INDEX]"))?;
        return Ok(addrs
            .iter()
            .filter(|(n, _)| n == name)
            .nth(idx)
            .map(|(_, ip)| *ip));
    }
    let (name, v6) = match spec.split_once(':') {
        Some((n, "inet")) => (n, false),
        Some((n, "inet6")) => (n, true),
        Some(_) => return Err(format!("{spec:?}: unknown address family (inet or inet6)")),
        None => (spec, false),
    };
    Ok(addrs
        .iter()
        .find(|(n, ip)| n == name && ip.is_ipv6() == v6)
        .map(|(_, ip)| *ip))
}

fn in_net(ip: &IpAddr, net: &IpAddr, bits: u32) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = if bits == 0 {
                0
            } else {
                u32::MAX << (32 - bits)
            };
            u32::from(*a) & mask == u32::from(*n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = if bits == 0 {
                0
            } else {
                u128::MAX << (128 - bits)
            };
            u128::from(*a) & mask == u128::from(*n) & mask
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addrs() -> Vec<(String, IpAddr)> {
        let mut v: Vec<(String, IpAddr)> = [
            ("lo", "127.0.0.1"),
            ("lo", "::1"),
            ("eth0", "192.168.1.100"),
            ("eth0", "10.2.0.1"),
            ("eth1", "10.0.0.100"),
            ("eth2", "fdc6:238c:c4bc::1"),
        ]
        .iter()
        .map(|(n, ip)| (n.to_string(), ip.parse().unwrap()))
        .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0).then_with(|| octets(&a.1).cmp(&octets(&b.1))));
        v
    }

    fn r(specs: &[&str]) -> Result<String, String> {
        let s: Vec<String> = specs.iter().map(|s| s.to_string()).collect();
        resolve(&s, &addrs()).map(|ip| ip.to_string())
    }

    #[test]
    fn every_documented_form() {
        assert_eq!(r(&["eth0"]), Ok("10.2.0.1".into()));
        assert_eq!(r(&["eth0[1]"]), Ok("192.168.1.100".into()));
        assert_eq!(r(&["eth2:inet6"]), Ok("fdc6:238c:c4bc::1".into()));
        assert_eq!(r(&["192.168.0.0/16"]), Ok("192.168.1.100".into()));
        assert_eq!(r(&["fdc6:238c:c4bc::/48"]), Ok("fdc6:238c:c4bc::1".into()));
        assert_eq!(r(&["inet"]), Ok("10.2.0.1".into()));
        assert_eq!(r(&["inet6"]), Ok("fdc6:238c:c4bc::1".into()));
        assert_eq!(r(&["static:192.168.1.100"]), Ok("192.168.1.100".into()));
        assert_eq!(r(&["eth9", "eth1"]), Ok("10.0.0.100".into()));
        assert!(r(&["eth9"]).is_err());
        assert!(r(&["eth0:inet7"]).is_err());
        assert!(r(&["static:nope"]).is_err());
        assert_eq!(
            resolve(&[], &[]).map(|i| i.to_string()),
            Ok("127.0.0.1".into())
        );
    }
}
