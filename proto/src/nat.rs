//! What a node knows of its own NAT, and how it learns it (DESIGN.md, "Connections"): the
//! coordinator answers a signed ping on two UDP ports with the address it came from, and the
//! node compares the two. One mapping for both (or the node's own address) means a peer told
//! that address can reach it once the filter is open; two mappings mean the NAT maps per
//! destination ("symmetric"), and the gap between their ports says whether the next one can be
//! predicted (a sequential allocator) or only guessed (a random one: birthday probing).
//!
//! [`classify`] is a plain function of the two observations, so every verdict is unit-tested.

use std::net::{IpAddr, SocketAddr};

use serde::{Deserialize, Serialize};

/// Two mappings whose ports are at most this far apart came from a sequential allocator (a
/// random one lands this close about once in a thousand checks).
pub const SEQUENTIAL_GAP: u16 = 32;

/// The coordinator's check port for a main port: the next one (or the one before, for the
/// last port). Nodes ping both; the check port answers nothing else.
pub fn check_port(main: u16) -> u16 {
    main.checked_add(1).unwrap_or(main - 1)
}

/// How a node's NAT maps its socket toward different destinations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(test, derive(proptest_derive::Arbitrary))]
pub enum NatMapping {
    /// Not known: no check made, or one of its pings got no answer (UDP blocked, a
    /// coordinator without a check port).
    Unknown,
    /// No NAT: the coordinator sees the node's own address.
    Open,
    /// One mapping whatever the destination (a "cone" NAT; Linux `masquerade`): the address
    /// the coordinator sees is the one peers should probe.
    EndpointIndependent,
    /// A new mapping per destination, ports handed out in order: the next mapping toward a
    /// peer is predicted from the newest one seen.
    Sequential {
        /// The newest mapping the check saw.
        #[cfg_attr(test, proptest(strategy = "crate::messages::tests::socket_addr()"))]
        latest: SocketAddr,
        /// How far apart two consecutive mappings are (usually 1).
        step: i8,
    },
    /// A new mapping per destination at a random port: only birthday probing finds it.
    Random {
        /// The NAT's external address.
        #[cfg_attr(test, proptest(strategy = "crate::messages::tests::ip_addr()"))]
        ip: IpAddr,
    },
}

impl NatMapping {
    /// Whether the NAT maps per destination (a "hard" NAT).
    pub fn per_destination(self) -> bool {
        matches!(self, Self::Sequential { .. } | Self::Random { .. })
    }

    /// A short name for `mesh path`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Unknown => "unknown",
            Self::Open => "none",
            Self::EndpointIndependent => "endpoint-independent",
            Self::Sequential { .. } => "per-destination, sequential",
            Self::Random { .. } => "per-destination, random",
        }
    }
}

/// The verdict from the two addresses the coordinator saw: `first` for the ping to its main
/// port, `second` for the ping to its check port, sent in that order from the socket bound at
/// `local` (whose unspecified IP stands for any of `local_ips`).
pub fn classify(
    local: SocketAddr,
    local_ips: &[IpAddr],
    first: Option<SocketAddr>,
    second: Option<SocketAddr>,
) -> NatMapping {
    let (Some(first), Some(second)) = (first, second) else {
        return NatMapping::Unknown;
    };
    if first == second {
        let own_ip = first.ip() == local.ip() || local_ips.contains(&first.ip());
        return if own_ip && first.port() == local.port() {
            NatMapping::Open
        } else {
            NatMapping::EndpointIndependent
        };
    }
    let gap = i32::from(second.port()) - i32::from(first.port());
    if first.ip() == second.ip() && gap != 0 && gap.unsigned_abs() <= u32::from(SEQUENTIAL_GAP) {
        return NatMapping::Sequential {
            latest: second,
            step: if gap > 0 { 1 } else { -1 },
        };
    }
    NatMapping::Random { ip: second.ip() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn two_observations_give_the_mapping_behaviour() {
        let local = a("0.0.0.0:41000");
        let ips = [IpAddr::from([10, 0, 0, 5])];
        assert_eq!(
            classify(local, &ips, None, Some(a("203.0.113.1:5"))),
            NatMapping::Unknown,
            "a lost answer tells nothing"
        );
        assert_eq!(
            classify(
                local,
                &ips,
                Some(a("10.0.0.5:41000")),
                Some(a("10.0.0.5:41000"))
            ),
            NatMapping::Open
        );
        assert_eq!(
            classify(
                local,
                &ips,
                Some(a("203.0.113.1:41000")),
                Some(a("203.0.113.1:41000"))
            ),
            NatMapping::EndpointIndependent,
            "a port-preserving cone NAT is not the node's own address"
        );
        assert_eq!(
            classify(
                local,
                &ips,
                Some(a("203.0.113.1:1030")),
                Some(a("203.0.113.1:1032"))
            ),
            NatMapping::Sequential {
                latest: a("203.0.113.1:1032"),
                step: 1
            }
        );
        assert_eq!(
            classify(
                local,
                &ips,
                Some(a("203.0.113.1:1030")),
                Some(a("203.0.113.1:52011"))
            ),
            NatMapping::Random {
                ip: IpAddr::from([203, 0, 113, 1])
            }
        );
        assert_eq!(
            classify(
                local,
                &ips,
                Some(a("203.0.113.1:1030")),
                Some(a("203.0.113.2:1031"))
            ),
            NatMapping::Random {
                ip: IpAddr::from([203, 0, 113, 2])
            },
            "another external address: nothing to predict"
        );
        assert!(!NatMapping::EndpointIndependent.per_destination());
        assert!(
            NatMapping::Random {
                ip: IpAddr::from([1, 2, 3, 4])
            }
            .per_destination()
        );
    }
}
