//! Which addresses the server may connect to on a user's behalf (relay and ingest URLs,
//! mix-job images): issue 10, defect 19. Link-local addresses — where clouds serve instance
//! metadata and credentials (169.254.169.254, fd00:ec2::254) — are refused by default; an
//! operator adds private or loopback ranges to `outbound_deny`, and `outbound_allow` makes
//! exceptions. Loopback stays allowed by default: tests and local CDNs use it.

use std::net::IpAddr;

/// An address range, `addr/prefix` (a bare address is a /32 or /128).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpCidr {
    addr: IpAddr,
    prefix: u8,
}

/// An entry of `outbound_deny`/`outbound_allow` that is not an address or range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("'{0}' is not an IP address or CIDR range")]
    NotAnAddress(String),
    #[error("'{value}': the prefix must be 0 to {max}")]
    Prefix { value: String, max: u8 },
}

impl IpCidr {
    pub fn parse(s: &str) -> Result<IpCidr, CidrError> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|_| CidrError::NotAnAddress(s.to_owned()))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p.trim().parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| CidrError::Prefix { value: s.to_owned(), max })?,
        };
        Ok(IpCidr { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        // IPv4-mapped IPv6 addresses (::ffff:a.b.c.d) are judged as the IPv4 address they carry.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => mask_eq(&net.octets(), &ip.octets(), self.prefix),
            (IpAddr::V6(net), IpAddr::V6(ip)) => mask_eq(&net.octets(), &ip.octets(), self.prefix),
            _ => false,
        }
    }
}

fn mask_eq(a: &[u8], b: &[u8], prefix: u8) -> bool {
    let (whole, rest) = ((prefix / 8) as usize, prefix % 8);
    if a[..whole] != b[..whole] {
        return false;
    }
    rest == 0 || (a[whole] ^ b[whole]) >> (8 - rest) == 0
}

/// Ranges refused unless the operator says otherwise: IPv4 and IPv6 link-local (which hold the
/// cloud metadata services) and AWS's IPv6 metadata address.
pub const DEFAULT_DENY: [&str; 3] = ["169.254.0.0/16", "fe80::/10", "fd00:ec2::254/128"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundPolicy {
    pub deny: Vec<IpCidr>,
    pub allow: Vec<IpCidr>,
}

impl Default for OutboundPolicy {
    fn default() -> Self {
        OutboundPolicy { deny: DEFAULT_DENY.iter().map(|s| IpCidr::parse(s).expect("valid")).collect(), allow: Vec::new() }
    }
}

impl OutboundPolicy {
    /// The default deny list plus `deny`, with `allow` as exceptions.
    pub fn from_lists(deny: &[String], allow: &[String]) -> Result<OutboundPolicy, CidrError> {
        let mut policy = OutboundPolicy::default();
        for d in deny {
            policy.deny.push(IpCidr::parse(d)?);
        }
        policy.allow = allow.iter().map(|a| IpCidr::parse(a)).collect::<Result<_, _>>()?;
        Ok(policy)
    }

    pub fn permits(&self, ip: IpAddr) -> bool {
        self.allow.iter().any(|c| c.contains(ip)) || !self.deny.iter().any(|c| c.contains(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_local_and_metadata_are_refused_by_default_loopback_is_not() {
        let p = OutboundPolicy::default();
        for bad in ["169.254.169.254", "169.254.0.1", "fe80::1", "fd00:ec2::254", "::ffff:169.254.169.254"] {
            assert!(!p.permits(bad.parse().unwrap()), "{bad}");
        }
        for good in ["127.0.0.1", "::1", "10.1.2.3", "192.168.1.1", "8.8.8.8", "fd00:ec2::253"] {
            assert!(p.permits(good.parse().unwrap()), "{good}");
        }
    }

    #[test]
    fn operators_deny_and_allow_ranges() {
        let p = OutboundPolicy::from_lists(&["10.0.0.0/8".into(), "127.0.0.0/8".into()], &["10.9.0.0/16".into(), "169.254.10.10".into()]).unwrap();
        assert!(!p.permits("10.1.2.3".parse().unwrap()));
        assert!(p.permits("10.9.1.1".parse().unwrap()));
        assert!(!p.permits("127.0.0.1".parse().unwrap()));
        assert!(p.permits("169.254.10.10".parse().unwrap()));
        assert!(!p.permits("169.254.10.11".parse().unwrap()));
        for bad in ["10.0.0.0/33", "x", "::/129", "1.2.3.4/"] {
            assert!(OutboundPolicy::from_lists(&[bad.into()], &[]).is_err(), "{bad}");
        }
        assert!(IpCidr::parse("0.0.0.0/0").unwrap().contains("1.2.3.4".parse().unwrap()));
    }
}
