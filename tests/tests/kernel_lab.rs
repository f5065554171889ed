//! The kernel lab against the simulator's NAT model (issue 7): a network of NATs built out of
//! Linux network namespaces, veths and nftables (`mesh_netsim::lab`), plain UDP datagrams sent
//! through it by probes inside the hosts' namespaces, and the same datagrams sent through the
//! simulator's `NatBox` models of the same NATs. What gets through, and which external
//! addresses the receivers see, must agree — the claims are checked on the kernel's results
//! and then the model must predict every one of them.
//!
//! These tests need root, iproute2, nftables and python3, and skip (saying why) without them,
//! except under `CI`, where a skip fails. Their `namespace_` names put them in nextest's serial
//! `namespace-and-users` group (`.config/nextest.toml`).

// Test helpers outside #[test] functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::net::SocketAddrV4;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use mesh_netsim::lab::{self, Lab, PacketModel, UdpProbe};
use mesh_netsim::topology::{Network, Topology};
use mesh_tests::skip_test;

/// Two public rendezvous hosts and one host behind each kind of NAT the lab builds, plus a
/// home NAT behind a carrier-grade NAT and a NAT that blocks UDP.
const TOPOLOGY: &str = r#"
[[nat]]
name = "A"
kind = "port-restricted"

[[nat]]
name = "B"
kind = "symmetric-random"

[[nat]]
name = "C"
kind = "full-cone"

[[nat]]
name = "D"
kind = "address-restricted"

[[nat]]
name = "carrier"
kind = "port-restricted"

[[nat]]
name = "home"
kind = "port-restricted"
behind = "carrier"

[[nat]]
name = "blocked"
kind = "port-restricted"
block_udp = true

[[host]]
name = "s1"

[[host]]
name = "s2"

[[host]]
name = "a"
behind = "A"

[[host]]
name = "b"
behind = "B"

[[host]]
name = "c"
behind = "C"

[[host]]
name = "d"
behind = "D"

[[host]]
name = "e"
behind = "home"

[[host]]
name = "f"
behind = "blocked"
"#;

/// The rendezvous port on s1 and s2, and s1's second port.
const S_PORT: u16 = 3478;
const S_OTHER_PORT: u16 = 3479;
/// The port every host behind a NAT sends from.
const PORT: u16 = 5000;
/// How long a receiver waits before a datagram counts as dropped. Veths deliver in
/// microseconds; this is only the price of each drop.
const DROP_WAIT: Duration = Duration::from_millis(300);

/// Where a step's datagram goes.
#[derive(Clone, Debug)]
enum To {
    /// A host's own address and a port.
    Host(&'static str, u16),
    /// Back to the source address the receiver of an earlier step (by label) saw: a reply, or
    /// a punch at a reflexive address. It arrives (if it does) at that step's sender.
    SeenBy(String),
}

/// One datagram.
#[derive(Clone, Debug)]
struct Step {
    label: String,
    from: &'static str,
    port: u16,
    to: To,
    /// Whether it should arrive: the NAT definitions' answer, checked on the kernel.
    passes: bool,
    /// How long to wait before sending it (both worlds).
    after: Duration,
}

fn step(label: &str, from: &'static str, port: u16, to: To, passes: bool) -> Step {
    Step {
        label: label.to_owned(),
        from,
        port,
        to,
        passes,
        after: Duration::ZERO,
    }
}

fn seen(label: &str) -> To {
    To::SeenBy(label.to_owned())
}

/// The packet sequence, with what RFC 4787's definitions say of each datagram.
fn steps() -> Vec<Step> {
    let mut steps = Vec::new();
    // (host, full cone?, address-restricted or full cone?)
    for (x, eif, adf_or_eif) in [
        ("a", false, false), // port-restricted
        ("b", false, false), // symmetric
        ("c", true, true),   // full cone
        ("d", false, true),  // address-restricted
    ] {
        let to_s1 = format!("{x}->s1");
        let to_s2 = format!("{x}->s2");
        steps.extend([
            step(&to_s1, x, PORT, To::Host("s1", S_PORT), true),
            // Unsolicited, from an address x never sent to.
            step(&format!("s2->{x}"), "s2", S_PORT, seen(&to_s1), eif),
            // From the address x sent to, but another port.
            step(
                &format!("s1:other->{x}"),
                "s1",
                S_OTHER_PORT,
                seen(&to_s1),
                adf_or_eif,
            ),
            step(&to_s2, x, PORT, To::Host("s2", S_PORT), true),
            // A reply to what x sent passes every NAT.
            step(&format!("s2->{x}:reply"), "s2", S_PORT, seen(&to_s2), true),
        ]);
    }
    steps.extend([
        // Carrier-grade NAT: two NATs deep, replies pass, strangers do not.
        step("e->s1", "e", PORT, To::Host("s1", S_PORT), true),
        step("s1->e:reply", "s1", S_PORT, seen("e->s1"), true),
        step("s2->e", "s2", S_PORT, seen("e->s1"), false),
        // A network that blocks UDP.
        step("f->s1", "f", PORT, To::Host("s1", S_PORT), false),
        // Hole punching between port-restricted a and symmetric b, each at the other's address
        // as s1 saw it: b's mapping toward s1 admits only s1, and b's packet toward a leaves
        // from a new port that a never sent to. Nothing gets through.
        step("a->b:punch", "a", PORT, seen("b->s1"), false),
        step("b->a:punch", "b", PORT, seen("a->s1"), false),
        step("a->b:punch-again", "a", PORT, seen("b->s1"), false),
        // a and full-cone c: c lets a in; a then admits c's (endpoint-independent) address.
        step("a->c:punch", "a", PORT, seen("c->s1"), true),
        step("c->a:punch", "c", PORT, seen("a->s1"), true),
        // Symmetric b and full-cone c: b's new mapping reaches c, c answers it; but c at b's
        // s1-mapping is still refused.
        step("b->c:punch", "b", PORT, seen("c->s1"), true),
        step("c->b:reply", "c", PORT, seen("b->c:punch"), true),
        step("c->b:at-s1-mapping", "c", PORT, seen("b->s1"), false),
    ]);
    steps
}

/// What one world (the kernel or the model) did with each step: the source address the
/// receiver saw, or `None` when nothing arrived.
type Outcomes = Vec<Option<SocketAddrV4>>;

/// The step's destination and the host and port that receive it, given the outcomes so far.
fn destination(
    network: &Network,
    steps: &[Step],
    outcomes: &Outcomes,
    step: &Step,
) -> (SocketAddrV4, &'static str, u16) {
    match &step.to {
        To::Host(host, port) => {
            let ip = network.hosts[network.host(host).unwrap()].ip;
            (SocketAddrV4::new(ip, *port), host, *port)
        }
        To::SeenBy(label) => {
            let earlier = steps.iter().position(|s| &s.label == label).unwrap();
            let address = outcomes[earlier].unwrap_or_else(|| {
                panic!("{}: step {label} delivered nothing to answer", step.label)
            });
            (address, steps[earlier].from, steps[earlier].port)
        }
    }
}

/// The probes, one per host, each bound to the ports the steps use.
fn start_probes(lab: &Lab, steps: &[Step]) -> HashMap<&'static str, UdpProbe> {
    let mut ports: HashMap<&'static str, Vec<u16>> = HashMap::new();
    for s in steps {
        ports.entry(s.from).or_default().push(s.port);
        if let To::Host(host, port) = s.to {
            ports.entry(host).or_default().push(port);
        }
    }
    let mut probes = HashMap::new();
    for (host, mut ports) in ports {
        ports.sort_unstable();
        ports.dedup();
        let mut probe = UdpProbe::start(lab, host).unwrap();
        for port in ports {
            probe.bind(port).unwrap();
        }
        probes.insert(host, probe);
    }
    probes
}

/// Sends every step through the kernel lab.
fn run_kernel(lab: &Lab, steps: &[Step]) -> Outcomes {
    let mut probes = start_probes(lab, steps);
    let mut outcomes: Outcomes = Vec::new();
    for s in steps {
        std::thread::sleep(s.after);
        let (to, receiver, port) = destination(lab.network(), steps, &outcomes, s);
        probes
            .get_mut(s.from)
            .unwrap()
            .send(s.port, to, &s.label)
            .unwrap();
        let received = probes
            .get_mut(receiver)
            .unwrap()
            .recv(port, DROP_WAIT)
            .unwrap();
        if let Some(r) = &received {
            // Anything else is a datagram an earlier step counted as dropped, arriving late.
            assert_eq!(r.tag, s.label, "{receiver}:{port} got a late datagram");
        }
        outcomes.push(received.map(|r| r.from));
    }
    outcomes
}

/// Sends every step through the simulator's NAT models of the same network.
fn run_model(network: &Network, steps: &[Step]) -> Outcomes {
    let mut model = PacketModel::new(network, 7);
    let mut outcomes: Outcomes = Vec::new();
    let mut now = Duration::ZERO;
    for s in steps {
        // A millisecond per datagram, as veths deliver at once.
        now += s.after + Duration::from_millis(1);
        let (to, receiver, port) = destination(network, steps, &outcomes, s);
        let delivery = model.send(now, network.host(s.from).unwrap(), s.port, to);
        if let Some(d) = delivery {
            assert_eq!(
                (network.hosts[d.host].name.as_str(), d.port),
                (receiver, port),
                "{}: the model delivered elsewhere",
                s.label
            );
        }
        outcomes.push(delivery.map(|d| d.from));
    }
    outcomes
}

/// What of an outcome both worlds must agree on: arrived or not; the source IP exactly; the
/// source port by which earlier address it repeats (first-appearance label — random ports
/// differ between the worlds, their sameness must not); and whether the NAT kept the sender's
/// port.
fn properties(steps: &[Step], outcomes: &Outcomes) -> Vec<String> {
    let mut labels: HashMap<SocketAddrV4, usize> = HashMap::new();
    steps
        .iter()
        .zip(outcomes)
        .map(|(s, outcome)| match outcome {
            None => format!("{:<22} dropped", s.label),
            Some(from) => {
                let next = labels.len();
                let label = *labels.entry(*from).or_insert(next);
                format!(
                    "{:<22} from {} address #{label}{}",
                    s.label,
                    from.ip(),
                    if from.port() == s.port {
                        " (port kept)"
                    } else {
                        ""
                    }
                )
            }
        })
        .collect()
}

/// Prints both worlds' properties side by side and checks that the kernel passed and dropped
/// what each step's `passes` says; returns the two views for the caller to compare.
fn compare(steps: &[Step], kernel: &Outcomes, model: &Outcomes) -> (Vec<String>, Vec<String>) {
    let kernel_view = properties(steps, kernel);
    let model_view = properties(steps, model);
    eprintln!("{:<62} | model", "kernel");
    for (k, m) in kernel_view.iter().zip(&model_view) {
        eprintln!("{k:<62} | {m}");
    }
    for (s, outcome) in steps.iter().zip(kernel) {
        assert_eq!(
            outcome.is_some(),
            s.passes,
            "{}: the kernel {} it",
            s.label,
            if outcome.is_some() {
                "delivered"
            } else {
                "dropped"
            }
        );
    }
    (kernel_view, model_view)
}

fn outcome_of<'a>(steps: &[Step], outcomes: &'a Outcomes, label: &str) -> &'a SocketAddrV4 {
    let i = steps.iter().position(|s| s.label == label).unwrap();
    outcomes[i]
        .as_ref()
        .unwrap_or_else(|| panic!("{label} delivered nothing"))
}

/// Skips (or fails under CI) when the lab cannot run here.
fn lab_unsupported() -> bool {
    if let Some(why) = lab::unsupported().or_else(lab::probe::unsupported) {
        skip_test(&why);
        return true;
    }
    false
}

#[test]
fn namespace_kernel_nats_behave_as_the_simulator_models_them() {
    if lab_unsupported() {
        return;
    }
    let network = Topology::from_toml(TOPOLOGY).unwrap().resolve().unwrap();
    let started = Instant::now();
    let lab = Lab::build(&network).unwrap();
    let built = started.elapsed();
    let steps = steps();
    let kernel = run_kernel(&lab, &steps);
    let ran = started.elapsed() - built;
    let model = run_model(&network, &steps);

    eprintln!(
        "lab built in {built:?}, {} datagrams in {ran:?}",
        steps.len()
    );
    // Prints the table and checks each step's pass or drop on the kernel.
    let (kernel_view, model_view) = compare(&steps, &kernel, &model);

    // The mapping claims, on the kernel's own results.
    let ip_of = |name: &str| lab.nat_external_ip(name).unwrap();
    for (x, nat) in [("a", "A"), ("c", "C"), ("d", "D")] {
        let to_s1 = outcome_of(&steps, &kernel, &format!("{x}->s1"));
        let to_s2 = outcome_of(&steps, &kernel, &format!("{x}->s2"));
        assert_eq!(*to_s1.ip(), ip_of(nat));
        assert_eq!(
            to_s1, to_s2,
            "NAT {nat} maps endpoint-independently: one external address for s1 and s2"
        );
        assert_eq!(to_s1.port(), PORT, "NAT {nat} preserves the port");
    }
    let b_s1 = outcome_of(&steps, &kernel, "b->s1");
    let b_s2 = outcome_of(&steps, &kernel, "b->s2");
    assert_eq!(b_s1.ip(), b_s2.ip());
    assert_ne!(
        b_s1.port(),
        b_s2.port(),
        "symmetric NAT B gives each destination its own external port"
    );
    assert_eq!(
        *outcome_of(&steps, &kernel, "e->s1").ip(),
        ip_of("carrier"),
        "behind the carrier-grade NAT, s1 sees the carrier's address"
    );

    // The model predicts all of it.
    assert_eq!(
        kernel_view, model_view,
        "the kernel and the simulator's NAT model disagree (table above)"
    );

    let prefix = lab.prefix().to_owned();
    lab.shutdown().unwrap();
    assert_eq!(
        lab::namespaces_with_prefix(&prefix).unwrap(),
        Vec::<String>::new()
    );
}

#[test]
fn namespace_kernel_mappings_expire_after_the_nat_timeout() {
    if lab_unsupported() {
        return;
    }
    // The conntrack timeout is the NAT namespace's own sysctl; the full-cone NAT's inbound map
    // carries the same timeout.
    let network = Topology::from_toml(
        r#"
        [[nat]]
        name = "P"
        kind = "port-restricted"
        timeout = "2s"
        [[nat]]
        name = "F"
        kind = "full-cone"
        timeout = "2s"
        [[host]]
        name = "s1"
        [[host]]
        name = "s2"
        [[host]]
        name = "p"
        behind = "P"
        [[host]]
        name = "f"
        behind = "F"
        "#,
    )
    .unwrap()
    .resolve()
    .unwrap();
    let lab = Lab::build(&network).unwrap();
    let late = |mut s: Step| {
        s.after = Duration::from_secs(3);
        s
    };
    let steps = vec![
        step("p->s1", "p", PORT, To::Host("s1", S_PORT), true),
        step("f->s1", "f", PORT, To::Host("s1", S_PORT), true),
        step("s1->p:reply", "s1", S_PORT, seen("p->s1"), true),
        step("s2->f", "s2", S_PORT, seen("f->s1"), true),
        // Three seconds of silence: both mappings are gone.
        late(step("s1->p:late", "s1", S_PORT, seen("p->s1"), false)),
        step("s2->f:late", "s2", S_PORT, seen("f->s1"), false),
    ];
    let kernel = run_kernel(&lab, &steps);
    let model = run_model(&network, &steps);
    let (kernel_view, model_view) = compare(&steps, &kernel, &model);
    assert_eq!(kernel_view, model_view, "table above");
}

/// `ip netns add NAME`, deleted again on drop.
struct ForeignNamespace(String);

impl ForeignNamespace {
    fn add(name: String) -> Self {
        let status = Command::new("ip")
            .args(["netns", "add", &name])
            .stderr(Stdio::inherit())
            .status()
            .unwrap();
        assert!(status.success(), "ip netns add {name}");
        Self(name)
    }
}

impl Drop for ForeignNamespace {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.0])
            .stderr(Stdio::null())
            .status();
    }
}

#[test]
fn namespace_lab_cleans_up_after_a_panic_and_after_a_crashed_run() {
    if lab_unsupported() {
        return;
    }
    // Every link feature the lab builds (loss, MTU) and one it cannot (latency).
    let network = Topology::from_toml(
        r#"
        [[nat]]
        name = "n"
        kind = "address-restricted"
        uplink = { loss = 0.01, mtu = 1400, latency = "20ms" }
        [[host]]
        name = "h"
        behind = "n"
        link = { loss = 0.5 }
        "#,
    )
    .unwrap()
    .resolve()
    .unwrap();

    // A test that panics with a lab and a process running inside it.
    let seen = Mutex::new(None);
    let result = std::panic::catch_unwind(|| {
        let lab = Lab::build(&network).unwrap();
        let sleeper = lab
            .host_command("h", "sleep")
            .unwrap()
            .arg("600")
            .spawn()
            .unwrap();
        let prefix = lab.prefix().to_owned();
        *seen.lock().unwrap() = Some((prefix.clone(), sleeper));
        assert!(!lab::namespaces_with_prefix(&prefix).unwrap().is_empty());
        assert_eq!(lab.not_reproduced(), ["NAT \"n\" uplink: latency 20ms"]);
        panic!("a failing test");
    });
    assert!(result.is_err());
    let (prefix, mut sleeper) = seen.into_inner().unwrap().unwrap();
    assert!(prefix.starts_with(lab::PREFIX));
    // The teardown killed it (the test only waits for it).
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        if let Some(status) = sleeper.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = sleeper.kill();
            let _ = sleeper.wait();
            panic!("the process inside the lab survived its teardown");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.signal(), Some(9), "{status}");
    assert_eq!(
        lab::namespaces_with_prefix(&prefix).unwrap(),
        Vec::<String>::new(),
        "the panic's unwinding tore the lab down"
    );

    // Leftovers: a lab namespace of a process that cannot exist (above any pid_max) goes; one
    // of a live process (this one) and one without the prefix stay.
    let dead = ForeignNamespace::add(format!("{}4194305-0-inet", lab::PREFIX));
    let live = ForeignNamespace::add(format!("{}{}-999999-inet", lab::PREFIX, std::process::id()));
    let foreign = ForeignNamespace::add(format!("mesh-not-a-lab-{}", std::process::id()));
    let removed = lab::remove_leftovers().unwrap();
    assert!(removed.contains(&dead.0), "{removed:?}");
    assert!(!removed.contains(&live.0) && !removed.contains(&foreign.0));
    let remaining = lab::namespaces_with_prefix("").unwrap();
    assert!(!remaining.contains(&dead.0));
    assert!(remaining.contains(&live.0));
    assert!(remaining.contains(&foreign.0));

    // What Linux cannot build is refused before anything is created.
    let sequential =
        Topology::from_toml("[[nat]]\nname = \"seq\"\nkind = \"symmetric-sequential\"\n")
            .unwrap()
            .resolve()
            .unwrap();
    let err = Lab::build(&sequential).unwrap_err().to_string();
    assert!(err.contains("not supported by the kernel lab"), "{err}");
}
