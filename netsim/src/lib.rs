//! netsim: a simulated internet of NATs that runs the real mesh code, and a kernel NAT lab.
//!
//! [`topology`] describes a network (hosts, NAT boxes, links) the way a scenario's TOML writes
//! it; the simulator and the kernel lab both build from that description.
//!
//! [`nat`] and [`link`] are pure packet-level models (no I/O, no clock: time is passed in) of a
//! NAT box and of one direction of a link, which the simulator's router drives.
//!
//! [`world`] is the simulated internet itself. Besides UDP sockets it carries simulated TCP
//! connections ([`stream`] for the handles; the model is the private `tcp` module), for sites
//! that block UDP, and [`capture`] records what one host sends and receives, for tests.

pub mod capture;
pub mod lab;
pub mod link;
pub mod matrix;
pub mod mesh;
pub mod nat;
pub mod population;
pub mod scenario;
pub mod stream;
mod tcp;
pub mod topology;
pub mod world;

thread_local! {
    /// When the simulation running on this thread started, on tokio's (paused) clock.
    static RUN_START: std::cell::Cell<Option<tokio::time::Instant>> =
        const { std::cell::Cell::new(None) };
}

/// Marks now as virtual time 0 of the simulation running on this thread (for log stamps).
pub fn mark_run_start() {
    RUN_START.with(|start| start.set(Some(tokio::time::Instant::now())));
}

/// Virtual time since the simulation on this thread started, if one runs here.
pub fn virtual_elapsed() -> Option<std::time::Duration> {
    let start = RUN_START.with(std::cell::Cell::get)?;
    tokio::runtime::Handle::try_current().ok()?;
    Some(tokio::time::Instant::now().saturating_duration_since(start))
}
