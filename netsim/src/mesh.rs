//! The real mesh inside the simulated internet: a coordinator, host agents and client devices,
//! each the same library code `mesh` runs, given simulated sockets, a wall clock that follows
//! virtual time, the in-memory store and the in-process fake shell (DESIGN.md, "Simulation and
//! testing": nothing in them waits on another thread, so virtual time stays exact).
//!
//! Keys and quinn's randomness derive from the run's seed and each participant's name, so a
//! seed replays the same run; nothing random (keys, ids) ever reaches a report.

use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use mesh_coordinator::model::InviteFor;
use mesh_coordinator::reflector::{ReflectingSocket, Reflector, serve_check_port};
use mesh_coordinator::relay::RelayServer;
use mesh_coordinator::server::{COORDINATOR_ALPNS, Coordinator, endpoint_options};
use mesh_coordinator::standalone::{self, RelayParts};
use mesh_coordinator::store::memory::MemoryStore;
use mesh_node::agent::config::AgentConfig;
use mesh_node::agent::presence::{HostState, Jitter};
use mesh_node::agent::revocations::Revocations;
use mesh_node::agent::{AgentParts, serve};
use mesh_node::audit::AuditLog;
use mesh_node::control::{
    Enrollment, connect_coordinator, directory, enroll, follow_relay, request,
};
use mesh_node::endpoint::{Connection, Endpoint, EndpointOptions};
use mesh_node::path::net::{NetOptions, NodeNet, RelayContact};
use mesh_node::path::socket::PathSocket;
use mesh_node::path::state::Path;
use mesh_node::rendezvous::{connect_checking_nat, keep_direct, offer, punch_toward_host};
use mesh_node::session::client::{SessionInput, SessionOutcome, SessionRequest, open_session};
use mesh_node::session::fake_shell::FakeShellBackend;
use mesh_node::session::host::LoginPolicy;
use mesh_node::tasks::AbortOnDrop;
use mesh_proto::messages::control::{ControlMessage, SessionGrantRequest};
use mesh_proto::messages::session::{LoginRequest, PtyRequest, WindowSize};
use mesh_proto::messages::{RELAY_ALPN, SESSION_ALPN};
use mesh_proto::nat::check_port;
use mesh_proto::socket::DatagramSocket;
use mesh_proto::token::TokenKind;
use mesh_proto::{CaSigner, Clock, SecretKey, UnixTime};
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::io::AsyncWrite;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::world::World;

/// The coordinator's UDP port.
pub const COORDINATOR_PORT: u16 = 7400;
/// The agents' UDP port.
pub const AGENT_PORT: u16 = 7422;
/// The port a standalone relay listens on (UDP and TCP).
pub const RELAY_PORT: u16 = 7402;
/// The login sessions ask for (the fake shell runs as no one; the gate still resolves it).
pub const LOGIN: &str = "root";
/// Wall-clock time when every simulation starts: 2026-01-01T00:00:00Z.
pub const EPOCH_MS: u64 = 1_767_225_600_000;

/// A wall clock that follows the simulation's virtual time from [`EPOCH_MS`].
#[derive(Debug)]
pub struct SimClock {
    start: Instant,
}

impl SimClock {
    /// A clock reading [`EPOCH_MS`] now.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
        })
    }
}

impl Clock for SimClock {
    fn now(&self) -> UnixTime {
        let elapsed = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
        UnixTime::from_millis(EPOCH_MS.saturating_add(elapsed))
    }
}

/// FNV-1a: a stable hash of names (std's hasher is randomly keyed per process).
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Seeded randomness for one purpose of one participant.
fn rng_for(seed: u64, purpose: &str) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(seed ^ fnv1a(purpose))
}

fn key_for(seed: u64, purpose: &str) -> SecretKey {
    let mut bytes = [0u8; 32];
    rng_for(seed, purpose).fill_bytes(&mut bytes);
    SecretKey::from_seed(&bytes)
}

fn quinn_seed(seed: u64, purpose: &str) -> [u8; 32] {
    let mut bytes = [0u8; 32];
    rng_for(seed, &format!("quinn {purpose}")).fill_bytes(&mut bytes);
    bytes
}

/// An enrolled agent or standalone relay: what it needs to start (again).
#[derive(Debug, Clone)]
struct AgentSetup {
    host: usize,
    key: SecretKey,
    enrollment: Enrollment,
    starts: u32,
}

/// A running agent.
#[derive(Debug)]
struct AgentHandle {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
    socket: Arc<PathSocket>,
}

/// An enrolled client device.
#[derive(Debug, Clone)]
struct Device {
    host: usize,
    key: SecretKey,
    enrollment: Enrollment,
}

/// What became of one `exec`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecReport {
    /// `direct` (the client reached one of the host's own addresses), or `failed`.
    pub path: String,
    /// The remote address the session ran over.
    pub remote_addr: Option<SocketAddr>,
    /// Virtual time from the start of the exec to the QUIC connection to the host.
    pub time_to_direct: Option<Duration>,
    /// Virtual time from the start of the exec to the first byte of output.
    pub time_to_first_byte: Option<Duration>,
    /// Virtual time from the start to the end.
    pub took: Duration,
    /// quinn's smoothed round-trip estimate at the end.
    pub rtt: Option<Duration>,
    /// How it ended: `exit N`, `signal N`, `closed: ...`, `lost`, or why it never started.
    pub outcome: String,
    /// Bytes sent as stdin.
    pub bytes_up: u64,
    /// QUIC bytes this client sent through the relay.
    pub relay_bytes: u64,
    /// Packets the client's relay connection could not take (too big, or gone).
    pub relay_refused: u64,
    /// How often the client's chosen path to the host changed (relay → direct counts one).
    pub path_changes: u64,
    /// How often a confirmed direct path failed under traffic (and the relay took over).
    pub path_failures: u64,
    /// The output (stdout and stderr together, in arrival order of each stream).
    pub stdout: Vec<u8>,
    /// Standard error.
    pub stderr: Vec<u8>,
}

impl ExecReport {
    /// A report that says only `outcome`: nothing connected (yet), `bytes_up` offered.
    fn failed(outcome: &str, bytes_up: u64) -> Self {
        Self {
            path: "failed".into(),
            remote_addr: None,
            time_to_direct: None,
            time_to_first_byte: None,
            took: Duration::ZERO,
            rtt: None,
            outcome: outcome.into(),
            bytes_up,
            relay_bytes: 0,
            relay_refused: 0,
            path_changes: 0,
            path_failures: 0,
            stdout: Vec::new(),
            stderr: Vec::new(),
        }
    }

    /// The report of an exec still running when the scenario ended.
    pub fn unfinished() -> Self {
        Self::failed("still running at the end", 0)
    }
}

/// A mesh running in a [`World`].
#[derive(Debug)]
pub struct Mesh {
    world: World,
    seed: u64,
    clock: Arc<SimClock>,
    coordinator: Option<(Arc<Coordinator<MemoryStore>>, watch::Sender<bool>)>,
    /// Where the coordinator runs, its store, and how many times it started.
    coordinator_home: Option<(usize, MemoryStore, u32)>,
    admin_token: Option<String>,
    agents: HashMap<String, AgentHandle>,
    setups: HashMap<String, AgentSetup>,
    devices: HashMap<String, Device>,
    /// Spool directories of the agents' audit logs.
    spool_root: tempfile::TempDir,
    /// Standalone relays running, by host name: their server (for its counters) and the
    /// sender that stops them.
    relays: HashMap<String, (Arc<RelayServer>, watch::Sender<bool>)>,
    /// Enrolled standalone relays: what a restart needs.
    relay_setups: HashMap<String, AgentSetup>,
}

/// Where the simulated agents' audit spools live: in memory (`/dev/shm`) where there is one,
/// since every append is fsync'd and a run of the matrix makes thousands of them (on disk they
/// take most of its time); else the usual temporary directory.
fn spool_root() -> std::io::Result<tempfile::TempDir> {
    let mut builder = tempfile::Builder::new();
    builder.prefix("mesh-netsim-");
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(dir) = builder.tempdir_in(shm) {
            return Ok(dir);
        }
    }
    builder.tempdir()
}

impl Mesh {
    /// A mesh in `world` whose keys derive from `seed`. Call inside the simulation's runtime.
    pub fn new(world: World, seed: u64) -> Result<Self, String> {
        Ok(Self {
            world,
            seed,
            clock: SimClock::new(),
            coordinator: None,
            coordinator_home: None,
            admin_token: None,
            agents: HashMap::new(),
            setups: HashMap::new(),
            devices: HashMap::new(),
            spool_root: spool_root().map_err(|e| {
                format!("cannot make a directory for the agents' audit spools: {e}")
            })?,
            relays: HashMap::new(),
            relay_setups: HashMap::new(),
        })
    }

    fn host_index(&self, name: &str) -> Result<usize, String> {
        self.world
            .network()
            .host(name)
            .ok_or_else(|| format!("no host {name:?} in the topology"))
    }

    /// Starts the coordinator on the host `name`, reachable at its address and
    /// [`COORDINATOR_PORT`].
    pub fn start_coordinator(&mut self, name: &str) -> Result<(), String> {
        let host = self.host_index(name)?;
        self.coordinator_home = Some((host, MemoryStore::new(), 0));
        self.launch_coordinator()
    }

    /// Kills the coordinator at once, as SIGKILL would; its store (a database on disk, for a
    /// real one) stays for [`restart_coordinator`](Self::restart_coordinator).
    pub fn kill_coordinator(&mut self) -> Result<(), String> {
        let (_, stop) = self.coordinator.take().ok_or("no coordinator is running")?;
        drop(stop);
        let (host, _, _) = self.coordinator_home.as_ref().ok_or("no coordinator")?;
        self.world.kill_socket(*host, COORDINATOR_PORT);
        Ok(())
    }

    /// Starts the killed coordinator again on the store it had.
    pub fn restart_coordinator(&mut self) -> Result<(), String> {
        if self.coordinator.is_some() {
            return Err("the coordinator is already running".into());
        }
        self.launch_coordinator()
    }

    fn launch_coordinator(&mut self) -> Result<(), String> {
        let (host, store, starts) = self
            .coordinator_home
            .as_mut()
            .ok_or("no coordinator was started")?;
        *starts += 1;
        let (host, store, purpose) = (*host, store.clone(), format!("coordinator start {starts}"));
        let socket = self
            .world
            .binder(host)
            .bind_sim(COORDINATOR_PORT)
            .map_err(|e| e.to_string())?;
        let addr = DatagramSocket::local_addr(&*socket).map_err(|e| e.to_string())?;
        let key = key_for(self.seed, "coordinator");
        let ca = CaSigner::new(key_for(self.seed, "ca"));
        // As `mesh coordinator serve` does: NAT checks answered on this port and the next.
        let reflector = Reflector::new(key.clone(), self.clock.clone());
        let check_socket = self
            .world
            .binder(host)
            .bind_sim(check_port(COORDINATOR_PORT))
            .map_err(|e| e.to_string())?;
        let socket = ReflectingSocket::new(socket, reflector.clone());
        let endpoint = Endpoint::with_options(
            key.clone(),
            socket,
            COORDINATOR_ALPNS,
            EndpointOptions {
                seed: Some(quinn_seed(self.seed, &purpose)),
                restart_keys: Some("coordinator"),
                ..endpoint_options()
            },
        )
        .map_err(|e| e.to_string())?;
        let coordinator = Coordinator::new(
            store,
            ca,
            key.node_id(),
            vec![addr.to_string()],
            self.clock.clone(),
        );
        // As `mesh coordinator serve` does: TLS-over-TCP streams on the same port as UDP.
        let streams = self
            .world
            .binder(host)
            .listen_stream(COORDINATOR_PORT)
            .map_err(|e| e.to_string())?;
        let options = EndpointOptions {
            seed: Some(quinn_seed(self.seed, &format!("{purpose} streams"))),
            ..endpoint_options()
        };
        let (stop, mut stopped) = watch::channel(false);
        let mut check_stopped = stopped.clone();
        tokio::spawn(serve_check_port(check_socket, reflector, async move {
            let _ = check_stopped.wait_for(|s| *s).await;
        }));
        let serving = coordinator.clone();
        tokio::spawn(async move {
            // A killed coordinator's sender is dropped: that ends it as well.
            let served = serving
                .serve_with_streams(key, endpoint, Some(streams), options, async move {
                    let _ = stopped.wait_for(|s| *s).await;
                })
                .await;
            if let Err(e) = served {
                tracing::warn!("the coordinator stopped: {e}");
            }
        });
        self.coordinator = Some((coordinator, stop));
        Ok(())
    }

    fn coordinator(&self) -> Result<&Arc<Coordinator<MemoryStore>>, String> {
        self.coordinator
            .as_ref()
            .map(|(c, _)| c)
            .ok_or_else(|| "no coordinator is running".to_owned())
    }

    async fn invite(&self, what: InviteFor, kind: TokenKind) -> Result<String, String> {
        let (_, token, _) = self
            .coordinator()?
            .create_invite(what, kind, "netsim")
            .await?;
        Ok(token)
    }

    /// Enrolls a standalone relay on the host `name` (as `mesh relay join` does) and starts it
    /// (as `mesh relay` does) on UDP and simulated TCP at [`RELAY_PORT`]. The coordinator then
    /// names it to every node as the mesh's relay while it is connected.
    pub async fn start_relay(&mut self, name: &str) -> Result<(), String> {
        let host = self.host_index(name)?;
        let token = self
            .invite(
                InviteFor::Relay {
                    name: name.to_owned(),
                },
                TokenKind::Relay,
            )
            .await?;
        let key = key_for(self.seed, &format!("relay {name}"));
        let joining = self.client_endpoint(host, &key, &format!("relay join {name}"))?;
        let enrollment = enroll(
            &joining,
            &self.world.binder(host),
            &token,
            None,
            self.clock.now(),
        )
        .await
        .map_err(|e| format!("relay {name} cannot enroll: {e}"))?;
        joining.close();
        self.relay_setups.insert(
            name.to_owned(),
            AgentSetup {
                host,
                key,
                enrollment,
                starts: 0,
            },
        );
        self.launch_relay(name).await
    }

    /// Kills the standalone relay on `name` at once, as SIGKILL would (its kept allowed keys
    /// stay in its home, for [`restart_relay`](Self::restart_relay)).
    pub fn kill_relay(&mut self, name: &str) -> Result<(), String> {
        let (_, stop) = self
            .relays
            .remove(name)
            .ok_or_else(|| format!("no relay runs on {name}"))?;
        drop(stop);
        let host = self.host_index(name)?;
        self.world.kill_socket(host, RELAY_PORT);
        Ok(())
    }

    /// Starts the killed relay on `name` again, with the home it had.
    pub async fn restart_relay(&mut self, name: &str) -> Result<(), String> {
        if self.relays.contains_key(name) {
            return Err(format!("the relay on {name} is already running"));
        }
        self.launch_relay(name).await
    }

    async fn launch_relay(&mut self, name: &str) -> Result<(), String> {
        let setup = self
            .relay_setups
            .get_mut(name)
            .ok_or_else(|| format!("{name} has no enrolled relay"))?;
        setup.starts += 1;
        let setup = setup.clone();
        let purpose = format!("relay {name} start {}", setup.starts);
        let host = setup.host;
        let socket = self
            .world
            .binder(host)
            .bind_sim(RELAY_PORT)
            .map_err(|e| e.to_string())?;
        let local = DatagramSocket::local_addr(&*socket).map_err(|e| e.to_string())?;
        let endpoint = Endpoint::with_options(
            setup.key.clone(),
            socket,
            &[RELAY_ALPN],
            EndpointOptions {
                seed: Some(quinn_seed(self.seed, &purpose)),
                restart_keys: Some("relay"),
                ..endpoint_options()
            },
        )
        .map_err(|e| e.to_string())?;
        let streams = self
            .world
            .binder(host)
            .listen_stream(RELAY_PORT)
            .map_err(|e| e.to_string())?;
        let parts = RelayParts {
            key: setup.key,
            enrollment: setup.enrollment,
            endpoint,
            listen_addrs: vec![local],
            streams: Arc::new(self.world.binder(host)),
            allowed_file: Some(
                self.spool_root
                    .path()
                    .join(format!("{name}-{}", standalone::ALLOWED_FILE)),
            ),
        };
        let (stop, mut stopped) = watch::channel(false);
        let (server_tx, server_rx) = tokio::sync::oneshot::channel();
        let label = name.to_owned();
        tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            match standalone::run_with(parts, Some(streams), shutdown, |server| {
                let _ = server_tx.send(server);
            })
            .await
            {
                Ok(()) => {}
                Err(e) => tracing::warn!(relay = %label, "relay stopped: {e}"),
            }
        });
        let server = server_rx
            .await
            .map_err(|_| format!("the relay on {name} did not start"))?;
        self.relays.insert(name.to_owned(), (server, stop));
        Ok(())
    }

    /// The standalone relay on host `name`: its server, for its counters.
    pub fn relay_server(&self, name: &str) -> Option<Arc<RelayServer>> {
        self.relays.get(name).map(|(server, _)| server.clone())
    }

    /// The coordinator's embedded relay, for its counters.
    pub fn embedded_relay(&self) -> Option<Arc<RelayServer>> {
        self.coordinator.as_ref().map(|(c, _)| c.relay().clone())
    }

    /// Enrolls the host `name` and starts its agent.
    pub async fn start_agent(&mut self, name: &str) -> Result<(), String> {
        let host = self.host_index(name)?;
        let token = self
            .invite(
                InviteFor::Host {
                    name: name.to_owned(),
                    labels: Default::default(),
                },
                TokenKind::Host,
            )
            .await?;
        let key = key_for(self.seed, &format!("agent {name}"));
        // Enrolled from a short-lived endpoint, as `mesh node join` does before `node run`.
        let endpoint = self.client_endpoint(host, &key, &format!("join {name}"))?;
        let enrollment = enroll(
            &endpoint,
            &self.world.binder(host),
            &token,
            None,
            self.clock.now(),
        )
        .await
        .map_err(|e| format!("{name} cannot enroll: {e}"))?;
        endpoint.close();
        let setup = AgentSetup {
            host,
            key,
            enrollment,
            starts: 0,
        };
        self.setups.insert(name.to_owned(), setup);
        self.launch_agent(name)
    }

    /// Starts the agent of the enrolled host `name` again after it was killed.
    pub fn restart_agent(&mut self, name: &str) -> Result<(), String> {
        if self.agents.contains_key(name) {
            return Err(format!("the agent on {name} is already running"));
        }
        self.launch_agent(name)
    }

    fn launch_agent(&mut self, name: &str) -> Result<(), String> {
        let setup = self
            .setups
            .get_mut(name)
            .ok_or_else(|| format!("{name} has no enrolled agent"))?;
        setup.starts += 1;
        let setup = setup.clone();
        let purpose = format!("agent {name} start {}", setup.starts);
        let socket = self
            .world
            .binder(setup.host)
            .bind_sim(AGENT_PORT)
            .map_err(|e| e.to_string())?;
        let local = DatagramSocket::local_addr(&*socket).map_err(|e| e.to_string())?;
        let ca_keys = setup
            .enrollment
            .ca_key_set()
            .ok_or("the enrollment names no CA key")?;
        let state = HostState::new(self.clock.clone());
        let net = start_net(
            &self.world,
            self.seed,
            setup.host,
            &setup.key,
            socket,
            state.clone(),
            vec![SESSION_ALPN],
            Some(&setup.enrollment),
            &purpose,
        )?;
        let endpoint = net.endpoint.clone();
        let config = AgentConfig::default();
        let relay_net = net.clone();
        let spool = self.spool_root.path().join(name);
        let audit = AuditLog::open(
            &spool,
            config.audit.spool_limit,
            config.audit.allow_sessions_without_audit,
            state.clone(),
        )
        .map_err(|e| e.to_string())?;
        let parts = AgentParts {
            key: setup.key,
            endpoint,
            local,
            enrollment: Some(setup.enrollment),
            revocations: Revocations::in_memory(ca_keys.clone()),
            ca_keys,
            logins: LoginPolicy::Any,
            config,
            state,
            audit,
            temp_accounts: None,
            backend: FakeShellBackend,
            jitter: Jitter::seeded(fnv1a(&purpose) ^ self.seed),
            streams: Arc::new(self.world.binder(setup.host)),
            net: Some(relay_net),
        };
        let (stop, mut stopped) = watch::channel(false);
        let label = name.to_owned();
        let task = tokio::spawn(async move {
            let shutdown = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            if let Err(e) = serve(parts, shutdown).await {
                tracing::warn!(host = %label, "agent stopped: {e}");
            }
        });
        self.agents.insert(
            name.to_owned(),
            AgentHandle {
                stop,
                task,
                socket: net.socket,
            },
        );
        Ok(())
    }

    /// Kills the agent on `name` at once, as SIGKILL would: its socket closes with it.
    pub fn kill_agent(&mut self, name: &str) -> Result<(), String> {
        let agent = self
            .agents
            .remove(name)
            .ok_or_else(|| format!("no agent runs on {name:?}"))?;
        agent.task.abort();
        drop(agent.stop);
        // The endpoint's driver task outlives the aborted agent task; its sockets must not.
        agent.socket.kill();
        let host = self.host_index(name)?;
        self.world.kill_socket(host, AGENT_PORT);
        Ok(())
    }

    /// Enrolls a client device on the host `name` for a new user of the same name with `role`.
    pub async fn enroll_client(&mut self, name: &str, role: &str) -> Result<(), String> {
        let host = self.host_index(name)?;
        let token = if role == "admin" && self.admin_token.is_none() {
            let token = self
                .invite(
                    InviteFor::User {
                        name: "admin".into(),
                        role: "admin".into(),
                    },
                    TokenKind::User,
                )
                .await?;
            self.admin_token = Some(token.clone());
            token
        } else {
            self.invite(
                InviteFor::User {
                    name: name.to_owned(),
                    role: role.to_owned(),
                },
                TokenKind::User,
            )
            .await?
        };
        let key = key_for(self.seed, &format!("device {name}"));
        let endpoint = self.client_endpoint(host, &key, name)?;
        let enrollment = enroll(
            &endpoint,
            &self.world.binder(host),
            &token,
            None,
            self.clock.now(),
        )
        .await
        .map_err(|e| format!("{name} cannot enroll: {e}"))?;
        endpoint.close();
        self.devices.insert(
            name.to_owned(),
            Device {
                host,
                key,
                enrollment,
            },
        );
        Ok(())
    }

    fn client_endpoint(
        &self,
        host: usize,
        key: &SecretKey,
        name: &str,
    ) -> Result<Endpoint, String> {
        client_endpoint(&self.world, self.seed, host, key, name)
    }

    /// The enrolled client on the host `name`, to act with (it holds no borrow of the mesh).
    pub fn client(&self, name: &str) -> Result<Client, String> {
        let device = self
            .devices
            .get(name)
            .ok_or_else(|| format!("{name:?} is not an enrolled client"))?;
        Ok(Client {
            world: self.world.clone(),
            seed: self.seed,
            clock: self.clock.clone(),
            name: name.to_owned(),
            device: device.clone(),
        })
    }

    /// Stops everything.
    pub fn shut_down(&mut self) {
        for (_, agent) in self.agents.drain() {
            let _ = agent.stop.send(true);
        }
        if let Some((_, stop)) = self.coordinator.take() {
            let _ = stop.send(true);
        }
    }

    /// The world it runs in.
    pub fn world(&self) -> &World {
        &self.world
    }

    /// Where a host's agent would be reached from the same network: its address and port.
    pub fn agent_addr(&self, name: &str) -> Result<SocketAddrV4, String> {
        let host = self.host_index(name)?;
        Ok(SocketAddrV4::new(
            self.world.network().hosts[host].ip,
            AGENT_PORT,
        ))
    }
}

/// An enrolled client device, ready to act.
#[derive(Debug, Clone)]
pub struct Client {
    world: World,
    seed: u64,
    /// The mesh's wall clock: every participant reads the same virtual time (real skew, when a
    /// scenario wants it, is a separate matter).
    clock: Arc<SimClock>,
    name: String,
    device: Device,
}

impl Client {
    /// A fresh endpoint of this device and its connection to the coordinator.
    async fn coordinator(&self) -> Result<(Endpoint, Connection), String> {
        let device = &self.device;
        let endpoint =
            client_endpoint(&self.world, self.seed, device.host, &device.key, &self.name)?;
        let conn = connect_coordinator(
            &endpoint,
            &self.world.binder(device.host),
            device.enrollment.coordinator_key,
            &device.enrollment.coordinator_addrs,
        )
        .await
        .map_err(|e| format!("no coordinator: {e}"))?;
        Ok((endpoint, conn))
    }

    /// The host names the coordinator says are online.
    pub async fn online_hosts(&self) -> Result<Vec<String>, String> {
        let (endpoint, conn) = self.coordinator().await?;
        let hosts = directory(&conn).await.map_err(|e| e.to_string());
        conn.quic().close(0u32.into(), b"done");
        endpoint.close();
        Ok(hosts?
            .into_iter()
            .filter(|h| h.online)
            .map(|h| h.name)
            .collect())
    }

    /// Runs `command` on `host` the way `mesh exec` does: a grant
    /// by name from the coordinator, then each of the host's addresses in turn, then the
    /// session with `stdin`.
    pub async fn exec(&self, host: &str, command: &str, stdin: Vec<u8>) -> ExecReport {
        let started = Instant::now();
        let mut report = ExecReport::failed("", u64::try_from(stdin.len()).unwrap_or(u64::MAX));
        if let Err(why) = self
            .exec_into(host, command, stdin, started, &mut report)
            .await
        {
            report.outcome = why;
        }
        report.took = started.elapsed();
        report
    }

    async fn exec_into(
        &self,
        host: &str,
        command: &str,
        stdin: Vec<u8>,
        started: Instant,
        report: &mut ExecReport,
    ) -> Result<(), String> {
        // No command: an interactive shell, as `mesh shell` opens.
        let shell = command.is_empty();
        let device = &self.device;
        let primary = self
            .world
            .binder(device.host)
            .bind_sim(0)
            .map_err(|e| e.to_string())?;
        let primary_port = DatagramSocket::local_addr(&*primary)
            .map_err(|e| e.to_string())?
            .port();
        // As `mesh exec` does: the relay connection comes up while the grant is asked for.
        let net = start_net(
            &self.world,
            self.seed,
            device.host,
            &device.key,
            primary,
            self.clock.clone(),
            Vec::new(),
            Some(&device.enrollment),
            // Two commands started at once differ by their socket's port: each process needs
            // its own randomness (its path socket's instance above all).
            &format!(
                "client {} {} {}",
                self.name,
                self.world.now().as_nanos(),
                primary_port
            ),
        )?;
        let endpoint = net.endpoint.clone();
        // As `mesh exec` does: the NAT check beside the connection, the offer with the grant
        // request, the punch from the coordinator's start time.
        let conn = connect_checking_nat(&net, &self.world.binder(device.host), &device.enrollment)
            .await
            .map_err(|e| format!("no coordinator: {e}"))?;
        let ask = ControlMessage::GrantRequest(SessionGrantRequest {
            host: host.to_owned(),
            login: Some(LOGIN.to_owned()),
            command: !shell,
            punch: Some(offer(&net, conn.quic().remote_address())),
        });
        // As `mesh exec` does: which relay to use, asked beside the grant.
        let (reply, relay) = tokio::join!(
            request(&conn, &ask),
            follow_relay(&conn, &net, &device.enrollment)
        );
        if let Err(e) = relay {
            tracing::warn!("cannot learn which relay to use: {e}");
        }
        let reply = reply.map_err(|e| e.to_string())?;
        let rtt = conn.quic().rtt();
        conn.quic().close(0u32.into(), b"granted");
        let ControlMessage::Granted(granted) = reply else {
            return Err(format!("unexpected reply {reply:?}"));
        };
        punch_toward_host(&net.socket, &granted.host, rtt);
        let mapped = net.socket.peer_addr(granted.host.key, &granted.host.addrs);
        net.socket.wait_for_relay(Duration::from_secs(2)).await;
        let conn = endpoint
            .connect(mapped, granted.host.key, SESSION_ALPN)
            .await
            .map_err(|e| {
                format!(
                    "cannot reach {host} at {:?} (directly or through the relay): {e}",
                    granted.host.addrs
                )
            })?;
        // As `mesh exec` does: a failed direct path asks for another rendezvous. The task
        // ends with the exec (it holds the node's networking).
        let keeper = tokio::spawn(keep_direct(
            net.clone(),
            Arc::new(self.world.binder(device.host)),
            device.enrollment.clone(),
            host.to_owned(),
            granted.host.key,
        ));
        let _keeper = AbortOnDrop(keeper);
        let (send, recv) = conn.quic().open_bi().await.map_err(|e| e.to_string())?;
        let session = open_session(
            send,
            recv,
            SessionRequest {
                grant: granted.grant,
                login: LoginRequest::Named(LOGIN.to_owned()),
                command: (!shell).then(|| command.to_owned()),
                // A shell gets a terminal, as `mesh shell` asks for one.
                pty: shell.then(|| PtyRequest {
                    term: "xterm-256color".into(),
                    size: WindowSize { cols: 80, rows: 24 },
                }),
                env: Vec::new(),
            },
        )
        .await
        .map_err(|e| e.to_string())?;
        let (stdin_tx, stdin_rx) = tokio::sync::mpsc::channel(16);
        let (_events_tx, events_rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            for chunk in stdin.chunks(16 * 1024) {
                if stdin_tx.send(chunk.to_vec()).await.is_err() {
                    return;
                }
            }
        });
        let mut stdout = FirstByte::new(started);
        let mut stderr = Vec::new();
        let outcome = session
            .run(
                SessionInput {
                    stdin: stdin_rx,
                    events: events_rx,
                    escapes: false,
                },
                &mut stdout,
                &mut stderr,
            )
            .await;
        report.time_to_first_byte = stdout.first;
        report.stdout = stdout.bytes;
        report.stderr = stderr;
        report.rtt = Some(conn.quic().rtt());
        let info = net.socket.path_info(granted.host.key);
        let counters = net.socket.counters();
        report.relay_bytes = counters.relay_bytes;
        report.relay_refused = counters.relay_refused;
        if let Some(info) = &info {
            report.path_changes = info.path_changes;
            report.path_failures = info.path_failures;
        }
        match info.map(|i| (i.path, i.direct_since)) {
            Some((Path::Direct(route), since)) => {
                report.path = "direct".into();
                report.remote_addr = Some(route.addr);
                report.time_to_direct = since.map(|s| s.saturating_duration_since(started));
            }
            Some((Path::Relay, _)) => report.path = "relay".into(),
            Some((Path::Guess(route), _)) => {
                report.path = "direct".into();
                report.remote_addr = Some(route.addr);
            }
            _ => {}
        }
        report.outcome = match outcome {
            Ok(SessionOutcome::Exited(mesh_proto::messages::session::ExitStatus::Code(c))) => {
                format!("exit {c}")
            }
            Ok(SessionOutcome::Exited(mesh_proto::messages::session::ExitStatus::Signal(n))) => {
                format!("signal {n}")
            }
            Ok(SessionOutcome::Closed(reason)) => format!("closed: {reason}"),
            Ok(SessionOutcome::Disconnected) => "disconnected".into(),
            Ok(SessionOutcome::Lost) => "lost".into(),
            // The connection died under the session (idle timeout, reset).
            Err(e) => format!("lost: {e}"),
        };
        conn.quic().close(0u32.into(), b"done");
        endpoint.close();
        Ok(())
    }
}

/// A node's path socket, endpoint and relay connection (to the coordinator named by
/// `enrollment`) on the simulated host `host`, as agents and `mesh exec` start them.
#[allow(clippy::too_many_arguments)]
fn start_net(
    world: &World,
    seed: u64,
    host: usize,
    key: &SecretKey,
    primary: Arc<crate::world::SimSocket>,
    clock: Arc<dyn Clock>,
    accept_alpns: Vec<&'static [u8]>,
    enrollment: Option<&Enrollment>,
    purpose: &str,
) -> Result<NodeNet, String> {
    NodeNet::start(
        key.clone(),
        primary,
        Arc::new(world.binder(host)),
        clock,
        NetOptions {
            accept_alpns,
            relay: enrollment.map(|e| RelayContact {
                key: e.coordinator_key,
                addrs: e.coordinator_addrs.clone(),
            }),
            seed: Some(quinn_seed(seed, purpose)),
            jitter: Jitter::seeded(fnv1a(purpose) ^ seed),
            streams: Arc::new(world.binder(host)),
        },
    )
    .map_err(|e| e.to_string())
}

/// A client endpoint on a fresh ephemeral port of `host`, its quinn randomness from the seed,
/// the name and the virtual time (so two endpoints of one client differ, reproducibly).
fn client_endpoint(
    world: &World,
    seed: u64,
    host: usize,
    key: &SecretKey,
    name: &str,
) -> Result<Endpoint, String> {
    let socket = world.binder(host).bind_sim(0).map_err(|e| e.to_string())?;
    Endpoint::new_seeded(
        key.clone(),
        socket,
        &[],
        quinn_seed(seed, &format!("client {name} {}", world.now().as_nanos())),
    )
    .map_err(|e| e.to_string())
}

/// Collects output and notes when its first byte came.
struct FirstByte {
    started: Instant,
    first: Option<Duration>,
    bytes: Vec<u8>,
}

impl FirstByte {
    fn new(started: Instant) -> Self {
        Self {
            started,
            first: None,
            bytes: Vec::new(),
        }
    }
}

impl AsyncWrite for FirstByte {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        if self.first.is_none() && !buf.is_empty() {
            self.first = Some(self.started.elapsed());
        }
        self.bytes.extend_from_slice(buf);
        std::task::Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}
