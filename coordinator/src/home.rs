//! A coordinator's home directory: the CA key (`ca.key`), the coordinator's own key (`key`),
//! and the database (`coordinator.db`), which also records the address tokens carry.
//!
//! `init` creates them and never overwrites any; `open` loads them for `serve`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use mesh_node::keyfile::{load_or_create_secret_key, read_secret_key, write_secret_key};
use mesh_proto::token::TokenKind;
use mesh_proto::{CaSigner, Clock, SecretKey};

use crate::model::InviteFor;
use crate::server::Coordinator;
use crate::store::sqlite::SqliteStore;
use crate::store::{Store, StoreError};

/// The CA's secret key.
pub const CA_KEY_FILE: &str = "ca.key";
/// The coordinator's own key (its identity on the network).
pub const KEY_FILE: &str = "key";
/// The database.
pub const DB_FILE: &str = "coordinator.db";
/// The port the coordinator listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 7400;
/// The `meta` key holding the address tokens carry.
const ADDR_KEY: &str = "addr";
/// The name of the first admin, whose token `init` prints.
pub const FIRST_ADMIN: &str = "admin";

/// What went wrong with a coordinator home.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HomeError {
    /// The database.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Keys and files.
    #[error(transparent)]
    Node(#[from] mesh_node::Error),
    /// Anything else, as one line.
    #[error("{0}")]
    Invalid(String),
}

/// Creates a coordinator in `home` that tokens will send nodes to at `addr`, and returns the
/// first admin's enrollment token.
pub async fn init(home: &Path, addr: &str, clock: Arc<dyn Clock>) -> Result<String, HomeError> {
    check_addr(addr)?;
    let db = home.join(DB_FILE);
    let ca_path = home.join(CA_KEY_FILE);
    for existing in [&db, &ca_path] {
        if existing.exists() {
            return Err(HomeError::Invalid(format!(
                "{} already exists: {} already holds a coordinator; nothing was changed",
                existing.display(),
                home.display()
            )));
        }
    }
    create_private_dir(home)?;
    let store = SqliteStore::create(&db).await?;
    store.set_meta(ADDR_KEY, addr).await?;
    write_secret_key(
        &ca_path,
        &SecretKey::generate().map_err(|e| HomeError::Invalid(e.to_string()))?,
    )?;
    let ca = CaSigner::new(read_secret_key(&ca_path)?);
    let key = load_or_create_secret_key(&home.join(KEY_FILE))?;
    let coordinator = Coordinator::new(store, ca, key.node_id(), vec![addr.to_owned()], clock);
    let first_admin = InviteFor::User {
        name: FIRST_ADMIN.into(),
        role: "admin".into(),
    };
    let (_, token, _) = coordinator
        .create_invite(first_admin, TokenKind::User, "mesh coordinator init")
        .await
        .map_err(HomeError::Invalid)?;
    coordinator.store().close().await;
    Ok(token)
}

/// Opens the coordinator in `home`; returns it, its key, and the address it was initialized
/// with.
pub async fn open(
    home: &Path,
    clock: Arc<dyn Clock>,
) -> Result<(Arc<Coordinator<SqliteStore>>, SecretKey, String), HomeError> {
    let store = SqliteStore::open(&home.join(DB_FILE)).await?;
    let addr = store.meta(ADDR_KEY).await?.ok_or_else(|| {
        HomeError::Invalid("the database records no coordinator address; run init again".into())
    })?;
    let ca = CaSigner::new(read_secret_key(&home.join(CA_KEY_FILE))?);
    let key = read_secret_key(&home.join(KEY_FILE))?;
    let coordinator = Coordinator::new(store, ca, key.node_id(), vec![addr.clone()], clock);
    Ok((coordinator, key, addr))
}

/// Where to listen when told nothing: the init address's port on every interface (the init
/// address may be a name, or a public address behind NAT).
pub fn default_listen(addr: &str) -> Result<SocketAddr, HomeError> {
    let port = addr
        .rsplit_once(':')
        .and_then(|(_, port)| port.parse::<u16>().ok())
        .ok_or_else(|| HomeError::Invalid(format!("{addr} has no port")))?;
    if let Ok(exact) = addr.parse::<SocketAddr>() {
        if exact.ip().is_loopback() {
            return Ok(exact);
        }
    }
    Ok(SocketAddr::from(([0, 0, 0, 0], port)))
}

fn check_addr(addr: &str) -> Result<(), HomeError> {
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0) => {
            Ok(())
        }
        _ => Err(HomeError::Invalid(format!(
            "--addr {addr:?} must be HOST:PORT, the address hosts and clients reach this coordinator at"
        ))),
    }
}

fn create_private_dir(dir: &Path) -> Result<(), HomeError> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| {
            HomeError::Node(mesh_node::Error::Io {
                what: "cannot create",
                path: dir.to_owned(),
                source,
            })
        })
}
