//! A private mount namespace whose `/etc` and `/home` are overlays, for tests that create Unix
//! accounts and sudoers drop-ins without touching the machine's own files (DESIGN.md).
//!
//! A holder process (`unshare --mount` running `sleep`) keeps the namespace alive on its own,
//! so an agent inside it can be SIGKILLed and started again and still find what it left
//! behind. Commands enter it with `nsenter --mount`. Dropping the handle kills the holder; the
//! namespace, with its overlays and every account made in it, goes when its last process does.
//! Processes are not isolated (one pid namespace), so `/proc` shows them from outside.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Run by `unshare --mount --propagation private sh -c SCRIPT sh WORK`: overlays over `/etc`
/// and `/home` with their upper layers on a tmpfs only this namespace sees, then a ready mark,
/// then the holder's sleep.
const SETUP: &str = r#"
set -eu
work=$1
mount -t tmpfs -o mode=0755 mesh-ns "$work/ns"
for dir in etc home; do
    mkdir "$work/ns/$dir-upper" "$work/ns/$dir-work"
    mount -t overlay overlay \
        -o "lowerdir=/$dir,upperdir=$work/ns/$dir-upper,workdir=$work/ns/$dir-work" "/$dir"
done
touch "$work/ready"
exec sleep 100000
"#;

/// Why namespaces of this kind cannot be made here, if they cannot (not root, or a tool
/// missing).
pub fn unsupported() -> Option<String> {
    unsupported_without(&[
        "unshare", "nsenter", "useradd", "userdel", "getent", "visudo", "sudo",
    ])
}

/// Why tests that make Unix users in a mount namespace with `tools` cannot run here, if they
/// cannot: not root, or one of `tools` is not installed.
pub fn unsupported_without(tools: &[&str]) -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some(
            "creating Unix users in a mount namespace needs root (CI runs as root)".into(),
        );
    }
    for tool in tools {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !found {
            return Some(format!("`{tool}` is not installed"));
        }
    }
    None
}

/// The namespace; see the module docs.
#[derive(Debug)]
pub struct MountNamespace {
    holder: Child,
    work: TempDir,
}

impl MountNamespace {
    /// Makes the namespace and waits until its overlays are mounted.
    pub fn create() -> Self {
        let work = tempfile::Builder::new()
            .prefix("mesh-ns-")
            .tempdir()
            .expect("work dir");
        std::fs::create_dir(work.path().join("ns")).expect("ns dir");
        let holder = Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                SETUP,
                "sh",
            ])
            .arg(work.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("unshare");
        let mut ns = Self { holder, work };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ns.work.path().join("ready").exists() {
            if let Ok(Some(status)) = ns.holder.try_wait() {
                panic!("the namespace setup failed: {status}");
            }
            assert!(Instant::now() < deadline, "the namespace never got ready");
            std::thread::sleep(Duration::from_millis(20));
        }
        ns
    }

    /// The namespace's handle for `nsenter`.
    fn ns_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/{}/ns/mnt", self.holder.id()))
    }

    /// `command` as it would run, but inside the namespace: the same program, arguments,
    /// environment changes and working directory, under `nsenter --mount`.
    pub fn enter(&self, command: &Command) -> Command {
        let mut inside = Command::new("nsenter");
        inside
            .arg(format!("--mount={}", self.ns_path().display()))
            .arg("--")
            .arg(command.get_program())
            .args(command.get_args());
        for (name, value) in command.get_envs() {
            match value {
                Some(value) => inside.env(name, value),
                None => inside.env_remove(name),
            };
        }
        if let Some(dir) = command.get_current_dir() {
            inside.current_dir(dir);
        }
        inside
    }

    /// Runs `program args...` inside the namespace to completion.
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        let mut command = Command::new(program);
        command.args(args).stdin(Stdio::null());
        self.enter(&command).output().expect("nsenter")
    }

    /// The user database's line for `name` inside the namespace, if there is one.
    pub fn passwd(&self, name: &str) -> Option<String> {
        let out = self.run("getent", &["passwd", name]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// Whether `path` exists inside the namespace.
    pub fn exists(&self, path: &Path) -> bool {
        self.run("test", &["-e", &path.to_string_lossy()])
            .status
            .success()
    }
}

impl Drop for MountNamespace {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}
