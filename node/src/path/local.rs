//! This machine's own addresses: a socket bound to the unspecified address listens on every
//! interface, and peers on the same LAN reach it at those interfaces' addresses (LAN
//! candidates), which no NAT and no coordinator would tell them.

use std::net::{IpAddr, SocketAddr};

use mesh_proto::messages::control::MAX_LISTEN_ADDRS;

/// The addresses of this machine's interfaces that are up, loopback last (peers elsewhere
/// cannot use it, but a peer on this machine can), IPv4 and IPv6.
pub fn interface_ips() -> Vec<IpAddr> {
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    let mut ips: Vec<IpAddr> = Vec::new();
    for interface in addrs {
        if !interface
            .flags
            .contains(nix::net::if_::InterfaceFlags::IFF_UP)
        {
            continue;
        }
        let Some(address) = interface.address else {
            continue;
        };
        let ip = if let Some(v4) = address.as_sockaddr_in() {
            IpAddr::V4(v4.ip())
        } else if let Some(v6) = address.as_sockaddr_in6() {
            let ip = v6.ip();
            // A link-local address needs its interface to be reached: not a candidate.
            if ip.is_unicast_link_local() {
                continue;
            }
            IpAddr::V6(ip)
        } else {
            continue;
        };
        if !ips.contains(&ip) {
            ips.push(ip);
        }
    }
    ips.sort_by_key(IpAddr::is_loopback);
    ips
}

/// Where a socket bound at `bound` can be reached from this machine's networks: `bound`
/// itself when it names an address, else each interface address (of its family, IPv4 also for
/// a dual-stack IPv6 socket) at its port. Loopback is left out unless `keep_loopback` (a peer
/// elsewhere would only ping itself). At most [`MAX_LISTEN_ADDRS`].
pub fn local_addrs(bound: SocketAddr, keep_loopback: bool) -> Vec<SocketAddr> {
    if !bound.ip().is_unspecified() {
        return vec![bound];
    }
    interface_ips()
        .into_iter()
        .filter(|ip| keep_loopback || !ip.is_loopback())
        .filter(|ip| bound.is_ipv6() || ip.is_ipv4())
        .map(|ip| SocketAddr::new(ip, bound.port()))
        .take(MAX_LISTEN_ADDRS)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bound_address_is_itself_and_an_unspecified_one_lists_interfaces() {
        let bound: SocketAddr = "192.0.2.7:7422".parse().unwrap();
        assert_eq!(local_addrs(bound, false), vec![bound]);
        let any: SocketAddr = "0.0.0.0:7422".parse().unwrap();
        let all = local_addrs(any, true);
        assert!(
            all.contains(&"127.0.0.1:7422".parse().unwrap()),
            "loopback is an interface address: {all:?}"
        );
        assert!(all.iter().all(|a| a.port() == 7422 && a.is_ipv4()));
        assert!(
            local_addrs(any, false)
                .iter()
                .all(|a| !a.ip().is_loopback())
        );
    }
}
