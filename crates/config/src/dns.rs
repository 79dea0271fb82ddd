//! The `dns` block: where the agent's DNS server over the catalog listens, its domain and TTL (served by `autopilot-dns`).

use std::net::SocketAddr;
use std::time::Duration;

use crate::ConfigError;
use crate::decode::Field;

/// `dns: {listen, domain, ttl}`, an autopilot extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    pub listen: SocketAddr,
    /// Lower-case, ending with a dot.
    pub domain: String,
    /// At most `u32::MAX` seconds; sub-second parts are dropped.
    pub ttl: Duration,
}

pub const DEFAULT_DNS_LISTEN: &str = "127.0.0.1:8600";
pub const DEFAULT_DNS_DOMAIN: &str = "autopilot.";

/// Checks a DNS domain: labels of 1-63 letters, digits, `-` or `_` (not
/// starting or ending with `-`), 253 bytes at most; returns it lower-cased
/// with a trailing dot.
pub fn dns_domain(d: &str) -> Result<String, String> {
    let t = d.strip_suffix('.').unwrap_or(d);
    if t.is_empty() {
        return Err("must name a domain, e.g. \"autopilot.\"".into());
    }
    if t.len() > 253 {
        return Err("is longer than 253 bytes".into());
    }
    for l in t.split('.') {
        let ok = !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_');
        if !ok {
            return Err(format!(
                "label {l:?} is not 1-63 letters, digits, '-' or '_'"
            ));
        }
    }
    Ok(format!("{}.", t.to_ascii_lowercase()))
}

pub(crate) fn dns(f: &Field) -> Result<DnsConfig, ConfigError> {
    let mut o = f.obj()?;
    let listen = match o.get("listen") {
        Some(l) => {
            let s = l.str()?;
            s.parse::<SocketAddr>().map_err(|e| {
                l.err(format!(
                    "{s:?} is not an address and port such as \"127.0.0.1:8600\": {e}"
                ))
            })?
        }
        None => DEFAULT_DNS_LISTEN
            .parse()
            .map_err(|e| f.err(format!("the default listen address: {e}")))?,
    };
    let domain = match o.get("domain") {
        Some(d) => dns_domain(&d.str()?).map_err(|e| d.err(e))?,
        None => DEFAULT_DNS_DOMAIN.to_string(),
    };
    let ttl = match o.get("ttl") {
        Some(t) => {
            let d = t.duration()?;
            if d.as_secs() > u64::from(u32::MAX) {
                return Err(t.err("must be at most 4294967295s"));
            }
            d
        }
        None => Duration::ZERO,
    };
    o.finish(&["listen", "domain", "ttl"])?;
    Ok(DnsConfig {
        listen,
        domain,
        ttl,
    })
}
