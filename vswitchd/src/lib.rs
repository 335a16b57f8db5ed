//! The vswitch daemon as a library: the configuration model and control protocol
//! (shared with `vsctl`), the network-device backends, the datapath worker and the
//! control server. `main.rs` only parses flags and wires these together.

pub mod config;
pub mod control;
pub mod datapath;
pub mod db;
pub mod netdev;
pub mod pipeline;
pub mod reconcile;
pub mod rpc;
pub mod stats;
pub mod trace;
pub mod tunnel;

/// `vswitchd --busy-poll-us` by default.
pub const DEFAULT_BUSY_POLL_US: u64 = 100;
