//! The simulator's prediction for a lab: the same [`Network`] with one [`NatBox`] per NAT, and
//! a packet routed through them as the lab's kernel routes it — up through the sender's NATs
//! until the destination's network, then in through the NATs above the receiver.
//!
//! Only translation and filtering (and `block_udp`) are modelled: no links, no time passing
//! except the `now` the caller gives. A test sends the same packets through a [`Lab`] and a
//! [`PacketModel`] and compares what arrives.
//!
//! [`Lab`]: super::Lab

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Duration;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::nat::NatBox;
use crate::topology::Network;

/// Where a packet arrived, and with which source address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The receiving host (an index into [`Network::hosts`]).
    pub host: usize,
    /// The port it was sent to on that host.
    pub port: u16,
    /// Its source address as the receiver sees it.
    pub from: SocketAddrV4,
}

/// Who holds an address on one network.
#[derive(Clone, Copy, Debug)]
enum Owner {
    Host(usize),
    Nat(usize),
}

/// The model (see the module docs).
#[derive(Debug)]
pub struct PacketModel {
    network: Network,
    nats: Vec<NatBox>,
    rng: ChaCha8Rng,
}

impl PacketModel {
    /// A model of `network` with no mappings; `seed` drives random port allocation.
    pub fn new(network: &Network, seed: u64) -> Self {
        Self {
            network: network.clone(),
            nats: network
                .nats
                .iter()
                .map(|nat| NatBox::new(nat.external_ip, nat.behavior))
                .collect(),
            rng: ChaCha8Rng::seed_from_u64(seed),
        }
    }

    /// The NAT models, in [`Network::nats`] order.
    pub fn nats(&self) -> &[NatBox] {
        &self.nats
    }

    /// Which host or NAT has address `ip` on network `net` (`None`: the internet).
    fn owner(&self, net: Option<usize>, ip: Ipv4Addr) -> Option<Owner> {
        if let Some(host) = self
            .network
            .hosts
            .iter()
            .position(|h| h.parent == net && h.ip == ip)
        {
            return Some(Owner::Host(host));
        }
        self.network
            .nats
            .iter()
            .position(|n| n.parent == net && n.external_ip == ip)
            .map(Owner::Nat)
    }

    /// One datagram from host index `host`'s port `port` to `to` at `now`: where it arrives, or
    /// `None` when a NAT drops it (no mapping, filtering, no hairpinning, UDP blocked) or
    /// nothing has the address.
    pub fn send(
        &mut self,
        now: Duration,
        host: usize,
        port: u16,
        to: SocketAddrV4,
    ) -> Option<Delivery> {
        let sender = self.network.hosts.get(host)?;
        let mut from = SocketAddrV4::new(sender.ip, port);
        let mut at = sender.parent;
        let mut left_through = Vec::new();
        // Up: out through each NAT until the destination is on the current network.
        while self.owner(at, *to.ip()).is_none() {
            let nat = at?;
            if self.network.nats[nat].block_udp {
                return None;
            }
            from = self.nats[nat].outbound(now, from, to, &mut self.rng)?;
            left_through.push(nat);
            at = self.network.nats[nat].parent;
        }
        // Down: in through each NAT until a host has the address.
        let mut dst = to;
        loop {
            match self.owner(at, *dst.ip())? {
                Owner::Host(receiver) => {
                    return Some(Delivery {
                        host: receiver,
                        port: dst.port(),
                        from,
                    });
                }
                Owner::Nat(nat) => {
                    let spec = &self.network.nats[nat];
                    if spec.block_udp || (left_through.contains(&nat) && !spec.behavior.hairpin) {
                        return None;
                    }
                    dst = self.nats[nat].inbound(now, from, dst)?;
                    at = Some(nat);
                }
            }
        }
    }
}
