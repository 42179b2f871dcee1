//! The SSRF guard: which destinations a tenant's endpoint may make hookd connect to.
//!
//! A tenant chooses its endpoint URLs, so without a guard it could make hookd call the cloud metadata
//! service, the admin port of a neighbour, or hookd itself. The check runs on *resolved addresses, at
//! connect time*: [`GuardedResolver`] is the DNS resolver of the connector, and the connector connects to
//! exactly the addresses it returns, so a name that resolves to a public address when an endpoint is saved
//! and to 10.0.0.1 later (DNS rebinding) is still refused. IP literals in URLs skip the resolver and are
//! checked by the client before the request.
//!
//! The classification ([`is_forbidden_destination`]) is deny-by-default for IPv6: only global unicast
//! (2000::/3) is allowed, minus its special-purpose blocks, plus the forms that embed an IPv4 address
//! (IPv4-mapped, NAT64, 6to4), which are judged by that address.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper_util::client::legacy::connect::dns::Name;

/// IPv4 blocks that are not the public internet (IANA special-purpose registry, RFC 6890 and successors).
const FORBIDDEN_V4: [(Ipv4Addr, u8); 15] = [
    (Ipv4Addr::new(0, 0, 0, 0), 8), // "this network"; 0.0.0.0 reaches the local host on Linux
    (Ipv4Addr::new(10, 0, 0, 0), 8), // RFC 1918
    (Ipv4Addr::new(100, 64, 0, 0), 10), // carrier-grade NAT (RFC 6598)
    (Ipv4Addr::new(127, 0, 0, 0), 8), // loopback
    (Ipv4Addr::new(169, 254, 0, 0), 16), // link-local, cloud metadata (169.254.169.254)
    (Ipv4Addr::new(172, 16, 0, 0), 12), // RFC 1918
    (Ipv4Addr::new(192, 0, 0, 0), 24), // IETF protocol assignments (DS-Lite, NAT64 discovery)
    (Ipv4Addr::new(192, 0, 2, 0), 24), // documentation TEST-NET-1
    (Ipv4Addr::new(192, 88, 99, 0), 24), // deprecated 6to4 relay anycast
    (Ipv4Addr::new(192, 168, 0, 0), 16), // RFC 1918
    (Ipv4Addr::new(198, 18, 0, 0), 15), // benchmarking
    (Ipv4Addr::new(198, 51, 100, 0), 24), // documentation TEST-NET-2
    (Ipv4Addr::new(203, 0, 113, 0), 24), // documentation TEST-NET-3
    (Ipv4Addr::new(224, 0, 0, 0), 4), // multicast
    (Ipv4Addr::new(240, 0, 0, 0), 4), // reserved, and 255.255.255.255 broadcast
];

/// Global unicast, the only IPv6 space allowed (apart from the IPv4-embedding forms).
const GLOBAL_UNICAST: (Ipv6Addr, u8) = (Ipv6Addr::new(0x2000, 0, 0, 0, 0, 0, 0, 0), 3);

/// Special-purpose blocks inside 2000::/3.
const FORBIDDEN_V6_GLOBAL: [(Ipv6Addr, u8); 3] = [
    // IETF protocol assignments: Teredo (which tunnels to an IPv4 host), benchmarking, ORCHID; no web servers.
    (Ipv6Addr::new(0x2001, 0, 0, 0, 0, 0, 0, 0), 23),
    (Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32), // documentation
    (Ipv6Addr::new(0x3fff, 0, 0, 0, 0, 0, 0, 0), 20),     // documentation (RFC 9637)
];

/// NAT64 well-known prefix (RFC 6052): the last 32 bits are an IPv4 address reached through a translator.
const NAT64: (Ipv6Addr, u8) = (Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96);
/// 6to4 (RFC 3056): bits 16..48 are the IPv4 address of the site.
const SIX_TO_FOUR: (Ipv6Addr, u8) = (Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16);

/// Whether hookd must refuse to connect to `ip` (unless private destinations are allowed by config):
/// loopback, unspecified, private (RFC 1918, ULA), CGNAT, link-local (cloud metadata), multicast,
/// broadcast, documentation, benchmarking and other special-purpose ranges, and IPv6 forms that embed any of
/// those IPv4 addresses.
pub fn is_forbidden_destination(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => forbidden_v4(v4),
        IpAddr::V6(v6) => forbidden_v6(v6),
    }
}

fn forbidden_v4(ip: Ipv4Addr) -> bool {
    FORBIDDEN_V4.iter().any(|&(net, len)| in_v4(ip, net, len))
}

fn forbidden_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return forbidden_v4(v4);
    }
    let bits = u128::from(ip);
    if in_v6(ip, NAT64.0, NAT64.1) {
        return forbidden_v4(Ipv4Addr::from(bits as u32));
    }
    if in_v6(ip, SIX_TO_FOUR.0, SIX_TO_FOUR.1) {
        return forbidden_v4(Ipv4Addr::from((bits >> 80) as u32));
    }
    // Everything outside global unicast: ::, ::1, IPv4-compatible ::/96, ULA fc00::/7, link-local
    // fe80::/10, site-local fec0::/10, multicast ff00::/8, discard 100::/64, local NAT64 64:ff9b:1::/48…
    !in_v6(ip, GLOBAL_UNICAST.0, GLOBAL_UNICAST.1)
        || FORBIDDEN_V6_GLOBAL.iter().any(|&(net, len)| in_v6(ip, net, len))
}

fn in_v4(ip: Ipv4Addr, net: Ipv4Addr, len: u8) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    u32::from(ip) & mask == u32::from(net) & mask
}

fn in_v6(ip: Ipv6Addr, net: Ipv6Addr, len: u8) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
    u128::from(ip) & mask == u128::from(net) & mask
}

/// Why a host name gave no address to connect to.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("DNS lookup of {host} failed")]
    Lookup {
        host: String,
        #[source]
        source: io::Error,
    },
    #[error("{host} has no address")]
    NoAddress { host: String },
    /// Every address of the host is forbidden; `addr` is the first of them.
    #[error("{host} resolves only to forbidden addresses such as {addr}")]
    Blocked { host: String, addr: IpAddr },
}

/// Which destinations deliveries may reach: public addresses always; forbidden ones (see
/// [`is_forbidden_destination`]) only when private destinations are allowed outright, or when an
/// operator-listed network holds them (`delivery.private_destination_allowlist`: an ERP on the LAN).
#[derive(Clone, Debug, Default)]
pub struct DestinationPolicy {
    pub allow_private: bool,
    pub allowlist: Vec<ipnet::IpNet>,
}

impl DestinationPolicy {
    /// May a delivery connect to `ip`?
    pub fn permits(&self, ip: IpAddr) -> bool {
        // IPv4-mapped IPv6 is matched as the IPv4 address it is.
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.allow_private || !is_forbidden_destination(ip) || self.allowlist.iter().any(|n| n.contains(&ip))
    }
}

/// The connector's DNS resolver: tokio's `getaddrinfo`, then the SSRF filter.
#[derive(Clone, Debug)]
pub struct GuardedResolver {
    policy: std::sync::Arc<DestinationPolicy>,
}

impl GuardedResolver {
    pub fn new(policy: std::sync::Arc<DestinationPolicy>) -> GuardedResolver {
        GuardedResolver { policy }
    }
}

impl tower::Service<Name> for GuardedResolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = ResolveError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, ResolveError>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), ResolveError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let policy = self.policy.clone();
        Box::pin(async move {
            let host = name.as_str();
            // Port 0: the connector puts the URL's port on every address it gets back.
            let resolved = match tokio::net::lookup_host((host, 0)).await {
                Ok(addrs) => addrs.collect(),
                Err(source) => return Err(ResolveError::Lookup { host: host.to_owned(), source }),
            };
            filter_addresses(host, resolved, &policy).map(Vec::into_iter)
        })
    }
}

/// Keeps the allowed addresses of `host`, in order; fails if none is left.
pub fn filter_addresses(
    host: &str,
    mut addrs: Vec<SocketAddr>,
    policy: &DestinationPolicy,
) -> Result<Vec<SocketAddr>, ResolveError> {
    let Some(first) = addrs.first().copied() else {
        return Err(ResolveError::NoAddress { host: host.to_owned() });
    };
    addrs.retain(|a| policy.permits(a.ip()));
    if addrs.is_empty() {
        return Err(ResolveError::Blocked { host: host.to_owned(), addr: first.ip() });
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forbidden(s: &str) -> bool {
        is_forbidden_destination(s.parse().unwrap())
    }

    fn strict() -> DestinationPolicy {
        DestinationPolicy::default()
    }

    fn open() -> DestinationPolicy {
        DestinationPolicy { allow_private: true, allowlist: vec![] }
    }

    #[test]
    fn an_allowlist_opens_only_its_networks() {
        let policy = DestinationPolicy {
            allow_private: false,
            allowlist: vec!["10.20.0.0/16".parse().unwrap(), "fd00:1::/64".parse().unwrap()],
        };
        for ok in ["10.20.3.4", "fd00:1::5", "::ffff:10.20.0.1", "93.184.216.34"] {
            assert!(policy.permits(ok.parse().unwrap()), "{ok}");
        }
        for refused in ["10.21.0.1", "127.0.0.1", "169.254.169.254", "fd00:2::1", "::ffff:127.0.0.1"] {
            assert!(!policy.permits(refused.parse().unwrap()), "{refused}");
        }
        assert!(!strict().permits("10.20.3.4".parse().unwrap()));
        assert!(open().permits("127.0.0.1".parse().unwrap()));
    }

    #[test]
    fn private_and_special_addresses_are_forbidden() {
        let table = [
            "0.0.0.0",
            "0.1.2.3",
            "10.0.0.1",
            "10.255.255.255",
            "100.64.0.1",
            "100.127.255.254",
            "127.0.0.1",
            "127.1.2.3",
            "169.254.169.254",
            "169.254.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.0.0.170",
            "192.0.2.1",
            "192.88.99.1",
            "192.168.1.1",
            "198.18.0.1",
            "198.19.255.255",
            "198.51.100.7",
            "203.0.113.9",
            "224.0.0.1",
            "239.255.255.250",
            "240.0.0.1",
            "255.255.255.255",
            // IPv6 proper.
            "::",
            "::1",
            "fe80::1",
            "febf::1",
            "fec0::1",
            "fc00::1",
            "fd00::1",
            "fdff:ffff::1",
            "ff02::1",
            "ff0e::1",
            "100::1",
            "2001:db8::1",
            "2001::1",
            "2001:2::1",
            "3fff::1",
            "64:ff9b:1::1",
            // IPv4 embedded in IPv6.
            "::ffff:10.0.0.1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "::ffff:0.0.0.0",
            "::127.0.0.1",
            "::10.0.0.1",
            "::8.8.8.8",
            "64:ff9b::a00:1",
            "64:ff9b::127.0.0.1",
            "64:ff9b::169.254.169.254",
            "2002:a00:1::1",
            "2002:7f00:1::",
            "2002:a9fe:a9fe::1",
        ];
        for addr in table {
            assert!(forbidden(addr), "{addr} must be forbidden");
        }
    }

    #[test]
    fn public_addresses_are_allowed() {
        let table = [
            "1.1.1.1",
            "8.8.8.8",
            "9.255.255.255",
            "11.0.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "172.15.255.255",
            "172.32.0.1",
            "192.0.1.1",
            "192.167.1.1",
            "198.20.0.1",
            "223.255.255.254",
            "2606:4700:4700::1111",
            "2a00:1450:4001:81c::200e",
            "2001:200::1",
            "::ffff:8.8.8.8",
            "64:ff9b::808:808",
            "2002:808:808::1",
        ];
        for addr in table {
            assert!(!forbidden(addr), "{addr} must be allowed");
        }
    }

    #[test]
    fn the_filter_keeps_allowed_addresses_in_order() {
        let a = |s: &str| -> SocketAddr { s.parse().unwrap() };
        let mixed = vec![a("10.0.0.1:0"), a("8.8.8.8:0"), a("[::1]:0"), a("[2606:4700::1]:0")];
        let kept = filter_addresses("mixed.example", mixed.clone(), &strict()).unwrap();
        assert_eq!(kept, [a("8.8.8.8:0"), a("[2606:4700::1]:0")]);
        assert_eq!(filter_addresses("mixed.example", mixed.clone(), &open()).unwrap(), mixed);

        let private = vec![a("169.254.169.254:0"), a("[fd00::1]:0")];
        match filter_addresses("metadata.example", private, &strict()) {
            Err(ResolveError::Blocked { host, addr }) => {
                assert_eq!(host, "metadata.example");
                assert_eq!(addr, "169.254.169.254".parse::<IpAddr>().unwrap());
            }
            other => panic!("expected Blocked, got {other:?}"),
        }
        assert!(matches!(
            filter_addresses("none.example", vec![], &open()),
            Err(ResolveError::NoAddress { .. })
        ));
    }

    #[tokio::test]
    async fn the_resolver_refuses_localhost_unless_allowed() {
        use tower::ServiceExt as _;
        let name: Name = "localhost".parse().unwrap();
        let refused = GuardedResolver::new(std::sync::Arc::new(strict())).oneshot(name.clone()).await;
        assert!(matches!(refused, Err(ResolveError::Blocked { .. })), "{refused:?}");
        let allowed: Vec<SocketAddr> =
            GuardedResolver::new(std::sync::Arc::new(open())).oneshot(name).await.unwrap().collect();
        assert!(allowed.iter().all(|a| a.ip().is_loopback()), "{allowed:?}");
        assert!(!allowed.is_empty());
    }
}
