//! The nftables rulesets the lab loads into its namespaces: pure text from a resolved NAT or
//! host, so they are unit-tested without root.
//!
//! How each NAT behavior is built (all in one `table ip meshlab` per NAT namespace; `wan` is the
//! NAT's outside interface):
//!
//! | behavior | nftables |
//! |---|---|
//! | endpoint-independent mapping, ports preserved | `masquerade` (Linux keeps the source port whenever the flow's 5-tuple stays unique; so two inside hosts sending from one port to different remotes may share an external port, where the model gives the second its own) |
//! | address-and-port-dependent mapping, random ports ("symmetric") | `masquerade fully-random` (a fresh random port per new conntrack flow, so per destination) |
//! | address-and-port-dependent filtering ("port-restricted") | conntrack alone: only replies to a flow's own 5-tuple are de-NATed |
//! | endpoint-independent filtering ("full cone") | a dynamic map `@inbound` (external port → inside address . port), filled from every packet of a NAT'ed flow, and a `dnat ip to udp dport map @inbound` for new inbound flows |
//! | address-dependent filtering ("address-restricted") | the same map, with the `dnat` only when `external port . remote address` is in a dynamic set `@allowed` filled from outbound packets |
//! | mapping timeout | the namespace's own `nf_conntrack_udp_timeout` and `_stream` (per network namespace), and the same timeout on `@inbound` and `@allowed` |
//! | `block_udp` | `meta l4proto udp counter drop` in the forward hook (the counter shows what it dropped) |
//! | link loss | `numgen random mod 10000 < N drop`, each direction |
//!
//! Every NAT also drops UDP addressed to itself (the input hook). Beyond what a real NAT does,
//! this matters to Linux: an unsolicited packet to a mapped port would otherwise leave a
//! confirmed conntrack entry (remote → NAT) whose reply tuple collides with a later outbound
//! flow to that remote, and `masquerade` would then move that flow to another port — breaking
//! endpoint-independent mapping exactly when hole punching needs it. A dropped packet's
//! conntrack entry is never confirmed.
//!
//! Not buildable with Linux NAT, refused by [`Lab::build`] with [`LabError::Unsupported`]
//! before anything is created: address-dependent mapping, sequential port allocation,
//! endpoint-independent mapping with random ports, symmetric mapping with preserved ports, and
//! hairpinning.
//!
//! [`Lab::build`]: super::Lab::build
//! [`LabError::Unsupported`]: super::LabError::Unsupported

use std::fmt::Write as _;
use std::time::Duration;

use crate::topology::{Filtering, Mapping, Nat, NatBehavior, PortAllocation};

/// The nftables table the lab creates in each of its namespaces.
pub(crate) const TABLE: &str = "meshlab";

/// A NAT's outside interface, inside its namespace.
pub(crate) const WAN: &str = "wan";

/// The bridge of a NAT's inside network, inside its namespace.
pub(crate) const LAN: &str = "lan";

/// A host's one interface, inside its namespace.
pub(crate) const HOST_IF: &str = "eth0";

/// Loss is drawn as `numgen random mod LOSS_SCALE < N`: per ten thousand.
const LOSS_SCALE: u32 = 10_000;

/// A NAT behavior the kernel lab cannot build: what of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Unsupported(pub(crate) String);

/// The `masquerade` statement for a mapping and port allocation.
fn masquerade(behavior: &NatBehavior) -> Result<&'static str, Unsupported> {
    match (behavior.mapping, behavior.allocation) {
        (Mapping::EndpointIndependent, PortAllocation::Preserving) => Ok("masquerade"),
        (Mapping::AddressAndPortDependent, PortAllocation::Random) => Ok("masquerade fully-random"),
        (mapping, allocation) => Err(Unsupported(format!(
            "{mapping:?} mapping with {allocation:?} port allocation"
        ))),
    }
}

/// The conntrack timeout (whole seconds, at least one) that stands for a mapping timeout.
pub(crate) fn timeout_secs(timeout: Duration) -> u64 {
    timeout.as_secs().max(1)
}

/// `numgen` threshold for a loss share, or `None` when nothing is lost.
fn loss_threshold(loss: f64) -> Option<u32> {
    // loss is checked to be within 0.0..=1.0 by Topology::resolve, so this fits a u32.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let n = (loss * f64::from(LOSS_SCALE)).round() as u32;
    (n > 0).then_some(n)
}

/// The ruleset of a NAT's namespace, or what of its behavior the lab cannot build.
pub(crate) fn nat_ruleset(nat: &Nat) -> Result<String, Unsupported> {
    let behavior = &nat.behavior;
    if behavior.hairpin {
        return Err(Unsupported("hairpinning".into()));
    }
    let masquerade = masquerade(behavior)?;
    let timeout = timeout_secs(behavior.mapping_timeout);
    let cone = behavior.filtering != Filtering::AddressAndPortDependent;
    let address_restricted = behavior.filtering == Filtering::AddressDependent;

    let mut text = String::new();
    // `flush` first so a reload replaces rather than appends; `add table` makes the flush valid
    // on a fresh namespace.
    let _ = writeln!(
        text,
        "add table ip {TABLE}\nflush table ip {TABLE}\ntable ip {TABLE} {{"
    );
    if cone {
        let _ = writeln!(
            text,
            "  map inbound {{ type inet_service : ipv4_addr . inet_service; \
             flags dynamic,timeout; timeout {timeout}s; }}"
        );
    }
    if address_restricted {
        let _ = writeln!(
            text,
            "  set allowed {{ type inet_service . ipv4_addr; flags dynamic,timeout; \
             timeout {timeout}s; }}"
        );
    }

    // New inbound flows: only the cone kinds translate them; the others leave them to the
    // input hook, which drops them.
    let _ = writeln!(
        text,
        "  chain prerouting {{ type nat hook prerouting priority dstnat; policy accept;"
    );
    if address_restricted {
        let _ = writeln!(
            text,
            "    iifname \"{WAN}\" meta l4proto udp udp dport . ip saddr @allowed \
             dnat ip to udp dport map @inbound"
        );
    } else if cone {
        let _ = writeln!(
            text,
            "    iifname \"{WAN}\" meta l4proto udp dnat ip to udp dport map @inbound"
        );
    }
    let _ = writeln!(text, "  }}");

    let _ = writeln!(
        text,
        "  chain postrouting {{ type nat hook postrouting priority srcnat; policy accept;\n    \
         oifname \"{WAN}\" {masquerade}\n  }}"
    );

    if cone {
        // Remember every NAT'ed flow's external port and inside endpoint, refreshed by each of
        // its packets either way (the model refreshes a mapping on outbound and on passing
        // inbound packets). A flow we masqueraded (`snat`) has the inside endpoint in its
        // original tuple and the external port in its reply tuple; a flow let in through the
        // map (`dnat`) the other way round. Outbound packets are seen after masquerade
        // (srcnat + 1), inbound ones after the map's dnat (dstnat + 1).
        let remember = |text: &mut String, hook: &str, priority: &str, iface: &str| {
            let _ = writeln!(
                text,
                "  chain remember_{hook} {{ type filter hook {hook} priority {priority}; \
                 policy accept;"
            );
            let _ = writeln!(
                text,
                "    {iface} \"{WAN}\" meta l4proto udp ct status snat update @inbound \
                 {{ ct reply proto-dst : ct original ip saddr . ct original proto-src }}"
            );
            let _ = writeln!(
                text,
                "    {iface} \"{WAN}\" meta l4proto udp ct status dnat update @inbound \
                 {{ ct original proto-dst : ct reply ip saddr . ct reply proto-src }}"
            );
            if address_restricted {
                let _ = writeln!(
                    text,
                    "    {iface} \"{WAN}\" meta l4proto udp ct status snat update @allowed \
                     {{ ct reply proto-dst . ct original ip daddr }}"
                );
                let _ = writeln!(
                    text,
                    "    {iface} \"{WAN}\" meta l4proto udp ct status dnat update @allowed \
                     {{ ct original proto-dst . ct original ip saddr }}"
                );
            }
            let _ = writeln!(text, "  }}");
        };
        remember(&mut text, "postrouting", "srcnat + 1", "oifname");
        remember(&mut text, "prerouting", "dstnat + 1", "iifname");
    }

    let _ = writeln!(
        text,
        "  chain forward {{ type filter hook forward priority filter; policy accept;"
    );
    if nat.block_udp {
        let _ = writeln!(text, "    meta l4proto udp counter drop");
    }
    if let Some(n) = loss_threshold(nat.uplink.loss) {
        let _ = writeln!(
            text,
            "    iifname \"{WAN}\" numgen random mod {LOSS_SCALE} < {n} drop\n    \
             oifname \"{WAN}\" numgen random mod {LOSS_SCALE} < {n} drop"
        );
    }
    let _ = writeln!(text, "  }}");

    // See the module docs: unsolicited UDP must not leave a conntrack entry behind.
    let _ = writeln!(
        text,
        "  chain input {{ type filter hook input priority filter; policy accept;\n    \
         meta l4proto udp drop\n  }}\n}}"
    );
    Ok(text)
}

/// The ruleset of a host's namespace: only its access link's loss, if any.
pub(crate) fn host_ruleset(loss: f64) -> Option<String> {
    let n = loss_threshold(loss)?;
    Some(format!(
        "add table ip {TABLE}\nflush table ip {TABLE}\ntable ip {TABLE} {{\n  \
         chain input {{ type filter hook input priority filter; policy accept;\n    \
         iifname \"{HOST_IF}\" numgen random mod {LOSS_SCALE} < {n} drop\n  }}\n  \
         chain output {{ type filter hook output priority filter; policy accept;\n    \
         oifname \"{HOST_IF}\" numgen random mod {LOSS_SCALE} < {n} drop\n  }}\n}}\n"
    ))
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;
    use crate::topology::{LinkConfig, NatKind};

    fn nat(kind: NatKind) -> Nat {
        Nat {
            name: "n".into(),
            behavior: NatBehavior::preset(kind),
            parent: None,
            external_ip: Ipv4Addr::new(203, 0, 113, 1),
            lan: Ipv4Addr::new(10, 0, 0, 0),
            gateway: Ipv4Addr::new(10, 0, 0, 1),
            uplink: LinkConfig::default(),
            block_udp: false,
        }
    }

    #[test]
    fn each_preset_gets_its_constructs() {
        let port_restricted = nat_ruleset(&nat(NatKind::PortRestricted)).unwrap();
        assert!(port_restricted.contains("oifname \"wan\" masquerade\n"));
        assert!(!port_restricted.contains("@inbound"));

        let symmetric = nat_ruleset(&nat(NatKind::SymmetricRandom)).unwrap();
        assert!(symmetric.contains("masquerade fully-random"));
        assert!(!symmetric.contains("@inbound"));

        let full_cone = nat_ruleset(&nat(NatKind::FullCone)).unwrap();
        assert!(full_cone.contains("dnat ip to udp dport map @inbound"));
        assert!(!full_cone.contains("@allowed"));

        let address_restricted = nat_ruleset(&nat(NatKind::AddressRestricted)).unwrap();
        assert!(address_restricted.contains("udp dport . ip saddr @allowed dnat"));
        assert!(address_restricted.contains("timeout 120s"));

        for text in [port_restricted, symmetric, full_cone, address_restricted] {
            assert!(text.contains("meta l4proto udp drop\n  }\n}"), "{text}");
            assert!(!text.contains("numgen"));
        }
    }

    #[test]
    fn what_linux_cannot_do_is_refused_by_name() {
        let err = nat_ruleset(&nat(NatKind::SymmetricSequential)).unwrap_err();
        assert!(err.0.contains("Sequential"), "{err:?}");
        let mut hairpin = nat(NatKind::FullCone);
        hairpin.behavior.hairpin = true;
        assert_eq!(
            nat_ruleset(&hairpin).unwrap_err(),
            Unsupported("hairpinning".into())
        );
        let mut address_mapping = nat(NatKind::PortRestricted);
        address_mapping.behavior.mapping = Mapping::AddressDependent;
        assert!(nat_ruleset(&address_mapping).is_err());
    }

    #[test]
    fn blocking_loss_and_timeouts() {
        let mut blocked = nat(NatKind::PortRestricted);
        blocked.block_udp = true;
        blocked.uplink.loss = 0.015;
        blocked.behavior.mapping_timeout = Duration::from_millis(300);
        let text = nat_ruleset(&blocked).unwrap();
        assert!(text.contains(
            "forward priority filter; policy accept;\n    meta l4proto udp counter drop"
        ));
        assert!(text.contains("numgen random mod 10000 < 150 drop"));
        assert_eq!(timeout_secs(blocked.behavior.mapping_timeout), 1);
        assert_eq!(host_ruleset(0.0), None);
        assert!(host_ruleset(0.5).unwrap().contains("< 5000 drop"));
    }
}
