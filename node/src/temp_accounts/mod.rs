//! Temporary root-capable accounts, made for a session and gone after it.
//!
//! A temporary grant (`mesh shell HOST --temp`) runs as `mesh-tmp-<user id>`: a real Unix
//! account with a fresh home, its own group, a uid from a private range that is never reused
//! ([`ledger`]), a GECOS field that marks it as this agent's, and a sudoers drop-in giving it
//! root without a password (checked with `visudo` before it takes effect). One mesh user's
//! concurrent temporary sessions share their account; two users never share one.
//!
//! The account lives exactly as long as its sessions: a [`TempLease`] per session, and when
//! the last one is released (the session ended — normally, at the grant's expiry, by
//! revocation or because temporary users were turned off) the drop-in goes first, then every
//! process of the uid is killed, then the account and its home are deleted. An agent that
//! died with accounts in use removes them at its next start ([`TempAccounts::clean_up_leftovers`]),
//! but only those its ledger lists and the user database still shows with the uid and mark
//! it wrote.

pub mod ledger;
pub mod system;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use mesh_proto::NodeId;
use mesh_proto::grant::{TEMPORARY_ROOT, UserId};

use crate::error::Error;
use ledger::{LEDGER_FILE, Ledger, LedgerEntry, Leftover, leftover_verdict};

/// The login name prefix of temporary accounts.
pub const NAME_PREFIX: &str = "mesh-tmp-";

/// The temporary account name of the mesh user `user`: the same for all of one user's
/// sessions, different for every user.
pub fn account_name(user: UserId) -> String {
    format!("{NAME_PREFIX}{}", user.0)
}

/// What the agent writes into a temporary account's GECOS field: who it is for and which
/// agent made it. Commas and colons would split the field, so user names (which have
/// neither) are the only variable part besides the key.
fn gecos_mark(user_name: &str, agent: NodeId) -> String {
    format!(
        "mesh temporary account for {user_name} (agent {})",
        agent.short()
    )
}

/// The shell temporary accounts log in with.
fn temp_shell() -> String {
    ["/bin/bash", "/bin/sh"]
        .into_iter()
        .find(|s| Path::new(s).is_file())
        .unwrap_or("/bin/sh")
        .to_owned()
}

/// Makes, shares and deletes temporary accounts for one agent.
#[derive(Debug)]
pub struct TempAccounts {
    ledger_path: PathBuf,
    agent: NodeId,
    state: tokio::sync::Mutex<State>,
}

#[derive(Debug)]
struct State {
    ledger: Ledger,
    /// Live sessions per account name.
    sessions: HashMap<String, usize>,
}

impl TempAccounts {
    /// The temporary accounts of the agent `agent` whose home is `home` (its ledger is read
    /// here; a damaged ledger is an error, since guessing could delete the wrong account).
    pub fn open(home: &Path, agent: NodeId) -> Result<Arc<Self>, Error> {
        let ledger_path = home.join(LEDGER_FILE);
        let ledger = Ledger::load(&ledger_path)?;
        Ok(Arc::new(Self {
            ledger_path,
            agent,
            state: tokio::sync::Mutex::new(State {
                ledger,
                sessions: HashMap::new(),
            }),
        }))
    }

    /// Removes what an earlier run of this agent left behind (see the module docs). Returns
    /// one line per account for the log; an account that is not ours is named and left.
    pub async fn clean_up_leftovers(&self) -> Vec<String> {
        let mut state = self.state.lock().await;
        let entries = state.ledger.accounts.clone();
        let mut report = Vec::new();
        for entry in entries {
            let found = system::passwd_entry(&entry.name);
            let verdict = leftover_verdict(&entry, found.as_ref());
            let line = match &verdict {
                Leftover::NotOurs(why) => format!("left {} alone: {why}", entry.name),
                Leftover::Ours | Leftover::AccountGone => {
                    let kill_uid =
                        matches!(verdict, Leftover::Ours) || !system::uid_taken(entry.uid);
                    match remove_account(entry.clone(), kill_uid).await {
                        Ok(()) => format!("removed leftover temporary account {}", entry.name),
                        Err(e) => {
                            // Keep it listed, to try again at the next start.
                            report.push(format!("cannot remove {}: {e}", entry.name));
                            continue;
                        }
                    }
                }
            };
            state.ledger.remove(&entry.name);
            if let Err(e) = state.ledger.save(&self.ledger_path) {
                report.push(e.to_string());
            }
            report.push(line);
        }
        report
    }

    /// Gives a session of the mesh user `user` its temporary account with `privilege`
    /// rights, making it if this is the user's first live temporary session. `Err` is the
    /// one-line reason for the client; nothing is left behind by a failure.
    pub async fn acquire(
        self: &Arc<Self>,
        user: UserId,
        user_name: &str,
        privilege: &str,
    ) -> Result<TempLease, String> {
        if privilege != TEMPORARY_ROOT {
            return Err(format!(
                "temporary accounts with {privilege:?} rights are not supported; only root"
            ));
        }
        let name = account_name(user);
        let mut state = self.state.lock().await;
        if let Some(count) = state.sessions.get_mut(&name) {
            *count += 1;
            return Ok(self.lease(name));
        }
        if let Some(found) = system::passwd_entry(&name) {
            // Not one of ours in use (that would be counted above), so not ours to take:
            // a leftover the start-up clean-up kept, or someone else's account.
            return Err(format!(
                "an account named {name} (uid {}) already exists on this host and is not a \
                 live temporary account of this agent; remove it or ask the host's admin",
                found.uid
            ));
        }
        let Some(uid) = state.ledger.allocate_uid(system::uid_taken) else {
            return Err("this host has used up its range of temporary uids".into());
        };
        let gecos = gecos_mark(user_name, self.agent);
        let entry = LedgerEntry {
            sudoers: system::sudoers_rule(&name, &gecos),
            name: name.clone(),
            uid,
            gecos,
        };
        // Recorded before anything exists, so a crash at any later step is cleaned up.
        state.ledger.accounts.push(entry.clone());
        state
            .ledger
            .save(&self.ledger_path)
            .map_err(|e| format!("cannot record the temporary account: {e}"))?;
        let made = blocking(move || make_account(&entry)).await;
        if let Err(e) = made {
            let entry = state.ledger.entry(&name).cloned();
            if let Some(entry) = entry {
                if remove_account(entry, true).await.is_ok() {
                    state.ledger.remove(&name);
                    let _ = state.ledger.save(&self.ledger_path);
                }
            }
            return Err(format!("cannot create the temporary account: {e}"));
        }
        tracing::info!(account = %name, uid, user = user_name, "temporary account created");
        state.sessions.insert(name.clone(), 1);
        Ok(self.lease(name))
    }

    fn lease(self: &Arc<Self>, name: String) -> TempLease {
        TempLease {
            accounts: Some(self.clone()),
            name,
        }
    }

    /// Ends one session's use of `name`; the last one out deletes the account.
    async fn release(&self, name: &str) {
        let mut state = self.state.lock().await;
        let Some(count) = state.sessions.get_mut(name) else {
            return;
        };
        *count -= 1;
        if *count > 0 {
            return;
        }
        state.sessions.remove(name);
        let Some(entry) = state.ledger.entry(name).cloned() else {
            return;
        };
        match remove_account(entry, true).await {
            Ok(()) => {
                state.ledger.remove(name);
                if let Err(e) = state.ledger.save(&self.ledger_path) {
                    tracing::warn!("{e}");
                }
                tracing::info!(account = name, "temporary account deleted");
            }
            // Still in the ledger: the next start tries again.
            Err(e) => tracing::error!(account = name, "cannot delete temporary account: {e}"),
        }
    }

    /// Accounts with live sessions now.
    pub async fn live(&self) -> Vec<String> {
        let mut names: Vec<_> = self.state.lock().await.sessions.keys().cloned().collect();
        names.sort();
        names
    }
}

/// Makes the account, then its drop-in; the caller undoes a partial result.
fn make_account(entry: &LedgerEntry) -> Result<(), String> {
    system::create_account(&entry.name, entry.uid, &entry.gecos, &temp_shell())?;
    system::install_sudoers(&entry.name, &entry.sudoers)
}

/// Removes everything of `entry`, in the order that takes power away first: the drop-in,
/// then (when `kill_uid`) every process of its uid, then the account and its home.
async fn remove_account(entry: LedgerEntry, kill_uid: bool) -> Result<(), String> {
    blocking(move || {
        system::remove_sudoers(&entry.name, &entry.sudoers)?;
        if kill_uid {
            system::kill_all_of(entry.uid)?;
        }
        system::delete_account(&entry.name)
    })
    .await
}

async fn blocking(
    work: impl FnOnce() -> Result<(), String> + Send + 'static,
) -> Result<(), String> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(format!("the account task failed: {e}")))
}

/// One session's hold on its temporary account. Release it with [`release`](Self::release)
/// when the session has ended; dropped unreleased (an error path), it is released in the
/// background.
#[derive(Debug)]
pub struct TempLease {
    accounts: Option<Arc<TempAccounts>>,
    name: String,
}

impl TempLease {
    /// The account's login name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Ends this session's use of the account; the last session's release deletes it.
    pub async fn release(mut self) {
        if let Some(accounts) = self.accounts.take() {
            accounts.release(&self.name).await;
        }
    }
}

impl Drop for TempLease {
    fn drop(&mut self) {
        if let Some(accounts) = self.accounts.take() {
            let name = std::mem::take(&mut self.name);
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(async move { accounts.release(&name).await });
            }
        }
    }
}
