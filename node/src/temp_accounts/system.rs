//! The Unix side of temporary accounts: `useradd`/`userdel`, the sudoers drop-in and killing
//! every process of a uid. Everything here blocks and needs root; the manager runs it on a
//! blocking thread.
//!
//! The tools run with an empty environment and a fixed `PATH`, and their stderr becomes the
//! one-line reason when they fail.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use super::ledger::PasswdEntry;
use crate::durable::{Staged, remove_file};

/// Where sudo reads drop-ins from (`@includedir /etc/sudoers.d` in Debian's, Ubuntu's and
/// Fedora's `/etc/sudoers`).
pub const SUDOERS_DIR: &str = "/etc/sudoers.d";

/// The search path for the tools, whatever the agent's own `PATH` is.
const TOOL_PATH: &str = "/usr/sbin:/usr/bin:/sbin:/bin";

/// How many passes [`kill_all_of`] makes before it reports processes it could not kill.
const KILL_PASSES: usize = 100;
/// The pause between passes, for killed processes to be reaped.
const KILL_PAUSE: Duration = Duration::from_millis(10);

/// Runs `tool args...`; `Err` carries its stderr (or why it could not start) in one line.
fn run(tool: &str, args: &[&str]) -> Result<(), String> {
    let output = Command::new(tool)
        .args(args)
        .env_clear()
        .env("PATH", TOOL_PATH)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {tool}: {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    let said = stderr.lines().rfind(|l| !l.trim().is_empty());
    Err(format!(
        "{tool} failed ({}): {}",
        output.status,
        said.unwrap_or("no message")
    ))
}

/// Finds `tool` on the fixed tool path (`/usr/sbin:/usr/bin:/sbin:/bin`), never on the
/// agent's own `PATH`.
pub fn find_tool(tool: &str) -> Option<PathBuf> {
    TOOL_PATH
        .split(':')
        .map(|dir| Path::new(dir).join(tool))
        .find(|path| path.is_file())
}

/// What the user database says of `name` now.
pub fn passwd_entry(name: &str) -> Option<PasswdEntry> {
    let user = nix::unistd::User::from_name(name).ok().flatten()?;
    Some(PasswdEntry {
        uid: user.uid.as_raw(),
        gecos: user.gecos.to_string_lossy().into_owned(),
    })
}

/// Whether some account has `uid`.
pub fn uid_taken(uid: u32) -> bool {
    nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        .ok()
        .flatten()
        .is_some()
}

/// Creates `name` with `uid`, a group of its own, a fresh home and `gecos` as its mark.
pub fn create_account(name: &str, uid: u32, gecos: &str, shell: &str) -> Result<(), String> {
    let uid = uid.to_string();
    run(
        "useradd",
        &[
            "--uid",
            &uid,
            "--user-group",
            "--create-home",
            "--shell",
            shell,
            "--comment",
            gecos,
            // No lastlog/faillog records: with uids this high they would be huge sparse files.
            "--no-log-init",
            "--",
            name,
        ],
    )
}

/// Deletes `name`, its home and its mail spool (a user already gone is not an error).
/// Called once every live process of the account is killed; `--force` because userdel would
/// otherwise refuse while unreaped zombies of the uid remain.
pub fn delete_account(name: &str) -> Result<(), String> {
    if passwd_entry(name).is_none() {
        return Ok(());
    }
    run("userdel", &["--force", "--remove", "--", name])
}

/// The drop-in that gives `name` root through sudo, without a password (the account has
/// none).
pub fn sudoers_rule(name: &str, gecos: &str) -> String {
    format!("# {gecos}: removed with the account\n{name} ALL=(ALL:ALL) NOPASSWD: ALL\n")
}

/// Installs `rule` as `name`'s drop-in: staged under a name sudo ignores (it has a dot),
/// checked with `visudo -c -f`, renamed into place, then the whole configuration is checked
/// again; a drop-in that fails either check never stays.
pub fn install_sudoers(name: &str, rule: &str) -> Result<(), String> {
    let dir = Path::new(SUDOERS_DIR);
    if find_tool("visudo").is_none() || find_tool("sudo").is_none() {
        return Err("sudo is not installed on this host; temporary accounts need it".into());
    }
    if !dir.is_dir() {
        return Err(format!(
            "{SUDOERS_DIR} does not exist; temporary accounts need sudo's drop-in directory"
        ));
    }
    let staged =
        Staged::write(dir, ".mesh-staged.", 0o440, rule.as_bytes()).map_err(|e| e.to_string())?;
    let staged_path = staged.path().to_string_lossy().into_owned();
    run("visudo", &["--check", "--quiet", "--file", &staged_path])?;
    let path = dir.join(name);
    staged.commit(&path).map_err(|e| e.to_string())?;
    if let Err(e) = run("visudo", &["--check", "--quiet"]) {
        let _ = remove_file(&path);
        return Err(e);
    }
    Ok(())
}

/// Removes `name`'s drop-in if it is still exactly `rule` (ours); anything else there is
/// left alone.
pub fn remove_sudoers(name: &str, rule: &str) -> Result<(), String> {
    let path = Path::new(SUDOERS_DIR).join(name);
    match std::fs::read_to_string(&path) {
        Ok(text) if text == rule => remove_file(&path).map_err(|e| e.to_string()),
        Ok(_) => Err(format!(
            "{} is not the drop-in this agent wrote; left in place",
            path.display()
        )),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

/// The live processes whose real, effective or saved uid is `uid`, from `/proc`. Zombies are
/// left out: they run nothing, and are gone once their parent (often a session process still
/// hanging its session up) reaps them.
pub fn processes_of(uid: u32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|entry| {
        let pid: i32 = entry.ok()?.file_name().to_str()?.parse().ok()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let state = status.lines().find_map(|l| l.strip_prefix("State:"))?;
        if matches!(state.trim_start().chars().next(), Some('Z' | 'X')) {
            return None;
        }
        let uids = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
        let ours = uids
            .split_whitespace()
            .take(3)
            .any(|u| u.parse::<u32>().ok() == Some(uid));
        ours.then_some(pid)
    })
    .collect()
}

/// SIGKILLs every process of `uid` until none is left: a process may fork while a pass runs,
/// but a killed one cannot, so the passes converge. `Err` names what survived.
pub fn kill_all_of(uid: u32) -> Result<(), String> {
    for _ in 0..KILL_PASSES {
        let pids = processes_of(uid);
        if pids.is_empty() {
            return Ok(());
        }
        for pid in pids {
            // Gone already is fine.
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(KILL_PAUSE);
    }
    let left = processes_of(uid);
    if left.is_empty() {
        Ok(())
    } else {
        let described: Vec<String> = left.iter().map(|pid| describe(*pid)).collect();
        Err(format!(
            "processes of uid {uid} survived SIGKILL: {}",
            described.join(", ")
        ))
    }
}

/// `PID (NAME, STATE)` from `/proc`, for error messages.
fn describe(pid: i32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map_or("?", str::trim)
            .to_owned()
    };
    format!("{pid} ({}, {})", field("Name:"), field("State:"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_found_among_its_uids_processes() {
        let me = nix::unistd::getuid().as_raw();
        let pid = i32::try_from(std::process::id()).unwrap();
        assert!(processes_of(me).contains(&pid));
        assert!(!processes_of(super::super::ledger::LAST_TEMP_UID).contains(&pid));
    }

    #[test]
    fn the_rule_names_the_account_and_no_one_else() {
        let rule = sudoers_rule("mesh-tmp-7", "mesh temporary account for alice");
        let grants: Vec<&str> = rule.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(grants, ["mesh-tmp-7 ALL=(ALL:ALL) NOPASSWD: ALL"]);
    }
}
