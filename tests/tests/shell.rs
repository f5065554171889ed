//! `mesh shell` end to end, typed into a terminal as a user would: a real agent (`mesh node run`)
//! on loopback, the real client running in a tmux pane under a plain local shell, keys sent with
//! `tmux send-keys` and the screen read back with `tmux capture-pane`.
//!
//! Every wait polls the screen (or the pane's terminal settings) until the expected text appears,
//! with a generous deadline and the screen in the panic message. Text the tests wait for is
//! spelled so that the echo of the typed command cannot match it (`"mesh""-prompt>"` types
//! differently from the `mesh-prompt>` it prints), so only real output counts.

// Test helpers outside #[test] functions: a failed unwrap is a failed test.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use mesh_tests::hosts::{Agent, Home, TestCa, current_login, host_home};
use mesh_tests::mesh_bin;

/// How long any one expected change on the screen may take (a debug build on a loaded machine,
/// plus the remote login shell's startup files).
const DEADLINE: Duration = Duration::from_secs(30);
/// How often the screen is read while waiting.
const POLL: Duration = Duration::from_millis(50);
/// The tmux session (one per server, one server per test).
const SESSION: &str = "mesh";
/// The prompt the remote shell is given; typed as `mesh''-prompt> ` so its echo differs.
const REMOTE_PROMPT: &str = "mesh-prompt>";
/// The local shell's prompt.
const LOCAL_PROMPT: &str = "local>";

/// Whether tmux can be run at all; the tests skip (loudly) without it.
fn tmux_installed() -> bool {
    Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|out| out.status.success())
}

/// Returns early from a test, with a note, when tmux is missing.
macro_rules! require_tmux {
    () => {
        if !tmux_installed() {
            mesh_tests::skip_test(
                "tmux is not installed (apt-get install tmux); mesh shell untested",
            );
            return;
        }
    };
}

/// A tmux server of its own (`tmux -L NAME`, its socket in a temporary directory) with one
/// detached 80×24 session running a plain local shell; the server is killed and its socket
/// removed when this is dropped, even when the test fails.
struct Tmux {
    socket: String,
    /// `TMUX_TMPDIR`: tmux leaves its socket file behind after `kill-server`.
    dir: tempfile::TempDir,
}

impl Tmux {
    fn start(test: &str) -> Self {
        // Owned before the server exists, so a failure below still kills whatever started.
        let tmux = Self {
            socket: format!("mesh-shell-{test}"),
            dir: tempfile::Builder::new()
                .prefix("mesh-tmux-")
                .tempdir()
                .unwrap(),
        };
        let mut args = vec![
            "new-session",
            "-d",
            "-x",
            "80",
            "-y",
            "24",
            "-s",
            SESSION,
            "--",
            "env",
        ];
        let prompt = format!("PS1={LOCAL_PROMPT} ");
        args.push(&prompt);
        // A shell without line editing, which never touches the terminal's settings itself:
        // whatever the client leaves behind is what `stty` shows.
        args.extend(local_shell());
        tmux.run(&args);
        tmux
    }

    /// `tmux -L SOCKET ARGS...`, which must succeed.
    fn run(&self, args: &[&str]) -> Output {
        let out = Command::new("tmux")
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .env("TMUX_TMPDIR", self.dir.path())
            .env_remove("TMUX")
            .env_remove("MESH_HOME")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tmux {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// Types `text` literally, then Enter.
    fn type_line(&self, text: &str) {
        self.run(&["send-keys", "-t", SESSION, "-l", text]);
        self.keys(&["Enter"]);
    }

    /// Sends tmux key names (`Enter`, `C-c`).
    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", SESSION];
        args.extend(keys);
        self.run(&args);
    }

    /// The whole pane, history included, wrapped lines joined.
    fn screen(&self) -> String {
        let out = self.run(&["capture-pane", "-p", "-J", "-S", "-", "-t", SESSION]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A pane variable (`#{pane_tty}`, ...).
    fn display(&self, format: &str) -> String {
        let out = self.run(&["display-message", "-p", "-t", SESSION, format]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Polls the screen until `done` holds; panics with `what` and the screen if it never does.
    fn wait_for(&self, what: &str, mut done: impl FnMut(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let screen = self.screen();
            if done(&screen) {
                return screen;
            }
            assert!(
                start.elapsed() < DEADLINE,
                "{what}: not on the screen after {DEADLINE:?}; the screen:\n{screen}"
            );
            std::thread::sleep(POLL);
        }
    }

    /// Waits until `text` is on the screen.
    fn wait_for_text(&self, text: &str) -> String {
        self.wait_for(&format!("{text:?}"), |screen| screen.contains(text))
    }

    /// The pane terminal's settings as `stty -a` words, read from outside the pane.
    fn tty_settings(&self) -> Vec<String> {
        let tty = self.display("#{pane_tty}");
        let out = Command::new("stty")
            .args(["-a", "-F", &tty])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "stty -F {tty}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        stty_words(&String::from_utf8_lossy(&out.stdout))
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        // Hangs up everything in the pane too (the client, then its session on the host).
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .env("TMUX_TMPDIR", self.dir.path())
            .output();
    }
}

/// The local shell in the pane: dash (no line editing, never changes the terminal's settings),
/// else bash without line editing.
fn local_shell() -> Vec<&'static str> {
    if Path::new("/bin/dash").exists() {
        vec!["/bin/dash"]
    } else {
        vec!["bash", "--norc", "--noprofile", "--noediting"]
    }
}

/// The setting words of `stty -a` output (`icanon`, `-echo`, ...).
fn stty_words(text: &str) -> Vec<String> {
    text.split(|c: char| c.is_whitespace() || c == ';')
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Whether the settings are a cooked, echoing terminal (what the shell had before the client).
fn is_sane(words: &[String]) -> bool {
    let has = |w: &str| words.iter().any(|x| x == w);
    has("icanon") && has("echo") && has("isig") && has("icrnl") && !has("-icanon") && !has("-echo")
}

/// The exit status the local shell printed after the client (`client-exit=N`), if it has.
fn client_exit(screen: &str) -> Option<u32> {
    screen.split("client-exit=").skip(1).find_map(|rest| {
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    })
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
        let start = Instant::now();
        while !self.tmux.tty_settings().iter().any(|w| w == "-icanon") {
            let screen = self.tmux.screen();
            assert!(
                client_exit(&screen).is_none() && start.elapsed() < DEADLINE,
                "the client never put the terminal in raw mode; the screen:\n{screen}\n\
                 agent log:\n{}",
                self.agent.log()
            );
            std::thread::sleep(POLL);
        }
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
        let screen = self
            .tmux
            .wait_for("the client's exit (client-exit=N)", |s| {
                client_exit(s).is_some()
            });
        client_exit(&screen).unwrap()
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
