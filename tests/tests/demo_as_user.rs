//! `mesh demo` as a non-root user: a Unix user created for the test inside a private mount
//! namespace with overlays over `/etc` and `/home` (DESIGN.md: the machine's own files stay
//! untouched), running the real binary. Needs root to build the namespace; skipped otherwise.

// Test helpers outside #[test] functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};

/// The script run in the new mount namespace: overlays, a user, then the demo as that user.
const SCRIPT: &str = r#"
set -e
work=$(mktemp -d)
# Leave nothing behind: the overlays' upper layers hold the test user's files.
trap 'umount /home /etc 2>/dev/null; rm -rf "$work"' EXIT
mkdir -p "$work/etc-up" "$work/etc-work" "$work/home-up" "$work/home-work"
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$work/etc-up,workdir=$work/etc-work" /etc
mount -t overlay overlay -o "lowerdir=/home,upperdir=$work/home-up,workdir=$work/home-work" /home
useradd --create-home --shell /bin/sh meshdemo
cp "$MESH" "$work/mesh" && chmod 755 "$work" "$work/mesh"
runuser -u meshdemo -- env -i PATH=/usr/bin:/bin HOME=/home/meshdemo TMPDIR=/tmp \
    "$work/mesh" demo --exec 'echo demo-ok; id -un'
"#;

#[test]
fn unix_user_runs_the_demo_without_root() {
    if !nix::unistd::Uid::effective().is_root() {
        mesh_tests::skip_test("needs root to build a private mount namespace (CI runs as root)");
        return;
    }
    for tool in ["unshare", "useradd", "runuser"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .map_or(true, |o| !o.status.success())
        {
            mesh_tests::skip_test(&format!("{tool} is not installed"));
            return;
        }
    }
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", SCRIPT])
        .env("MESH", mesh_tests::mesh_bin())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(stdout, "demo-ok\nmeshdemo\n", "{stderr}");
    // The machine's own user database never saw the test user.
    let passwd = std::fs::read_to_string("/etc/passwd").unwrap();
    assert!(
        !passwd.contains("meshdemo"),
        "the test user leaked into /etc/passwd"
    );
}
