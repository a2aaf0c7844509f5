//! Where webhooks may go: an endpoint's resolved addresses are checked before every connection,
//! so a configured (or DNS-rebound) name cannot make Clickpulse call into the network it runs in
//! — cloud metadata services, databases, admin ports. Public addresses are allowed; private,
//! link-local, shared (CGNAT) and unspecified ones only when `allow_private`; loopback only
//! when `allow_loopback`; and any address inside an `allow` block always.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde::Deserialize;

/// Which outbound addresses webhooks may connect to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AddressPolicy {
    /// Allow private, link-local and shared address space (an endpoint inside the shop's own
    /// network).
    pub allow_private: bool,
    /// Allow loopback (a receiver on the same machine: tests, a local relay).
    pub allow_loopback: bool,
    /// Blocks (addresses or CIDR) always allowed, whatever they are.
    pub allow: Vec<IpNet>,
}

/// Why an address is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("webhooks may not connect to {address} ({kind} address; allow it in [webhooks])")]
pub struct Refused {
    /// The address.
    pub address: IpAddr,
    /// What kind of address it is.
    pub kind: &'static str,
}

impl AddressPolicy {
    /// Whether a connection to `address` is allowed.
    pub fn check(&self, address: IpAddr) -> Result<(), Refused> {
        if self.allow.iter().any(|net| net.contains(&address)) {
            return Ok(());
        }
        let kind = match address {
            IpAddr::V4(v4) => kind_v4(v4),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => kind_v4(v4),
                None => kind_v6(v6),
            },
        };
        let allowed = match kind {
            None => true,
            Some("loopback") => self.allow_loopback,
            Some("multicast" | "broadcast") => false,
            Some(_) => self.allow_private,
        };
        match (allowed, kind) {
            (true, _) | (_, None) => Ok(()),
            (false, Some(kind)) => Err(Refused { address, kind }),
        }
    }
}

fn kind_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, ..] = ip.octets();
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_private() {
        Some("private")
    } else if ip.is_link_local() {
        Some("link-local")
    } else if a == 100 && (64..128).contains(&b) {
        Some("shared (CGNAT)")
    } else if ip.is_unspecified() || a == 0 {
        Some("unspecified")
    } else if ip.is_broadcast() {
        Some("broadcast")
    } else if ip.is_multicast() {
        Some("multicast")
    } else {
        None
    }
}

fn kind_v6(ip: Ipv6Addr) -> Option<&'static str> {
    let first = ip.segments()[0];
    if ip.is_loopback() {
        Some("loopback")
    } else if ip.is_unspecified() {
        Some("unspecified")
    } else if first & 0xfe00 == 0xfc00 {
        Some("private")
    } else if first & 0xffc0 == 0xfe80 {
        Some("link-local")
    } else if ip.is_multicast() {
        Some("multicast")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(policy: &AddressPolicy, address: &str) -> Result<(), &'static str> {
        policy.check(address.parse().unwrap()).map_err(|r| r.kind)
    }

    #[test]
    fn public_addresses_pass_and_the_network_inside_is_refused_unless_allowed() {
        let strict = AddressPolicy::default();
        for public in ["93.184.215.14", "2606:2800:21f:cb07::1", "100.128.0.1"] {
            assert_eq!(check(&strict, public), Ok(()), "{public}");
        }
        for (inside, kind) in [
            ("127.0.0.1", "loopback"),
            ("::1", "loopback"),
            ("::ffff:127.0.0.1", "loopback"),
            ("10.1.2.3", "private"),
            ("172.20.0.1", "private"),
            ("192.168.1.1", "private"),
            ("169.254.169.254", "link-local"),
            ("100.64.0.1", "shared (CGNAT)"),
            ("0.0.0.0", "unspecified"),
            ("::", "unspecified"),
            ("fd00::1", "private"),
            ("fe80::1", "link-local"),
            ("::ffff:10.0.0.1", "private"),
            ("255.255.255.255", "broadcast"),
            ("224.0.0.1", "multicast"),
        ] {
            assert_eq!(check(&strict, inside), Err(kind), "{inside}");
        }
        let loopback = AddressPolicy {
            allow_loopback: true,
            ..AddressPolicy::default()
        };
        assert_eq!(check(&loopback, "127.0.0.1"), Ok(()));
        assert_eq!(check(&loopback, "10.0.0.1"), Err("private"));
        let private = AddressPolicy {
            allow_private: true,
            allow: vec!["127.0.0.53/32".parse().unwrap()],
            ..AddressPolicy::default()
        };
        assert_eq!(check(&private, "10.0.0.1"), Ok(()));
        assert_eq!(check(&private, "169.254.169.254"), Ok(()));
        assert_eq!(check(&private, "127.0.0.1"), Err("loopback"));
        assert_eq!(
            check(&private, "127.0.0.53"),
            Ok(()),
            "an allowed block wins"
        );
        assert_eq!(check(&private, "224.0.0.1"), Err("multicast"));
        assert_eq!(
            strict
                .check("10.0.0.1".parse().unwrap())
                .unwrap_err()
                .to_string(),
            "webhooks may not connect to 10.0.0.1 (private address; allow it in [webhooks])"
        );
    }
}
