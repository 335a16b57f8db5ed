//! `ofproto` — the pure core of vswitch.
//!
//! Everything a frame's fate depends on is decided here, deterministically, from
//! `(frame bytes, in_port, state)`: parsing, MAC learning, the NORMAL
//! learning-switch decision, and the offload arithmetic (virtio-net headers,
//! checksum completion, TCP/UDP segmentation). Nothing in this crate performs I/O,
//! spawns threads or reads the clock — time is passed in — so every rule can be
//! unit-tested with byte arrays and benchmarked alone. The daemon (`vswitchd`)
//! owns sockets and devices and calls into this crate once per frame.

pub mod actions;
pub mod checksum;
pub mod classifier;
pub mod ethernet;
pub mod flow;
pub mod flow_cache;
pub mod flow_syntax;
pub mod gro;
pub mod gso;
pub mod gso_runs;
pub mod mac;
pub mod mac_learning;
pub mod normal;
pub mod rewrite;
pub mod tcp_gso;
pub mod tunnel;
pub mod udp_gso;
pub mod vlan;
pub mod vnet_hdr;

pub use mac::MacAddr;

/// An OpenFlow port number, as shown in `ofport`. Stable for the life of a port
/// (persisted), so MAC-table entries and, later, flows can refer to it across
/// reconfigurations.
pub type PortNo = u32;

/// OpenFlow's number for a bridge's own internal port (`OFPP_LOCAL`).
pub const OFPP_LOCAL: PortNo = 0xfffe;

/// Largest number a user may request for an ordinary port (`OFPP_MAX`).
pub const OFPP_MAX: PortNo = 0xff00;
