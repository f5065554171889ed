//! The host agent (`mesh node run`): serves sessions on this machine's UDP port, checking
//! every grant against the CA keys it trusts, under the limits of its `config.toml`.
//!
//! - [`config`]: the agent's `config.toml`.
//! - [`presence`]: the host's long-lived control stream to the coordinator (settings, clock,
//!   revocations).
//! - [`revocations`]: what the host was told is revoked, kept across restarts.
//!
//! Audit events wait in the home's `audit/` spool ([`crate::audit`]) and are uploaded on the
//! presence connection.
//!
//! The agent keeps no PTY and no shell in its own process: each session is a per-session
//! process ([`ProcessBackend`]), so a crash or restart of the agent hangs sessions up cleanly
//! instead of leaving them orphaned.

pub mod config;
pub mod presence;
pub mod revocations;

use std::future::Future;
use std::path::Path;
use std::sync::Arc;

use mesh_proto::messages::SESSION_ALPN;
use mesh_proto::socket::DatagramSocket;
use mesh_proto::{CaKeySet, SecretKey};
use nix::unistd::Uid;

use crate::audit::{AuditLog, SPOOL_DIR};
use crate::control::{EnrolledAs, Enrollment};
use crate::endpoint::Endpoint;
use crate::error::Error;
use crate::keyfile::load_or_create_secret_key;
use crate::path::net::{NetOptions, NodeNet, RelayContact};
use crate::session::gate::Gate;
use crate::session::host::{
    HostPolicy, LoginPolicy, ProcessBackend, SessionBackend, SessionHost, SessionProgram,
};
use crate::session::limits::SessionCounter;
use crate::temp_accounts::TempAccounts;
use crate::udp::{UdpBinder, UdpSocket};
use config::AgentConfig;
use presence::{CoordinatorRoute, HostState, Jitter, run_presence};
use revocations::Revocations;

/// The secret key file in a home directory (one identity per home).
pub const KEY_FILE: &str = "key";
/// How long a stopping agent waits for its peers to be told the connection closed.
const SHUTDOWN_FLUSH: std::time::Duration = std::time::Duration::from_secs(1);
/// The configuration file in a home directory.
pub const CONFIG_FILE: &str = "config.toml";

/// Runs the agent of the identity in `home` until `shutdown` completes. Sessions are started
/// with `program` (the `mesh` binary's hidden session-process entry).
///
/// `clock` is the host's own wall clock; once the coordinator has been heard, grants are judged
/// by it corrected to the coordinator's time.
pub async fn run(
    home: &Path,
    program: SessionProgram,
    clock: Arc<dyn mesh_proto::Clock>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let config_path = home.join(CONFIG_FILE);
    let mut config = AgentConfig::load(&config_path)?;
    let enrollment = Enrollment::load(home)?;
    if let Some(enrollment) = &enrollment {
        if !matches!(enrollment.enrolled_as, EnrolledAs::Host { .. }) {
            return Err(Error::Refused(format!(
                "{} is enrolled as a user's device, not a host; give the agent its own --home",
                home.display()
            )));
        }
        config
            .trusted_ca_keys
            .extend(enrollment.ca_keys.iter().copied());
    }
    let ca_keys = config.ca_keys().map_err(|reason| Error::Config {
        path: config_path.clone(),
        reason,
    })?;
    let key = load_or_create_secret_key(&home.join(KEY_FILE))?;
    let socket = UdpSocket::bind(config.listen).map_err(|source| Error::Listen {
        addr: config.listen,
        source,
    })?;
    let local = socket.local_addr().map_err(|source| Error::Listen {
        addr: config.listen,
        source,
    })?;
    let state = HostState::new(clock);
    // The coordinator's embedded relay, for clients that cannot reach this host directly.
    let relay = enrollment.as_ref().map(|e| RelayContact {
        key: e.coordinator_key,
        addrs: e.coordinator_addrs.clone(),
    });
    let net = NodeNet::start(
        key.clone(),
        Arc::new(socket),
        Arc::new(UdpBinder),
        state.clone(),
        NetOptions {
            accept_alpns: vec![SESSION_ALPN],
            relay,
            seed: None,
            jitter: Jitter::from_entropy(),
            streams: crate::path::dial::tcp(),
        },
    )?;
    let endpoint = net.endpoint.clone();
    let revocations = Revocations::load(home, ca_keys.clone())?;
    let temp_accounts = if Uid::effective().is_root() {
        let accounts = TempAccounts::open(home, key.node_id())?;
        // Before any session: what a crashed run left behind goes first.
        for line in accounts.clean_up_leftovers().await {
            tracing::warn!("{line}");
        }
        Some(accounts)
    } else {
        None
    };
    let audit = AuditLog::open(
        &home.join(SPOOL_DIR),
        config.audit.spool_limit,
        config.audit.allow_sessions_without_audit,
        state.clone(),
    )?;
    let parts = AgentParts {
        key,
        endpoint,
        local,
        enrollment,
        ca_keys,
        logins: login_policy(config.allowed_logins.clone()),
        config,
        state,
        revocations,
        audit,
        temp_accounts,
        backend: ProcessBackend::new(program),
        jitter: Jitter::from_entropy(),
        streams: crate::path::dial::tcp(),
        net: Some(net),
    };
    serve(parts, shutdown).await
}

/// Everything an agent runs with, however it was made: [`run`] reads it from a home and the
/// machine; the simulator builds it in memory, with its own socket, clock and session backend.
#[derive(Debug)]
pub struct AgentParts<B> {
    /// The host key.
    pub key: SecretKey,
    /// The endpoint (under [`SESSION_ALPN`]) sessions and the presence stream use.
    pub endpoint: Endpoint,
    /// The address its primary socket is bound to (what it tells the coordinator it listens
    /// on).
    pub local: std::net::SocketAddr,
    /// Its enrollment, if enrolled (then it keeps a presence stream to the coordinator).
    pub enrollment: Option<Enrollment>,
    /// The CA keys grants must be signed by.
    pub ca_keys: CaKeySet,
    /// Which accounts sessions may run as.
    pub logins: LoginPolicy,
    /// Its configuration.
    pub config: AgentConfig,
    /// Settings and the corrected clock.
    pub state: Arc<HostState>,
    /// What was revoked.
    pub revocations: Arc<Revocations>,
    /// The audit log.
    pub audit: Arc<AuditLog>,
    /// Temporary accounts, when the agent can make them.
    pub temp_accounts: Option<Arc<TempAccounts>>,
    /// How sessions are run.
    pub backend: B,
    /// Randomness for the presence stream's reconnect jitter.
    pub jitter: Jitter,
    /// How the presence stream reaches the coordinator when UDP does not (TCP, or the
    /// simulator's streams).
    pub streams: Arc<dyn crate::path::dial::StreamConnector>,
    /// The networking under `endpoint`, whose relay connection follows the coordinator's
    /// choice of relay (none: the relay stays where it started, or there is none).
    pub net: Option<NodeNet>,
}

/// Serves sessions with `parts` until `shutdown` completes.
pub async fn serve<B: SessionBackend>(
    parts: AgentParts<B>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let AgentParts {
        key,
        endpoint,
        local,
        enrollment,
        ca_keys,
        logins,
        config,
        state,
        revocations,
        audit,
        temp_accounts,
        backend,
        jitter,
        streams,
        net,
    } = parts;
    let policy = HostPolicy {
        logins,
        default_shell: config
            .default_shell
            .as_ref()
            .and_then(|p| p.to_str())
            .map(str::to_owned),
        counter: SessionCounter::new(config.limits),
        state: state.clone(),
        revocations: revocations.clone(),
        temp_accounts: temp_accounts.clone(),
        audit: Some(audit.clone()),
    };
    let gate = Gate {
        host: key.node_id(),
        ca_keys,
        revocations: revocations.shared(),
        clock: state.clone(),
    };
    let sessions = SessionHost::new(gate, policy, backend);
    tracing::info!(
        "mesh agent {} listening on {local} (sessions for {:?})",
        key.node_id(),
        config.allowed_logins.as_deref().unwrap_or(&[])
    );
    // Enrolled hosts keep a presence stream to the coordinator, from the session endpoint.
    let presence = enrollment.map(|enrollment| {
        tokio::spawn(run_presence(
            CoordinatorRoute {
                endpoint: endpoint.clone(),
                streams,
                enrollment,
                listen: local,
                net,
            },
            state.clone(),
            revocations.clone(),
            audit.clone(),
            jitter,
        ))
    });
    endpoint
        .accept_until(shutdown, |conn| sessions.clone().serve_connection(conn))
        .await;
    tracing::info!("mesh agent stopping; open sessions are hung up");
    // Sessions end with the agent, and their temporary accounts (and sudo rules) with them,
    // even if a session's own release has not run by the time the runtime is dropped.
    if let Some(accounts) = &temp_accounts {
        accounts.remove_all().await;
    }
    if let Some(presence) = presence {
        presence.abort();
    }
    endpoint.close_and_flush(SHUTDOWN_FLUSH).await;
    Ok(())
}

/// Which accounts sessions may run as: the configured list; otherwise any account when the
/// agent is root, and only its own when it is not (it could not become anyone else).
fn login_policy(allowed: Option<Vec<String>>) -> LoginPolicy {
    match allowed {
        Some(logins) => LoginPolicy::Only(logins),
        None if Uid::effective().is_root() => LoginPolicy::Any,
        None => LoginPolicy::Only(
            nix::unistd::User::from_uid(Uid::effective())
                .ok()
                .flatten()
                .map(|user| vec![user.name])
                .unwrap_or_default(),
        ),
    }
}
