//! netsim: a simulated internet of NATs that runs the real mesh code, and a kernel NAT lab.
//!
//! [`topology`] describes a network (hosts, NAT boxes, links) the way a scenario's TOML writes
//! it; the simulator and the kernel lab both build from that description.

pub mod topology;
