//! The command-line contract (DESIGN.md): every command is listed, exit codes follow ssh where
//! they should, and commands whose issues are open say so instead of pretending.
//! These run the built binary as a user would.

use mesh_tests::run_mesh;

/// The contract's commands, as `mesh --help`'s synopsis must show them.
const CONTRACT: &[&str] = &[
    "mesh demo [--exec CMD]",
    "mesh coordinator init [--addr HOST:PORT]",
    "mesh coordinator serve [--listen ADDR]",
    "mesh coordinator grant --user U --host H [--login L] [--temp] --ttl DUR",
    "mesh node join TOKEN|- [--coordinator ADDR]",
    "mesh node run",
    "mesh login TOKEN|- [--coordinator ADDR]",
    "mesh hosts [--json]",
    "mesh shell HOST [--login USER] [--temp] [--direct ADDR] [--grant FILE]",
    "mesh exec HOST [--login USER] [--temp] [--direct ADDR] [--grant FILE] [-t] -- CMD...",
    "mesh path HOST [--json]",
    "mesh invite host --name N [--label K=V]...",
    "mesh invite user NAME [--role R]",
    "mesh invite list [--json]",
    "mesh invite revoke ID",
    "mesh host set HOST KEY=on|off...",
    "mesh user add NAME [--role R]",
    "mesh user list [--json]",
    "mesh user remove NAME",
    "mesh user set-role NAME ROLE",
    "mesh role add NAME",
    "mesh role list [--json]",
    "mesh role remove NAME",
    "mesh netsim run SCENARIO [--seed N] [--json]",
    "mesh netsim matrix [--seeds N] [--json]",
    "mesh netsim population [--pairs N] [--seed S] [--json]",
    "mesh revoke grant ID",
    "mesh revoke device NODE_ID",
    "mesh revoke user NAME",
    "mesh audit [--host H] [--user U] [--since T] [--json]",
    "mesh cp [-r] PATH...",
    "mesh forward HOST LPORT:THOST:TPORT",
    "mesh proxy HOST [PORT]",
    "mesh relay [--listen ADDR]",
    "mesh relay join TOKEN|- [--coordinator ADDR]",
    "mesh invite relay --name N",
];

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn help_shows_every_command_of_the_contract() {
    let out = run_mesh(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out.stdout);
    for line in CONTRACT {
        assert!(help.contains(line), "`mesh --help` lacks {line:?}:\n{help}");
    }
    assert!(help.contains("--home"), "{help}");
}

#[test]
fn version_prints_and_succeeds() {
    let out = run_mesh(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(
        text(&out.stdout).starts_with("mesh "),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn unbuilt_commands_exit_2_with_one_line_and_no_output() {
    let unbuilt: &[&[&str]] = &[
        &["cp", "a", "edge-01:/tmp"],
        &["forward", "edge-01", "8080:localhost:80"],
        &["proxy", "edge-01"],
    ];
    for args in unbuilt {
        let out = run_mesh(args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "mesh {args:?}: {stderr}");
        assert!(out.stdout.is_empty(), "mesh {args:?} printed to stdout");
        assert_eq!(stderr.lines().count(), 1, "mesh {args:?}: {stderr}");
        assert!(stderr.contains("not built yet"), "mesh {args:?}: {stderr}");
    }
}

#[test]
fn relay_without_an_enrolled_home_is_one_line_and_exit_1() {
    let home = tempfile::tempdir().expect("temp home");
    let home_arg = home.path().to_str().expect("utf-8 path");
    let out = run_mesh(&["--home", home_arg, "relay", "--listen", "127.0.0.1:0"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("mesh relay join"), "{stderr}");
}

#[test]
fn path_without_an_enrolled_home_is_one_line_and_exit_1() {
    let home = tempfile::tempdir().expect("temp home");
    let home_arg = home.path().to_str().expect("utf-8 path");
    let out = run_mesh(&["--home", home_arg, "path", "edge-01", "--json"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(out.stdout.is_empty());
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("not enrolled"), "{stderr}");
}

#[test]
fn shell_and_exec_by_name_need_the_coordinator_and_say_what_works_now() {
    for args in [
        &["shell", "edge-01"][..],
        &["exec", "edge-01", "--", "true"],
    ] {
        let out = run_mesh(args);
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(255), "mesh {args:?}: {stderr}");
        assert_eq!(stderr.lines().count(), 1, "mesh {args:?}: {stderr}");
        assert!(stderr.contains("--direct ADDR --grant FILE"), "{stderr}");
    }
}

#[test]
fn an_agent_without_a_trusted_ca_refuses_to_start_with_one_line() {
    let home = tempfile::tempdir().expect("temp home");
    let home_arg = home.path().to_str().expect("utf-8 path");
    let out = run_mesh(&["--home", home_arg, "node", "run"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("trusted_ca_keys"), "{stderr}");
    std::fs::write(home.path().join("config.toml"), "listen_on = 1\n").expect("config");
    let out = run_mesh(&["--home", home_arg, "node", "run"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("listen_on"), "unknown key named: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
}

#[test]
fn usage_errors_exit_255_for_ssh_like_commands_and_2_otherwise() {
    let cases: &[(&[&str], i32)] = &[
        (&["shell"], 255),
        (&["exec", "edge-01"], 255),
        (&["exec", "edge-01", "--bogus", "--", "true"], 255),
        (&["--home", "/nonexistent", "proxy"], 255),
        (&["shell", "h", "--temp", "--login", "root"], 255),
        (&["hosts", "--bogus"], 2),
        (&["coordinator", "grant", "--user", "u"], 2),
        (&["no-such-command"], 2),
    ];
    for (args, code) in cases {
        let out = run_mesh(args);
        assert_eq!(
            out.status.code(),
            Some(*code),
            "mesh {args:?}: {}",
            text(&out.stderr)
        );
        assert!(!out.stderr.is_empty(), "mesh {args:?} said nothing");
    }
}

#[test]
fn home_is_a_global_flag_with_an_environment_fallback() {
    // --home after the subcommand is still the global flag: the command runs against that
    // home (which is not enrolled) rather than clap refusing an unknown argument.
    let home = tempfile::tempdir().expect("temp home");
    let home_arg = home.path().to_str().expect("utf-8 path");
    let out = run_mesh(&["hosts", "--home", home_arg]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("not enrolled") && stderr.contains(home_arg),
        "{stderr}"
    );
    // And from the environment.
    let out = mesh_tests::mesh()
        .args(["hosts"])
        .env("MESH_HOME", home.path())
        .output()
        .expect("run mesh");
    assert!(
        text(&out.stderr).contains(home_arg),
        "{}",
        text(&out.stderr)
    );
    let help = text(&run_mesh(&["--help"]).stdout);
    assert!(help.contains("[env: MESH_HOME="), "{help}");
}
