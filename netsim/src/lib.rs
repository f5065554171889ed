//! netsim: a simulated internet of NATs that runs the real mesh code, and a kernel NAT lab.
//!
//! Empty until the netsim issue (#7) lands. It will implement the
//! [`DatagramSocket`](mesh_proto::socket::DatagramSocket) seam over simulated links and NAT
//! boxes, drive the real node, coordinator and relay on a paused tokio clock, and run scenarios.
//! See `ARCHITECTURE.md`.
