//! A NAT box as a pure state machine: packets in, translated addresses out.
//!
//! [`NatBox`] models what a NAT does to UDP (RFC 4787): how it maps an inside endpoint to an
//! external port ([`Mapping`]), which external port it picks ([`PortAllocation`]), which inbound
//! packets it lets through ([`Filtering`]) and when an idle mapping is forgotten. It does no I/O
//! and reads no clock — every call takes `now`, the time since the simulation started, and the
//! random port allocator takes the caller's seeded RNG — so the simulator can drive thousands of
//! them deterministically and the tests can check each behavior against its definition.
//!
//! Hairpinning is left to the router: a packet from inside to the NAT's own external address is
//! an [`NatBox::outbound`] followed by an [`NatBox::inbound`], when [`NatBehavior::hairpin`] is
//! set.
//!
//! Cost: every packet is a few hash-map operations. Expired mappings are dropped lazily when a
//! lookup or the port allocator meets them, and by a full sweep that runs only when the table has
//! doubled since the last one, so the sweeps cost O(1) per packet amortized and the table stays
//! within about twice the live mappings.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::ops::RangeInclusive;
use std::time::Duration;

use rand::{Rng, RngCore};

use crate::topology::{Filtering, Mapping, NatBehavior, PortAllocation};

/// The external ports a NAT hands out unless told otherwise: everything above the well-known
/// ports, as Linux `masquerade` does for source ports at or above 1024.
pub const EXTERNAL_PORTS: RangeInclusive<u16> = 1024..=65535;

/// How many random ports [`PortAllocation::Random`] tries before it falls back to scanning for a
/// free one. Plenty while the range is mostly free; the scan keeps a nearly full range from
/// looping for long.
const RANDOM_ATTEMPTS: usize = 32;

/// The table size below which the expiry sweep never runs: small tables are cheap to carry.
const MIN_SWEEP_SIZE: usize = 64;

/// The per-mapping permission list size below which expired permissions are not pruned.
const MIN_PERMISSION_PRUNE: usize = 8;

/// What of a remote endpoint a mapping or a filtering permission is keyed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Remote {
    /// Nothing: one mapping (or permission) for every remote.
    Any,
    /// Its IP address.
    Address(Ipv4Addr),
    /// Its IP address and port.
    Endpoint(SocketAddrV4),
}

impl Remote {
    fn for_mapping(mapping: Mapping, remote: SocketAddrV4) -> Self {
        match mapping {
            Mapping::EndpointIndependent => Self::Any,
            Mapping::AddressDependent => Self::Address(*remote.ip()),
            Mapping::AddressAndPortDependent => Self::Endpoint(remote),
        }
    }

    fn for_filtering(filtering: Filtering, remote: SocketAddrV4) -> Self {
        match filtering {
            Filtering::EndpointIndependent => Self::Any,
            Filtering::AddressDependent => Self::Address(*remote.ip()),
            Filtering::AddressAndPortDependent => Self::Endpoint(remote),
        }
    }
}

/// What identifies a mapping: the inside endpoint and as much of the remote as the mapping
/// behavior distinguishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct MappingKey {
    inside: SocketAddrV4,
    remote: Remote,
}

/// One live (or not yet swept) mapping, stored under its external port.
#[derive(Clone, Debug)]
struct MappingEntry {
    key: MappingKey,
    /// The last outbound packet, or passing inbound packet, through this mapping.
    last_activity: Duration,
    /// The remotes inbound packets may come from, with the last traffic to or from each; empty
    /// under endpoint-independent filtering, which needs none.
    permissions: HashMap<Remote, Duration>,
    /// Prune expired permissions when the list reaches this size (keeps a long-lived mapping
    /// that talks to many remotes from growing without bound, at O(1) amortized cost).
    prune_permissions_at: usize,
}

/// A simulated NAT box (see the module docs).
#[derive(Clone, Debug)]
pub struct NatBox {
    external_ip: Ipv4Addr,
    behavior: NatBehavior,
    /// The lowest and highest external port handed out.
    first_port: u16,
    last_port: u16,
    /// Mapping → external port. Exactly the keys of the entries in `by_port`.
    by_key: HashMap<MappingKey, u16>,
    /// External port → mapping. One entry per port, so no two mappings share a port.
    by_port: HashMap<u16, MappingEntry>,
    /// Where [`PortAllocation::Sequential`] looks next: one past the last port it handed out.
    next_sequential: u16,
    /// Sweep expired mappings when `by_port` reaches this size.
    sweep_at: usize,
}

impl NatBox {
    /// A NAT with no mappings that hands out ports from [`EXTERNAL_PORTS`].
    pub fn new(external_ip: Ipv4Addr, behavior: NatBehavior) -> Self {
        Self::with_port_range(external_ip, behavior, EXTERNAL_PORTS)
    }

    /// A NAT with no mappings that hands out external ports from `ports` only (a small range
    /// makes port exhaustion cheap to reach). An empty range hands out nothing: every outbound
    /// packet is dropped.
    pub fn with_port_range(
        external_ip: Ipv4Addr,
        behavior: NatBehavior,
        ports: RangeInclusive<u16>,
    ) -> Self {
        let (first_port, last_port) = ports.into_inner();
        Self {
            external_ip,
            behavior,
            first_port,
            last_port,
            by_key: HashMap::new(),
            by_port: HashMap::new(),
            next_sequential: first_port,
            sweep_at: MIN_SWEEP_SIZE,
        }
    }

    /// Its address on the network above.
    pub fn external_ip(&self) -> Ipv4Addr {
        self.external_ip
    }

    /// What it does with UDP.
    pub fn behavior(&self) -> &NatBehavior {
        &self.behavior
    }

    /// The external ports it hands out.
    pub fn port_range(&self) -> RangeInclusive<u16> {
        self.first_port..=self.last_port
    }

    /// A packet from inside endpoint `from` to `to` (outside) at `now`: the external source
    /// address it leaves with, creating or refreshing the mapping and recording `to` for
    /// filtering; `None` when no external port is free (the packet is dropped).
    ///
    /// `rng` is drawn from only when a new mapping gets a port under
    /// [`PortAllocation::Random`].
    pub fn outbound(
        &mut self,
        now: Duration,
        from: SocketAddrV4,
        to: SocketAddrV4,
        rng: &mut dyn RngCore,
    ) -> Option<SocketAddrV4> {
        self.sweep_if_due(now);
        let key = MappingKey {
            inside: from,
            remote: Remote::for_mapping(self.behavior.mapping, to),
        };
        let existing = self.by_key.get(&key).copied();
        let port = match existing {
            Some(port) if self.port_is_live(port, now) => port,
            _ => {
                // An expired mapping for this key is gone: forget it, so its port may be reused
                // (possibly by this very key again, under port preservation).
                if let Some(stale) = existing {
                    self.remove_port(stale);
                }
                self.allocate(now, key, rng)?
            }
        };
        let timeout = self.behavior.mapping_timeout;
        let filtering = self.behavior.filtering;
        let entry = self.by_port.get_mut(&port)?;
        entry.last_activity = now;
        if filtering != Filtering::EndpointIndependent {
            entry.permit(Remote::for_filtering(filtering, to), now, timeout);
        }
        Some(SocketAddrV4::new(self.external_ip, port))
    }

    /// A packet from outside endpoint `from` to this NAT's external address `to` at `now`: the
    /// inside endpoint it is forwarded to, or `None` when `to` is not this NAT's address, there
    /// is no live mapping for `to`'s port, or filtering drops it. A packet that passes refreshes
    /// the mapping and the sender's permission (as Linux conntrack does).
    pub fn inbound(
        &mut self,
        now: Duration,
        from: SocketAddrV4,
        to: SocketAddrV4,
    ) -> Option<SocketAddrV4> {
        if *to.ip() != self.external_ip {
            return None;
        }
        let port = to.port();
        let timeout = self.behavior.mapping_timeout;
        let filtering = self.behavior.filtering;
        let entry = self.by_port.get_mut(&port)?;
        if expired(entry.last_activity, now, timeout) {
            self.remove_port(port);
            return None;
        }
        if filtering != Filtering::EndpointIndependent {
            let remote = Remote::for_filtering(filtering, from);
            let last = entry.permissions.get_mut(&remote)?;
            if expired(*last, now, timeout) {
                entry.permissions.remove(&remote);
                return None;
            }
            *last = now;
        }
        entry.last_activity = now;
        Some(entry.key.inside)
    }

    /// Forget every mapping (a NAT reboot or a conntrack flush: "rebinding"). The sequential
    /// allocator keeps its place, so a sequential NAT hands out fresh ports afterwards.
    pub fn flush(&mut self) {
        self.by_key.clear();
        self.by_port.clear();
        self.sweep_at = MIN_SWEEP_SIZE;
    }

    /// The live mappings at `now`. Counts the whole table: meant for reports and tests, not for
    /// every packet.
    pub fn live_mappings(&self, now: Duration) -> usize {
        let timeout = self.behavior.mapping_timeout;
        self.by_port
            .values()
            .filter(|entry| !expired(entry.last_activity, now, timeout))
            .count()
    }

    /// Whether `port` holds a mapping that has not expired at `now`.
    fn port_is_live(&self, port: u16, now: Duration) -> bool {
        self.by_port
            .get(&port)
            .is_some_and(|entry| !expired(entry.last_activity, now, self.behavior.mapping_timeout))
    }

    /// Whether `port` is in the range and holds no live mapping.
    fn port_is_free(&self, port: u16, now: Duration) -> bool {
        (self.first_port..=self.last_port).contains(&port) && !self.port_is_live(port, now)
    }

    fn remove_port(&mut self, port: u16) {
        if let Some(entry) = self.by_port.remove(&port) {
            self.by_key.remove(&entry.key);
        }
    }

    /// Picks an external port for `key` by the allocation rule and records the new mapping;
    /// `None` when every port in the range is live.
    fn allocate(&mut self, now: Duration, key: MappingKey, rng: &mut dyn RngCore) -> Option<u16> {
        if self.first_port > self.last_port {
            return None;
        }
        let port = match self.behavior.allocation {
            PortAllocation::Preserving => {
                let wanted = key.inside.port().clamp(self.first_port, self.last_port);
                self.first_free_from(wanted, now)?
            }
            PortAllocation::Sequential => {
                let port = self.first_free_from(self.next_sequential, now)?;
                self.next_sequential = self.after(port);
                port
            }
            PortAllocation::Random => {
                let mut candidate = self.first_port;
                let mut found = None;
                for _ in 0..RANDOM_ATTEMPTS {
                    candidate = rng.random_range(self.first_port..=self.last_port);
                    if self.port_is_free(candidate, now) {
                        found = Some(candidate);
                        break;
                    }
                }
                match found {
                    Some(port) => port,
                    None => self.first_free_from(candidate, now)?,
                }
            }
        };
        // The port may still hold an expired mapping nobody has swept yet.
        self.remove_port(port);
        self.by_port.insert(
            port,
            MappingEntry {
                key,
                last_activity: now,
                permissions: HashMap::new(),
                prune_permissions_at: MIN_PERMISSION_PRUNE,
            },
        );
        self.by_key.insert(key, port);
        Some(port)
    }

    /// The port after `port`, wrapping within the range.
    fn after(&self, port: u16) -> u16 {
        if port >= self.last_port {
            self.first_port
        } else {
            port + 1
        }
    }

    /// The first free port at or after `start` (in range), wrapping; each port is tried at most
    /// once, so a full range ends the search instead of looping.
    fn first_free_from(&self, start: u16, now: Duration) -> Option<u16> {
        let range_len = u32::from(self.last_port - self.first_port) + 1;
        let mut port = start.clamp(self.first_port, self.last_port);
        for _ in 0..range_len {
            if self.port_is_free(port, now) {
                return Some(port);
            }
            port = self.after(port);
        }
        None
    }

    /// Drops every expired mapping once the table has doubled since the last sweep.
    fn sweep_if_due(&mut self, now: Duration) {
        if self.by_port.len() < self.sweep_at {
            return;
        }
        let timeout = self.behavior.mapping_timeout;
        let by_key = &mut self.by_key;
        self.by_port.retain(|_, entry| {
            let live = !expired(entry.last_activity, now, timeout);
            if !live {
                by_key.remove(&entry.key);
            }
            live
        });
        self.sweep_at = MIN_SWEEP_SIZE.max(2 * self.by_port.len());
    }
}

impl MappingEntry {
    /// Lets inbound packets from `remote` through, from `now` until the timeout.
    fn permit(&mut self, remote: Remote, now: Duration, timeout: Duration) {
        if self.permissions.insert(remote, now).is_none()
            && self.permissions.len() >= self.prune_permissions_at
        {
            self.permissions
                .retain(|_, last| !expired(*last, now, timeout));
            self.prune_permissions_at = MIN_PERMISSION_PRUNE.max(2 * self.permissions.len());
        }
    }
}

/// Whether something last active at `last` has been idle for the whole `timeout` at `now`.
fn expired(last: Duration, now: Duration, timeout: Duration) -> bool {
    now.saturating_sub(last) >= timeout
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::NatKind;
    use proptest::prelude::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    const NAT_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 1);

    fn at(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    fn inside(host: u8, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, host), port)
    }

    fn remote(host: u8, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(Ipv4Addr::new(198, 51, 100, host), port)
    }

    fn behavior(mapping: Mapping, allocation: PortAllocation, filtering: Filtering) -> NatBehavior {
        NatBehavior {
            mapping,
            allocation,
            filtering,
            mapping_timeout: at(30),
            hairpin: false,
        }
    }

    fn nat_of(kind: NatKind) -> NatBox {
        NatBox::new(NAT_IP, NatBehavior::preset(kind))
    }

    fn rng(seed: u64) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(seed)
    }

    #[test]
    fn full_cone_passes_unsolicited_inbound_from_anyone() {
        let mut nat = nat_of(NatKind::FullCone);
        let host = inside(10, 5000);
        let external = nat
            .outbound(at(0), host, remote(1, 80), &mut rng(1))
            .unwrap();
        assert_eq!(nat.inbound(at(1), remote(2, 9999), external), Some(host));
    }

    #[test]
    fn address_restricted_passes_a_new_port_from_a_contacted_ip_only() {
        let mut nat = nat_of(NatKind::AddressRestricted);
        let host = inside(10, 5000);
        let external = nat
            .outbound(at(0), host, remote(1, 80), &mut rng(1))
            .unwrap();
        assert_eq!(nat.inbound(at(1), remote(2, 80), external), None, "new IP");
        assert_eq!(
            nat.inbound(at(1), remote(1, 81), external),
            Some(host),
            "new port"
        );
        assert_eq!(nat.inbound(at(1), remote(1, 80), external), Some(host));
    }

    #[test]
    fn port_restricted_passes_only_the_contacted_endpoint() {
        let mut nat = nat_of(NatKind::PortRestricted);
        let host = inside(10, 5000);
        let external = nat
            .outbound(at(0), host, remote(1, 80), &mut rng(1))
            .unwrap();
        assert_eq!(nat.inbound(at(1), remote(2, 80), external), None, "new IP");
        assert_eq!(
            nat.inbound(at(1), remote(1, 81), external),
            None,
            "new port"
        );
        assert_eq!(nat.inbound(at(1), remote(1, 80), external), Some(host));
    }

    #[test]
    fn inbound_without_any_mapping_or_to_another_address_is_dropped() {
        for kind in NatKind::ALL {
            let mut nat = nat_of(kind);
            let unmapped = SocketAddrV4::new(NAT_IP, 5000);
            assert_eq!(
                nat.inbound(at(0), remote(1, 80), unmapped),
                None,
                "{kind:?}"
            );
            let host = inside(10, 5000);
            let external = nat
                .outbound(at(0), host, remote(1, 80), &mut rng(1))
                .unwrap();
            let elsewhere = SocketAddrV4::new(Ipv4Addr::new(203, 0, 113, 99), external.port());
            assert_eq!(
                nat.inbound(at(0), remote(1, 80), elsewhere),
                None,
                "{kind:?}"
            );
        }
    }

    #[test]
    fn endpoint_independent_mapping_reuses_the_port_for_every_destination() {
        let mut nat = nat_of(NatKind::PortRestricted);
        let host = inside(10, 5000);
        let a = nat
            .outbound(at(0), host, remote(1, 80), &mut rng(1))
            .unwrap();
        let b = nat
            .outbound(at(0), host, remote(2, 443), &mut rng(1))
            .unwrap();
        assert_eq!(a, b);
        assert_eq!(*a.ip(), NAT_IP);
        assert_eq!(nat.live_mappings(at(0)), 1);
    }

    #[test]
    fn address_and_port_dependent_mapping_takes_a_new_port_per_destination_port() {
        let mut nat = nat_of(NatKind::SymmetricSequential);
        let host = inside(10, 5000);
        let a = nat
            .outbound(at(0), host, remote(1, 80), &mut rng(1))
            .unwrap();
        let b = nat
            .outbound(at(0), host, remote(1, 81), &mut rng(1))
            .unwrap();
        let a_again = nat
            .outbound(at(0), host, remote(1, 80), &mut rng(1))
            .unwrap();
        assert_ne!(a.port(), b.port());
        assert_eq!(a, a_again);
        assert_eq!(nat.live_mappings(at(0)), 2);
    }

    #[test]
    fn address_dependent_mapping_takes_a_new_port_per_destination_ip() {
        let mut nat = NatBox::new(
            NAT_IP,
            behavior(
                Mapping::AddressDependent,
                PortAllocation::Sequential,
                Filtering::AddressDependent,
            ),
        );
        let host = inside(10, 5000);
        let a = nat
            .outbound(at(0), host, remote(1, 80), &mut rng(1))
            .unwrap();
        let same_ip = nat
            .outbound(at(0), host, remote(1, 81), &mut rng(1))
            .unwrap();
        let new_ip = nat
            .outbound(at(0), host, remote(2, 80), &mut rng(1))
            .unwrap();
        assert_eq!(a, same_ip);
        assert_ne!(a.port(), new_ip.port());
    }

    #[test]
    fn preserving_keeps_the_inside_port_unless_another_host_holds_it() {
        let mut nat = nat_of(NatKind::FullCone);
        let first = nat.outbound(at(0), inside(10, 5000), remote(1, 80), &mut rng(1));
        let second = nat.outbound(at(0), inside(11, 5000), remote(1, 80), &mut rng(1));
        assert_eq!(first.unwrap().port(), 5000);
        let second = second.unwrap().port();
        assert_ne!(second, 5000);
        assert!(EXTERNAL_PORTS.contains(&second));
    }

    #[test]
    fn sequential_hands_out_consecutive_ports() {
        let mut nat = nat_of(NatKind::SymmetricSequential);
        let host = inside(10, 5000);
        let ports: Vec<u16> = (0..5)
            .map(|i| {
                nat.outbound(at(0), host, remote(1, 80 + i), &mut rng(1))
                    .unwrap()
                    .port()
            })
            .collect();
        for pair in ports.windows(2) {
            assert_eq!(pair[1], pair[0] + 1, "{ports:?}");
        }
    }

    #[test]
    fn sequential_skips_ports_in_use_and_wraps_within_the_range() {
        let sequential = behavior(
            Mapping::EndpointIndependent,
            PortAllocation::Sequential,
            Filtering::EndpointIndependent,
        );
        let mut nat = NatBox::with_port_range(NAT_IP, sequential, 2000..=2003);
        let ports: Vec<u16> = (0..4)
            .map(|i| {
                nat.outbound(at(0), inside(10 + i, 7), remote(1, 80), &mut rng(1))
                    .unwrap()
                    .port()
            })
            .collect();
        assert_eq!(ports, [2000, 2001, 2002, 2003]);
        // 2001 expires while the others are kept alive; the cursor wraps to 2000 (in use) and
        // skips to 2001.
        for host in [10, 12, 13] {
            nat.outbound(at(20), inside(host, 7), remote(1, 80), &mut rng(1));
        }
        let reused = nat.outbound(at(40), inside(20, 7), remote(1, 80), &mut rng(1));
        assert_eq!(reused.unwrap().port(), 2001);
    }

    fn random_ports(seed: u64) -> Vec<u16> {
        let mut nat = nat_of(NatKind::SymmetricRandom);
        let mut rng = rng(seed);
        (0..20)
            .map(|i| {
                nat.outbound(at(0), inside(10, 5000), remote(1, 1000 + i), &mut rng)
                    .unwrap()
                    .port()
            })
            .collect()
    }

    #[test]
    fn random_allocation_is_scattered_and_reproducible_per_seed() {
        let ports = random_ports(7);
        let consecutive = ports.windows(2).filter(|p| p[1] == p[0] + 1).count();
        assert!(consecutive < 2, "{ports:?}");
        assert!(ports.iter().all(|p| EXTERNAL_PORTS.contains(p)));
        assert_eq!(ports, random_ports(7));
        assert_ne!(ports, random_ports(8));
    }

    #[test]
    fn an_idle_mapping_expires() {
        let mut nat = nat_of(NatKind::FullCone);
        let timeout = nat.behavior().mapping_timeout;
        let host = inside(10, 5000);
        let external = nat
            .outbound(at(0), host, remote(1, 80), &mut rng(1))
            .unwrap();
        assert_eq!(nat.live_mappings(timeout - at(1)), 1);
        assert_eq!(nat.live_mappings(timeout + at(1)), 0);
        assert_eq!(nat.inbound(timeout + at(1), remote(1, 80), external), None);
    }

    #[test]
    fn a_mapping_made_after_expiry_gets_a_port_by_the_allocation_rule() {
        let mut nat = nat_of(NatKind::SymmetricSequential);
        let timeout = nat.behavior().mapping_timeout;
        let host = inside(10, 5000);
        let old = nat
            .outbound(at(0), host, remote(1, 80), &mut rng(1))
            .unwrap();
        let new = nat
            .outbound(timeout, host, remote(1, 80), &mut rng(1))
            .unwrap();
        assert_eq!(new.port(), old.port() + 1);
        assert_eq!(nat.inbound(timeout, remote(1, 80), old), None);
        assert_eq!(nat.inbound(timeout, remote(1, 80), new), Some(host));
        assert_eq!(nat.live_mappings(timeout), 1);
    }

    #[test]
    fn outbound_traffic_keeps_a_mapping_alive() {
        let mut nat = nat_of(NatKind::PortRestricted);
        let timeout = nat.behavior().mapping_timeout;
        let host = inside(10, 5000);
        let external = nat
            .outbound(at(0), host, remote(1, 80), &mut rng(1))
            .unwrap();
        let mut now = at(0);
        for _ in 0..5 {
            now += timeout - at(1);
            let again = nat.outbound(now, host, remote(1, 80), &mut rng(1));
            assert_eq!(again, Some(external));
        }
        now += timeout - at(1);
        assert_eq!(nat.inbound(now, remote(1, 80), external), Some(host));
    }

    #[test]
    fn passing_inbound_traffic_keeps_a_mapping_alive() {
        let mut nat = nat_of(NatKind::PortRestricted);
        let timeout = nat.behavior().mapping_timeout;
        let host = inside(10, 5000);
        let external = nat
            .outbound(at(0), host, remote(1, 80), &mut rng(1))
            .unwrap();
        let mut now = at(0);
        for _ in 0..5 {
            now += timeout - at(1);
            assert_eq!(nat.inbound(now, remote(1, 80), external), Some(host));
        }
        assert_eq!(nat.live_mappings(now + timeout - at(1)), 1);
        // Filtered-out packets refresh nothing.
        let mut nat = nat_of(NatKind::PortRestricted);
        let external = nat
            .outbound(at(0), host, remote(1, 80), &mut rng(1))
            .unwrap();
        assert_eq!(nat.inbound(timeout - at(1), remote(2, 80), external), None);
        assert_eq!(nat.live_mappings(timeout), 0);
    }

    #[test]
    fn a_permission_expires_with_its_own_idleness() {
        // The mapping stays alive through traffic to B, but A's permission lapses.
        let mut nat = nat_of(NatKind::PortRestricted);
        let timeout = nat.behavior().mapping_timeout;
        let host = inside(10, 5000);
        let external = nat
            .outbound(at(0), host, remote(1, 80), &mut rng(1))
            .unwrap();
        let mut now = at(0);
        for _ in 0..3 {
            now += timeout / 2;
            nat.outbound(now, host, remote(2, 80), &mut rng(1));
        }
        assert_eq!(nat.inbound(now, remote(2, 80), external), Some(host));
        assert_eq!(nat.inbound(now, remote(1, 80), external), None);
    }

    #[test]
    fn flush_forgets_every_mapping() {
        let mut nat = nat_of(NatKind::SymmetricRandom);
        let mut rng = rng(3);
        let externals: Vec<SocketAddrV4> = (0..10)
            .map(|i| {
                nat.outbound(at(0), inside(10, 5000), remote(1, 1000 + i), &mut rng)
                    .unwrap()
            })
            .collect();
        nat.flush();
        assert_eq!(nat.live_mappings(at(0)), 0);
        for (i, external) in (0..).zip(externals) {
            assert_eq!(nat.inbound(at(0), remote(1, 1000 + i), external), None);
        }
    }

    #[test]
    fn a_full_port_range_drops_new_mappings_until_one_expires() {
        for allocation in [
            PortAllocation::Preserving,
            PortAllocation::Sequential,
            PortAllocation::Random,
        ] {
            let symmetric = behavior(
                Mapping::AddressAndPortDependent,
                allocation,
                Filtering::AddressAndPortDependent,
            );
            let mut nat = NatBox::with_port_range(NAT_IP, symmetric, 40_000..=40_099);
            let mut rng = rng(5);
            for i in 0..100 {
                let external = nat.outbound(at(0), inside(10, 5000), remote(1, i), &mut rng);
                assert!(external.is_some(), "{allocation:?} {i}");
            }
            assert_eq!(nat.live_mappings(at(0)), 100);
            let full = nat.outbound(at(1), inside(10, 5000), remote(1, 100), &mut rng);
            assert_eq!(full, None, "{allocation:?}");
            let later = nat.outbound(at(31), inside(10, 5000), remote(1, 100), &mut rng);
            assert!(later.is_some(), "{allocation:?}");
        }
    }

    #[test]
    fn an_empty_port_range_drops_everything() {
        let preset = NatBehavior::preset(NatKind::FullCone);
        #[allow(clippy::reversed_empty_ranges)]
        let mut nat = NatBox::with_port_range(NAT_IP, preset, 2..=1);
        assert_eq!(
            nat.outbound(at(0), inside(10, 5), remote(1, 80), &mut rng(1)),
            None
        );
    }

    #[test]
    fn the_sweep_keeps_the_table_near_the_live_mappings() {
        let mut nat = nat_of(NatKind::SymmetricSequential);
        let timeout = nat.behavior().mapping_timeout;
        // One new mapping per second for ten timeouts: about `timeout` of them live at once.
        let total = 10 * timeout.as_secs();
        for i in 0..total {
            let port = u16::try_from(i).unwrap();
            nat.outbound(at(i), inside(10, 5000), remote(1, port), &mut rng(1));
        }
        let live = nat.live_mappings(at(total));
        assert!(nat.by_port.len() <= MIN_SWEEP_SIZE.max(2 * live) + 1);
        assert_eq!(nat.by_port.len(), nat.by_key.len());
    }

    fn any_behavior() -> impl Strategy<Value = NatBehavior> {
        let mapping = prop_oneof![
            Just(Mapping::EndpointIndependent),
            Just(Mapping::AddressDependent),
            Just(Mapping::AddressAndPortDependent),
        ];
        let allocation = prop_oneof![
            Just(PortAllocation::Preserving),
            Just(PortAllocation::Sequential),
            Just(PortAllocation::Random),
        ];
        let filtering = prop_oneof![
            Just(Filtering::EndpointIndependent),
            Just(Filtering::AddressDependent),
            Just(Filtering::AddressAndPortDependent),
        ];
        (mapping, allocation, filtering).prop_map(|(m, a, f)| behavior(m, a, f))
    }

    proptest! {
        /// Whatever the behavior and traffic, a port returned to one inside endpoint was not
        /// live for another one, replies to it reach the sender, and a drop means the range is
        /// really full.
        #[test]
        fn no_two_inside_endpoints_share_a_live_external_port(
            behavior in any_behavior(),
            seed in any::<u64>(),
            packets in prop::collection::vec((0..4u8, 0..4u8, 0..20u64), 1..200),
        ) {
            let ports = 3000..=3011;
            let range_len = ports.len();
            let mut nat = NatBox::with_port_range(NAT_IP, behavior, ports);
            let mut rng = rng(seed);
            // External port → the inside endpoint it last carried, and when.
            let mut holders: HashMap<u16, (SocketAddrV4, Duration)> = HashMap::new();
            let mut now = Duration::ZERO;
            for (host, destination, advance) in packets {
                now += at(advance);
                // Two inside hosts share inside port 3000, which is in the external range.
                let from = inside(10 + host % 2, 3000 + u16::from(host / 2));
                let to = remote(1 + destination % 2, 80 + u16::from(destination / 2));
                match nat.outbound(now, from, to, &mut rng) {
                    Some(external) => {
                        prop_assert_eq!(*external.ip(), NAT_IP);
                        if let Some(&(holder, last)) = holders.get(&external.port()) {
                            prop_assert!(
                                holder == from || now - last >= behavior.mapping_timeout,
                                "port {} went to {} while {} held it", external.port(), from, holder
                            );
                        }
                        holders.insert(external.port(), (from, now));
                        prop_assert_eq!(nat.inbound(now, to, external), Some(from));
                    }
                    None => prop_assert_eq!(nat.live_mappings(now), range_len),
                }
            }
        }
    }
}
