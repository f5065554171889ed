//! Dropping privileges completely, in the order that leaves no way back: supplementary groups,
//! then the group ids, then the user ids — then checking that it worked.
//!
//! Runs in the per-session process before it opens the PTY or spawns the shell. Setting the
//! uid last matters: once it is gone, the process could no longer change its groups.

use nix::unistd::{Gid, Uid, getgroups, getresgid, getresuid, initgroups, setresgid, setresuid};

use super::account::Account;

/// Why a privilege drop failed; the session must not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DropError {
    /// A system call failed.
    #[error("{call} failed while becoming {user}: {source}")]
    Call {
        /// The call.
        call: &'static str,
        /// The account.
        user: String,
        /// The error.
        #[source]
        source: nix::Error,
    },
    /// The process could still regain privileges, or its ids are not what was asked.
    #[error("privilege drop to {user} did not hold: {what}")]
    NotDropped {
        /// The account.
        user: String,
        /// What was found.
        what: String,
    },
}

/// Makes this process `account`: its supplementary groups from the group database, real,
/// effective and saved gid and uid, then verifies them and that root cannot be regained.
pub fn become_account(account: &Account) -> Result<(), DropError> {
    let call = |call, source| DropError::Call {
        call,
        user: account.name.clone(),
        source,
    };
    let not_dropped = |what: String| DropError::NotDropped {
        user: account.name.clone(),
        what,
    };
    let name = std::ffi::CString::new(account.name.as_bytes())
        .map_err(|_| not_dropped("login name contains NUL".into()))?;
    let (uid, gid) = (Uid::from_raw(account.uid), Gid::from_raw(account.gid));
    initgroups(&name, gid).map_err(|e| call("initgroups", e))?;
    setresgid(gid, gid, gid).map_err(|e| call("setresgid", e))?;
    setresuid(uid, uid, uid).map_err(|e| call("setresuid", e))?;

    let ids = getresuid().map_err(|e| call("getresuid", e))?;
    if [ids.real, ids.effective, ids.saved] != [uid; 3] {
        return Err(not_dropped(format!("uids are {ids:?}")));
    }
    let gids = getresgid().map_err(|e| call("getresgid", e))?;
    if [gids.real, gids.effective, gids.saved] != [gid; 3] {
        return Err(not_dropped(format!("gids are {gids:?}")));
    }
    if account.uid != 0 {
        if setresuid(Uid::from_raw(0), Uid::from_raw(0), Uid::from_raw(0)).is_ok() {
            return Err(not_dropped("setting uid 0 again succeeded".into()));
        }
        let groups = getgroups().map_err(|e| call("getgroups", e))?;
        if groups.contains(&Gid::from_raw(0)) && account.gid != 0 {
            return Err(not_dropped("still in group 0".into()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Set in the child process that actually drops privileges (the test harness re-runs
    /// itself), so the test runner's own process keeps its ids.
    const CHILD: &str = "MESH_TEST_PRIVILEGE_CHILD";

    #[test]
    fn root_becomes_nobody_completely_and_cannot_return() {
        if std::env::var_os(CHILD).is_some() {
            let nobody = Account::lookup("nobody").expect("nobody exists");
            become_account(&nobody).unwrap();
            let ids = getresuid().unwrap();
            let gids = getresgid().unwrap();
            let groups = getgroups().unwrap();
            println!(
                "ids {} {} {} gids {} {} {} groups {:?} regain {}",
                ids.real,
                ids.effective,
                ids.saved,
                gids.real,
                gids.effective,
                gids.saved,
                groups.iter().map(|g| g.as_raw()).collect::<Vec<_>>(),
                nix::unistd::setuid(Uid::from_raw(0)).is_ok()
            );
            return;
        }
        if !Uid::effective().is_root() {
            eprintln!("skipped: dropping privileges needs root (CI runs as root)");
            return;
        }
        let nobody = Account::lookup("nobody").expect("nobody exists");
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "session::privilege::tests::root_becomes_nobody_completely_and_cannot_return",
                "--nocapture",
            ])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let (u, g) = (nobody.uid, nobody.gid);
        let expected = format!("ids {u} {u} {u} gids {g} {g} {g} groups [{g}] regain false");
        assert!(
            stdout.contains(&expected),
            "expected {expected:?} in:\n{stdout}"
        );
    }
}
