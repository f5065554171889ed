//! `mesh shell` end to end, typed into a terminal as a user would: a real agent (`mesh node run`)
//! on loopback, the real client running in a tmux pane under a plain local shell
//! ([`mesh_tests::tmux`]). Waits also poll the pane's terminal settings, read from outside.

// Test helpers outside #[test] functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use mesh_tests::hosts::{Agent, Home, TestCa, current_login, host_home};
use mesh_tests::mesh_bin;
use mesh_tests::tmux::{
    DEADLINE, LOCAL_PROMPT, POLL, SESSION, Tmux, client_exit, is_sane, stty_words,
};

/// The prompt the remote shell is given; typed as `mesh''-prompt> ` so its echo differs.
const REMOTE_PROMPT: &str = "mesh-prompt>";
/// Returns early from a test, with a note, when tmux is missing.
macro_rules! require_tmux {
    () => {
        if !mesh_tests::tmux::installed() {
            mesh_tests::skip_test(
                "tmux is not installed (apt-get install tmux); mesh shell untested",
            );
            return;
        }
    };
}

/// A host agent, a client home with a grant for it, and the client typed into a tmux pane, its
/// remote shell given a known prompt. Dropped tmux first: the client hangs up, then the agent
/// stops.
struct Shell {
    tmux: Tmux,
    agent: Agent,
    client: Home,
    _host: Home,
}

impl Shell {
    /// Starts everything and waits for the remote shell's prompt.
    fn start(test: &str) -> Self {
        let ca = TestCa::new();
        let host = host_home(&ca, "");
        let agent = Agent::start(&host);
        let client = Home::new();
        let grant = ca.grant(
            client.node_id(),
            host.node_id(),
            &current_login(),
            Duration::from_secs(600),
        );
        let grant = ca.grant_file(&grant, client.path());
        // A script keeps the typed line short: `sh SCRIPT; echo "client-exit=$?"`.
        let script = client.path().join("mesh-shell");
        std::fs::write(
            &script,
            format!(
                "exec {} --home {} shell --direct {} --grant {} edge\n",
                quoted(&mesh_bin()),
                quoted(client.path()),
                agent.addr(),
                quoted(&grant),
            ),
        )
        .unwrap();

        let tmux = Tmux::start(test);
        tmux.wait_for_text(LOCAL_PROMPT);
        assert_eq!(tmux.display("#{pane_width}x#{pane_height}"), "80x24");
        assert!(is_sane(&tmux.tty_settings()), "the pane starts cooked");
        tmux.type_line(&format!("sh {}; echo \"client-exit=$?\"", quoted(&script)));
        let shell = Self {
            tmux,
            agent,
            client,
            _host: host,
        };
        // The client makes the terminal raw once the session is open; keys typed before that
        // would go to the local line discipline (where ^C is a local SIGINT).
        shell.wait_for_raw_mode();
        shell
            .tmux
            .type_line("PROMPT_COMMAND=; PS1='mesh''-prompt> '");
        shell.wait_for_prompts(1);
        shell
    }

    fn wait_for_raw_mode(&self) {
        self.tmux
            .wait_for_raw_mode(|| format!("agent log:\n{}", self.agent.log()));
    }

    /// Waits until the remote prompt has been printed `count` times in all.
    fn wait_for_prompts(&self, count: usize) -> String {
        self.tmux
            .wait_for(&format!("remote prompt #{count}"), |screen| {
                screen.matches(REMOTE_PROMPT).count() >= count
            })
    }

    /// Waits for the client to end and returns the exit status the local shell printed.
    fn wait_for_client_exit(&self) -> u32 {
        self.tmux.wait_for_client_exit()
    }

    /// The local terminal is as the shell left it: checked from outside the pane, then by
    /// running `stty -a` in the local shell, as a user would.
    fn assert_terminal_restored(&self) {
        let settings = self.tmux.tty_settings();
        assert!(
            is_sane(&settings),
            "the client left the terminal raw: {}; the screen:\n{}",
            settings.join(" "),
            self.tmux.screen()
        );
        self.tmux
            .type_line("echo \"[stty-\"\"begin]\"; stty -a; echo \"[stty-\"\"end]\"");
        let screen = self.tmux.wait_for_text("[stty-end]");
        let inside = screen
            .split("[stty-begin]")
            .nth(1)
            .and_then(|rest| rest.split("[stty-end]").next())
            .unwrap();
        let words = stty_words(inside);
        assert!(
            is_sane(&words),
            "stty -a in the pane shows a raw terminal:\n{inside}"
        );
    }

    /// The pid of the `mesh` client (the one whose `--home` is this client home).
    fn client_pid(&self) -> i32 {
        let home = self.client.path().as_os_str().as_encoded_bytes().to_vec();
        let found = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .find(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
                    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
                    args.len() > 3
                        && args[0].ends_with(b"mesh")
                        && args[1] == b"--home"
                        && args[2] == home.as_slice()
                        && args[3] == b"shell"
                })
            });
        found.unwrap_or_else(|| panic!("no mesh shell client running:\n{}", self.tmux.screen()))
    }
}

/// `path` in single quotes for sh (temporary paths never contain one).
fn quoted(path: &Path) -> String {
    let text = path.to_str().unwrap();
    assert!(!text.contains('\''), "{text}");
    format!("'{text}'")
}

/// The remote shell's `stty size` (`rows cols`) via a fresh `echo "size=$(stty size)"`; the
/// `nth` such answer on the screen (1-based).
fn remote_size(shell: &Shell, nth: usize) -> String {
    shell.tmux.type_line("echo \"size=$(stty size)\"");
    let screen = shell
        .tmux
        .wait_for(&format!("answer #{nth} to stty size"), |s| {
            sizes(s).len() >= nth
        });
    sizes(&screen)[nth - 1].clone()
}

/// Every `size=ROWS COLS` printed (not the typed `size=$(...)`).
fn sizes(screen: &str) -> Vec<String> {
    screen
        .split("size=")
        .skip(1)
        .filter_map(|rest| {
            let line = rest.lines().next()?.trim_end();
            let mut numbers = line.split(' ');
            let rows = numbers.next()?;
            let cols = numbers.next()?;
            let number = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_digit());
            (number(rows) && number(cols) && numbers.next().is_none())
                .then(|| format!("{rows} {cols}"))
        })
        .collect()
}

#[test]
fn the_remote_prompt_appears_and_the_window_size_follows_the_terminal() {
    require_tmux!();
    let shell = Shell::start("size");
    // Only the remote shell prints this prompt: the typed line reads `mesh''-prompt> `.
    let screen = shell.tmux.screen();
    assert!(screen.contains(REMOTE_PROMPT), "{screen}");
    // The PTY was opened at the terminal's size.
    assert_eq!(remote_size(&shell, 1), "24 80");

    shell
        .tmux
        .run(&["resize-window", "-t", SESSION, "-x", "100", "-y", "30"]);
    assert_eq!(shell.tmux.display("#{pane_width}x#{pane_height}"), "100x30");
    // The window change reaches the host asynchronously to the keys typed after it, so ask
    // again until it has landed; a client that never forwards it stays at 24 80.
    let start = Instant::now();
    let mut nth = 2;
    loop {
        let size = remote_size(&shell, nth);
        if size == "30 100" {
            break;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "the remote terminal is still {size} after the window became 100x30:\n{}",
            shell.tmux.screen()
        );
        nth += 1;
        std::thread::sleep(POLL);
    }
}

#[test]
fn ctrl_c_interrupts_the_remote_command_and_not_the_client() {
    require_tmux!();
    let shell = Shell::start("ctrl-c");
    shell
        .tmux
        .type_line("echo \"sleep-\"\"started\"; sleep 100");
    shell.tmux.wait_for_text("sleep-started");
    let prompts = shell.tmux.screen().matches(REMOTE_PROMPT).count();
    let sent = Instant::now();
    shell.tmux.keys(&["C-c"]);
    // The remote shell is back at its prompt and still ours: far sooner than `sleep 100` ends.
    shell.wait_for_prompts(prompts + 1);
    shell.tmux.type_line("echo after-$((1+1))");
    let screen = shell.tmux.wait_for_text("after-2");
    assert!(
        sent.elapsed() < Duration::from_secs(90),
        "took as long as the sleep"
    );
    assert_eq!(client_exit(&screen), None, "the client ended:\n{screen}");
}

#[test]
fn exit_7_ends_the_client_with_7_and_restores_the_terminal() {
    require_tmux!();
    let shell = Shell::start("exit");
    shell.tmux.type_line("exit 7");
    assert_eq!(shell.wait_for_client_exit(), 7, "{}", shell.tmux.screen());
    shell.assert_terminal_restored();
}

#[test]
fn tilde_dot_after_enter_disconnects_with_255_and_restores_the_terminal() {
    require_tmux!();
    let shell = Shell::start("tilde-dot");
    shell.tmux.keys(&["Enter"]);
    shell.wait_for_prompts(2);
    shell.tmux.run(&["send-keys", "-t", SESSION, "-l", "~."]);
    let code = shell.wait_for_client_exit();
    let screen = shell.tmux.screen();
    assert_eq!(code, 255, "{screen}");
    assert!(screen.contains("mesh: disconnected"), "{screen}");
    shell.assert_terminal_restored();
}

#[test]
fn a_client_ended_by_sigterm_exits_143_and_restores_the_terminal() {
    require_tmux!();
    let shell = Shell::start("sigterm");
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shell.client_pid()),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let code = shell.wait_for_client_exit();
    assert_eq!(code, 128 + 15, "{}", shell.tmux.screen());
    shell.assert_terminal_restored();
}
