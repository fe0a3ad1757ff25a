//! Name resolution for fetching images by URL that compares addresses, not names (no DNS
//! rebinding).
//!
//! The fetch allowlist names hosts; a host name is only as trustworthy as whoever answers
//! for it in DNS. A name that resolved to a public address when the server started can
//! answer `127.0.0.1` or `169.254.169.254` a second later (a rebinding DNS server with a
//! zero TTL), and a client that resolves again when it connects would then reach the
//! server's own loopback or the cloud's metadata service. So:
//!
//! - each allowed host name is resolved once when the server starts ([`Guard::learn`]; at
//!   its first use if DNS did not answer then), and its addresses fix its **network**:
//!   *public* (every address globally routable) or *internal* (every address private,
//!   loopback or unique-local: an in-cluster Service, `localhost`). A name whose
//!   addresses are mixed, or include a link-local (metadata), unspecified, multicast or
//!   broadcast address, is refused;
//! - at every fetch the name is resolved once, every address is checked against that
//!   network and the never-allowed ranges, and the HTTP client connects to exactly the
//!   checked addresses: this resolver is the client's only one, so nothing resolves the
//!   name a second time between the check and the connection.
//!
//! A URL whose host is an IP address is never resolved: the allowlist already compared it
//! with the address the operator wrote.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How long one resolution may take.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(3);

/// A name's addresses, as DNS answers now.
pub trait Lookup: Send + Sync {
    fn lookup(&self, host: &str) -> Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send>>;
}

/// The system's resolver (what the HTTP client would otherwise use).
pub struct SystemLookup;

impl Lookup for SystemLookup {
    fn lookup(&self, host: &str) -> Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send>> {
        let host = host.to_string();
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .map(|a| a.ip())
                .collect())
        })
    }
}

/// Where a name's addresses lie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    Public,
    Internal,
}

/// Why an address may not be fetched from.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Refused {
    #[error("the host resolves to an address this service never fetches from")]
    Forbidden,
    #[error("the host resolves to addresses in another network than when the server started")]
    Rebound,
    #[error("the host resolves to both public and internal addresses")]
    Mixed,
    #[error("the host resolves to no address")]
    NoAddress,
    #[error("the host is not one this service fetches from")]
    NotAllowed,
}

/// Link-local (cloud metadata lives there), unspecified, multicast, broadcast: never.
fn never(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            v4.is_link_local() || v4.is_unspecified() || v4.is_multicast() || v4.is_broadcast()
        }
        IpAddr::V6(v6) => {
            v6.is_unspecified() || v6.is_multicast() || (v6.segments()[0] & 0xffc0) == 0xfe80
        }
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The network of one address.
pub fn network(ip: IpAddr) -> Network {
    let internal = match canonical(ip) {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            v4.is_private()
                || v4.is_loopback()
                // Shared address space (RFC 6598), used by some clusters' pod networks.
                || (a == 100 && (64..128).contains(&b))
        }
        IpAddr::V6(v6) => v6.is_loopback() || (v6.segments()[0] & 0xfe00) == 0xfc00,
    };
    if internal {
        Network::Internal
    } else {
        Network::Public
    }
}

/// The one network all of `addrs` lie in, or why there is none.
pub fn network_of(addrs: &[IpAddr]) -> Result<Network, Refused> {
    let first = *addrs.first().ok_or(Refused::NoAddress)?;
    if addrs.iter().any(|ip| never(*ip)) {
        return Err(Refused::Forbidden);
    }
    let net = network(first);
    if addrs.iter().any(|ip| network(*ip) != net) {
        return Err(Refused::Mixed);
    }
    Ok(net)
}

/// The allowed host names and the network each was found in.
pub struct Guard {
    lookup: Arc<dyn Lookup>,
    /// Lower-case host name → its network once learned.
    hosts: Mutex<HashMap<String, Option<Network>>>,
}

impl Guard {
    /// A guard for the host names of the allowlist (IP literals are not resolved).
    pub fn new(names: impl IntoIterator<Item = String>, lookup: Arc<dyn Lookup>) -> Guard {
        let hosts = names
            .into_iter()
            .map(|n| (n.trim_end_matches('.').to_ascii_lowercase(), None))
            .collect();
        Guard {
            lookup,
            hosts: Mutex::new(hosts),
        }
    }

    fn known(&self, host: &str) -> Result<Option<Network>, Refused> {
        let hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
        hosts.get(host).copied().ok_or(Refused::NotAllowed)
    }

    async fn resolve_now(&self, host: &str) -> Result<Vec<IpAddr>, Refused> {
        match tokio::time::timeout(LOOKUP_TIMEOUT, self.lookup.lookup(host)).await {
            Ok(Ok(addrs)) => Ok(addrs),
            _ => Err(Refused::NoAddress),
        }
    }

    /// Resolves every allowed name not learned yet and records its network. A name that
    /// cannot be resolved now is learned at its first use.
    pub async fn learn(&self) {
        let pending: Vec<String> = {
            let hosts = self.hosts.lock().unwrap_or_else(|p| p.into_inner());
            hosts
                .iter()
                .filter(|(_, n)| n.is_none())
                .map(|(h, _)| h.clone())
                .collect()
        };
        for host in pending {
            match self.resolve_now(&host).await.and_then(|a| network_of(&a)) {
                Ok(net) => {
                    tracing::info!(host, ?net, "fetch allowlist: host resolved");
                    self.hosts
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(host, Some(net));
                }
                Err(why) => {
                    tracing::warn!(host, error = %why, "fetch allowlist: host not resolved yet")
                }
            }
        }
    }

    /// The addresses `host` may be reached at now: resolved once, every one checked.
    pub async fn check(&self, host: &str) -> Result<Vec<IpAddr>, Refused> {
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        if self.known(&host)?.is_none() {
            self.learn().await;
        }
        let expected = self.known(&host)?.ok_or(Refused::NoAddress)?;
        let addrs = self.resolve_now(&host).await?;
        let now = network_of(&addrs)?;
        if now != expected {
            tracing::warn!(
                host,
                ?expected,
                ?now,
                "fetch allowlist: a host changed network (DNS rebinding?); refused"
            );
            return Err(Refused::Rebound);
        }
        Ok(addrs)
    }
}

/// The HTTP client's resolver: only [`Guard::check`]ed addresses.
pub struct Resolver(pub Arc<Guard>);

impl reqwest::dns::Resolve for Resolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let guard = self.0.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs = guard.check(&host).await?;
            let addrs: Box<dyn Iterator<Item = SocketAddr> + Send> =
                Box::new(addrs.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

/// The [`Refused`] somewhere in an error's chain of sources, if any.
pub fn refused_in(error: &(dyn std::error::Error + 'static)) -> Option<Refused> {
    let mut current = Some(error);
    while let Some(e) = current {
        if let Some(refused) = e.downcast_ref::<Refused>() {
            return Some(refused.clone());
        }
        current = e.source();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().expect("an address")
    }

    #[test]
    fn networks_and_the_never_allowed_ranges() {
        for internal in [
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "127.0.0.1",
            "::1",
            "fd00::1",
            "100.64.0.1",
        ] {
            assert_eq!(network(ip(internal)), Network::Internal, "{internal}");
        }
        for public in ["93.184.216.34", "8.8.8.8", "2606:4700::1111", "172.32.0.1"] {
            assert_eq!(network(ip(public)), Network::Public, "{public}");
        }
        for forbidden in [
            "169.254.169.254",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "fe80::1",
            "::",
            "::ffff:169.254.169.254",
        ] {
            assert_eq!(
                network_of(&[ip(forbidden)]),
                Err(Refused::Forbidden),
                "{forbidden}"
            );
        }
        assert_eq!(
            network_of(&[ip("8.8.8.8"), ip("10.0.0.1")]),
            Err(Refused::Mixed)
        );
        assert_eq!(network_of(&[]), Err(Refused::NoAddress));
        assert_eq!(network_of(&[ip("::ffff:127.0.0.1")]), Ok(Network::Internal));
    }
}
