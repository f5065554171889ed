//! The host side of sessions: each QUIC stream on a session connection is one session. The
//! grant is checked at the [`Gate`]; only then is a per-session process started, and the
//! stream's bytes are copied to and from its socket unchanged.
//!
//! Not yet here (rest of issue #4): limits, idle timeout, and hanging up a vanished client's
//! session (SIGHUP, then SIGKILL); dropping the stream today kills only the session process.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use mesh_proto::messages::agent::Start;
use mesh_proto::messages::session::{LoginRequest, Opened, Refusal, Refused, SessionMessage};
use tokio::io::AsyncWriteExt;

use super::gate::{Gate, system_uid};
use super::process::spawn_session_process;
use crate::endpoint::Connection;
use crate::error::Error;
use crate::framed::write_frame;

/// How to start a per-session process: the `mesh` binary and the arguments of its
/// session-process entry point.
#[derive(Debug, Clone)]
pub struct SessionProgram {
    /// The program.
    pub program: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
}

/// Serves sessions on authenticated connections.
#[derive(Debug)]
pub struct SessionHost {
    gate: Gate,
    program: SessionProgram,
    next_session_id: AtomicU64,
}

impl SessionHost {
    /// A host that checks grants with `gate` and starts sessions with `program`.
    pub fn new(gate: Gate, program: SessionProgram) -> Arc<Self> {
        Arc::new(Self {
            gate,
            program,
            next_session_id: AtomicU64::new(1),
        })
    }

    /// Serves every session stream the client opens on `conn`, until it closes.
    pub async fn serve_connection(self: Arc<Self>, conn: Connection) {
        while let Ok((send, recv)) = conn.quic().accept_bi().await {
            let host = self.clone();
            let client = conn.peer();
            tokio::spawn(async move {
                // A failed session has already told its client what it could; nothing to add.
                let _ = host.serve_stream(send, recv, client).await;
            });
        }
    }

    async fn serve_stream(
        &self,
        mut send: quinn::SendStream,
        mut recv: quinn::RecvStream,
        client: mesh_proto::NodeId,
    ) -> Result<(), Error> {
        let Some((open, authorized)) = self
            .gate
            .admit(&mut recv, &mut send, client, &system_uid)
            .await?
        else {
            return Ok(());
        };
        let refuse = |reason: String| {
            SessionMessage::Refused(Refused {
                reason: Refusal::Host(reason),
            })
        };
        let (LoginRequest::Named(_), Some((login, _))) = (&open.login, authorized.login) else {
            let reason = "temporary accounts are not built yet (issue #6)".to_owned();
            write_frame(&mut send, &refuse(reason)).await?;
            return Ok(());
        };
        let start = Start {
            login,
            command: open.command,
            pty: open.pty,
            env: open.env,
        };
        let args: Vec<&str> = self.program.args.iter().map(String::as_str).collect();
        let (mut child, mut socket) =
            match spawn_session_process(&self.program.program, &args, start).await {
                Ok(started) => started,
                Err(e) => {
                    write_frame(&mut send, &refuse(e.to_string())).await?;
                    return Ok(());
                }
            };
        let session_id = self.next_session_id.fetch_add(1, Ordering::Relaxed);
        write_frame(&mut send, &SessionMessage::Opened(Opened { session_id })).await?;
        let mut stream = tokio::io::join(recv, send);
        let copied = tokio::io::copy_bidirectional(&mut stream, &mut socket).await;
        let _ = stream.shutdown().await;
        // The session process exits after its program; reap it.
        let _ = child.wait().await;
        copied.map(|_| ()).map_err(|e| Error::Stream(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_proto::messages::SESSION_ALPN;
    use mesh_proto::messages::session::{Data, ExitStatus, Open, Stream};

    use crate::endpoint::Endpoint;
    use crate::framed::read_frame;
    use crate::session::gate::tests::{Fixture, fixture, grant};
    use crate::session::process::tests::test_session_program;
    use crate::udp::UdpSocket;

    #[tokio::test]
    async fn a_granted_command_runs_in_a_session_process_over_quic() {
        let f = fixture();
        let me = nix::unistd::User::from_uid(nix::unistd::getuid())
            .unwrap()
            .unwrap()
            .name;
        let mut granted = grant(&f);
        granted.login = me.clone();
        let Fixture {
            ca,
            host_key,
            client_key,
            gate,
        } = f;
        let grant = ca.sign_grant(&granted).unwrap();

        let bind = || Arc::new(UdpSocket::bind("127.0.0.1:0".parse().unwrap()).unwrap());
        let host = Endpoint::new(host_key.clone(), bind(), &[SESSION_ALPN]).unwrap();
        let host_addr = host.local_addr().unwrap();
        let sessions = SessionHost::new(gate, test_session_program());
        tokio::spawn(async move {
            while let Some(Ok(conn)) = host.accept().await {
                tokio::spawn(sessions.clone().serve_connection(conn));
            }
        });

        let client = Endpoint::new(client_key, bind(), &[]).unwrap();
        let conn = client
            .connect(host_addr, host_key.node_id(), SESSION_ALPN)
            .await
            .unwrap();
        let (mut send, mut recv) = conn.quic().open_bi().await.unwrap();
        let open = Open {
            grant,
            login: LoginRequest::Named(me),
            command: Some("cat; echo err >&2; exit 5".into()),
            pty: None,
            env: vec![],
        };
        write_frame(&mut send, &SessionMessage::Open(open))
            .await
            .unwrap();
        let stdin = Data {
            stream: Stream::Stdin,
            bytes: b"typed\n".to_vec(),
        };
        write_frame(&mut send, &SessionMessage::Data(stdin))
            .await
            .unwrap();
        send.finish().unwrap();

        let (mut out, mut err, mut status, mut opened) = (Vec::new(), Vec::new(), None, false);
        while let Some(frame) = read_frame::<SessionMessage, _>(&mut recv).await.unwrap() {
            match frame {
                SessionMessage::Opened(_) => opened = true,
                SessionMessage::Data(Data {
                    stream: Stream::Stdout,
                    bytes,
                }) => out.extend(bytes),
                SessionMessage::Data(Data {
                    stream: Stream::Stderr,
                    bytes,
                }) => err.extend(bytes),
                SessionMessage::Exited(s) => status = Some(s),
                _ => {}
            }
        }
        assert!(opened);
        assert_eq!(out, b"typed\n");
        assert_eq!(err, b"err\n");
        assert_eq!(status, Some(ExitStatus::Code(5)));
    }
}
