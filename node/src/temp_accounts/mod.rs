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

/// Whether `name` and `uid` belong to a temporary account: sessions that name a login must
/// never reach one (it would give its sudo rule to someone else than its user).
pub fn is_temporary_login(name: &str, uid: u32) -> bool {
    name.starts_with(NAME_PREFIX) || (ledger::FIRST_TEMP_UID..=ledger::LAST_TEMP_UID).contains(&uid)
}

/// Checks a mesh user name before it goes into a GECOS field and a sudoers comment: the
/// coordinator's own rule (`a-z 0-9 . _ -`, at most 64), checked again here because the host
/// trusts no text it did not write.
fn check_user_name(user_name: &str) -> Result<(), String> {
    let plain = !user_name.is_empty()
        && user_name.len() <= 64
        && user_name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '_' | '-'));
    if plain {
        Ok(())
    } else {
        Err(format!(
            "the grant's user name {user_name:?} cannot name a temporary account (a-z, 0-9, \
             '.', '_', '-', at most 64)"
        ))
    }
}

/// Checks that a ledger entry is one this agent could have written: a temporary name, a uid
/// from the range, this agent's mark and the rule it writes. A ledger is root's file, but an
/// entry naming `root` must still never lead to `userdel root`.
fn check_entry(entry: &LedgerEntry, agent: NodeId) -> Result<(), String> {
    let number = entry.name.strip_prefix(NAME_PREFIX).unwrap_or_default();
    let name_ok = !number.is_empty() && number.chars().all(|c| c.is_ascii_digit());
    let uid_ok = (ledger::FIRST_TEMP_UID..=ledger::LAST_TEMP_UID).contains(&entry.uid);
    let mark_ok = entry.gecos.starts_with("mesh temporary account for ")
        && entry.gecos.ends_with(&format!("(agent {})", agent.short()));
    let rule_ok = entry.sudoers == system::sudoers_rule(&entry.name, &entry.gecos);
    if name_ok && uid_ok && mark_ok && rule_ok {
        Ok(())
    } else {
        Err(format!(
            "its entry for {:?} (uid {}) is not one this agent writes",
            entry.name, entry.uid
        ))
    }
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

impl State {
    /// Forgets `name` in the ledger and saves it; a failed save is logged (the entry is then
    /// found again at the next start, and its removal is found done).
    fn forget(&mut self, name: &str, ledger_path: &Path) {
        self.ledger.remove(name);
        if let Err(e) = self.ledger.save(ledger_path) {
            tracing::warn!("{e}");
        }
    }
}

/// What became of an account [`remove_account`] was asked to remove.
#[derive(Debug)]
enum Removal {
    /// Gone, with its drop-in, processes, home and group.
    Removed,
    /// Not ours (someone else holds the name now): left alone, only our drop-in removed.
    LeftAlone(String),
}

impl TempAccounts {
    /// The temporary accounts of the agent `agent` whose home is `home`. The ledger is read
    /// here and must be root's, writable by no one else, and list only entries this agent
    /// writes; otherwise this is an error, since guessing could delete the wrong account.
    pub fn open(home: &Path, agent: NodeId) -> Result<Arc<Self>, Error> {
        let ledger_path = home.join(LEDGER_FILE);
        let ledger = Ledger::load(&ledger_path)?;
        let damaged = |reason: String| Error::Config {
            path: ledger_path.clone(),
            reason: format!("{reason}; {}", ledger::DAMAGED_ADVICE),
        };
        if let Ok(meta) = ledger_path.metadata() {
            use std::os::unix::fs::MetadataExt;
            if meta.uid() != 0 || meta.mode() & 0o022 != 0 {
                return Err(damaged(format!(
                    "the ledger must be root's and writable by no one else (owner uid {}, \
                     mode {:o})",
                    meta.uid(),
                    meta.mode() & 0o7777
                )));
            }
        }
        for entry in &ledger.accounts {
            check_entry(entry, agent).map_err(damaged)?;
        }
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
            let name = entry.name.clone();
            match remove_account(entry).await {
                Ok(Removal::Removed) => {
                    report.push(format!("removed leftover temporary account {name}"));
                }
                Ok(Removal::LeftAlone(why)) => report.push(format!("left {name} alone: {why}")),
                Err(e) => {
                    // Kept listed: the next acquire for its user or the next start tries
                    // again.
                    report.push(format!("cannot remove {name}: {e}"));
                    continue;
                }
            }
            state.forget(&name, &self.ledger_path);
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
        check_user_name(user_name)?;
        let name = account_name(user);
        let mut state = self.state.lock().await;
        if let Some(count) = state.sessions.get_mut(&name) {
            *count += 1;
            return Ok(self.lease(name));
        }
        // An earlier account of this user whose removal failed: finish it first, so the
        // ledger never holds two entries for one name.
        if let Some(earlier) = state.ledger.entry(&name).cloned() {
            remove_account(earlier).await.map_err(|e| {
                format!("the earlier temporary account {name} could not be removed yet: {e}")
            })?;
            state.forget(&name, &self.ledger_path);
        }
        if let Some(found) = blocking(system_passwd_entry(name.clone())).await? {
            // Not ours (ours would be counted or in the ledger): someone else's account.
            return Err(format!(
                "an account named {name} (uid {}) already exists on this host and is not a \
                 temporary account of this agent; the host's admin should remove it",
                found.uid
            ));
        }
        let Some(uid) = state.ledger.allocate_uid(system::id_taken) else {
            return Err(format!(
                "this host has used up its range of temporary uids ({}-{}); move \
                 next_uid in {} only after checking that no files of old uids remain",
                ledger::FIRST_TEMP_UID,
                ledger::LAST_TEMP_UID,
                self.ledger_path.display()
            ));
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
        if let Err(e) = state.ledger.save(&self.ledger_path) {
            state.ledger.remove(&name);
            return Err(format!("cannot record the temporary account: {e}"));
        }
        let made = {
            let entry = entry.clone();
            blocking(move || make_account(&entry)).await
        };
        if let Err(e) = made {
            // Only what is still ours is undone (someone may have taken the name meanwhile).
            match remove_account(entry).await {
                Ok(_) => state.forget(&name, &self.ledger_path),
                Err(undo) => {
                    tracing::error!(account = %name, "cannot undo a failed account: {undo}");
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
        self.remove_listed(&mut state, name).await;
    }

    /// Removes every account with live sessions, whose processes die with it: for an agent
    /// that is stopping, so that no account (and no sudo rule) outlives it.
    pub async fn remove_all(&self) {
        let mut state = self.state.lock().await;
        let names: Vec<String> = state.sessions.drain().map(|(name, _)| name).collect();
        for name in names {
            self.remove_listed(&mut state, &name).await;
        }
    }

    /// Removes the ledger's account `name` and forgets it, or logs why it could not.
    async fn remove_listed(&self, state: &mut State, name: &str) {
        let Some(entry) = state.ledger.entry(name).cloned() else {
            return;
        };
        match remove_account(entry).await {
            Ok(Removal::Removed) => {
                tracing::info!(account = name, "temporary account deleted");
                state.forget(name, &self.ledger_path);
            }
            Ok(Removal::LeftAlone(why)) => {
                tracing::warn!(account = name, "temporary account left alone: {why}");
                state.forget(name, &self.ledger_path);
            }
            // Still in the ledger: the user's next temporary session or the next start tries
            // again.
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

/// [`system::passwd_entry`] as blocking work.
fn system_passwd_entry(
    name: String,
) -> impl FnOnce() -> Result<Option<ledger::PasswdEntry>, String> + Send + 'static {
    move || system::passwd_entry(&name)
}

/// Makes the account, then its drop-in; the caller undoes a partial result.
fn make_account(entry: &LedgerEntry) -> Result<(), String> {
    system::create_account(&entry.name, entry.uid, &entry.gecos, &temp_shell())?;
    system::install_sudoers(&entry.name, &entry.sudoers)
}

/// Removes everything of `entry` that is still ours, in the order that takes power away first:
/// our drop-in (whoever holds the name now: it gives root to that name), then every process
/// of the uid, then the account, its home and its group. Whether the account is ours is
/// decided by [`leftover_verdict`] right before. Every step runs even when an earlier one
/// failed; `Err` lists what failed, and the entry should stay in the ledger.
async fn remove_account(entry: LedgerEntry) -> Result<Removal, String> {
    blocking(move || {
        let found = system::passwd_entry(&entry.name)?;
        let verdict = leftover_verdict(&entry, found.as_ref());
        let mut failed = Vec::new();
        if let Err(e) = system::remove_sudoers(&entry.name, &entry.sudoers) {
            failed.push(e);
        }
        let removal = match verdict {
            Leftover::NotOurs(why) => Removal::LeftAlone(why),
            Leftover::Ours | Leftover::AccountGone => {
                // A gone account's uid is killed only if no one else has it now.
                if matches!(verdict, Leftover::Ours) || !system::uid_taken(entry.uid) {
                    if let Err(e) = system::kill_all_of(entry.uid) {
                        failed.push(e);
                    }
                }
                if let Err(e) = system::delete_account(&entry.name, entry.uid) {
                    failed.push(e);
                }
                Removal::Removed
            }
        };
        if failed.is_empty() {
            Ok(removal)
        } else {
            Err(failed.join("; "))
        }
    })
    .await
}

/// Runs blocking account work off the runtime's threads.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn agent() -> NodeId {
        mesh_proto::SecretKey::generate().unwrap().node_id()
    }

    fn entry_of(agent: NodeId) -> LedgerEntry {
        let name = account_name(UserId(7));
        let gecos = gecos_mark("alice", agent);
        LedgerEntry {
            sudoers: system::sudoers_rule(&name, &gecos),
            name,
            uid: ledger::FIRST_TEMP_UID + 3,
            gecos,
        }
    }

    #[test]
    fn only_entries_this_agent_writes_pass_the_ledger_check() {
        let agent = agent();
        let good = entry_of(agent);
        assert_eq!(check_entry(&good, agent), Ok(()));
        assert!(
            check_entry(&good, self::agent()).is_err(),
            "another agent's mark"
        );
        let root = LedgerEntry {
            name: "root".into(),
            uid: 0,
            ..good.clone()
        };
        assert!(check_entry(&root, agent).is_err());
        let low_uid = LedgerEntry {
            uid: 1000,
            ..good.clone()
        };
        assert!(check_entry(&low_uid, agent).is_err());
        let path_name = LedgerEntry {
            name: "mesh-tmp-../x".into(),
            ..good.clone()
        };
        assert!(check_entry(&path_name, agent).is_err());
        let wider_rule = LedgerEntry {
            sudoers: "ALL ALL=(ALL:ALL) NOPASSWD: ALL\n".into(),
            ..good
        };
        assert!(check_entry(&wider_rule, agent).is_err());
    }

    #[test]
    fn temporary_logins_are_known_by_name_and_by_uid() {
        assert!(is_temporary_login("mesh-tmp-3", 1000));
        assert!(is_temporary_login("renamed", ledger::FIRST_TEMP_UID));
        assert!(is_temporary_login("renamed", ledger::LAST_TEMP_UID));
        assert!(!is_temporary_login("deploy", 1000));
        assert!(!is_temporary_login("root", 0));
    }

    #[test]
    fn user_names_with_field_or_line_separators_are_refused() {
        assert!(check_user_name("alice.b-2_x").is_ok());
        for bad in ["", "a:b", "a,b", "a\nb", "ALICE", &"a".repeat(65)] {
            assert!(check_user_name(bad).is_err(), "{bad:?}");
        }
    }
}
