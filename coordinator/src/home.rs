//! A coordinator's home directory: the CA key (`ca.key`), the coordinator's own key (`key`),
//! and the database (`coordinator.db`), which also records the address tokens carry.
//!
//! `init` creates them and never overwrites any; `open` loads them for `serve`.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use mesh_node::keyfile::{load_or_create_secret_key, read_secret_key, write_secret_key};
use std::time::Duration;

use mesh_proto::grant::{OFFLINE_GRANT_MAX_TTL, TEMPORARY_ROOT};
use mesh_proto::grant_file::grant_to_text;
use mesh_proto::token::TokenKind;
use mesh_proto::{CaSigner, Clock, Grant, GrantId, GrantKind, SecretKey};

use crate::model::InviteFor;
use crate::policy::{Request, authorize};
use crate::server::{Coordinator, role_permissions};
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

/// Mints an offline grant file on the coordinator's machine, without the network: one grant
/// per enrolled device of `user`, for `login` (or a temporary account: `None`) on `host`,
/// valid for `ttl` (at most 7 days).
/// The user's role must allow it, as it would for a grant asked for online.
pub async fn mint_grant_file(
    home: &Path,
    user: &str,
    host: &str,
    login: Option<&str>,
    ttl: Duration,
    clock: Arc<dyn Clock>,
) -> Result<String, HomeError> {
    // No login: a temporary account, whose grant names the privilege it gets instead.
    let temporary = login.is_none();
    let login = login.unwrap_or(TEMPORARY_ROOT);
    if ttl > OFFLINE_GRANT_MAX_TTL || ttl.is_zero() {
        return Err(HomeError::Invalid(format!(
            "--ttl {}: an offline grant lives at most {} (the bound on how long a partitioned \
             host can miss a revocation)",
            humantime::format_duration(ttl),
            humantime::format_duration(OFFLINE_GRANT_MAX_TTL)
        )));
    }
    let store = SqliteStore::open(&home.join(DB_FILE)).await?;
    let ca = CaSigner::new(read_secret_key(&home.join(CA_KEY_FILE))?);
    let invalid = |s: String| HomeError::Invalid(s);
    let user = store
        .user(user)
        .await?
        .ok_or_else(|| invalid(format!("no user {user} (see `mesh user list`)")))?;
    let host = store
        .host(host)
        .await?
        .ok_or_else(|| invalid(format!("no host {host} (see `mesh hosts`)")))?;
    let role = store
        .role(&user.role)
        .await?
        .ok_or_else(|| invalid(format!("{}'s role {} does not exist", user.name, user.role)))?;
    let session = |command| Request::Session {
        host: &host,
        login,
        temporary,
        command,
    };
    if let Err(denied) = authorize(&user, &role, &session(false)) {
        authorize(&user, &role, &session(true)).map_err(|_| invalid(denied.0))?;
    }
    let devices = store.devices_of(user.id).await?;
    if devices.is_empty() {
        return Err(invalid(format!(
            "{} has no enrolled device to bind a grant to; they need `mesh login` first",
            user.name
        )));
    }
    let now = clock.now();
    let mut text = String::new();
    for device in devices {
        let grant = Grant {
            id: GrantId::random().map_err(|e| invalid(e.to_string()))?,
            user_id: user.id,
            user_name: user.name.clone(),
            client: device.key,
            host: host.key,
            login: login.to_owned(),
            permissions: role_permissions(&role),
            temporary,
            kind: GrantKind::Offline,
            not_before: now,
            not_after: now.saturating_add(ttl),
            max_session_secs: role.max_session.as_secs(),
        };
        let signed = ca.sign_grant(&grant).map_err(|e| invalid(e.to_string()))?;
        text.push_str(&grant_to_text(&signed));
    }
    store.close().await;
    Ok(text)
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
