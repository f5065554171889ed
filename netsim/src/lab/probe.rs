//! A UDP probe that runs inside a lab host's namespace, driven line by line from the test.
//!
//! A socket the test process opens lives in the test's own network namespace, not the host's,
//! so the probe is a separate process started with [`Lab::host_command`]: a short `python3`
//! program (python3 is on the development machines and in CI's image) that binds ports, sends
//! datagrams and reports what arrives with the sender's address, one command and one answer
//! per line. Each call waits for its answer, so the test decides the exact order of packets.
//!
//! Dropping a probe kills its process (the lab's teardown would too).

use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::{Child, ChildStdin, ChildStdout, Stdio};
use std::time::Duration;

use super::{Lab, LabError, tool_missing};

/// The probe. Commands: `bind PORT`, `send FROM_PORT IP PORT TAG`, `recv PORT TIMEOUT_MS`;
/// answers: `ok`, `got IP PORT TAG`, `none`, `error WHY`. It says `ready` once started.
const PROBE: &str = r#"
import select, socket, sys
socks = {}
def reply(*words):
    sys.stdout.write(" ".join(str(w) for w in words) + "\n")
    sys.stdout.flush()
reply("ready")
for line in sys.stdin:
    cmd = line.split()
    try:
        if cmd[0] == "bind":
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("0.0.0.0", int(cmd[1])))
            socks[int(cmd[1])] = s
            reply("ok")
        elif cmd[0] == "send":
            socks[int(cmd[1])].sendto(cmd[4].encode(), (cmd[2], int(cmd[3])))
            reply("ok")
        elif cmd[0] == "recv":
            s = socks[int(cmd[1])]
            ready, _, _ = select.select([s], [], [], int(cmd[2]) / 1000)
            if ready:
                data, (ip, port) = s.recvfrom(2048)
                reply("got", ip, port, data.decode(errors="replace") or "-")
            else:
                reply("none")
        else:
            reply("error", "unknown command", cmd[0])
    except Exception as e:
        reply("error", repr(e).replace("\n", " "))
"#;

/// Why probes cannot run here, if they cannot: `python3` is missing.
pub fn unsupported() -> Option<String> {
    tool_missing("python3", "--version")
}

/// A datagram a probe received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Received {
    /// The address it came from, as the receiving host sees it.
    pub from: SocketAddrV4,
    /// Its payload (the tag it was sent with).
    pub tag: String,
}

/// A running probe in one host's namespace (see the module docs).
#[derive(Debug)]
pub struct UdpProbe {
    host: String,
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl UdpProbe {
    /// Starts a probe inside `host`'s namespace.
    pub fn start(lab: &Lab, host: &str) -> Result<Self, LabError> {
        let mut command = lab.host_command(host, "python3")?;
        command
            .args(["-u", "-c", PROBE])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = command.spawn().map_err(|source| LabError::Spawn {
            command: format!("python3 probe in host {host:?}"),
            source,
        })?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(LabError::Probe {
                host: host.to_owned(),
                what: "its pipes were not set up".into(),
            });
        };
        let mut probe = Self {
            host: host.to_owned(),
            child,
            stdin,
            stdout: BufReader::new(stdout),
        };
        let first = probe.read_line()?;
        if first != "ready" {
            return Err(probe.error(format!("started with {first:?} instead of `ready`")));
        }
        Ok(probe)
    }

    /// Binds a UDP socket to `port` on every address of the host.
    pub fn bind(&mut self, port: u16) -> Result<(), LabError> {
        self.expect_ok(&format!("bind {port}"))
    }

    /// Sends one datagram carrying `tag` (one word, no whitespace) from the socket bound to
    /// `from_port` to `to`.
    pub fn send(&mut self, from_port: u16, to: SocketAddrV4, tag: &str) -> Result<(), LabError> {
        if tag.is_empty() || tag.contains(char::is_whitespace) {
            return Err(self.error(format!("the tag {tag:?} must be one word")));
        }
        self.expect_ok(&format!("send {from_port} {} {} {tag}", to.ip(), to.port()))
    }

    /// The next datagram on the socket bound to `port`, waiting at most `timeout`; `None` when
    /// nothing came.
    pub fn recv(&mut self, port: u16, timeout: Duration) -> Result<Option<Received>, LabError> {
        let answer = self.command(&format!("recv {port} {}", timeout.as_millis()))?;
        let words: Vec<&str> = answer.split(' ').collect();
        match words.as_slice() {
            ["none"] => Ok(None),
            ["got", ip, port, tag] => {
                let ip: Ipv4Addr = ip
                    .parse()
                    .map_err(|_| self.error(format!("answered {answer:?}")))?;
                let port: u16 = port
                    .parse()
                    .map_err(|_| self.error(format!("answered {answer:?}")))?;
                Ok(Some(Received {
                    from: SocketAddrV4::new(ip, port),
                    tag: (*tag).to_owned(),
                }))
            }
            _ => Err(self.error(format!("answered {answer:?}"))),
        }
    }

    fn expect_ok(&mut self, line: &str) -> Result<(), LabError> {
        let answer = self.command(line)?;
        if answer == "ok" {
            Ok(())
        } else {
            Err(self.error(format!("`{line}` answered {answer:?}")))
        }
    }

    fn command(&mut self, line: &str) -> Result<String, LabError> {
        writeln!(self.stdin, "{line}")
            .and_then(|()| self.stdin.flush())
            .map_err(|e| self.error(format!("writing `{line}`: {e}")))?;
        self.read_line()
    }

    fn read_line(&mut self) -> Result<String, LabError> {
        let mut line = String::new();
        match self.stdout.read_line(&mut line) {
            Ok(0) => Err(self.error("exited (its error is on stderr)".into())),
            Ok(_) => Ok(line.trim_end().to_owned()),
            Err(e) => Err(self.error(format!("reading its answer: {e}"))),
        }
    }

    fn error(&self, what: String) -> LabError {
        LabError::Probe {
            host: self.host.clone(),
            what,
        }
    }
}

impl Drop for UdpProbe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
