//! The SQLite store: one file in the coordinator's home, versioned migrations, every
//! multi-step operation in one transaction.
//!
//! The schema version lives in `PRAGMA user_version` and the `meta` table marks the file as a
//! mesh coordinator's; a file that is not a database, not ours, or from a newer mesh is
//! refused with one line saying so, and nothing is written to it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use mesh_proto::audit::AuditEvent;
use mesh_proto::messages::control::AuditRecord;
use mesh_proto::{NodeId, Revocation, RevocationTarget, UnixTime, UserId};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow};
use sqlx::{Row, SqlitePool, Transaction};

use super::{
    AuditFilter, Store, StoreError, StoreResult, host_name_taken, key_taken, relay_name_taken,
    wrong_invite,
};
use crate::model::{Device, Host, HostSettings, Invite, InviteFor, Relay, Role, User};

/// Migrations, in order; the schema version is how many have run.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
     CREATE TABLE roles (name TEXT PRIMARY KEY, spec TEXT NOT NULL);
     CREATE TABLE users (
         id INTEGER PRIMARY KEY AUTOINCREMENT,
         name TEXT NOT NULL UNIQUE,
         role TEXT NOT NULL REFERENCES roles(name),
         created_at INTEGER NOT NULL);
     CREATE TABLE devices (
         key TEXT PRIMARY KEY,
         user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
         enrolled_at INTEGER NOT NULL);
     CREATE TABLE hosts (
         name TEXT PRIMARY KEY,
         key TEXT NOT NULL UNIQUE,
         labels TEXT NOT NULL,
         remote_shell INTEGER NOT NULL,
         temp_users INTEGER NOT NULL,
         enrolled_at INTEGER NOT NULL,
         last_seen INTEGER,
         addrs TEXT NOT NULL);
     CREATE TABLE invites (
         id TEXT PRIMARY KEY,
         secret_hash BLOB NOT NULL UNIQUE,
         what TEXT NOT NULL,
         created_by TEXT NOT NULL,
         created_at INTEGER NOT NULL,
         expires_at INTEGER NOT NULL);",
    // 2: revocations, kept signed so they can be pushed to hosts as issued.
    "CREATE TABLE revocations (
         id TEXT PRIMARY KEY,
         target TEXT NOT NULL,
         signed BLOB NOT NULL,
         issued_at INTEGER NOT NULL);
     CREATE INDEX revocations_by_target ON revocations(target);
     ALTER TABLE devices ADD COLUMN revoked_at INTEGER;",
    // 3: audit events from hosts, each stored once per (host key, event id) however often a
    // host re-sends it; `seq` is the order stored, for paging.
    "CREATE TABLE audit_events (
         seq INTEGER PRIMARY KEY AUTOINCREMENT,
         host_key TEXT NOT NULL,
         id TEXT NOT NULL,
         host TEXT NOT NULL,
         user_name TEXT,
         at INTEGER NOT NULL,
         received_at INTEGER NOT NULL,
         event TEXT NOT NULL,
         UNIQUE (host_key, id));
     CREATE INDEX audit_events_by_host ON audit_events(host, seq);
     CREATE INDEX audit_events_by_user ON audit_events(user_name, seq);",
    // 4: standalone relays, enrolled like hosts. Their invites need no new column (`what` is
    // JSON), but this version keeps an older mesh, which could not read a relay invite, from
    // opening the file at all.
    "CREATE TABLE relays (
         name TEXT PRIMARY KEY,
         key TEXT NOT NULL UNIQUE,
         enrolled_at INTEGER NOT NULL,
         last_seen INTEGER,
         addrs TEXT NOT NULL);",
];

/// The `meta` entry that marks a database as a mesh coordinator's.
const MARK_KEY: &str = "format";
const MARK_VALUE: &str = "mesh-coordinator";

/// A coordinator database in a SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
    path: PathBuf,
}

impl SqliteStore {
    /// Creates a new database at `path`, refusing to touch an existing file.
    pub async fn create(path: &Path) -> StoreResult<Self> {
        if path.exists() {
            return Err(StoreError::Conflict(format!(
                "{} already exists; refusing to overwrite a coordinator database",
                path.display()
            )));
        }
        let store = Self::connect(path, true).await?;
        store.migrate(true, MIGRATIONS.len()).await?;
        Ok(store)
    }

    /// Creates a database as the mesh that knew only the first `version` migrations did, to
    /// test that later ones carry its data forward.
    #[cfg(test)]
    pub(super) async fn create_at_version(path: &Path, version: usize) -> StoreResult<Self> {
        let store = Self::connect(path, true).await?;
        store.migrate(true, version).await?;
        Ok(store)
    }

    /// The schema version the file is at.
    #[cfg(test)]
    pub(super) async fn schema_version(&self) -> StoreResult<i64> {
        sqlx::query_scalar("PRAGMA user_version")
            .fetch_one(&self.pool)
            .await
            .map_err(db)
    }

    /// Runs SQL as it is, for tests that write a database by hand as an older mesh did.
    #[cfg(test)]
    pub(super) async fn raw(&self, sql: String) -> StoreResult<()> {
        sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    /// Opens the existing database at `path`, bringing its schema up to date.
    pub async fn open(path: &Path) -> StoreResult<Self> {
        if !path.exists() {
            return Err(StoreError::Unusable(format!(
                "no coordinator database at {}; run `mesh coordinator init` first",
                path.display()
            )));
        }
        let store = Self::connect(path, false).await?;
        store.migrate(false, MIGRATIONS.len()).await?;
        Ok(store)
    }

    async fn connect(path: &Path, create: bool) -> StoreResult<Self> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(create)
            .foreign_keys(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(|e| unusable(path, &e))?;
        Ok(Self {
            pool,
            path: path.to_owned(),
        })
    }

    /// Applies the migrations this database lacks, up to the first `target` (all of them but
    /// in tests), in one transaction; refuses a file that is not ours or from a newer mesh
    /// before writing anything.
    async fn migrate(&self, fresh: bool, target: usize) -> StoreResult<()> {
        let version: i64 = sqlx::query_scalar("PRAGMA user_version")
            .fetch_one(&self.pool)
            .await
            .map_err(|e| unusable(&self.path, &e))?;
        let latest = i64::try_from(MIGRATIONS.len()).unwrap_or(i64::MAX);
        if version > latest {
            return Err(StoreError::Unusable(format!(
                "{} has schema version {version}, newer than this mesh knows ({latest}); \
                 upgrade mesh",
                self.path.display()
            )));
        }
        if version == 0 && !fresh {
            return Err(StoreError::Unusable(format!(
                "{} is not a mesh coordinator database",
                self.path.display()
            )));
        }
        if version > 0 {
            let mark: Option<String> = sqlx::query_scalar("SELECT value FROM meta WHERE key = ?")
                .bind(MARK_KEY)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| unusable(&self.path, &e))?;
            if mark.as_deref() != Some(MARK_VALUE) {
                return Err(StoreError::Unusable(format!(
                    "{} is not a mesh coordinator database",
                    self.path.display()
                )));
            }
        }
        let mut tx = self.pool.begin().await.map_err(db)?;
        for (index, migration) in MIGRATIONS
            .iter()
            .take(target)
            .enumerate()
            .skip(usize::try_from(version).unwrap_or(0))
        {
            sqlx::raw_sql(*migration)
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            if index == 0 {
                sqlx::query("INSERT INTO meta (key, value) VALUES (?, ?)")
                    .bind(MARK_KEY)
                    .bind(MARK_VALUE)
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
                for role in Role::built_in() {
                    put_role(&mut tx, &role).await?;
                }
            }
            // PRAGMA takes no bound parameters; the number is ours, not input.
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "PRAGMA user_version = {}",
                index + 1
            )))
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        }
        tx.commit().await.map_err(db)
    }

    /// Closes the pool (waits for connections to finish).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// A database that cannot be opened or read: one line with the path and what to do.
fn unusable(path: &Path, e: &sqlx::Error) -> StoreError {
    StoreError::Unusable(format!(
        "cannot use the coordinator database {}: {e}; if it is damaged, restore it from a backup",
        path.display()
    ))
}

fn db(e: sqlx::Error) -> StoreError {
    StoreError::Database(e.to_string())
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.is_unique_violation())
}

/// A revocation's target as an indexable text.
fn target_key(target: RevocationTarget) -> String {
    match target {
        RevocationTarget::Grant(id) => format!("grant:{id}"),
        RevocationTarget::Device(key) => format!("device:{key}"),
        RevocationTarget::User(user) => format!("user:{user}"),
    }
}

fn millis(t: UnixTime) -> i64 {
    i64::try_from(t.as_millis()).unwrap_or(i64::MAX)
}

fn time(ms: i64) -> UnixTime {
    UnixTime::from_millis(u64::try_from(ms).unwrap_or(0))
}

fn json<T: serde::Serialize>(value: &T) -> StoreResult<String> {
    serde_json::to_string(value).map_err(|e| StoreError::Database(e.to_string()))
}

fn from_json<T: serde::de::DeserializeOwned>(what: &str, text: &str) -> StoreResult<T> {
    serde_json::from_str(text)
        .map_err(|e| StoreError::Unusable(format!("stored {what} is damaged: {e}")))
}

fn node_id(text: &str) -> StoreResult<NodeId> {
    NodeId::from_str(text).map_err(|e| StoreError::Unusable(format!("stored key {text:?}: {e}")))
}

fn user_from(row: &SqliteRow) -> StoreResult<User> {
    Ok(User {
        id: UserId(u64::try_from(row.try_get::<i64, _>("id").map_err(db)?).unwrap_or(0)),
        name: row.try_get("name").map_err(db)?,
        role: row.try_get("role").map_err(db)?,
        created_at: time(row.try_get("created_at").map_err(db)?),
    })
}

fn host_from(row: &SqliteRow) -> StoreResult<Host> {
    let labels: String = row.try_get("labels").map_err(db)?;
    let addrs: String = row.try_get("addrs").map_err(db)?;
    let key: String = row.try_get("key").map_err(db)?;
    Ok(Host {
        name: row.try_get("name").map_err(db)?,
        key: node_id(&key)?,
        labels: from_json("host labels", &labels)?,
        settings: HostSettings {
            remote_shell: row.try_get::<bool, _>("remote_shell").map_err(db)?,
            temp_users: row.try_get::<bool, _>("temp_users").map_err(db)?,
        },
        enrolled_at: time(row.try_get("enrolled_at").map_err(db)?),
        last_seen: row
            .try_get::<Option<i64>, _>("last_seen")
            .map_err(db)?
            .map(time),
        addrs: from_json("host addresses", &addrs)?,
    })
}

fn relay_from(row: &SqliteRow) -> StoreResult<Relay> {
    let addrs: String = row.try_get("addrs").map_err(db)?;
    let key: String = row.try_get("key").map_err(db)?;
    Ok(Relay {
        name: row.try_get("name").map_err(db)?,
        key: node_id(&key)?,
        enrolled_at: time(row.try_get("enrolled_at").map_err(db)?),
        last_seen: row
            .try_get::<Option<i64>, _>("last_seen")
            .map_err(db)?
            .map(time),
        addrs: from_json("relay addresses", &addrs)?,
    })
}

fn invite_from(row: &SqliteRow) -> StoreResult<Invite> {
    let hash: Vec<u8> = row.try_get("secret_hash").map_err(db)?;
    let what: String = row.try_get("what").map_err(db)?;
    Ok(Invite {
        id: row.try_get("id").map_err(db)?,
        secret_hash: hash
            .try_into()
            .map_err(|_| StoreError::Unusable("stored invite hash is damaged".into()))?,
        what: from_json("invite", &what)?,
        created_by: row.try_get("created_by").map_err(db)?,
        created_at: time(row.try_get("created_at").map_err(db)?),
        expires_at: time(row.try_get("expires_at").map_err(db)?),
    })
}

async fn put_role(tx: &mut Transaction<'_, sqlx::Sqlite>, role: &Role) -> StoreResult<()> {
    sqlx::query("INSERT INTO roles (name, spec) VALUES (?, ?) ON CONFLICT(name) DO UPDATE SET spec = excluded.spec")
        .bind(&role.name)
        .bind(json(role)?)
        .execute(&mut **tx)
        .await
        .map_err(db)?;
    Ok(())
}

async fn role_exists(tx: &mut Transaction<'_, sqlx::Sqlite>, role: &str) -> StoreResult<bool> {
    let found: Option<String> = sqlx::query_scalar("SELECT name FROM roles WHERE name = ?")
        .bind(role)
        .fetch_optional(&mut **tx)
        .await
        .map_err(db)?;
    Ok(found.is_some())
}

async fn key_in_use(tx: &mut Transaction<'_, sqlx::Sqlite>, key: NodeId) -> StoreResult<bool> {
    let key = key.to_string();
    let found: i64 = sqlx::query_scalar(
        "SELECT (SELECT COUNT(*) FROM devices WHERE key = ?1) \
         + (SELECT COUNT(*) FROM hosts WHERE key = ?1) \
         + (SELECT COUNT(*) FROM relays WHERE key = ?1)",
    )
    .bind(&key)
    .fetch_one(&mut **tx)
    .await
    .map_err(db)?;
    Ok(found > 0)
}

async fn insert_user(
    tx: &mut Transaction<'_, sqlx::Sqlite>,
    name: &str,
    role: &str,
    now: UnixTime,
) -> StoreResult<User> {
    if !role_exists(tx, role).await? {
        return Err(StoreError::NotFound(format!("no role {role}")));
    }
    let row = sqlx::query("INSERT INTO users (name, role, created_at) VALUES (?, ?, ?) RETURNING id, name, role, created_at")
        .bind(name)
        .bind(role)
        .bind(millis(now))
        .fetch_one(&mut **tx)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::Conflict(format!("user {name} already exists"))
            } else {
                db(e)
            }
        })?;
    user_from(&row)
}

/// Looks up the invite for `secret_hash` inside `tx`, checking expiry, and deletes it.
async fn take_invite(
    tx: &mut Transaction<'_, sqlx::Sqlite>,
    secret_hash: [u8; 32],
    now: UnixTime,
) -> StoreResult<Invite> {
    let row = sqlx::query("DELETE FROM invites WHERE secret_hash = ? RETURNING *")
        .bind(secret_hash.as_slice())
        .fetch_optional(&mut **tx)
        .await
        .map_err(db)?
        .ok_or(StoreError::InviteUnknown)?;
    let invite = invite_from(&row)?;
    if invite.expires_at < now {
        return Err(StoreError::InviteExpired(invite.expires_at));
    }
    Ok(invite)
}

impl Store for SqliteStore {
    async fn meta(&self, key: &str) -> StoreResult<Option<String>> {
        sqlx::query_scalar("SELECT value FROM meta WHERE key = ?")
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)
    }

    async fn set_meta(&self, key: &str, value: &str) -> StoreResult<()> {
        sqlx::query("INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value")
            .bind(key)
            .bind(value)
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn add_user(&self, name: &str, role: &str, now: UnixTime) -> StoreResult<User> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let user = insert_user(&mut tx, name, role, now).await?;
        tx.commit().await.map_err(db)?;
        Ok(user)
    }

    async fn user(&self, name: &str) -> StoreResult<Option<User>> {
        sqlx::query("SELECT * FROM users WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?
            .as_ref()
            .map(user_from)
            .transpose()
    }

    async fn user_by_id(&self, id: UserId) -> StoreResult<Option<User>> {
        sqlx::query("SELECT * FROM users WHERE id = ?")
            .bind(i64::try_from(id.0).unwrap_or(-1))
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?
            .as_ref()
            .map(user_from)
            .transpose()
    }

    async fn users(&self) -> StoreResult<Vec<User>> {
        sqlx::query("SELECT * FROM users ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(db)?
            .iter()
            .map(user_from)
            .collect()
    }

    async fn set_user_role(&self, name: &str, role: &str) -> StoreResult<()> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        if !role_exists(&mut tx, role).await? {
            return Err(StoreError::NotFound(format!("no role {role}")));
        }
        let changed = sqlx::query("UPDATE users SET role = ? WHERE name = ?")
            .bind(role)
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db)?
            .rows_affected();
        if changed == 0 {
            return Err(StoreError::NotFound(format!("no user {name}")));
        }
        tx.commit().await.map_err(db)
    }

    async fn remove_user(&self, name: &str) -> StoreResult<()> {
        let removed = sqlx::query("DELETE FROM users WHERE name = ?")
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(db)?
            .rows_affected();
        if removed == 0 {
            return Err(StoreError::NotFound(format!("no user {name}")));
        }
        Ok(())
    }

    async fn device(&self, key: NodeId) -> StoreResult<Option<Device>> {
        let row = sqlx::query("SELECT * FROM devices WHERE key = ? AND revoked_at IS NULL")
            .bind(key.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        row.map(|row| {
            Ok(Device {
                key,
                user_id: UserId(
                    u64::try_from(row.try_get::<i64, _>("user_id").map_err(db)?).unwrap_or(0),
                ),
                enrolled_at: time(row.try_get("enrolled_at").map_err(db)?),
            })
        })
        .transpose()
    }

    async fn devices_of(&self, user: UserId) -> StoreResult<Vec<Device>> {
        let rows = sqlx::query("SELECT * FROM devices WHERE user_id = ? AND revoked_at IS NULL ORDER BY enrolled_at, key")
            .bind(i64::try_from(user.0).unwrap_or(-1))
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        rows.iter()
            .map(|row| {
                let key: String = row.try_get("key").map_err(db)?;
                Ok(Device {
                    key: node_id(&key)?,
                    user_id: user,
                    enrolled_at: time(row.try_get("enrolled_at").map_err(db)?),
                })
            })
            .collect()
    }

    async fn host(&self, name: &str) -> StoreResult<Option<Host>> {
        sqlx::query("SELECT * FROM hosts WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?
            .as_ref()
            .map(host_from)
            .transpose()
    }

    async fn host_by_key(&self, key: NodeId) -> StoreResult<Option<Host>> {
        sqlx::query("SELECT * FROM hosts WHERE key = ?")
            .bind(key.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?
            .as_ref()
            .map(host_from)
            .transpose()
    }

    async fn hosts(&self) -> StoreResult<Vec<Host>> {
        sqlx::query("SELECT * FROM hosts ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(db)?
            .iter()
            .map(host_from)
            .collect()
    }

    async fn set_host_settings(&self, name: &str, settings: HostSettings) -> StoreResult<()> {
        let changed =
            sqlx::query("UPDATE hosts SET remote_shell = ?, temp_users = ? WHERE name = ?")
                .bind(settings.remote_shell)
                .bind(settings.temp_users)
                .bind(name)
                .execute(&self.pool)
                .await
                .map_err(db)?
                .rows_affected();
        if changed == 0 {
            return Err(StoreError::NotFound(format!("no host {name}")));
        }
        Ok(())
    }

    async fn host_seen(
        &self,
        key: NodeId,
        when: UnixTime,
        addrs: &[SocketAddr],
    ) -> StoreResult<()> {
        sqlx::query("UPDATE hosts SET last_seen = ?, addrs = ? WHERE key = ?")
            .bind(millis(when))
            .bind(json(&addrs)?)
            .bind(key.to_string())
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn relays(&self) -> StoreResult<Vec<Relay>> {
        sqlx::query("SELECT * FROM relays ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(db)?
            .iter()
            .map(relay_from)
            .collect()
    }

    async fn relay_by_key(&self, key: NodeId) -> StoreResult<Option<Relay>> {
        sqlx::query("SELECT * FROM relays WHERE key = ?")
            .bind(key.to_string())
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?
            .as_ref()
            .map(relay_from)
            .transpose()
    }

    async fn relay_seen(
        &self,
        key: NodeId,
        when: UnixTime,
        addrs: &[SocketAddr],
    ) -> StoreResult<()> {
        sqlx::query("UPDATE relays SET last_seen = ?, addrs = ? WHERE key = ?")
            .bind(millis(when))
            .bind(json(&addrs)?)
            .bind(key.to_string())
            .execute(&self.pool)
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn remove_relay(&self, name: &str) -> StoreResult<()> {
        let removed = sqlx::query("DELETE FROM relays WHERE name = ?")
            .bind(name)
            .execute(&self.pool)
            .await
            .map_err(db)?
            .rows_affected();
        if removed == 0 {
            return Err(StoreError::NotFound(format!("no relay {name}")));
        }
        Ok(())
    }

    async fn add_audit_events(
        &self,
        key: NodeId,
        host: &str,
        events: &[AuditEvent],
        now: UnixTime,
    ) -> StoreResult<usize> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let mut new = 0;
        for event in events {
            let done = sqlx::query(
                "INSERT OR IGNORE INTO audit_events \
                 (host_key, id, host, user_name, at, received_at, event) \
                 VALUES (?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(key.to_string())
            .bind(event.id.to_string())
            .bind(host)
            .bind(event.user.as_ref().map(|u| u.name.clone()))
            .bind(millis(event.at))
            .bind(millis(now))
            .bind(json(event)?)
            .execute(&mut *tx)
            .await
            .map_err(db)?;
            new += usize::try_from(done.rows_affected()).unwrap_or(0);
        }
        tx.commit().await.map_err(db)?;
        Ok(new)
    }

    async fn audit_events(&self, filter: &AuditFilter) -> StoreResult<Vec<AuditRecord>> {
        let rows = sqlx::query(
            "SELECT seq, host, received_at, event FROM audit_events \
             WHERE seq > ? AND (? IS NULL OR host = ?) AND (? IS NULL OR user_name = ?) \
             AND (? IS NULL OR at >= ?) ORDER BY seq LIMIT ?",
        )
        .bind(
            filter
                .after
                .map_or(0, |a| i64::try_from(a).unwrap_or(i64::MAX)),
        )
        .bind(filter.host.as_deref())
        .bind(filter.host.as_deref())
        .bind(filter.user.as_deref())
        .bind(filter.user.as_deref())
        .bind(filter.since.map(millis))
        .bind(filter.since.map(millis))
        .bind(i64::try_from(filter.limit).unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        rows.iter()
            .map(|row| {
                Ok(AuditRecord {
                    seq: u64::try_from(row.try_get::<i64, _>("seq").map_err(db)?).unwrap_or(0),
                    host: row.try_get("host").map_err(db)?,
                    received_at: time(row.try_get("received_at").map_err(db)?),
                    event: from_json("audit event", row.try_get("event").map_err(db)?)?,
                })
            })
            .collect()
    }

    async fn add_revocation(&self, revocation: &Revocation, signed: &[u8]) -> StoreResult<()> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        sqlx::query("INSERT INTO revocations (id, target, signed, issued_at) VALUES (?, ?, ?, ?)")
            .bind(revocation.id.to_string())
            .bind(target_key(revocation.target))
            .bind(signed)
            .bind(millis(revocation.issued_at))
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        // Revoked devices stay as tombstones: their keys cannot enroll again, and a refusal can
        // say "revoked" rather than "unknown".
        match revocation.target {
            RevocationTarget::Device(key) => {
                sqlx::query(
                    "UPDATE devices SET revoked_at = ? WHERE key = ? AND revoked_at IS NULL",
                )
                .bind(millis(revocation.issued_at))
                .bind(key.to_string())
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            }
            RevocationTarget::User(user) => {
                sqlx::query(
                    "UPDATE devices SET revoked_at = ? WHERE user_id = ? AND revoked_at IS NULL",
                )
                .bind(millis(revocation.issued_at))
                .bind(i64::try_from(user.0).unwrap_or(-1))
                .execute(&mut *tx)
                .await
                .map_err(db)?;
            }
            RevocationTarget::Grant(_) => {}
        }
        tx.commit().await.map_err(db)
    }

    async fn revocations(&self) -> StoreResult<Vec<Vec<u8>>> {
        sqlx::query_scalar("SELECT signed FROM revocations ORDER BY issued_at, id")
            .fetch_all(&self.pool)
            .await
            .map_err(db)
    }

    async fn device_revoked(&self, key: NodeId) -> StoreResult<bool> {
        let found: Option<String> =
            sqlx::query_scalar("SELECT key FROM devices WHERE key = ? AND revoked_at IS NOT NULL")
                .bind(key.to_string())
                .fetch_optional(&self.pool)
                .await
                .map_err(db)?;
        Ok(found.is_some())
    }

    async fn put_role(&self, role: &Role) -> StoreResult<()> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        put_role(&mut tx, role).await?;
        tx.commit().await.map_err(db)
    }

    async fn role(&self, name: &str) -> StoreResult<Option<Role>> {
        let spec: Option<String> = sqlx::query_scalar("SELECT spec FROM roles WHERE name = ?")
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .map_err(db)?;
        spec.map(|s| from_json("role", &s)).transpose()
    }

    async fn roles(&self) -> StoreResult<Vec<Role>> {
        let specs: Vec<String> = sqlx::query_scalar("SELECT spec FROM roles ORDER BY name")
            .fetch_all(&self.pool)
            .await
            .map_err(db)?;
        specs.iter().map(|s| from_json("role", s)).collect()
    }

    async fn remove_role(&self, name: &str) -> StoreResult<()> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let holder: Option<String> =
            sqlx::query_scalar("SELECT name FROM users WHERE role = ? ORDER BY name LIMIT 1")
                .bind(name)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db)?;
        if let Some(holder) = holder {
            return Err(StoreError::Conflict(format!(
                "role {name} is held by {holder}; give its users another role first"
            )));
        }
        let removed = sqlx::query("DELETE FROM roles WHERE name = ?")
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(db)?
            .rows_affected();
        if removed == 0 {
            return Err(StoreError::NotFound(format!("no role {name}")));
        }
        tx.commit().await.map_err(db)
    }

    async fn add_invite(&self, invite: &Invite) -> StoreResult<()> {
        sqlx::query("INSERT INTO invites (id, secret_hash, what, created_by, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?)")
            .bind(&invite.id)
            .bind(invite.secret_hash.as_slice())
            .bind(json(&invite.what)?)
            .bind(&invite.created_by)
            .bind(millis(invite.created_at))
            .bind(millis(invite.expires_at))
            .execute(&self.pool)
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::Conflict(format!("invite {} exists", invite.id))
                } else {
                    db(e)
                }
            })?;
        Ok(())
    }

    async fn invites(&self) -> StoreResult<Vec<Invite>> {
        sqlx::query("SELECT * FROM invites ORDER BY created_at, id")
            .fetch_all(&self.pool)
            .await
            .map_err(db)?
            .iter()
            .map(invite_from)
            .collect()
    }

    async fn remove_invite(&self, id: &str) -> StoreResult<()> {
        let removed = sqlx::query("DELETE FROM invites WHERE id = ?")
            .bind(id)
            .execute(&self.pool)
            .await
            .map_err(db)?
            .rows_affected();
        if removed == 0 {
            return Err(StoreError::NotFound(format!("no pending invite {id}")));
        }
        Ok(())
    }

    async fn enroll_host(
        &self,
        secret_hash: [u8; 32],
        key: NodeId,
        now: UnixTime,
    ) -> StoreResult<Host> {
        // Any refusal drops the transaction, which rolls the invite's deletion back.
        let mut tx = self.pool.begin().await.map_err(db)?;
        let invite = take_invite(&mut tx, secret_hash, now).await?;
        let InviteFor::Host { name, labels } = invite.what else {
            return Err(wrong_invite(&invite.what));
        };
        let taken: Option<String> = sqlx::query_scalar("SELECT name FROM hosts WHERE name = ?")
            .bind(&name)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
        if taken.is_some() {
            return Err(host_name_taken(&name));
        }
        if key_in_use(&mut tx, key).await? {
            return Err(key_taken(key));
        }
        let host = Host {
            name,
            key,
            labels,
            settings: HostSettings::default(),
            enrolled_at: now,
            last_seen: None,
            addrs: Vec::new(),
        };
        sqlx::query("INSERT INTO hosts (name, key, labels, remote_shell, temp_users, enrolled_at, last_seen, addrs) VALUES (?, ?, ?, ?, ?, ?, NULL, '[]')")
            .bind(&host.name)
            .bind(key.to_string())
            .bind(json(&host.labels)?)
            .bind(host.settings.remote_shell)
            .bind(host.settings.temp_users)
            .bind(millis(now))
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(host)
    }

    async fn enroll_device(
        &self,
        secret_hash: [u8; 32],
        key: NodeId,
        now: UnixTime,
    ) -> StoreResult<(User, Device)> {
        let mut tx = self.pool.begin().await.map_err(db)?;
        let invite = take_invite(&mut tx, secret_hash, now).await?;
        let InviteFor::User { name, role } = invite.what else {
            return Err(wrong_invite(&invite.what));
        };
        if key_in_use(&mut tx, key).await? {
            return Err(key_taken(key));
        }
        let existing = sqlx::query("SELECT * FROM users WHERE name = ?")
            .bind(&name)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
        let user = match existing {
            Some(row) => user_from(&row)?,
            None => insert_user(&mut tx, &name, &role, now).await?,
        };
        sqlx::query("INSERT INTO devices (key, user_id, enrolled_at) VALUES (?, ?, ?)")
            .bind(key.to_string())
            .bind(i64::try_from(user.id.0).unwrap_or(-1))
            .bind(millis(now))
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)?;
        let device = Device {
            key,
            user_id: user.id,
            enrolled_at: now,
        };
        Ok((user, device))
    }

    async fn enroll_relay(
        &self,
        secret_hash: [u8; 32],
        key: NodeId,
        now: UnixTime,
    ) -> StoreResult<Relay> {
        // Any refusal drops the transaction, which rolls the invite's deletion back.
        let mut tx = self.pool.begin().await.map_err(db)?;
        let invite = take_invite(&mut tx, secret_hash, now).await?;
        let InviteFor::Relay { name } = invite.what else {
            return Err(wrong_invite(&invite.what));
        };
        let taken: Option<String> = sqlx::query_scalar("SELECT name FROM relays WHERE name = ?")
            .bind(&name)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db)?;
        if taken.is_some() {
            return Err(relay_name_taken(&name));
        }
        if key_in_use(&mut tx, key).await? {
            return Err(key_taken(key));
        }
        sqlx::query(
            "INSERT INTO relays (name, key, enrolled_at, last_seen, addrs) \
             VALUES (?, ?, ?, NULL, '[]')",
        )
        .bind(&name)
        .bind(key.to_string())
        .bind(millis(now))
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(Relay {
            name,
            key,
            enrolled_at: now,
            last_seen: None,
            addrs: Vec::new(),
        })
    }
}
