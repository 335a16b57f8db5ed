//! The datapath: one plain thread that reads frames in batches, decides their fate
//! with `ofproto`, and writes them out in batches.
//!
//! Why it looks like this:
//! - **Snapshots, not locks.** The control side builds an immutable [`Snapshot`] of
//!   bridges and ports and hands it over with [`Cmd::Reconfigure`]; the thread swaps
//!   it between batches. Nothing on the per-frame path takes a lock.
//! - **The thread owns the MAC tables.** Learning is a plain `&mut` write; the
//!   control side asks for a copy ([`Cmd::DumpFdb`]) instead of sharing the table.
//! - **Batches.** `recvmmsg` fills up to 32 frames; outputs are queued per port as
//!   indices into the receive buffers (flooding copies nothing) and flushed with one
//!   `sendmmsg` per port. Counters are added once per batch.
//! - **No allocation per frame.** Receive buffers, per-port queues and the
//!   segmentation arena are allocated once and reused.
//! - **Plain thread, not tokio.** Readiness machinery costs 5–10% here; the thread
//!   blocks in `epoll_wait` and an eventfd wakes it for commands.
//!
//! Patch ports have no device: output to one re-enters the peer bridge with the
//! peer port as input, within the same batch, like Open vSwitch's patch ports.

use std::collections::HashMap;
use std::io;
use std::ops::Range;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

use ofproto::ethernet::EthernetFrame;
use ofproto::gso;
use ofproto::mac_learning::{MacEntry, MacTable};
use ofproto::normal::{normal, Normal};
use ofproto::vlan::{self, PortVlan};
use ofproto::vnet_hdr::{VnetHdr, VNET_HDR_LEN};
use ofproto::{MacAddr, PortNo};
use tokio::sync::oneshot;
use tracing::{debug, warn};

use crate::netdev::poll::{Epoll, EventFd};
use crate::netdev::{Netdev, RxBatch, TxBatch, TxStore, BATCH};
use crate::pipeline::{ActionRt, Pipeline, MAX_RESUBMIT_DEPTH};
use crate::stats::PortStats;
use ofproto::flow::{FlowKey, VLAN_TCI};

/// How deep a frame may travel through chained patch ports (a loop of patch pairs
/// would otherwise recurse forever).
const MAX_PATCH_DEPTH: u8 = 8;
/// Batches read from one port before giving the others a turn.
const BATCHES_PER_WAKEUP: usize = 4;
const WAKE_TOKEN: u64 = u64::MAX;
/// Segments per flush the arenas are sized for up front: a full batch of 64 KiB
/// super-frames cut at an MSS of 512 or more. Sized once so that steady-state
/// forwarding never grows them (pages not yet touched cost no memory).
const PREALLOC_SEGMENTS: usize = BATCH * 128;

/// How a port is reached.
pub enum PortKind {
    Device(Arc<Netdev>),
    /// Output re-enters the peer port's bridge; `None` while the peer is missing.
    Patch {
        peer: Option<usize>,
    },
    /// Configured, but its device is missing or failed; frames to it are dropped.
    Absent,
}

pub struct PortRt {
    pub name: String,
    pub bridge: usize,
    pub ofport: PortNo,
    pub kind: PortKind,
    pub vlan: PortVlan,
    pub stats: Arc<PortStats>,
}

/// One frame queued for a port: its receive slot and the outer tag it must leave
/// with (`None`: untagged). The send path compares that with the tag the frame
/// carries and strips, pushes or rewrites it without copying the frame.
#[derive(Clone, Copy)]
struct TxItem {
    slot: u16,
    tag: Option<u16>,
}

/// What the pipeline knows about a frame as its actions run.
struct FlowState {
    key: FlowKey,
    /// The outer tag the frame would leave with if output now.
    tci: Option<u16>,
    in_port: usize,
    /// Whether any action sent the frame somewhere.
    output: bool,
}

impl FlowState {
    /// Changes the frame's tag, and the key later lookups see (CFI bit = tag present).
    fn set_tci(&mut self, tci: Option<u16>) {
        self.tci = tci;
        self.key
            .set(VLAN_TCI, tci.map_or(0, |t| u64::from(t | 0x1000)));
    }
}

/// Length of a rewritten frame prefix: virtio-net header, MAC addresses, one tag.
const PREFIX_LEN: usize = VNET_HDR_LEN + 12 + 4;

pub struct BridgeRt {
    pub name: String,
    /// Indices into [`Snapshot::ports`].
    pub ports: Vec<usize>,
    pub by_ofport: HashMap<PortNo, usize>,
    /// The flow tables; `None` when the bridge has only the default NORMAL flow.
    pub pipeline: Option<Pipeline>,
    pub mac_table_size: usize,
    pub mac_aging_secs: u64,
}

/// Everything the datapath needs to forward, immutable once built.
#[derive(Default)]
pub struct Snapshot {
    pub ports: Vec<PortRt>,
    pub bridges: Vec<BridgeRt>,
}

pub enum Cmd {
    Reconfigure(Arc<Snapshot>, oneshot::Sender<()>),
    DumpFdb {
        bridge: String,
        reply: oneshot::Sender<Option<Vec<MacEntry>>>,
    },
    Shutdown,
}

/// The control side's end of the datapath thread.
pub struct WorkerHandle {
    tx: mpsc::Sender<Cmd>,
    wake: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
}

impl WorkerHandle {
    pub fn spawn() -> io::Result<WorkerHandle> {
        let (tx, rx) = mpsc::channel();
        let wake = Arc::new(EventFd::new()?);
        let w = wake.clone();
        let thread = std::thread::Builder::new()
            .name("datapath".into())
            .spawn(move || match Worker::new(rx, w) {
                Ok(mut worker) => worker.run(),
                Err(e) => warn!("datapath thread failed to start: {e}"),
            })?;
        Ok(WorkerHandle {
            tx,
            wake,
            thread: Some(thread),
        })
    }

    pub fn send(&self, cmd: Cmd) {
        if self.tx.send(cmd).is_ok() {
            self.wake.notify();
        }
    }

    /// Stops the thread and waits for it, so every device reference it held is dropped.
    pub fn shutdown(&mut self) {
        self.send(Cmd::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for WorkerHandle {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Counters for the port a batch was read from, added once per batch.
#[derive(Default)]
struct RxCounts {
    packets: u64,
    bytes: u64,
    dropped: u64,
    errors: u64,
}

struct Worker {
    cmds: mpsc::Receiver<Cmd>,
    wake: Arc<EventFd>,
    epoll: Epoll,
    snap: Arc<Snapshot>,
    mac: Vec<MacTable>,
    rx: RxBatch,
    /// Per output port: frames to send.
    txq: Vec<Vec<TxItem>>,
    /// Ports with something in `txq`, in first-use order.
    pending: Vec<usize>,
    tx_store: TxStore,
    /// Per queued frame of the port being flushed: how its tag changes, if it does.
    retags: Vec<Option<Retag>>,
    /// Frames materialized with their new tag for ports that need a copy anyway.
    tag_buf: Vec<u8>,
    seg_buf: Vec<u8>,
    seg_ranges: Vec<Range<usize>>,
    epoch: Instant,
    now: u64,
    last_expire: u64,
}

impl Worker {
    fn new(cmds: mpsc::Receiver<Cmd>, wake: Arc<EventFd>) -> io::Result<Worker> {
        let epoll = Epoll::new()?;
        epoll.add(wake.fd(), WAKE_TOKEN)?;
        Ok(Worker {
            cmds,
            wake,
            epoll,
            snap: Arc::new(Snapshot::default()),
            mac: Vec::new(),
            rx: RxBatch::default(),
            txq: Vec::new(),
            pending: Vec::with_capacity(64),
            tx_store: TxStore::with_capacity(PREALLOC_SEGMENTS),
            retags: Vec::with_capacity(BATCH * 4),
            tag_buf: Vec::with_capacity(crate::netdev::BUF_SIZE + 4),
            seg_buf: Vec::with_capacity(BATCH * crate::netdev::BUF_SIZE + PREALLOC_SEGMENTS * 128),
            seg_ranges: Vec::with_capacity(PREALLOC_SEGMENTS),
            epoch: crate::pipeline::epoch(),
            now: 0,
            last_expire: 0,
        })
    }

    fn run(&mut self) {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 64];
        loop {
            let n = match self.epoll.wait(&mut events, 1000) {
                Ok(n) => n,
                Err(e) => {
                    warn!("datapath epoll_wait failed: {e}");
                    std::thread::sleep(std::time::Duration::from_millis(10));
                    0
                }
            };
            self.now = self.epoch.elapsed().as_millis() as u64;
            for ev in &events[..n] {
                let token = ev.u64;
                if token == WAKE_TOKEN {
                    self.wake.drain();
                    if !self.handle_cmds() {
                        return;
                    }
                } else {
                    self.poll_port(token as usize);
                }
            }
            if self.now.saturating_sub(self.last_expire) >= 1000 {
                self.last_expire = self.now;
                for t in &mut self.mac {
                    t.expire(self.now);
                }
            }
        }
    }

    /// Returns false on shutdown.
    fn handle_cmds(&mut self) -> bool {
        while let Ok(cmd) = self.cmds.try_recv() {
            match cmd {
                Cmd::Reconfigure(snap, ack) => {
                    self.reconfigure(snap);
                    let _ = ack.send(());
                }
                Cmd::DumpFdb { bridge, reply } => {
                    let now = self.epoch.elapsed().as_millis() as u64;
                    let found = self
                        .snap
                        .bridges
                        .iter()
                        .position(|b| b.name == bridge)
                        .map(|i| self.mac[i].entries(now));
                    let _ = reply.send(found);
                }
                Cmd::Shutdown => {
                    self.snap = Arc::new(Snapshot::default());
                    return false;
                }
            }
        }
        true
    }

    fn reconfigure(&mut self, snap: Arc<Snapshot>) {
        // Carry MAC tables over by bridge name; forget entries whose port is gone or
        // is now a different port under the same number.
        let mut old: HashMap<String, (MacTable, HashMap<PortNo, String>)> = HashMap::new();
        for (b, t) in self.snap.bridges.iter().zip(self.mac.drain(..)) {
            let names = b
                .by_ofport
                .iter()
                .map(|(&of, &i)| (of, self.snap.ports[i].name.clone()))
                .collect();
            old.insert(b.name.clone(), (t, names));
        }
        self.mac = snap
            .bridges
            .iter()
            .map(|b| match old.remove(&b.name) {
                Some((mut t, names)) => {
                    t.set_max_entries(b.mac_table_size);
                    t.set_aging_secs(b.mac_aging_secs);
                    t.retain_ports(|of| {
                        b.by_ofport
                            .get(&of)
                            .is_some_and(|&i| names.get(&of) == Some(&snap.ports[i].name))
                    });
                    t
                }
                None => MacTable::new(b.mac_table_size, b.mac_aging_secs),
            })
            .collect();

        // A fresh epoll set: port indices are the tokens and they changed.
        match Epoll::new() {
            Ok(ep) => {
                if let Err(e) = ep.add(self.wake.fd(), WAKE_TOKEN) {
                    warn!("datapath: cannot watch control eventfd: {e}");
                }
                for (i, p) in snap.ports.iter().enumerate() {
                    if let PortKind::Device(d) = &p.kind {
                        if let Err(e) = ep.add(d.rx_fd(), i as u64) {
                            warn!("datapath: cannot poll {}: {e}", p.name);
                        }
                    }
                }
                self.epoll = ep;
            }
            Err(e) => warn!("datapath: cannot create epoll set: {e}"),
        }
        self.txq
            .resize_with(snap.ports.len(), || Vec::with_capacity(BATCH * 2));
        self.txq.truncate(snap.ports.len());
        for q in &mut self.txq {
            q.clear();
        }
        self.pending.clear();
        debug!(
            ports = snap.ports.len(),
            bridges = snap.bridges.len(),
            "datapath reconfigured"
        );
        self.snap = snap;
    }

    fn poll_port(&mut self, port: usize) {
        let snap = self.snap.clone();
        let Some(p) = snap.ports.get(port) else {
            return;
        };
        let PortKind::Device(dev) = &p.kind else {
            return;
        };
        for _ in 0..BATCHES_PER_WAKEUP {
            let n = match dev.recv(&mut self.rx) {
                Ok(0) => return,
                Ok(n) => n,
                Err(e) => {
                    // ENETDOWN is reported once when the link goes down; anything else
                    // (device removed under us) would repeat forever, so stop polling
                    // until the control side re-opens the device.
                    if e.raw_os_error() != Some(libc::ENETDOWN) {
                        p.stats.add_rx(0, 0, 0, 1);
                        warn!(
                            "port {}: receive failed, stop polling until it is re-opened: {e}",
                            p.name
                        );
                        self.epoll.delete(dev.rx_fd());
                    }
                    return;
                }
            };
            let mut c = RxCounts::default();
            for i in 0..n {
                let slot = self.rx.slot(i);
                if self.rx.truncated(i) || slot.len() < VNET_HDR_LEN {
                    c.errors += 1;
                    continue;
                }
                let Ok(eth) = EthernetFrame::new_checked(&slot[VNET_HDR_LEN..]) else {
                    c.errors += 1;
                    continue;
                };
                c.packets += 1;
                c.bytes += (slot.len() - VNET_HDR_LEN) as u64;
                let (src, dst, tci) = (eth.src(), eth.dst(), eth.vlan_tci());
                if !self.ingress(&snap, i as u16, port, tci, src, dst, 0) {
                    c.dropped += 1;
                }
            }
            p.stats.add_rx(c.packets, c.bytes, c.dropped, c.errors);
            self.flush(&snap);
            if n < BATCH {
                return;
            }
        }
    }

    /// A frame enters a bridge on `in_port`: through the bridge's flow tables if it
    /// has any, else straight to NORMAL. Returns false if the frame was dropped.
    #[allow(clippy::too_many_arguments)]
    fn ingress(
        &mut self,
        snap: &Snapshot,
        slot: u16,
        in_port: usize,
        tci: Option<u16>,
        src: MacAddr,
        dst: MacAddr,
        depth: u8,
    ) -> bool {
        let p = &snap.ports[in_port];
        match &snap.bridges[p.bridge].pipeline {
            None => match p.vlan.input(tci) {
                Ok(vlan) => self.forward(snap, slot, in_port, vlan, tci, src, dst, depth),
                Err(_) => false,
            },
            Some(pl) => {
                let frame = &self.rx.slot(usize::from(slot))[VNET_HDR_LEN..];
                let key = FlowKey::extract(frame, p.ofport);
                let mut st = FlowState {
                    key,
                    tci,
                    in_port,
                    output: false,
                };
                self.run_table(snap, pl, slot, 0, &mut st, src, dst, depth, 0);
                st.output
            }
        }
    }

    /// Looks the frame up in `table` and runs the winning rule's actions.
    #[allow(clippy::too_many_arguments)]
    fn run_table(
        &mut self,
        snap: &Snapshot,
        pl: &Pipeline,
        slot: u16,
        table: u8,
        st: &mut FlowState,
        src: MacAddr,
        dst: MacAddr,
        depth: u8,
        resubmits: u8,
    ) {
        let ts = pl.table_stats.get(usize::from(table));
        if let Some(ts) = ts {
            ts.lookups
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let Some((_, rule)) = pl.table(table).and_then(|c| c.lookup(&st.key)) else {
            return;
        };
        if let Some(ts) = ts {
            ts.matched
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let rule = &rule.data;
        let len = (self.rx.slot(usize::from(slot)).len() - VNET_HDR_LEN) as u64;
        rule.stats.hit(len, self.now.max(1));
        let br = &snap.bridges[snap.ports[st.in_port].bridge];
        for a in &rule.actions {
            match *a {
                ActionRt::Output(Some(out)) if out != st.in_port => {
                    self.emit(snap, slot, out, st.tci, src, dst, depth);
                    st.output = true;
                }
                ActionRt::Output(_) | ActionRt::Drop => {}
                ActionRt::InPort => {
                    self.emit(snap, slot, st.in_port, st.tci, src, dst, depth);
                    st.output = true;
                }
                ActionRt::Flood | ActionRt::All => {
                    for &out in &br.ports {
                        if out != st.in_port {
                            self.emit(snap, slot, out, st.tci, src, dst, depth);
                        }
                    }
                    st.output = true;
                }
                ActionRt::Normal => {
                    let vlan = snap.ports[st.in_port].vlan.input(st.tci);
                    if let Ok(vlan) = vlan {
                        st.output |=
                            self.forward(snap, slot, st.in_port, vlan, st.tci, src, dst, depth);
                    }
                }
                ActionRt::SetVlanVid(v) => st.set_tci(Some(vlan::with_vid(st.tci, v))),
                ActionRt::SetVlanPcp(p) => st.set_tci(Some(vlan::with_pcp(st.tci, p))),
                ActionRt::StripVlan => st.set_tci(None),
                ActionRt::PushVlan => st.set_tci(Some(st.tci.unwrap_or(0))),
                ActionRt::Resubmit { in_port, table: t } if resubmits < MAX_RESUBMIT_DEPTH => {
                    let saved = st.in_port;
                    if let Some(p) = in_port {
                        st.in_port = p;
                        st.key
                            .set(ofproto::flow::IN_PORT, u64::from(snap.ports[p].ofport));
                    }
                    self.run_table(
                        snap,
                        pl,
                        slot,
                        t.unwrap_or(table),
                        st,
                        src,
                        dst,
                        depth,
                        resubmits + 1,
                    );
                    st.in_port = saved;
                    st.key
                        .set(ofproto::flow::IN_PORT, u64::from(snap.ports[saved].ofport));
                }
                ActionRt::GotoTable(t) if t > table => {
                    self.run_table(snap, pl, slot, t, st, src, dst, depth, resubmits);
                    return;
                }
                ActionRt::Resubmit { .. } | ActionRt::GotoTable(_) => {}
            }
        }
    }

    /// Runs NORMAL for receive slot `slot` arriving on `in_port`; returns false if the
    /// frame was dropped.
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &mut self,
        snap: &Snapshot,
        slot: u16,
        in_port: usize,
        vlan: u16,
        tci: Option<u16>,
        src: MacAddr,
        dst: MacAddr,
        depth: u8,
    ) -> bool {
        let p = &snap.ports[in_port];
        let br = &snap.bridges[p.bridge];
        let (decision, _) = normal(&mut self.mac[p.bridge], p.ofport, vlan, src, dst, self.now);
        match decision {
            Normal::Output(of) => match br.by_ofport.get(&of) {
                Some(&out) if snap.ports[out].vlan.carries(vlan) => {
                    self.output(snap, slot, out, vlan, tci, src, dst, depth);
                    true
                }
                _ => false,
            },
            Normal::Flood => {
                for &out in &br.ports {
                    if out != in_port && snap.ports[out].vlan.carries(vlan) {
                        self.output(snap, slot, out, vlan, tci, src, dst, depth);
                    }
                }
                true
            }
            Normal::Drop(_) => false,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn output(
        &mut self,
        snap: &Snapshot,
        slot: u16,
        out: usize,
        vlan: u16,
        tci: Option<u16>,
        src: MacAddr,
        dst: MacAddr,
        depth: u8,
    ) {
        let tag = snap.ports[out].vlan.egress_tag(vlan, tci);
        self.emit(snap, slot, out, tag, src, dst, depth);
    }

    /// Queues receive slot `slot` for port `out`, to leave with outer tag `tag`, or
    /// hands it to the peer bridge of a patch port.
    #[allow(clippy::too_many_arguments)]
    fn emit(
        &mut self,
        snap: &Snapshot,
        slot: u16,
        out: usize,
        tag: Option<u16>,
        src: MacAddr,
        dst: MacAddr,
        depth: u8,
    ) {
        let p = &snap.ports[out];
        match &p.kind {
            PortKind::Device(_) => {
                let q = &mut self.txq[out];
                if q.is_empty() {
                    self.pending.push(out);
                }
                q.push(TxItem { slot, tag });
            }
            PortKind::Patch { peer: Some(peer) } if depth < MAX_PATCH_DEPTH => {
                let len = (self.rx.slot(usize::from(slot)).len() - VNET_HDR_LEN) as u64;
                p.stats.add_tx(1, len, 0, 0);
                // The frame enters the peer bridge as it would have left this port.
                let admitted = self.ingress(snap, slot, *peer, tag, src, dst, depth + 1);
                snap.ports[*peer]
                    .stats
                    .add_rx(1, len, u64::from(!admitted), 0);
            }
            _ => p.stats.add_tx(0, 0, 1, 0),
        }
    }

    /// Sends every queued frame, one send call per port.
    fn flush(&mut self, snap: &Snapshot) {
        for &out in &self.pending {
            let p = &snap.ports[out];
            let PortKind::Device(dev) = &p.kind else {
                continue;
            };
            let q = &mut self.txq[out];
            let mut errors = 0;
            // First pass: one Retag per queued frame (each frame's tag parsed once).
            // Done before any iovec points into `retags`, so its growth cannot move them.
            self.retags.clear();
            for item in q.iter() {
                self.retags
                    .push(retag(self.rx.slot(usize::from(item.slot)), item.tag));
            }
            let mut tx = TxBatch::new(std::mem::take(&mut self.tx_store));
            if dev.takes_vnet_hdr() {
                for (item, rt) in q.iter().zip(&self.retags) {
                    let slot = self.rx.slot(usize::from(item.slot));
                    match rt {
                        None => tx.push(slot),
                        Some(r) => tx.push_parts(&[
                            &r.prefix[..usize::from(r.len)],
                            &slot[usize::from(r.rest_at)..],
                        ]),
                    }
                }
            } else {
                // This port cannot take offloaded frames: finish them here.
                self.seg_buf.clear();
                self.seg_ranges.clear();
                for (item, rt) in q.iter().zip(&self.retags) {
                    let slot = self.rx.slot(usize::from(item.slot));
                    let whole: &[u8] = match rt {
                        None => slot,
                        Some(r) => {
                            self.tag_buf.clear();
                            self.tag_buf
                                .extend_from_slice(&r.prefix[..usize::from(r.len)]);
                            self.tag_buf
                                .extend_from_slice(&slot[usize::from(r.rest_at)..]);
                            &self.tag_buf
                        }
                    };
                    let hdr = VnetHdr::parse(whole[..VNET_HDR_LEN].try_into().unwrap());
                    let frame = &whole[VNET_HDR_LEN..];
                    if hdr.is_gso() {
                        if gso::segment(frame, &hdr, &mut self.seg_buf, &mut self.seg_ranges)
                            .is_err()
                        {
                            errors += 1;
                        }
                    } else {
                        let start = self.seg_buf.len();
                        self.seg_buf.extend_from_slice(frame);
                        if gso::finish_checksum(&mut self.seg_buf[start..], &hdr).is_err() {
                            self.seg_buf.truncate(start);
                            errors += 1;
                        } else {
                            self.seg_ranges.push(start..self.seg_buf.len());
                        }
                    }
                }
                for r in &self.seg_ranges {
                    tx.push(&self.seg_buf[r.clone()]);
                }
            }
            let r = dev.send(&tx);
            p.stats
                .add_tx(r.sent, r.bytes, r.dropped, r.errors + errors);
            self.tx_store = tx.into_store();
            q.clear();
        }
        self.pending.clear();
    }
}

/// The outer tag's TCI of the frame in `slot` (virtio-net header + frame).
fn slot_tci(slot: &[u8]) -> Option<u16> {
    EthernetFrame::new_checked(slot.get(VNET_HDR_LEN..)?)
        .ok()?
        .vlan_tci()
}

/// How a frame whose outer tag changes goes out: `prefix[..len]` (virtio-net header
/// with offsets shifted by the tag's size, MAC addresses, the new tag if any), then
/// the untouched frame from `rest_at` on.
#[derive(Clone, Copy)]
struct Retag {
    prefix: [u8; PREFIX_LEN],
    len: u8,
    rest_at: u8,
}

/// The [`Retag`] for a frame that must leave with outer tag `want`, or `None` when it
/// leaves unchanged.
fn retag(slot: &[u8], want: Option<u16>) -> Option<Retag> {
    let have = slot_tci(slot);
    if have == want {
        return None;
    }
    let after_macs = VNET_HDR_LEN + 12;
    let mut prefix = [0u8; PREFIX_LEN];
    prefix[..after_macs].copy_from_slice(&slot[..after_macs]);
    let hdr_bytes: &mut [u8; VNET_HDR_LEN] = (&mut prefix[..VNET_HDR_LEN]).try_into().unwrap();
    let mut hdr = VnetHdr::parse(hdr_bytes);
    let shift = |v: u16| match (have.is_some(), want.is_some()) {
        (false, true) => v + 4,
        (true, false) => v.saturating_sub(4),
        _ => v,
    };
    if hdr.needs_csum() {
        hdr.csum_start = shift(hdr.csum_start);
    }
    if hdr.hdr_len != 0 {
        hdr.hdr_len = shift(hdr.hdr_len);
    }
    hdr.emit(hdr_bytes);
    if let Some(tci) = want {
        // A rewrite keeps the frame's TPID (802.1Q or 802.1ad); a push is 802.1Q.
        let tpid = if have.is_some() {
            [slot[after_macs], slot[after_macs + 1]]
        } else {
            [0x81, 0x00]
        };
        prefix[after_macs..after_macs + 2].copy_from_slice(&tpid);
        prefix[after_macs + 2..].copy_from_slice(&tci.to_be_bytes());
    }
    Some(Retag {
        prefix,
        len: (after_macs + if want.is_some() { 4 } else { 0 }) as u8,
        rest_at: (after_macs + if have.is_some() { 4 } else { 0 }) as u8,
    })
}
