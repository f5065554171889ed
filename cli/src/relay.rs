//! `mesh relay join TOKEN|-` (in `control`) and `mesh relay [--listen ADDR]`: a standalone relay
//! (see `mesh_coordinator::standalone`), on UDP and TCP at one port, following the keys its
//! coordinator allows.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use mesh_coordinator::standalone::{self, RelayParts};
use mesh_node::control::{EnrolledAs, Enrollment};
use mesh_node::path::dial::{TcpAcceptor, tcp};
use mesh_proto::messages::RELAY_ALPN;

use crate::control::failed;
use crate::exit::Failure;

/// The port a relay listens on unless told otherwise (the coordinator's is 7400, and 7401
/// answers its NAT checks).
const DEFAULT_PORT: u16 = 7402;

/// `mesh relay [--listen ADDR]`: runs until SIGTERM or SIGINT.
pub(crate) fn run(home: &Path, listen: Option<SocketAddr>) -> Result<ExitCode, Failure> {
    let enrollment = Enrollment::load(home).map_err(failed)?.ok_or_else(|| {
        failed(format!(
            "{} is not enrolled: run `mesh relay join TOKEN` with a token from `mesh invite relay`",
            home.display()
        ))
    })?;
    if !matches!(enrollment.enrolled_as, EnrolledAs::Relay { .. }) {
        return Err(failed(format!(
            "{} is enrolled as something else than a relay; use its own --home",
            home.display()
        )));
    }
    let key = mesh_node::keyfile::read_secret_key(&home.join(mesh_node::agent::KEY_FILE))
        .map_err(failed)?;
    let listen = listen.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| failed(format!("cannot start the runtime: {e}")))?;
    runtime.block_on(async {
        let socket = mesh_node::udp::UdpSocket::bind(listen)
            .map_err(|e| failed(format!("cannot listen on {listen}: {e} (use --listen)")))?;
        let endpoint = mesh_node::endpoint::Endpoint::with_options(
            key.clone(),
            Arc::new(socket),
            &[RELAY_ALPN],
            mesh_node::endpoint::EndpointOptions {
                restart_keys: Some("relay"),
                ..mesh_coordinator::server::endpoint_options()
            },
        )
        .map_err(failed)?;
        let local = endpoint.local_addr().map_err(failed)?;
        let tcp_listener = tokio::net::TcpListener::bind(local)
            .await
            .map_err(|e| failed(format!("cannot listen on {local}/tcp: {e} (use --listen)")))?;
        tracing::info!("mesh relay listening on {local} (UDP and TCP)");
        let parts = RelayParts {
            key,
            enrollment,
            endpoint,
            listen_addrs: vec![local],
            streams: tcp(),
            allowed_file: Some(home.join(standalone::ALLOWED_FILE)),
        };
        standalone::run(
            parts,
            Some(TcpAcceptor(tcp_listener)),
            crate::shutdown_signal(),
        )
        .await
        .map_err(failed)?;
        Ok(ExitCode::SUCCESS)
    })
}
