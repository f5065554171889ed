//! Tasks that belong to something else: [`AbortOnDrop`] ends a task when its owner goes (a
//! connection's NAT watch, a session's path keeper), so nothing outlives what it served.

/// Aborts the task when dropped.
#[derive(Debug)]
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
