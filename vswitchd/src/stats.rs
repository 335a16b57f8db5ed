//! Per-port counters, shared between the datapath (which adds) and the control
//! server (which reads). Kept per interface name across device re-opens, so a VM
//! restart does not reset them.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use serde::{Deserialize, Serialize};

#[derive(Debug, Default)]
pub struct PortStats {
    pub rx_packets: AtomicU64,
    pub rx_bytes: AtomicU64,
    pub rx_dropped: AtomicU64,
    pub rx_errors: AtomicU64,
    pub tx_packets: AtomicU64,
    pub tx_bytes: AtomicU64,
    pub tx_dropped: AtomicU64,
    pub tx_errors: AtomicU64,
}

/// A consistent-enough copy of [`PortStats`] for display, with Open vSwitch's key
/// names (`Interface:statistics`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsView {
    pub rx_packets: u64,
    pub rx_bytes: u64,
    pub rx_dropped: u64,
    pub rx_errors: u64,
    pub tx_packets: u64,
    pub tx_bytes: u64,
    pub tx_dropped: u64,
    pub tx_errors: u64,
}

impl PortStats {
    pub fn view(&self) -> StatsView {
        StatsView {
            rx_packets: self.rx_packets.load(Relaxed),
            rx_bytes: self.rx_bytes.load(Relaxed),
            rx_dropped: self.rx_dropped.load(Relaxed),
            rx_errors: self.rx_errors.load(Relaxed),
            tx_packets: self.tx_packets.load(Relaxed),
            tx_bytes: self.tx_bytes.load(Relaxed),
            tx_dropped: self.tx_dropped.load(Relaxed),
            tx_errors: self.tx_errors.load(Relaxed),
        }
    }

    /// Adds a batch's worth of receive counts with one atomic add per counter.
    #[inline]
    pub fn add_rx(&self, packets: u64, bytes: u64, dropped: u64, errors: u64) {
        if packets != 0 {
            self.rx_packets.fetch_add(packets, Relaxed);
            self.rx_bytes.fetch_add(bytes, Relaxed);
        }
        if dropped != 0 {
            self.rx_dropped.fetch_add(dropped, Relaxed);
        }
        if errors != 0 {
            self.rx_errors.fetch_add(errors, Relaxed);
        }
    }

    #[inline]
    pub fn add_tx(&self, packets: u64, bytes: u64, dropped: u64, errors: u64) {
        if packets != 0 {
            self.tx_packets.fetch_add(packets, Relaxed);
            self.tx_bytes.fetch_add(bytes, Relaxed);
        }
        if dropped != 0 {
            self.tx_dropped.fetch_add(dropped, Relaxed);
        }
        if errors != 0 {
            self.tx_errors.fetch_add(errors, Relaxed);
        }
    }
}
