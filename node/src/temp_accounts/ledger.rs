//! The agent's ledger of the temporary accounts it made: what lets it clean up after a crash
//! without ever touching an account it did not make.
//!
//! An account is written to the ledger (and fsync'd) *before* `useradd` runs and leaves it
//! only after the account is gone, so whatever a crash interrupts, the ledger still names it.
//! At start the agent removes a listed account only when the user database still shows the
//! uid and the GECOS mark it recorded ([`leftover_verdict`]): an account merely named like a
//! temporary one, or re-made by someone else under the same name, is left alone.
//!
//! Uids come from a private range and the ledger's `next_uid` only grows, so a uid is never
//! handed out twice: files a deleted account left in `/tmp` cannot be inherited by a later
//! one.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::durable::replace_file;
use crate::error::Error;

/// The ledger's file in the agent's home.
pub const LEDGER_FILE: &str = "temp-accounts.toml";

/// The first uid temporary accounts get: far above the ranges distributions hand out
/// (`UID_MAX` is 60000 on Debian; container sub-uid ranges start at 100000 and span 65536
/// each) and below 2^31, which some tools still read as signed.
pub const FIRST_TEMP_UID: u32 = 1_900_000_000;

/// The last uid of the range; past it, temporary accounts are refused.
pub const LAST_TEMP_UID: u32 = 2_000_000_000;

/// What to do about a damaged ledger, for its error messages.
pub const DAMAGED_ADVICE: &str = "remove the mesh-tmp-* accounts, their homes and \
     /etc/sudoers.d drop-ins by hand, then rewrite the file keeping only `next_uid` (a new \
     ledger restarting at the first uid could hand out a uid whose files remain)";

/// One temporary account the agent made (or was about to make).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerEntry {
    /// Login name (`mesh-tmp-<user id>`).
    pub name: String,
    /// The uid it was created with.
    pub uid: u32,
    /// The GECOS field it was created with: the mark that it is this agent's.
    pub gecos: String,
    /// The sudoers drop-in's exact contents, so only our own file is ever removed.
    pub sudoers: String,
}

/// The ledger as kept on disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    /// The next uid to hand out.
    pub next_uid: u32,
    /// Accounts that may exist.
    #[serde(default, rename = "account")]
    pub accounts: Vec<LedgerEntry>,
}

impl Default for Ledger {
    fn default() -> Self {
        Self {
            next_uid: FIRST_TEMP_UID,
            accounts: Vec::new(),
        }
    }
}

impl Ledger {
    /// Reads the ledger at `path`; a missing file is an empty ledger. A damaged one is an
    /// error: guessing could delete an account that is not ours, or reuse a uid.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let Some(text) = crate::durable::read_if_exists(path)? else {
            return Ok(Self::default());
        };
        toml::from_str(&text).map_err(|e| Error::Config {
            path: path.to_owned(),
            reason: format!(
                "{}; the temporary-account ledger is damaged; {DAMAGED_ADVICE}",
                e.message()
            ),
        })
    }

    /// Writes the ledger durably (root-only: it names privileged accounts).
    pub fn save(&self, path: &Path) -> Result<(), Error> {
        let text = toml::to_string(self).map_err(|e| Error::Config {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        replace_file(path, 0o600, text.as_bytes())
    }

    /// Hands out the next uid that `taken` does not report in use, or `None` when the range
    /// is spent. Every uid looked at is consumed, so none is ever offered twice.
    pub fn allocate_uid(&mut self, taken: impl Fn(u32) -> bool) -> Option<u32> {
        while self.next_uid <= LAST_TEMP_UID {
            let uid = self.next_uid;
            self.next_uid += 1;
            if !taken(uid) {
                return Some(uid);
            }
        }
        None
    }

    /// The entry for `name`, if any.
    pub fn entry(&self, name: &str) -> Option<&LedgerEntry> {
        self.accounts.iter().find(|a| a.name == name)
    }

    /// Forgets `name`.
    pub fn remove(&mut self, name: &str) {
        self.accounts.retain(|a| a.name != name);
    }
}

/// What the user database says of a name now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    /// Its uid.
    pub uid: u32,
    /// Its GECOS field.
    pub gecos: String,
}

/// What to do with a ledger entry found at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Leftover {
    /// The account is ours: kill its processes, delete it, its home and its drop-in.
    Ours,
    /// No account has the name: only our drop-in (if it is still there) and any process
    /// still running under the uid are left to remove.
    AccountGone,
    /// An account has the name but is not the one we made: leave it, and forget the entry.
    NotOurs(String),
}

/// Decides what a ledger entry found at start means, given the user database's entry for its
/// name (a plain function: the safety rule lives here, unit-tested).
pub fn leftover_verdict(entry: &LedgerEntry, found: Option<&PasswdEntry>) -> Leftover {
    match found {
        None => Leftover::AccountGone,
        Some(found) if found.uid == entry.uid && found.gecos == entry.gecos => Leftover::Ours,
        Some(found) if found.uid != entry.uid => Leftover::NotOurs(format!(
            "{} now has uid {}, not the {} this agent gave it",
            entry.name, found.uid, entry.uid
        )),
        Some(_) => Leftover::NotOurs(format!(
            "{}'s GECOS field is not the mark this agent wrote",
            entry.name
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> LedgerEntry {
        LedgerEntry {
            name: "mesh-tmp-7".into(),
            uid: FIRST_TEMP_UID + 3,
            gecos: "mesh temporary account for alice (agent 1a2b3c4d)".into(),
            sudoers: "mesh-tmp-7 ALL=(ALL:ALL) NOPASSWD: ALL\n".into(),
        }
    }

    #[test]
    fn only_an_account_with_our_uid_and_mark_is_ours() {
        let e = entry();
        let ours = PasswdEntry {
            uid: e.uid,
            gecos: e.gecos.clone(),
        };
        assert_eq!(leftover_verdict(&e, Some(&ours)), Leftover::Ours);
        assert_eq!(leftover_verdict(&e, None), Leftover::AccountGone);
        let same_name_other_uid = PasswdEntry {
            uid: 1001,
            gecos: e.gecos.clone(),
        };
        assert!(matches!(
            leftover_verdict(&e, Some(&same_name_other_uid)),
            Leftover::NotOurs(_)
        ));
        let same_uid_no_mark = PasswdEntry {
            uid: e.uid,
            gecos: "Alice".into(),
        };
        assert!(matches!(
            leftover_verdict(&e, Some(&same_uid_no_mark)),
            Leftover::NotOurs(_)
        ));
    }

    #[test]
    fn uids_are_never_handed_out_twice_and_taken_ones_are_skipped() {
        let mut ledger = Ledger::default();
        let a = ledger.allocate_uid(|_| false).unwrap();
        let b = ledger.allocate_uid(|uid| uid == a + 1).unwrap();
        assert_eq!(a, FIRST_TEMP_UID);
        assert_eq!(b, FIRST_TEMP_UID + 2);
        ledger.next_uid = LAST_TEMP_UID;
        assert_eq!(ledger.allocate_uid(|_| false), Some(LAST_TEMP_UID));
        assert_eq!(ledger.allocate_uid(|_| false), None, "the range is spent");
    }

    #[test]
    fn the_ledger_survives_a_round_trip_and_a_damaged_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LEDGER_FILE);
        assert_eq!(Ledger::load(&path).unwrap(), Ledger::default());
        let mut ledger = Ledger::default();
        ledger.allocate_uid(|_| false);
        ledger.accounts.push(entry());
        ledger.save(&path).unwrap();
        assert_eq!(Ledger::load(&path).unwrap(), ledger);
        std::fs::write(&path, "next_uid = \"many\"").unwrap();
        let err = Ledger::load(&path).unwrap_err().to_string();
        assert!(err.contains("ledger is damaged"), "{err}");
    }
}
