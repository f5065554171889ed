//! Uploads spooled audit events to the coordinator, one segment per request, deleting each
//! only after the coordinator's ack. A batch whose ack was lost stays in the spool and is sent
//! again; the coordinator keys events by (host, id), so the repeat adds nothing.

use std::future::Future;

use mesh_proto::audit::AuditEvent;
use mesh_proto::messages::control::{AuditAck, AuditUpload, ControlMessage};

use super::AuditLog;
use crate::control::request;
use crate::endpoint::Connection;
use crate::error::Error;

/// Where batches go: the coordinator connection in the agent; tests wrap it to lose acks.
pub trait AuditTransport: Sync {
    /// Sends one batch and returns the coordinator's ack.
    fn upload(
        &self,
        events: Vec<AuditEvent>,
    ) -> impl Future<Output = Result<AuditAck, Error>> + Send;
}

impl AuditTransport for Connection {
    async fn upload(&self, events: Vec<AuditEvent>) -> Result<AuditAck, Error> {
        match request(self, &ControlMessage::AuditUpload(AuditUpload { events })).await? {
            ControlMessage::AuditAck(ack) => Ok(ack),
            other => Err(Error::Stream(format!(
                "expected an audit ack, got {other:?}"
            ))),
        }
    }
}

/// Uploads every spooled batch until the spool is empty; returns how many events were
/// acknowledged. Stops at the first failure, leaving the unacknowledged batch in the spool.
pub async fn upload_pending(log: &AuditLog, to: &impl AuditTransport) -> Result<usize, Error> {
    let mut sent = 0;
    while let Some((seq, events)) = log.next_batch()? {
        let count = events.len();
        if count == 0 {
            log.acknowledged(seq)?;
            continue;
        }
        let ack = to.upload(events).await?;
        if usize::try_from(ack.received).ok() != Some(count) {
            return Err(Error::Stream(format!(
                "the coordinator acknowledged {} audit events of {count}",
                ack.received
            )));
        }
        log.acknowledged(seq)?;
        tracing::debug!(count, new = ack.new, "audit events uploaded");
        sent += count;
    }
    Ok(sent)
}

/// Uploads what is spooled, then each new event as it is recorded, until a failure (the
/// caller reconnects).
pub async fn upload_forever(log: &AuditLog, to: &impl AuditTransport) -> Result<(), Error> {
    loop {
        upload_pending(log, to).await?;
        log.changed().await;
    }
}
