//! The Unix side of temporary accounts: `groupadd`/`useradd`/`userdel`/`groupdel`, the sudoers
//! drop-in and killing every process of a uid. Everything here blocks and needs root; the manager runs it on a
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
/// How many surviving processes an error message names.
const MAX_DESCRIBED: usize = 8;

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

/// What the user database says of `name` now. A lookup that fails is an error, not "no such
/// account": deciding on a guess could forget a live account or delete the wrong one.
pub fn passwd_entry(name: &str) -> Result<Option<PasswdEntry>, String> {
    let user = nix::unistd::User::from_name(name)
        .map_err(|e| format!("cannot look up the account {name}: {e}"))?;
    Ok(user.map(|user| PasswdEntry {
        uid: user.uid.as_raw(),
        gecos: user.gecos.to_string_lossy().into_owned(),
    }))
}

/// Whether some account has the uid `id` or some group the gid `id` (temporary accounts get
/// both, equal). When the databases cannot be read, it counts as taken.
pub fn id_taken(id: u32) -> bool {
    let user = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(id));
    let group = nix::unistd::Group::from_gid(nix::unistd::Gid::from_raw(id));
    !matches!((user, group), (Ok(None), Ok(None)))
}

/// Whether some account has the uid `uid` (when the database cannot be read, it counts as
/// taken).
pub fn uid_taken(uid: u32) -> bool {
    !matches!(
        nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)),
        Ok(None)
    )
}

/// The gid of the group `name`, if there is one.
fn group_gid(name: &str) -> Result<Option<u32>, String> {
    nix::unistd::Group::from_name(name)
        .map(|group| group.map(|g| g.gid.as_raw()))
        .map_err(|e| format!("cannot look up the group {name}: {e}"))
}

/// Where a temporary account's home is: given to `useradd` explicitly, so it is known before
/// the account exists and after it is gone.
pub fn home_of(name: &str) -> PathBuf {
    Path::new("/home").join(name)
}

/// Creates `name` with uid and gid `id` (its own group, made first, so the gid comes from the
/// same never-reused range instead of the system's, where it would be handed out again), a
/// fresh home at [`home_of`] that must not exist yet, and `gecos` as its mark. A failure
/// leaves no group behind.
pub fn create_account(name: &str, id: u32, gecos: &str, shell: &str) -> Result<(), String> {
    let home = home_of(name);
    if home.symlink_metadata().is_ok() {
        return Err(format!(
            "{} already exists (left by an earlier account?); the host's admin should remove it",
            home.display()
        ));
    }
    let id_text = id.to_string();
    let home_text = home.to_string_lossy();
    run("groupadd", &["--gid", &id_text, "--", name])?;
    let made = run(
        "useradd",
        &[
            "--uid",
            &id_text,
            "--gid",
            &id_text,
            "--no-user-group",
            "--home-dir",
            &home_text,
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
    );
    if made.is_err() {
        let _ = delete_group(name, id);
    }
    made
}

/// Deletes the account `name` (which must still have uid `id`, or be gone), its home and its
/// group, and whatever of them an interrupted earlier attempt left. Called once every live
/// process of the account is killed; `--force` because userdel would otherwise refuse while
/// unreaped zombies of the uid remain.
pub fn delete_account(name: &str, id: u32) -> Result<(), String> {
    match passwd_entry(name)? {
        Some(found) if found.uid == id => {
            run("userdel", &["--force", "--remove", "--", name])?;
        }
        Some(found) => {
            return Err(format!(
                "{name} now has uid {}, not {id}: not the account this agent made; left alone",
                found.uid
            ));
        }
        None => {}
    }
    delete_group(name, id)?;
    remove_home(&home_of(name), id)
}

/// Deletes the group `name` if it is still the one with gid `id` (userdel removes it only
/// under `USERGROUPS_ENAB`).
fn delete_group(name: &str, id: u32) -> Result<(), String> {
    if group_gid(name)? == Some(id) {
        run("groupdel", &["--", name])?;
    }
    Ok(())
}

/// Removes a home that `userdel` left (it was interrupted, or the account was already gone):
/// only a real directory owned by `uid`, never through a symbolic link.
fn remove_home(home: &Path, uid: u32) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    match home.symlink_metadata() {
        Ok(meta) if meta.is_dir() && meta.uid() == uid => std::fs::remove_dir_all(home)
            .map_err(|e| format!("cannot remove {}: {e}", home.display())),
        Ok(_) => {
            tracing::warn!(
                "{} is not the home this agent made; left in place",
                home.display()
            );
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("cannot inspect {}: {e}", home.display())),
    }
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
    // Never over a file already there: it is not ours to replace.
    staged.commit_new(&path).map_err(|e| {
        format!(
            "{e} (a drop-in {} already exists; the host's admin should look at it)",
            path.display()
        )
    })?;
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

/// SIGKILLs every process of `uid` until none is left. First as the uid itself, with
/// `kill(-1)` (see `kill_as`), which the kernel delivers to all of them in one step so a fork
/// loop cannot outrun it; then by `/proc` passes for what that cannot reach (a process with
/// only its effective uid set to `uid`). `Err` names what survived.
///
/// A process the account started through sudo runs as root and is not "a process of the
/// uid": it is out of reach here.
pub fn kill_all_of(uid: u32) -> Result<(), String> {
    kill_as(uid)?;
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
        return Ok(());
    }
    let described: Vec<String> = left
        .iter()
        .take(MAX_DESCRIBED)
        .map(|pid| describe(*pid))
        .collect();
    let more = left.len().saturating_sub(MAX_DESCRIBED);
    let more = if more > 0 {
        format!(" and {more} more")
    } else {
        String::new()
    };
    Err(format!(
        "processes of uid {uid} survived SIGKILL: {}{more}",
        described.join(", ")
    ))
}

/// Forks a child that becomes `uid` (all three ids) and sends SIGKILL to every process it may
/// signal, which is every process of that uid but itself, then exits; waits for it.
fn kill_as(uid: u32) -> Result<(), String> {
    if uid == 0 {
        return Err("refusing to kill every process of uid 0".into());
    }
    // SAFETY: the child runs only raw system calls (no allocation, no locks), which is what a
    // child of a multi-threaded process may do, then `_exit`.
    let child = unsafe { libc::fork() };
    if child < 0 {
        return Err(format!("cannot fork: {}", std::io::Error::last_os_error()));
    }
    if child == 0 {
        // SAFETY: see above. The raw `setresuid` system call changes only this
        // single-threaded child; glibc's wrapper would try to signal threads that do not exist
        // here.
        unsafe {
            let became = libc::syscall(libc::SYS_setresuid, uid, uid, uid) == 0;
            if became {
                libc::kill(-1, libc::SIGKILL);
            }
            libc::_exit(if became { 0 } else { 1 });
        }
    }
    match nix::sys::wait::waitpid(Pid::from_raw(child), None) {
        Ok(nix::sys::wait::WaitStatus::Exited(_, 0)) => Ok(()),
        Ok(other) => Err(format!(
            "the process that kills uid {uid}'s processes ended: {other:?}"
        )),
        Err(e) => Err(format!(
            "cannot wait for the process that kills uid {uid}'s processes: {e}"
        )),
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
