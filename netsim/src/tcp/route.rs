//! The path a simulated TCP connection takes through the network tree, decided once, when it
//! connects.
//!
//! A connection goes up from the connecting host through the NATs above it until it reaches a
//! network where the destination address is a host, exactly as a UDP packet would be routed. It
//! never goes down through a NAT: a SYN reaching a NAT's outside has no mapping to follow (the
//! simulator models no TCP port forwarding and no simultaneous open), so it is dropped, as a
//! real NAT drops an unsolicited inbound SYN. A firewall that blocks UDP (`block_udp`) lets TCP
//! through.
//!
//! Since the tree has one path between two points, every segment of a connection crosses the
//! same links; the route keeps what the connection needs of them: which ones (to see partitions),
//! their total latency, their jitters, the narrowest bandwidth and the smallest MTU.

use std::fmt;
use std::net::SocketAddrV4;
use std::time::Duration;

use crate::topology::{LinkConfig, Network};

/// The IPv4 and TCP headers (without options) every segment carries on the wire.
pub(crate) const IP_TCP_HEADERS: usize = 40;

/// A link, both directions: a host's access link or a NAT's uplink.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LinkId {
    /// The access link of this host.
    Host(usize),
    /// The uplink of this NAT.
    Nat(usize),
}

/// Where a connection goes (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Route {
    /// The links crossed, from the connecting host to the listening one.
    pub(crate) links: Vec<LinkId>,
    /// The NATs crossed on the way up, innermost first: each translates the connection, and the
    /// connection dies with their state.
    pub(crate) nats: Vec<usize>,
    /// The listening host.
    pub(crate) server: usize,
    /// The sum of the links' latencies: a segment's one-way delay before jitter and
    /// serialization.
    pub(crate) latency: Duration,
    /// The links' jitters that are not zero, one uniform draw each per segment.
    pub(crate) jitters: Vec<Duration>,
    /// The narrowest link's bits per second; `None` when every link is unlimited.
    pub(crate) bandwidth_bps: Option<u64>,
    /// The largest payload of one segment: the smallest MTU less [`IP_TCP_HEADERS`].
    pub(crate) mss: usize,
}

/// Why a SYN finds no listener's host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Unroutable {
    /// No host has the address where the route leads.
    NoHost(SocketAddrV4),
    /// The address is a NAT's outside: the SYN is unsolicited there.
    Filtered {
        /// The NAT's name.
        nat: String,
        /// The address the SYN was sent to.
        to: SocketAddrV4,
    },
    /// A NAT on the way had no free external port.
    NoPort {
        /// The NAT's name.
        nat: String,
    },
    /// The connecting host is not in the network.
    NoSuchHost(usize),
}

impl fmt::Display for Unroutable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoHost(to) => write!(f, "no simulated host has the address {}", to.ip()),
            Self::Filtered { nat, to } => write!(
                f,
                "{to} is the outside of NAT {nat:?}, which drops an unsolicited inbound SYN"
            ),
            Self::NoPort { nat } => write!(f, "NAT {nat:?} has no free TCP port"),
            Self::NoSuchHost(host) => write!(f, "the simulated network has no host {host}"),
        }
    }
}

/// The route from host `from` to `to` (see the module docs).
pub(crate) fn route(network: &Network, from: usize, to: SocketAddrV4) -> Result<Route, Unroutable> {
    let source = network
        .hosts
        .get(from)
        .ok_or(Unroutable::NoSuchHost(from))?;
    let dst = *to.ip();
    let mut links = vec![LinkId::Host(from)];
    let mut nats = Vec::new();
    let mut at = source.parent;
    loop {
        if let Some(server) = network
            .hosts
            .iter()
            .position(|h| h.parent == at && h.ip == dst)
        {
            links.push(LinkId::Host(server));
            return Ok(Route::new(network, links, nats, server));
        }
        if let Some(nat) = network
            .nats
            .iter()
            .find(|n| n.parent == at && n.external_ip == dst)
        {
            return Err(Unroutable::Filtered {
                nat: nat.name.clone(),
                to,
            });
        }
        let Some(index) = at else {
            return Err(Unroutable::NoHost(to));
        };
        let nat = &network.nats[index];
        if dst.octets()[..3] == nat.lan.octets()[..3] {
            // Inside this NAT's own network, but no one has the address.
            return Err(Unroutable::NoHost(to));
        }
        if dst == nat.external_ip {
            // Its own outside, from inside: no mapping for an unsolicited SYN, hairpin or not.
            return Err(Unroutable::Filtered {
                nat: nat.name.clone(),
                to,
            });
        }
        links.push(LinkId::Nat(index));
        nats.push(index);
        at = nat.parent;
    }
}

impl Route {
    fn new(network: &Network, links: Vec<LinkId>, nats: Vec<usize>, server: usize) -> Self {
        let configs: Vec<LinkConfig> = links
            .iter()
            .map(|link| match *link {
                LinkId::Host(i) => network.hosts[i].link,
                LinkId::Nat(i) => network.nats[i].uplink,
            })
            .collect();
        let latency = configs.iter().map(|c| c.latency).sum();
        let jitters = configs
            .iter()
            .map(|c| c.jitter)
            .filter(|j| !j.is_zero())
            .collect();
        let bandwidth_bps = configs.iter().filter_map(|c| c.bandwidth_bps).min();
        let mtu = configs.iter().map(|c| c.mtu).min().unwrap_or(1500);
        // The topology keeps MTUs at 576 or more, so this never reaches zero; stay above it
        // anyway, since a zero segment size would never move a byte.
        let mss = usize::try_from(mtu)
            .unwrap_or(usize::MAX)
            .saturating_sub(IP_TCP_HEADERS)
            .max(1);
        Self {
            links,
            nats,
            server,
            latency,
            jitters,
            bandwidth_bps,
            mss,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::topology::Topology;

    const NETWORK: &str = r#"
        [[nat]]
        name = "carrier"
        kind = "symmetric-random"
        uplink = { latency = "5ms", mtu = 1400, bandwidth = "10Mbit" }
        [[nat]]
        name = "home"
        kind = "full-cone"
        behind = "carrier"
        block_udp = true
        [[host]]
        name = "laptop"
        behind = "home"
        link = { latency = "2ms", jitter = "1ms" }
        [[host]]
        name = "printer"
        behind = "home"
        [[host]]
        name = "neighbour"
        behind = "carrier"
        [[host]]
        name = "server"
        link = { latency = "20ms", bandwidth = "100Mbit" }
    "#;

    fn network() -> Network {
        Topology::from_toml(NETWORK).unwrap().resolve().unwrap()
    }

    fn at(network: &Network, host: &str, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(network.hosts[network.host(host).unwrap()].ip, port)
    }

    #[test]
    fn up_through_every_nat_to_a_public_host_summing_the_links() {
        let net = network();
        let laptop = net.host("laptop").unwrap();
        let server = net.host("server").unwrap();
        let route = route(&net, laptop, at(&net, "server", 443)).unwrap();
        assert_eq!(
            route.links,
            vec![
                LinkId::Host(laptop),
                LinkId::Nat(1),
                LinkId::Nat(0),
                LinkId::Host(server)
            ]
        );
        assert_eq!(route.nats, vec![1, 0], "innermost first");
        assert_eq!(route.server, server);
        // 2 + 1 (home's default uplink) + 5 + 20 ms.
        assert_eq!(route.latency, Duration::from_millis(28));
        assert_eq!(route.jitters, vec![Duration::from_millis(1)]);
        assert_eq!(route.bandwidth_bps, Some(10_000_000));
        assert_eq!(route.mss, 1400 - IP_TCP_HEADERS);
    }

    #[test]
    fn on_the_same_lan_no_nat_is_crossed() {
        let net = network();
        let route = route(&net, net.host("laptop").unwrap(), at(&net, "printer", 80)).unwrap();
        assert!(route.nats.is_empty());
        assert_eq!(route.links.len(), 2);
    }

    #[test]
    fn a_syn_to_a_nat_outside_or_to_no_one_finds_no_host() {
        let net = network();
        let server = net.host("server").unwrap();
        let carrier = SocketAddrV4::new(net.nats[0].external_ip, 5000);
        assert!(matches!(
            route(&net, server, carrier),
            Err(Unroutable::Filtered { nat, .. }) if nat == "carrier"
        ));
        // The neighbour sits on the carrier's inside: reachable from inside only.
        assert!(route(&net, server, at(&net, "neighbour", 22)).is_err());
        let laptop = net.host("laptop").unwrap();
        assert!(route(&net, laptop, at(&net, "neighbour", 22)).is_ok());
        let nowhere = SocketAddrV4::new(Ipv4Addr::new(192, 0, 2, 200), 1);
        assert_eq!(
            route(&net, server, nowhere),
            Err(Unroutable::NoHost(nowhere))
        );
        let home_outside = SocketAddrV4::new(net.nats[1].external_ip, 1);
        assert!(matches!(
            route(&net, laptop, home_outside),
            Err(Unroutable::Filtered { nat, .. }) if nat == "home"
        ));
        assert_eq!(route(&net, 99, nowhere), Err(Unroutable::NoSuchHost(99)));
    }
}
