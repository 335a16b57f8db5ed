//! The datapath: one plain thread that reads frames in batches, decides their fate
//! with `ofproto`, and writes them out in batches.
//!
//! Why it looks like this:
//! - **Snapshots, not locks.** The control side builds an immutable [`Snapshot`] of
//!   bridges and ports and hands it over with [`Cmd::Reconfigure`]; the thread swaps
//!   it between batches. Nothing on the per-frame path takes a lock.
//! - **The thread owns the MAC tables.** Learning is a plain `&mut` write; the
//!   control side asks for a copy ([`Cmd::DumpFdb`]) instead of sharing the table.
//! - **Batches.** A port's receive ring (or `recvmmsg`, for taps and tunnels) yields
//!   up to 32 frames, read where the kernel put them; outputs are queued per port as
//!   indices into that batch (flooding copies nothing) and flushed with one
//!   `sendmmsg` per port, after which the batch's ring frames go back to the kernel.
//!   Counters are added once per batch.
//! - **No allocation per frame.** Receive buffers, per-port queues and the
//!   segmentation arena are allocated once and reused.
//! - **Plain thread, not tokio.** Readiness machinery costs 5–10% here; the thread
//!   blocks in `epoll_wait` and an eventfd wakes it for commands.
//! - **A short busy poll after traffic.** A thread wakeup costs tens of µs on a VM,
//!   and a round trip would pay two; for `--busy-poll-us` after the last event the
//!   thread polls without sleeping, so replies and the rest of a burst find it awake.
//!   Between polls it yields the CPU: the processes it forwards for often share the
//!   core, and a pure spin took their time (TCP +12% with the yield, same latency).
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
use ofproto::gso_runs::{self, RunShape};
use ofproto::mac_learning::{MacEntry, MacTable};
use ofproto::normal::{normal, Normal};
use ofproto::vlan::PortVlan;
use ofproto::vnet_hdr::{VnetHdr, VNET_HDR_LEN};
use ofproto::{gro, gso};
use ofproto::{MacAddr, PortNo};
use tokio::sync::oneshot;
use tracing::{debug, warn};

use crate::netdev::poll::{Epoll, EventFd};
use crate::netdev::{Netdev, RxBatch, TxBatch, TxResult, TxStore, BATCH};
use crate::pipeline::{ActionRt, Pipeline, MAX_RESUBMIT_DEPTH};
use crate::stats::PortStats;
use std::net::{IpAddr, Ipv4Addr};

use ofproto::actions::Verdict;
use ofproto::flow::{TUN_DST, TUN_ID, TUN_SRC};
use ofproto::tunnel::{vxlan_emit, TunnelDemux};

use crate::netdev::tunnel::{dest, GsoSend, RxMeta, TunnelKind, TunnelRx, TunnelTx};
use crate::netdev::Dest;
use crate::tunnel::TunnelConfig;
use ofproto::classifier::RuleId;
use ofproto::flow::{FlowKey, VLAN_TCI};
use ofproto::flow::{DL_DST, DL_SRC};
use ofproto::flow_cache::FlowCache;
use ofproto::flow_syntax::{LearnItem, LearnSpec};

/// How deep a frame may travel through chained patch ports (a loop of patch pairs
/// would otherwise recurse forever).
const MAX_PATCH_DEPTH: u8 = 8;
/// Rounds of looking at receive rings directly before asking epoll (see `run`).
const RING_ROUNDS: u32 = 4;
/// Batches read from one port before giving the others a turn.
const BATCHES_PER_WAKEUP: usize = 4;
const WAKE_TOKEN: u64 = u64::MAX;
/// Epoll tokens from here on are tunnel endpoints (index + this); below, ports.
const ENDPOINT_TOKEN: u64 = 1 << 32;
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
    /// A VXLAN or GRE port: sends through the shared raw socket; receives through
    /// its endpoint in [`Snapshot::endpoints`].
    Tunnel(TunnelOut),
    /// Configured, but its device is missing or failed; frames to it are dropped.
    Absent,
}

pub struct TunnelOut {
    pub cfg: TunnelConfig,
    pub tx: Arc<TunnelTx>,
}

/// A tunnel receive socket and the ports it delivers to.
pub struct EndpointRt {
    pub rx: Arc<TunnelRx>,
    pub demux: TunnelDemux<usize>,
}

impl PortKind {
    fn is_tunnel(&self) -> bool {
        matches!(self, PortKind::Tunnel(_))
    }
}

pub struct PortRt {
    pub name: String,
    pub bridge: usize,
    pub ofport: PortNo,
    pub kind: PortKind,
    pub vlan: PortVlan,
    pub stats: Arc<PortStats>,
}

/// Queued frames `start..end` of a port, leaving as one UDP or TCP GSO super-frame
/// whose first `head_len` bytes (virtio-net header and frame headers) are in
/// `run_heads`.
struct Run {
    start: usize,
    end: usize,
    head_len: usize,
    /// Bytes the frames would have taken as separate messages beyond the run's.
    extra: u32,
}

/// One frame queued for a port: its receive slot, its rewritten headers if any, and
/// the outer tag it must leave with (`None`: untagged). The send path compares that
/// with the tag the frame carries and strips, pushes or rewrites it without copying
/// the frame.
#[derive(Clone, Copy)]
struct TxItem {
    slot: u16,
    head: u16,
    tag: Option<u16>,
    /// Tunnel ports: the key (VNI) and the remote address to send to.
    tun_key: u32,
    tun_dst: IpAddr,
}

/// Tunnel metadata a frame carries: what it arrived with, then what flows set.
#[derive(Clone, Copy, Default)]
struct TunMeta {
    id: u64,
    src: u32,
    dst: u32,
}

/// Bytes reserved per outer header when sending on a tunnel.
const OUTER_STRIDE: usize = 64;

/// Flow-cache slots: ~700 KiB, touched only as flows arrive.
const FLOW_CACHE_ENTRIES: usize = 4096;
/// A cached "no rule matched".
const NO_RULE: u32 = u32::MAX;

/// `Pkt::head` when the frame's headers are as received.
const NO_HEAD: u16 = u16::MAX;
/// Bytes of a frame copied when actions rewrite its headers: virtio-net header,
/// Ethernet with a tag, IPv4 with options, TCP with options. The payload after it is
/// sent from the receive slot, uncopied.
const HEAD_CAP: usize = VNET_HDR_LEN + 18 + 60 + 60;

/// A frame on its way through bridges: where its bytes are and what it looks like.
#[derive(Clone, Copy)]
struct Pkt {
    slot: u16,
    /// Index of its rewritten headers in `Worker::heads`, or [`NO_HEAD`].
    head: u16,
    /// The outer tag it would leave with if output now.
    tci: Option<u16>,
    src: MacAddr,
    dst: MacAddr,
    in_port: usize,
    /// Patch ports crossed so far.
    depth: u8,
    tun: TunMeta,
}

/// What the pipeline knows about a frame as its actions run.
struct FlowState {
    /// The key as actions left it: what later lookups see.
    key: FlowKey,
    /// The key the frame's bytes (`Pkt::head` or the slot) currently match.
    committed: FlowKey,
    /// Whether any action sent the frame somewhere.
    output: bool,
}

/// The VLAN_TCI key value of an outer tag (CFI bit = tag present), and back.
fn tci_key(tci: Option<u16>) -> u64 {
    tci.map_or(0, |t| u64::from(t | 0x1000))
}

fn key_tci(key: &FlowKey) -> Option<u16> {
    let t = key.get(VLAN_TCI) as u16;
    (t & 0x1000 != 0).then_some(t & !0x1000)
}

fn key_mac(key: &FlowKey, f: ofproto::flow::Field) -> MacAddr {
    MacAddr(key.get(f).to_be_bytes()[2..8].try_into().unwrap())
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
    pub endpoints: Vec<EndpointRt>,
}

pub enum Cmd {
    Reconfigure(Arc<Snapshot>, oneshot::Sender<()>),
    DumpFdb {
        bridge: String,
        reply: oneshot::Sender<Option<Vec<MacEntry>>>,
    },
    Shutdown,
}

/// A flow a `learn` action produced: the bridge, and the flow in flow syntax.
pub type Learned = (String, String);
pub type LearnSink = tokio::sync::mpsc::UnboundedSender<Learned>;

/// How often the same learned flow is handed to the control side again while
/// packets keep teaching it (often enough to keep an idle_timeout from expiring it).
const LEARN_RESEND_MS: u64 = 1000;

/// The control side's end of the datapath thread.
pub struct WorkerHandle {
    tx: mpsc::Sender<Cmd>,
    wake: Arc<EventFd>,
    thread: Option<JoinHandle<()>>,
}

impl WorkerHandle {
    /// Starts the datapath thread; flows its `learn` actions produce go to `learned`.
    pub fn spawn(learned: LearnSink, busy_poll: std::time::Duration) -> io::Result<WorkerHandle> {
        let (tx, rx) = mpsc::channel();
        let wake = Arc::new(EventFd::new()?);
        let w = wake.clone();
        let thread = std::thread::Builder::new()
            .name("datapath".into())
            .spawn(move || match Worker::new(rx, w, learned, busy_poll) {
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
    /// Scratch iovecs of a UDP GSO send.
    gso_iov: Vec<libc::iovec>,
    /// Per queued frame of the port being flushed: how its tag changes, if it does.
    retags: Vec<Option<Retag>>,
    /// Frames materialized with their new tag for ports that need a copy anyway.
    tag_buf: Vec<u8>,
    seg_buf: Vec<u8>,
    seg_ranges: Vec<Range<usize>>,
    /// Rewritten frame headers of this batch, [`HEAD_CAP`] bytes each, and how many
    /// bytes of each are used. Cleared after every flush.
    heads: Vec<u8>,
    head_lens: Vec<u16>,
    /// Flows `learn` actions produced, to the control side, which installs them.
    learned: LearnSink,
    /// Learned flows recently handed over (by hash), with when: a learn action on
    /// every packet of a stream must not flood the control side.
    learn_sent: HashMap<u64, u64>,
    learn_hasher: std::collections::hash_map::RandomState,
    /// Classifier decisions by (bridge, table, key); emptied on every reconfiguration.
    cache: FlowCache,
    /// How long to keep polling after the last event before blocking.
    busy_poll: std::time::Duration,
    last_busy: Instant,
    /// Rounds since epoll was last asked (see `run`).
    ring_rounds: u32,
    /// Ports with a receive ring, which `run` can look at without epoll.
    ring_ports: Vec<usize>,
    /// Outer headers of the tunnel packets being received.
    tun_rx: [RxMeta; BATCH],
    /// Tunnel packets from addresses no tunnel port has as its remote.
    tun_strangers: u64,
    /// Outer headers of the tunnel packets being sent, and their destinations.
    outer: Vec<u8>,
    dests: Vec<Dest>,
    /// Per range in `seg_ranges`: the queued item it came from.
    seg_items: Vec<u16>,
    /// Per range in `seg_ranges`, on a VXLAN port: its UDP source port.
    sports: Vec<u16>,
    /// Runs of the queued frames being flushed that leave as one UDP or TCP GSO
    /// super-frame, and each run's headers.
    runs: Vec<Run>,
    run_heads: Vec<[u8; gso_runs::HEAD_MAX]>,
    epoch: Instant,
    now: u64,
    last_expire: u64,
}

impl Worker {
    fn new(
        cmds: mpsc::Receiver<Cmd>,
        wake: Arc<EventFd>,
        learned: LearnSink,
        busy_poll: std::time::Duration,
    ) -> io::Result<Worker> {
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
            gso_iov: Vec::with_capacity(2 * PREALLOC_SEGMENTS),
            retags: Vec::with_capacity(BATCH * 4),
            tag_buf: Vec::with_capacity(crate::netdev::BUF_SIZE + 4),
            seg_buf: Vec::with_capacity(BATCH * crate::netdev::BUF_SIZE + PREALLOC_SEGMENTS * 128),
            seg_ranges: Vec::with_capacity(PREALLOC_SEGMENTS),
            heads: Vec::with_capacity(BATCH * 4 * HEAD_CAP),
            head_lens: Vec::with_capacity(BATCH * 4),
            learned,
            learn_sent: HashMap::new(),
            learn_hasher: Default::default(),
            cache: FlowCache::new(FLOW_CACHE_ENTRIES),
            busy_poll,
            last_busy: Instant::now(),
            ring_rounds: 0,
            ring_ports: Vec::new(),
            tun_rx: [RxMeta::default(); BATCH],
            tun_strangers: 0,
            outer: Vec::with_capacity(PREALLOC_SEGMENTS * OUTER_STRIDE),
            dests: Vec::with_capacity(PREALLOC_SEGMENTS),
            seg_items: Vec::with_capacity(PREALLOC_SEGMENTS),
            sports: Vec::with_capacity(PREALLOC_SEGMENTS),
            runs: Vec::with_capacity(4 * BATCH),
            run_heads: Vec::with_capacity(4 * BATCH),
            epoch: crate::pipeline::epoch(),
            now: 0,
            last_expire: 0,
        })
    }

    fn run(&mut self) {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 64];
        loop {
            // Shortly after traffic, poll without sleeping (see `--busy-poll-us`).
            let spinning = !self.busy_poll.is_zero() && self.last_busy.elapsed() < self.busy_poll;
            // While traffic flows, look at the receive rings directly (one memory
            // read each) and ask epoll — a system call, 5% of the thread in a 64 B
            // flood when it was asked every round — only every RING_ROUNDS rounds,
            // or at once when the rings are empty: taps, tunnels and commands wait
            // at most that long.
            if spinning && self.ring_rounds < RING_ROUNDS {
                self.ring_rounds += 1;
                if self.poll_rings() {
                    self.last_busy = Instant::now();
                    continue;
                }
            }
            self.ring_rounds = 0;
            let n = match self
                .epoll
                .wait(&mut events, if spinning { 0 } else { 1000 })
            {
                Ok(0) if spinning => {
                    // Not a pure spin: on a busy machine the processes we forward for
                    // may be waiting for this CPU, and a spin would take it from them.
                    std::thread::yield_now();
                    continue;
                }
                Ok(n) => {
                    if n > 0 && !self.busy_poll.is_zero() {
                        self.last_busy = Instant::now();
                    }
                    n
                }
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
                } else if token >= ENDPOINT_TOKEN {
                    self.poll_endpoint((token - ENDPOINT_TOKEN) as usize);
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
                for (i, t) in snap.endpoints.iter().enumerate() {
                    if let Err(e) = ep.add(t.rx.fd(), ENDPOINT_TOKEN + i as u64) {
                        warn!("datapath: cannot poll a tunnel socket: {e}");
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
        self.rx.clear();
        self.ring_ports = (0..snap.ports.len())
            .filter(|&i| matches!(&snap.ports[i].kind, PortKind::Device(d) if d.has_ring()))
            .collect();
        // New flow tables (or none): every cached decision is stale.
        self.cache.invalidate();
        debug!(
            ports = snap.ports.len(),
            bridges = snap.bridges.len(),
            "datapath reconfigured"
        );
        self.snap = snap;
    }

    /// Polls every port whose receive ring has a frame waiting; false if none had.
    fn poll_rings(&mut self) -> bool {
        let snap = self.snap.clone();
        self.now = self.epoch.elapsed().as_millis() as u64;
        let mut any = false;
        for k in 0..self.ring_ports.len() {
            let i = self.ring_ports[k];
            if let PortKind::Device(d) = &snap.ports[i].kind {
                if d.rx_ready() {
                    self.poll_port(i);
                    any = true;
                }
            }
        }
        any
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
                let Some((pkt, bytes)) = self.received(i, port, TunMeta::default()) else {
                    c.errors += 1;
                    continue;
                };
                c.packets += 1;
                c.bytes += bytes;
                if !self.ingress(&snap, pkt) {
                    c.dropped += 1;
                }
            }
            p.stats.add_rx(c.packets, c.bytes, c.dropped, c.errors);
            self.flush(&snap);
            // Sent (copied by the kernel): the receive slots may go back.
            dev.release(&mut self.rx);
            if n < BATCH {
                return;
            }
        }
    }

    /// Reads tunnel packets from endpoint `ep`: each is decapsulated in place and
    /// enters the bridge of the port its outer source and key belong to. Counters
    /// are per frame here, since one batch feeds several ports.
    fn poll_endpoint(&mut self, ep: usize) {
        let snap = self.snap.clone();
        let Some(e) = snap.endpoints.get(ep) else {
            return;
        };
        let mut rounds = 0;
        loop {
            rounds += 1;
            let n = match e.rx.recv(&mut self.rx, &mut self.tun_rx) {
                Ok(0) => return,
                Ok(n) => n,
                Err(err) => {
                    warn!("tunnel socket: receive failed: {err}");
                    return;
                }
            };
            for i in 0..n {
                let m = self.tun_rx[i];
                let port = match m.err {
                    None => e.demux.lookup(m.src, m.dst, m.key),
                    Some(_) => None,
                };
                let Some(port) = port else {
                    // A malformed packet, or a key no port takes, from a known peer is
                    // that peer's port's drop; from a stranger, only a count.
                    match e.demux.knows_remote(m.src) {
                        Some(p) if m.err.is_some() => snap.ports[p].stats.add_rx(0, 0, 0, 1),
                        Some(p) => snap.ports[p].stats.add_rx(0, 0, 1, 0),
                        None => self.tun_strangers += 1,
                    }
                    continue;
                };
                let stats = &snap.ports[port].stats;
                let tun = TunMeta {
                    id: u64::from(m.key),
                    // The key's tun_src/tun_dst are IPv4 (as Open vSwitch's are); IPv6
                    // underlays leave them 0.
                    src: ipv4_bits(m.src),
                    dst: ipv4_bits(m.dst),
                };
                let Some((pkt, bytes)) = self.received(i, port, tun) else {
                    stats.add_rx(0, 0, 0, 1);
                    continue;
                };
                let admitted = self.ingress(&snap, pkt);
                stats.add_rx(1, bytes, u64::from(!admitted), 0);
            }
            self.flush(&snap);
            self.rx.clear();
            // Segments already read wait in the socket's carry, where epoll cannot
            // see them: deliver them all before sleeping.
            if (n < BATCH || rounds >= BATCHES_PER_WAKEUP) && !e.rx.has_carry() {
                return;
            }
        }
    }

    /// Receive slot `i` as a frame entering on `in_port`, and its length; `None` when
    /// it is not an Ethernet frame (cut by the buffer, or shorter than a header).
    #[inline]
    fn received(&self, i: usize, in_port: usize, tun: TunMeta) -> Option<(Pkt, u64)> {
        let slot = self.rx.slot(i);
        if self.rx.truncated(i) || slot.len() < VNET_HDR_LEN {
            return None;
        }
        let eth = EthernetFrame::new_checked(&slot[VNET_HDR_LEN..]).ok()?;
        let pkt = Pkt {
            slot: i as u16,
            head: NO_HEAD,
            tci: eth.vlan_tci(),
            src: eth.src(),
            dst: eth.dst(),
            in_port,
            depth: 0,
            tun,
        };
        Some((pkt, (slot.len() - VNET_HDR_LEN) as u64))
    }

    /// The frame's bytes as they are now: its rewritten headers (or the slot's start),
    /// then the rest of the slot.
    fn view(&self, slot: u16, head: u16) -> (&[u8], &[u8]) {
        frame_view(&self.rx, &self.heads, &self.head_lens, slot, head)
    }

    /// A frame enters a bridge on `pkt.in_port`: through the bridge's flow tables if
    /// it has any, else straight to NORMAL. Returns false if the frame was dropped.
    fn ingress(&mut self, snap: &Snapshot, mut pkt: Pkt) -> bool {
        let p = &snap.ports[pkt.in_port];
        match &snap.bridges[p.bridge].pipeline {
            None => match p.vlan.input(pkt.tci) {
                Ok(vlan) => self.forward(snap, pkt, vlan),
                Err(_) => false,
            },
            Some(pl) => {
                let (first, _) = self.view(pkt.slot, pkt.head);
                let mut key = FlowKey::extract(&first[VNET_HDR_LEN..], p.ofport);
                // The tag it would leave with, which a patch port's peer may have changed.
                key.set(VLAN_TCI, tci_key(pkt.tci));
                key.set(TUN_ID, pkt.tun.id);
                key.set(TUN_SRC, u64::from(pkt.tun.src));
                key.set(TUN_DST, u64::from(pkt.tun.dst));
                let mut st = FlowState {
                    key,
                    committed: key,
                    output: false,
                };
                self.run_table(snap, pl, &mut pkt, 0, &mut st, 0);
                st.output
            }
        }
    }

    /// Brings the frame in line with the key before it is output: the tag to leave
    /// with, and rewritten headers (a fresh copy, so earlier outputs keep theirs).
    fn sync(&mut self, pkt: &mut Pkt, st: &mut FlowState) {
        pkt.tci = key_tci(&st.key);
        pkt.tun = TunMeta {
            id: st.key.get(TUN_ID),
            src: st.key.get(TUN_SRC) as u32,
            dst: st.key.get(TUN_DST) as u32,
        };
        if !ofproto::rewrite::differs(&st.committed, &st.key) {
            return;
        }
        // cannot happen with batches of 32, but a head index must never reach NO_HEAD
        if self.head_lens.len() >= usize::from(NO_HEAD) {
            return;
        }
        let mut tmp = [0u8; HEAD_CAP];
        let len = {
            let (first, _) = self.view(pkt.slot, pkt.head);
            let len = first.len().min(HEAD_CAP);
            tmp[..len].copy_from_slice(&first[..len]);
            len
        };
        let at = self.heads.len();
        self.heads.extend_from_slice(&tmp);
        let h = &mut self.heads[at..at + len];
        let partial = VnetHdr::parse(h[..VNET_HDR_LEN].try_into().unwrap()).needs_csum();
        ofproto::rewrite::commit(&mut h[VNET_HDR_LEN..len], &st.committed, &st.key, partial);
        // The rest of the frame, after `len`, is sent from the slot.
        self.head_lens.push(len as u16);
        pkt.head = (self.head_lens.len() - 1) as u16;
        pkt.src = key_mac(&st.key, DL_SRC);
        pkt.dst = key_mac(&st.key, DL_DST);
        st.committed = st.key;
    }

    /// Looks the frame up in `table` and runs the winning rule's actions.
    fn run_table(
        &mut self,
        snap: &Snapshot,
        pl: &Pipeline,
        pkt: &mut Pkt,
        table: u8,
        st: &mut FlowState,
        resubmits: u8,
    ) {
        let ts = pl.table_stats.get(usize::from(table));
        if let Some(ts) = ts {
            ts.lookups
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let Some(cls) = pl.table(table) else {
            return;
        };
        // The flow cache first: one probe instead of one per subtable.
        let tag = (snap.ports[pkt.in_port].bridge as u32) << 8 | u32::from(table);
        let h = self.cache.hash(tag, &st.key);
        let found = match self.cache.get(h, tag, &st.key) {
            Some(NO_RULE) => None,
            Some(id) => cls.get(RuleId::from_index(id)),
            None => {
                let r = cls.lookup(&st.key);
                let id = r.map_or(NO_RULE, |(id, _)| id.index());
                self.cache.put(h, tag, &st.key, id);
                r.map(|(_, rule)| rule)
            }
        };
        let Some(rule) = found else {
            return;
        };
        if let Some(ts) = ts {
            ts.matched
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let rule = &rule.data;
        let len = (self.rx.slot(usize::from(pkt.slot)).len() - VNET_HDR_LEN) as u64;
        rule.stats.hit(len, self.now.max(1));
        let br = &snap.bridges[snap.ports[pkt.in_port].bridge];
        for a in &rule.actions {
            match a {
                ActionRt::Output(Some(out)) if *out != pkt.in_port => {
                    self.sync(pkt, st);
                    self.emit(snap, pkt, *out, pkt.tci);
                    st.output = true;
                }
                ActionRt::Output(_) | ActionRt::Drop => {}
                ActionRt::InPort => {
                    self.sync(pkt, st);
                    self.emit(snap, pkt, pkt.in_port, pkt.tci);
                    st.output = true;
                }
                ActionRt::Flood | ActionRt::All => {
                    self.sync(pkt, st);
                    for &out in &br.ports {
                        if out != pkt.in_port && !split_horizon(snap, pkt.in_port, out) {
                            self.emit(snap, pkt, out, pkt.tci);
                        }
                    }
                    st.output = true;
                }
                ActionRt::Normal => {
                    self.sync(pkt, st);
                    if let Ok(vlan) = snap.ports[pkt.in_port].vlan.input(pkt.tci) {
                        st.output |= self.forward(snap, *pkt, vlan);
                    }
                }
                ActionRt::Key(op) => {
                    if op.apply(&mut st.key) == Verdict::Drop {
                        return;
                    }
                }
                ActionRt::Learn(l) => self.learn(snap, pkt.in_port, l, &st.key),
                ActionRt::Resubmit { in_port, table: t } if resubmits < MAX_RESUBMIT_DEPTH => {
                    let saved = pkt.in_port;
                    if let Some(p) = *in_port {
                        pkt.in_port = p;
                        st.key
                            .set(ofproto::flow::IN_PORT, u64::from(snap.ports[p].ofport));
                    }
                    self.run_table(snap, pl, pkt, t.unwrap_or(table), st, resubmits + 1);
                    pkt.in_port = saved;
                    st.key
                        .set(ofproto::flow::IN_PORT, u64::from(snap.ports[saved].ofport));
                }
                ActionRt::GotoTable(t) if *t > table => {
                    self.run_table(snap, pl, pkt, *t, st, resubmits);
                    return;
                }
                ActionRt::Resubmit { .. } | ActionRt::GotoTable(_) => {}
            }
        }
    }

    /// Hands the flow `l` makes of this packet to the control side, unless the same
    /// flow went there within [`LEARN_RESEND_MS`]. Hashing the values first keeps a
    /// stream of packets that teach nothing new from allocating.
    fn learn(&mut self, snap: &Snapshot, in_port: usize, l: &LearnSpec, key: &FlowKey) {
        use std::hash::{BuildHasher, Hash, Hasher};
        let bridge = snap.ports[in_port].bridge;
        let mut h = self.learn_hasher.build_hasher();
        (bridge, l as *const LearnSpec as usize).hash(&mut h);
        for item in &l.items {
            match item {
                LearnItem::MatchField { src, .. }
                | LearnItem::LoadField { src, .. }
                | LearnItem::Output { src } => src.read(key).hash(&mut h),
                _ => {}
            }
        }
        let id = h.finish();
        if let Some(&t) = self.learn_sent.get(&id) {
            if self.now.saturating_sub(t) < LEARN_RESEND_MS {
                return;
            }
        }
        if self.learn_sent.len() >= 65_536 {
            let now = self.now;
            self.learn_sent
                .retain(|_, t| now.saturating_sub(*t) < LEARN_RESEND_MS);
        }
        self.learn_sent.insert(id, self.now);
        let flow = l.instantiate(key).to_string();
        let _ = self.learned.send((snap.bridges[bridge].name.clone(), flow));
    }

    /// Runs NORMAL for the frame on VLAN `vlan`; returns false if it was dropped.
    fn forward(&mut self, snap: &Snapshot, pkt: Pkt, vlan: u16) -> bool {
        let p = &snap.ports[pkt.in_port];
        let br = &snap.bridges[p.bridge];
        let (decision, _) = normal(
            &mut self.mac[p.bridge],
            p.ofport,
            vlan,
            pkt.src,
            pkt.dst,
            self.now,
        );
        match decision {
            Normal::Output(of) => match br.by_ofport.get(&of) {
                Some(&out) if snap.ports[out].vlan.carries(vlan) => {
                    let tag = snap.ports[out].vlan.egress_tag(vlan, pkt.tci);
                    self.emit(snap, &pkt, out, tag);
                    true
                }
                _ => false,
            },
            Normal::Flood => {
                for &out in &br.ports {
                    if out != pkt.in_port
                        && snap.ports[out].vlan.carries(vlan)
                        && !split_horizon(snap, pkt.in_port, out)
                    {
                        let tag = snap.ports[out].vlan.egress_tag(vlan, pkt.tci);
                        self.emit(snap, &pkt, out, tag);
                    }
                }
                true
            }
            Normal::Drop(_) => false,
        }
    }

    /// Queues the frame for port `out`, to leave with outer tag `tag`, or hands it to
    /// the peer bridge of a patch port.
    fn emit(&mut self, snap: &Snapshot, pkt: &Pkt, out: usize, tag: Option<u16>) {
        let p = &snap.ports[out];
        let (tun_key, tun_dst) = match &p.kind {
            PortKind::Device(_) => (0, IpAddr::V4(Ipv4Addr::UNSPECIFIED)),
            PortKind::Tunnel(t) => {
                // A port with `key=flow` / `remote_ip=flow` takes them from the flow.
                let key = t.cfg.key.unwrap_or(pkt.tun.id as u32);
                let dst = t
                    .cfg
                    .remote
                    .unwrap_or(IpAddr::V4(Ipv4Addr::from(pkt.tun.dst)));
                if dst.is_unspecified() {
                    p.stats.add_tx(0, 0, 1, 0);
                    return;
                }
                (key, dst)
            }
            PortKind::Patch { peer: Some(peer) } if pkt.depth < MAX_PATCH_DEPTH => {
                let len = (self.rx.slot(usize::from(pkt.slot)).len() - VNET_HDR_LEN) as u64;
                p.stats.add_tx(1, len, 0, 0);
                // The frame enters the peer bridge as it would have left this port.
                // Tunnel metadata does not cross a patch port (as in Open vSwitch).
                let admitted = self.ingress(
                    snap,
                    Pkt {
                        tci: tag,
                        in_port: *peer,
                        depth: pkt.depth + 1,
                        tun: TunMeta::default(),
                        ..*pkt
                    },
                );
                snap.ports[*peer]
                    .stats
                    .add_rx(1, len, u64::from(!admitted), 0);
                return;
            }
            _ => {
                p.stats.add_tx(0, 0, 1, 0);
                return;
            }
        };
        let q = &mut self.txq[out];
        if q.is_empty() {
            self.pending.push(out);
        }
        q.push(TxItem {
            slot: pkt.slot,
            head: pkt.head,
            tag,
            tun_key,
            tun_dst,
        });
    }

    /// Sends every queued frame, one send call per port.
    fn flush(&mut self, snap: &Snapshot) {
        let pending = std::mem::take(&mut self.pending);
        for &out in &pending {
            let p = &snap.ports[out];
            // Owned for the loop (a move, not a copy), so helpers can borrow `self`.
            let q = std::mem::take(&mut self.txq[out]);
            // First pass: one Retag per queued frame (each frame's tag parsed once).
            // Done before any iovec points into `retags`, so its growth cannot move them.
            self.retags.clear();
            for item in q.iter() {
                let (first, _) =
                    frame_view(&self.rx, &self.heads, &self.head_lens, item.slot, item.head);
                self.retags.push(retag(first, item.tag));
            }
            let (r, errors) = match &p.kind {
                PortKind::Device(dev) if dev.takes_vnet_hdr() => {
                    self.plan_runs(&q);
                    let mut tx = TxBatch::new(std::mem::take(&mut self.tx_store));
                    let mut runs = self.runs.iter().zip(&self.run_heads).peekable();
                    let mut i = 0;
                    while i < q.len() {
                        if let Some((run, head)) = runs.next_if(|(r, _)| r.start == i) {
                            // The super-frame's headers, then each frame's payload,
                            // which starts where the headers end in every slot.
                            let rx = &self.rx;
                            let payloads = q[run.start..run.end]
                                .iter()
                                .map(|it| &rx.slot(usize::from(it.slot))[run.head_len..]);
                            let parts = std::iter::once(&head[..run.head_len]).chain(payloads);
                            tx.push_merged(parts, (run.end - run.start) as u32, run.extra);
                            i = run.end;
                            continue;
                        }
                        let (item, rt) = (&q[i], &self.retags[i]);
                        i += 1;
                        let (first, rest) = frame_view(
                            &self.rx,
                            &self.heads,
                            &self.head_lens,
                            item.slot,
                            item.head,
                        );
                        match (rt, item.head) {
                            (None, NO_HEAD) => tx.push(first),
                            (None, _) => tx.push_parts(&[first, rest]),
                            (Some(r), _) => tx.push_parts(&[
                                &r.prefix[..usize::from(r.len)],
                                &first[usize::from(r.rest_at)..],
                                rest,
                            ]),
                        }
                    }
                    let r = dev.send(&tx);
                    self.tx_store = tx.into_store();
                    (r, 0)
                }
                PortKind::Device(dev) => {
                    // This port cannot take offloaded frames: finish them here.
                    let errors = self.finish(&q);
                    let mut tx = TxBatch::new(std::mem::take(&mut self.tx_store));
                    for r in &self.seg_ranges {
                        tx.push(&self.seg_buf[r.clone()]);
                    }
                    let r = dev.send(&tx);
                    self.tx_store = tx.into_store();
                    (r, errors)
                }
                PortKind::Tunnel(t) => {
                    // Tunnels carry finished frames (no offloads across the underlay).
                    let errors = self.finish(&q);
                    (self.send_tunnel(t, &q), errors)
                }
                _ => (Default::default(), 0),
            };
            p.stats
                .add_tx(r.sent, r.bytes, r.dropped, r.errors + errors);
            self.txq[out] = q;
            self.txq[out].clear();
        }
        self.pending = pending;
        self.pending.clear();
        self.heads.clear();
        self.head_lens.clear();
    }

    /// Finds the runs of queued frames `q` that can leave as one super-frame —
    /// consecutive datagrams of one UDP flow and size ([`ofproto::udp_gso`]), or
    /// consecutive segments of one TCP stream ([`ofproto::tcp_gso`]), sent as they
    /// arrived (no tag change, no rewritten headers) — and writes each run's headers
    /// into `run_heads`.
    fn plan_runs(&mut self, q: &[TxItem]) {
        self.runs.clear();
        self.run_heads.clear();
        let udp = crate::netdev::sys::vnet_udp_gso();
        let (rx, retags) = (&self.rx, &self.retags);
        let shape = |k: usize| {
            let it = &q[k];
            if retags[k].is_some() || it.head != NO_HEAD {
                return None;
            }
            let slot = rx.slot(usize::from(it.slot));
            let hdr = VnetHdr::parse(slot[..VNET_HDR_LEN].try_into().unwrap());
            let frame = &slot[VNET_HDR_LEN..];
            RunShape::of(frame, &hdr, udp).map(|s| (frame, s))
        };
        let (runs, heads) = (&mut self.runs, &mut self.run_heads);
        gso_runs::plan(q.len(), shape, |frames, head, head_len| {
            heads.push(*head);
            runs.push(Run {
                // Each frame but the first would have carried these headers too.
                extra: ((frames.len() - 1) * head_len) as u32,
                start: frames.start,
                end: frames.end,
                head_len,
            });
        });
    }

    /// Sends the finished frames in `seg_buf` (see [`Worker::finish`]) on tunnel `t`,
    /// in order. Over VXLAN, each run of consecutive frames that share destination,
    /// VNI and source port (one flow's) and size (the last may be shorter) goes as
    /// one UDP GSO send: the segments of a super-frame, but also a burst of a flow's
    /// wire-sized frames (TCP from a VM with offloads off, a UDP stream), which then
    /// cross the sender's IP stack and the receiver's UDP socket once per run instead
    /// of once per frame. Single frames and GRE are batched with sendmmsg.
    fn send_tunnel(&mut self, t: &TunnelOut, q: &[TxItem]) -> TxResult {
        let vxlan = t.cfg.kind == TunnelKind::Vxlan;
        let v6 = t.cfg.v6();
        let n = self.seg_ranges.len();
        // Each frame's UDP source port, once: it names the flow's pool socket too.
        self.sports.clear();
        if vxlan {
            for r in &self.seg_ranges {
                let port = t.tx.vxlan_source_port(v6, &self.seg_buf[r.clone()]);
                self.sports.push(port);
            }
        }
        let mut res = TxResult::default();
        // Start of the finished frames not yet sent.
        let mut run = 0;
        let mut i = 0;
        while i < n {
            let j = if vxlan { self.gso_run(q, i) } else { n };
            if j - i >= 2 {
                if run < i {
                    res += self.send_tunnel_each(t, q, run..i);
                    run = i;
                }
                let item = q[usize::from(self.seg_items[i])];
                let g = GsoSend {
                    dst: &dest(item.tun_dst, t.cfg.dst_port),
                    tos: t.cfg.tos,
                    ttl: t.cfg.ttl,
                    src: if v6 {
                        t.cfg.local_v6().into()
                    } else {
                        t.cfg.local_v4().into()
                    },
                    vxlan: &vxlan_emit(item.tun_key),
                };
                let segs = &self.seg_ranges[i..j];
                if let Some((r, done)) = t.tx.send_gso(&g, &self.seg_buf, segs, &mut self.gso_iov) {
                    res += r;
                    run = i + done;
                }
            }
            i = j;
        }
        if run < n {
            res += self.send_tunnel_each(t, q, run..n);
        }
        res
    }

    /// The end of the run of finished frames from `i` that can leave in one UDP GSO
    /// send: the same destination, VNI and source port as frame `i`, the same size,
    /// or shorter for the run's last; a TCP segment no receiver's merge goes past
    /// (PSH, FIN, ...) ends the run too, so that one datagram is one merge.
    fn gso_run(&self, q: &[TxItem], i: usize) -> usize {
        let first = &q[usize::from(self.seg_items[i])];
        let size = self.seg_ranges[i].len();
        let ends = |k: usize| gro::ends_merge(&self.seg_buf[self.seg_ranges[k].clone()]);
        if ends(i) {
            return i + 1;
        }
        let mut j = i + 1;
        while j < self.seg_ranges.len() {
            let item = &q[usize::from(self.seg_items[j])];
            let len = self.seg_ranges[j].len();
            if self.sports[j] != self.sports[i]
                || item.tun_dst != first.tun_dst
                || item.tun_key != first.tun_key
                || len > size
            {
                break;
            }
            j += 1;
            if len < size || ends(j - 1) {
                break;
            }
        }
        j
    }

    /// Sends finished frames `range` of `seg_buf` on tunnel `t`, each behind its
    /// outer headers, with one `sendmmsg` per [`BATCH`].
    fn send_tunnel_each(&mut self, t: &TunnelOut, q: &[TxItem], range: Range<usize>) -> TxResult {
        let len = t.cfg.outer_len();
        let v6 = t.cfg.v6();
        let vxlan = t.cfg.kind == TunnelKind::Vxlan;
        self.outer.clear();
        self.dests.clear();
        for k in range.clone() {
            let item = q[usize::from(self.seg_items[k])];
            let inner = &self.seg_buf[self.seg_ranges[k].clone()];
            let sport = if vxlan { self.sports[k] } else { 0 };
            let at = self.outer.len();
            self.outer.resize(at + OUTER_STRIDE, 0);
            t.cfg.write_outer(
                &mut self.outer[at..at + len],
                item.tun_key,
                item.tun_dst,
                inner,
                sport,
            );
            self.dests.push(dest(item.tun_dst, 0));
        }
        let mut tx = TxBatch::new(std::mem::take(&mut self.tx_store));
        for (i, r) in self.seg_ranges[range].iter().enumerate() {
            let at = i * OUTER_STRIDE;
            tx.push_parts(&[&self.outer[at..at + len], &self.seg_buf[r.clone()]]);
        }
        let v6 = v6.then(|| (t.cfg.tos, t.cfg.ttl, t.cfg.local_v6()));
        let r = t.tx.send(t.cfg.kind, v6, &tx, &self.dests, len);
        self.tx_store = tx.into_store();
        r
    }

    /// Turns queued frames into finished frames in `seg_buf` (checksums completed,
    /// super-frames segmented), for ports that cannot take offloads. `seg_items`
    /// says which queued frame each finished one came from. Returns how many frames
    /// could not be finished.
    fn finish(&mut self, q: &[TxItem]) -> u64 {
        let mut errors = 0;
        self.seg_buf.clear();
        self.seg_ranges.clear();
        self.seg_items.clear();
        for (idx, (item, rt)) in q.iter().zip(&self.retags).enumerate() {
            let (first, rest) =
                frame_view(&self.rx, &self.heads, &self.head_lens, item.slot, item.head);
            let whole: &[u8] = match (rt, item.head) {
                (None, NO_HEAD) => first,
                _ => {
                    // Materialize the frame whole: segmentation needs it contiguous.
                    let (prefix, from): (&[u8], usize) = match rt {
                        Some(r) => (&r.prefix[..usize::from(r.len)], usize::from(r.rest_at)),
                        None => (&[], 0),
                    };
                    self.tag_buf.clear();
                    self.tag_buf.extend_from_slice(prefix);
                    self.tag_buf.extend_from_slice(&first[from..]);
                    self.tag_buf.extend_from_slice(rest);
                    &self.tag_buf
                }
            };
            let hdr = VnetHdr::parse(whole[..VNET_HDR_LEN].try_into().unwrap());
            let frame = &whole[VNET_HDR_LEN..];
            if hdr.is_gso() {
                if gso::segment(frame, &hdr, &mut self.seg_buf, &mut self.seg_ranges).is_err() {
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
            self.seg_items.resize(self.seg_ranges.len(), idx as u16);
        }
        errors
    }
}

/// An IPv4 address as the key's tun_src/tun_dst hold it; 0 for IPv6.
fn ipv4_bits(a: IpAddr) -> u32 {
    match a {
        IpAddr::V4(a) => u32::from(a),
        IpAddr::V6(_) => 0,
    }
}

/// Split horizon: a frame that came in on a tunnel never floods out of another, so
/// a full mesh of hypervisors has no loops.
#[inline]
fn split_horizon(snap: &Snapshot, in_port: usize, out: usize) -> bool {
    snap.ports[in_port].kind.is_tunnel() && snap.ports[out].kind.is_tunnel()
}

/// A frame's bytes as they are now: its rewritten headers (or the slot's start, whole),
/// then the rest of the slot after them.
fn frame_view<'a>(
    rx: &'a RxBatch,
    heads: &'a [u8],
    head_lens: &[u16],
    slot: u16,
    head: u16,
) -> (&'a [u8], &'a [u8]) {
    let s = rx.slot(usize::from(slot));
    if head == NO_HEAD {
        return (s, &[]);
    }
    let h = usize::from(head);
    let len = usize::from(head_lens[h]);
    (&heads[h * HEAD_CAP..h * HEAD_CAP + len], &s[len..])
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
