//! A terminal for end-to-end tests of interactive commands: a tmux server of its own running
//! a plain local shell in one 80×24 pane; keys go in with `tmux send-keys` and the screen comes
//! back with `tmux capture-pane`.
//!
//! Every wait polls the screen until the expected text appears, with a generous deadline and the
//! screen in the panic message. Text a test waits for should be spelled so that the echo of the
//! typed command cannot match it (`"mesh""-prompt>"` types differently from the `mesh-prompt>`
//! it prints), so only real output counts.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// How long any one expected change on the screen may take (a debug build on a loaded machine,
/// plus the remote login shell's startup files).
pub const DEADLINE: Duration = Duration::from_secs(30);
/// How often the screen is read while waiting.
pub const POLL: Duration = Duration::from_millis(50);
/// The tmux session (one per server, one server per test).
pub const SESSION: &str = "mesh";
/// The local shell's prompt.
pub const LOCAL_PROMPT: &str = "local>";

/// Whether tmux can be run at all; the tests skip (loudly) without it.
pub fn installed() -> bool {
    Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|out| out.status.success())
}

/// A tmux server of its own (`tmux -L NAME`, its socket in a temporary directory) with one
/// detached 80×24 session running a plain local shell; the server is killed and its socket
/// removed when this is dropped, even when the test fails.
#[derive(Debug)]
pub struct Tmux {
    socket: String,
    /// `TMUX_TMPDIR`: tmux leaves its socket file behind after `kill-server`.
    dir: tempfile::TempDir,
}

impl Tmux {
    /// Starts the server (its socket named after `test`) and the local shell in its pane.
    pub fn start(test: &str) -> Self {
        // Owned before the server exists, so a failure below still kills whatever started.
        let tmux = Self {
            socket: format!("mesh-{test}"),
            dir: tempfile::Builder::new()
                .prefix("mesh-tmux-")
                .tempdir()
                .expect("tmux"),
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
    pub fn run(&self, args: &[&str]) -> Output {
        let out = Command::new("tmux")
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .env("TMUX_TMPDIR", self.dir.path())
            .env_remove("TMUX")
            .env_remove("MESH_HOME")
            .output()
            .expect("tmux");
        assert!(
            out.status.success(),
            "tmux {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }

    /// The client's exit status, once the local shell printed it after a line typed as
    /// `COMMAND; echo "client-exit=$?"`; waits for it.
    pub fn wait_for_client_exit(&self) -> u32 {
        let screen = self.wait_for("the client's exit (client-exit=N)", |s| {
            client_exit(s).is_some()
        });
        client_exit(&screen).unwrap_or_default()
    }

    /// Waits until the client has made the pane's terminal raw (it does once its session is
    /// open; keys typed before would go to the local line discipline). `context` adds to the
    /// panic message (an agent's log).
    pub fn wait_for_raw_mode(&self, context: impl Fn() -> String) {
        let start = Instant::now();
        while !self.tty_settings().iter().any(|w| w == "-icanon") {
            let screen = self.screen();
            assert!(
                client_exit(&screen).is_none() && start.elapsed() < DEADLINE,
                "the client never put the terminal in raw mode; the screen:\n{screen}\n{}",
                context()
            );
            std::thread::sleep(POLL);
        }
    }

    /// Types `text` literally, then Enter.
    pub fn type_line(&self, text: &str) {
        self.run(&["send-keys", "-t", SESSION, "-l", text]);
        self.keys(&["Enter"]);
    }

    /// Sends tmux key names (`Enter`, `C-c`).
    pub fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", SESSION];
        args.extend(keys);
        self.run(&args);
    }

    /// The whole pane, history included, wrapped lines joined.
    pub fn screen(&self) -> String {
        let out = self.run(&["capture-pane", "-p", "-J", "-S", "-", "-t", SESSION]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// A pane variable (`#{pane_tty}`, ...).
    pub fn display(&self, format: &str) -> String {
        let out = self.run(&["display-message", "-p", "-t", SESSION, format]);
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// Polls the screen until `done` holds; panics with `what` and the screen if it never does.
    pub fn wait_for(&self, what: &str, mut done: impl FnMut(&str) -> bool) -> String {
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
    pub fn wait_for_text(&self, text: &str) -> String {
        self.wait_for(&format!("{text:?}"), |screen| screen.contains(text))
    }

    /// The pane terminal's settings as `stty -a` words, read from outside the pane.
    pub fn tty_settings(&self) -> Vec<String> {
        let tty = self.display("#{pane_tty}");
        let out = Command::new("stty")
            .args(["-a", "-F", &tty])
            .output()
            .expect("tmux");
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
pub fn stty_words(text: &str) -> Vec<String> {
    text.split(|c: char| c.is_whitespace() || c == ';')
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Whether the settings are a cooked, echoing terminal (what the shell had before the client).
pub fn is_sane(words: &[String]) -> bool {
    let has = |w: &str| words.iter().any(|x| x == w);
    has("icanon") && has("echo") && has("isig") && has("icrnl") && !has("-icanon") && !has("-echo")
}

/// The exit status the local shell printed after the client (`client-exit=N`), if it has.
pub fn client_exit(screen: &str) -> Option<u32> {
    screen.split("client-exit=").skip(1).find_map(|rest| {
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    })
}
