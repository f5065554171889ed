//! An in-process session backend with a tiny fake shell, for simulation: thousands of sessions
//! in one runtime, no processes, no PTYs, and nothing that waits on another thread, so a
//! paused tokio clock stays deterministic (DESIGN.md, "Simulation and testing").
//!
//! It speaks the same session frames as a session process. The shell understands a handful
//! of commands, enough to drive scenarios: `echo WORDS`, `cat` (copies stdin until EOF),
//! `sleep SECONDS` (tokio time), `seq N`, `ticks N SECONDS` (N numbered lines `000001`..., one
//! every SECONDS: output spread over time, checked for gaps and repeats when a path changes
//! under it), `stty size`, `exit [N]`; anything else prints
//! `fake-shell: CMD: command not found` and sets status 127. Without a command it reads lines
//! from stdin and runs them, printing `$ ` as the prompt. A hangup (the host closing the link)
//! ends it as SIGHUP would.

use std::time::Duration;

use mesh_proto::messages::agent::Start;
use mesh_proto::messages::session::{
    Data, Eof, ExitStatus, MAX_DATA_CHUNK, SessionMessage, Stream, WindowSize,
};
use tokio::io::{AsyncRead, AsyncWrite, DuplexStream};

use super::host::{BackendSession, SessionBackend};
use crate::error::Error;
use crate::framed::{FrameReader, write_frame};

/// Bytes buffered between the host and a fake shell in each direction.
const LINK_BUFFER: usize = 64 * 1024;
/// Longest line the fake shell reads.
const MAX_LINE: usize = 4096;
/// SIGHUP's number, reported when the host hangs a fake session up.
const SIGHUP: i32 = 1;

/// Runs every session as a fake shell task in this runtime.
#[derive(Debug, Default, Clone)]
pub struct FakeShellBackend;

impl SessionBackend for FakeShellBackend {
    type Link = DuplexStream;

    async fn start(&self, start: Start) -> Result<BackendSession<Self::Link>, String> {
        let (host_side, shell_side) = tokio::io::duplex(LINK_BUFFER);
        let task = tokio::spawn(async move {
            let (read, write) = tokio::io::split(shell_side);
            // A broken link means the host is gone; there is no one left to tell.
            let _ = FakeShell::new(start, read, write).run().await;
        });
        let ended = Box::pin(async move {
            let _ = task.await;
        });
        Ok(BackendSession {
            link: host_side,
            ended,
        })
    }
}

/// One fake shell and its link.
struct FakeShell<R, W> {
    start: Start,
    input: FrameReader<R>,
    output: W,
    size: WindowSize,
    /// Stdin bytes not yet consumed as lines.
    pending: Vec<u8>,
    stdin_open: bool,
}

/// What reading stdin gave.
enum Input {
    Line(String),
    Eof,
    HungUp,
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> FakeShell<R, W> {
    fn new(start: Start, read: R, output: W) -> Self {
        let size = start
            .pty
            .as_ref()
            .map_or(WindowSize { cols: 80, rows: 24 }, |p| p.size);
        Self {
            start,
            input: FrameReader::new(read),
            output,
            size,
            pending: Vec::new(),
            stdin_open: true,
        }
    }

    async fn run(mut self) -> Result<(), Error> {
        let status = match self.start.command.clone() {
            Some(command) => self.execute(&command).await?,
            None => self.interactive().await?,
        };
        let stream = Stream::Stdout;
        write_frame(&mut self.output, &SessionMessage::Eof(Eof { stream })).await?;
        write_frame(&mut self.output, &SessionMessage::Exited(status)).await
    }

    async fn interactive(&mut self) -> Result<ExitStatus, Error> {
        let mut status = ExitStatus::Code(0);
        loop {
            self.print(b"$ ").await?;
            match self.read_line().await? {
                Input::Line(line) => {
                    if let Some(code) = exit_code(&line) {
                        return Ok(ExitStatus::Code(code.unwrap_or(last_code(status))));
                    }
                    status = self.execute(&line).await?;
                    if status == ExitStatus::Signal(SIGHUP) {
                        return Ok(status);
                    }
                }
                Input::Eof => return Ok(status),
                Input::HungUp => return Ok(ExitStatus::Signal(SIGHUP)),
            }
        }
    }

    /// Runs one command line.
    async fn execute(&mut self, line: &str) -> Result<ExitStatus, Error> {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [] => Ok(ExitStatus::Code(0)),
            ["exit", rest @ ..] => Ok(ExitStatus::Code(
                rest.first().and_then(|n| n.parse().ok()).unwrap_or(0),
            )),
            ["echo", rest @ ..] => {
                self.print(format!("{}\n", rest.join(" ")).as_bytes())
                    .await?;
                Ok(ExitStatus::Code(0))
            }
            ["seq", n] => {
                let n: u64 = n.parse().unwrap_or(0);
                let mut text = String::new();
                for i in 1..=n {
                    text.push_str(&format!("{i}\n"));
                    if text.len() >= MAX_DATA_CHUNK / 2 {
                        self.print(text.as_bytes()).await?;
                        text.clear();
                    }
                }
                self.print(text.as_bytes()).await?;
                Ok(ExitStatus::Code(0))
            }
            ["ticks", n, secs] => {
                let n: u64 = n.parse().unwrap_or(0).min(999_999);
                let every =
                    Duration::from_secs_f64(secs.parse::<f64>().unwrap_or(1.0).clamp(0.0, 3600.0));
                for i in 1..=n {
                    self.print(format!("{i:06}\n").as_bytes()).await?;
                    if i < n {
                        tokio::time::sleep(every).await;
                    }
                }
                Ok(ExitStatus::Code(0))
            }
            ["stty", "size"] => {
                let size = format!("{} {}\n", self.size.rows, self.size.cols);
                self.print(size.as_bytes()).await?;
                Ok(ExitStatus::Code(0))
            }
            ["sleep", secs] => {
                let secs: f64 = secs.parse().unwrap_or(0.0);
                let nap = tokio::time::sleep(Duration::from_secs_f64(secs.clamp(0.0, 1e9)));
                tokio::pin!(nap);
                loop {
                    tokio::select! {
                        biased;
                        () = &mut nap => return Ok(ExitStatus::Code(0)),
                        message = self.input.next::<SessionMessage>() => {
                            match message? {
                                None => return Ok(ExitStatus::Signal(SIGHUP)),
                                Some(message) => self.absorb(message),
                            }
                        }
                    }
                }
            }
            ["cat"] => loop {
                if !self.pending.is_empty() {
                    let bytes = std::mem::take(&mut self.pending);
                    self.print(&bytes).await?;
                }
                if !self.stdin_open {
                    return Ok(ExitStatus::Code(0));
                }
                match self.input.next::<SessionMessage>().await? {
                    None => return Ok(ExitStatus::Signal(SIGHUP)),
                    Some(message) => self.absorb(message),
                }
            },
            [command, ..] => {
                let message = format!("fake-shell: {command}: command not found\n");
                self.print_to(Stream::Stderr, message.as_bytes()).await?;
                Ok(ExitStatus::Code(127))
            }
        }
    }

    /// Takes in one client message outside of line reading.
    fn absorb(&mut self, message: SessionMessage) {
        match message {
            SessionMessage::Data(Data { bytes, .. }) => self.pending.extend(bytes),
            SessionMessage::Eof(_) => self.stdin_open = false,
            SessionMessage::Resize(size) => self.size = size,
            _ => {}
        }
    }

    async fn read_line(&mut self) -> Result<Input, Error> {
        loop {
            if let Some(end) = self.pending.iter().position(|b| *b == b'\n' || *b == b'\r') {
                let line: Vec<u8> = self.pending.drain(..=end).collect();
                let text = String::from_utf8_lossy(&line[..end]).into_owned();
                return Ok(Input::Line(text));
            }
            if !self.stdin_open || self.pending.len() > MAX_LINE {
                if self.pending.is_empty() {
                    return Ok(Input::Eof);
                }
                let rest = std::mem::take(&mut self.pending);
                return Ok(Input::Line(String::from_utf8_lossy(&rest).into_owned()));
            }
            match self.input.next::<SessionMessage>().await? {
                None => return Ok(Input::HungUp),
                Some(message) => self.absorb(message),
            }
        }
    }

    async fn print(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.print_to(Stream::Stdout, bytes).await
    }

    async fn print_to(&mut self, stream: Stream, bytes: &[u8]) -> Result<(), Error> {
        for chunk in bytes.chunks(MAX_DATA_CHUNK) {
            let data = Data {
                stream,
                bytes: chunk.to_vec(),
            };
            write_frame(&mut self.output, &SessionMessage::Data(data)).await?;
        }
        Ok(())
    }
}

/// `Some(Some(n))` for `exit N`, `Some(None)` for a bare `exit`, `None` for anything else.
fn exit_code(line: &str) -> Option<Option<i32>> {
    let mut words = line.split_whitespace();
    (words.next() == Some("exit")).then(|| words.next().and_then(|n| n.parse().ok()))
}

fn last_code(status: ExitStatus) -> i32 {
    match status {
        ExitStatus::Code(code) => code,
        ExitStatus::Signal(n) => 128 + n,
    }
}
