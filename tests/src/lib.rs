//! Helpers for end-to-end tests that drive the `mesh` binary the way a user does.
//!
//! Cross-crate end-to-end tests live in this crate's `tests/`; the CLI's own contract tests live
//! in `cli/tests/` and use this library too. Because `mesh-cli` has integration tests, cargo
//! builds the `mesh` binary whenever the workspace's tests are built, so it is there to find.

pub mod fleet;
pub mod hosts;
pub mod namespace;
pub mod tmux;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Path of the `mesh` binary cargo built next to this test executable, or `$MESH_BIN`.
pub fn mesh_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("MESH_BIN") {
        return PathBuf::from(path);
    }
    // Test executables live in target/<profile>/deps; binaries one level up.
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test executable is in target/<profile>/deps");
    let bin = profile_dir.join("mesh");
    assert!(
        bin.exists(),
        "{} not found: build it first (`cargo build -p mesh-cli`), or set MESH_BIN",
        bin.display()
    );
    bin
}

/// A `mesh` command with a clean environment: no inherited `MESH_HOME`, stdin closed.
pub fn mesh() -> Command {
    let mut command = Command::new(mesh_bin());
    command.env_remove("MESH_HOME").stdin(Stdio::null());
    command
}

/// Runs `mesh ARGS...` to completion.
pub fn run_mesh(args: &[&str]) -> Output {
    mesh().args(args).output().expect("run mesh")
}

/// Says why the calling test cannot run on this machine, so the caller can return: a test that
/// needs root, tmux or namespaces skips on a developer's laptop. Under `CI` (set by `.ci/run`,
/// which installs everything and runs as root) a skip would hide an untested feature, so it is
/// a failure there instead.
pub fn skip_test(why: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "cannot run under CI: {why}; .ci/run must provide it"
    );
    eprintln!("SKIPPED: {why}");
}
