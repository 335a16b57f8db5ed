//! Issue 3: the datapath allocates nothing per frame in steady state.
//!
//! This test binary installs a counting global allocator that counts only
//! allocations made on the thread named "datapath", runs the real datapath thread
//! in-process over real veths, warms it up, and then checks that forwarding tens of
//! thousands of frames — TCP super-frames passed through whole, the same frames
//! segmented in software for a port without offload, UDP, ARP, ICMP — allocated
//! nothing at all.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use vswitch_tests::*;
use vswitchd::config::Config;
use vswitchd::datapath::{Cmd, WorkerHandle};
use vswitchd::reconcile::Devices;
use vswitchd::rpc::{Op, Setting};

struct Counting;

static DATAPATH_ALLOCS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    /// 0: not yet known, 1: the datapath thread, 2: any other thread.
    static ROLE: Cell<u8> = const { Cell::new(0) };
}

fn note() {
    let _ = ROLE.try_with(|r| {
        if r.get() == 0 {
            // Mark first: asking for the thread's name may itself allocate.
            r.set(2);
            if std::thread::current().name() == Some("datapath") {
                r.set(1);
            }
        }
        if r.get() == 1 {
            DATAPATH_ALLOCS.fetch_add(1, Ordering::Relaxed);
        }
    });
}

// SAFETY: forwards every call to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        note();
        unsafe { System.realloc(p, l, n) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Both runs in one test: the counter sees every thread named "datapath", so two
/// datapaths must not overlap.
#[test]
fn steady_state_forwarding_allocates_nothing() {
    // NORMAL only: the bridge has no pipeline.
    forward_and_count(&[]);
    // A pipeline whose actions rewrite every IP frame's headers (a copy of the
    // headers per frame, checksums updated) and resubmit to NORMAL.
    forward_and_count(&[
        "table=0,priority=10,ip,actions=mod_nw_tos:0x20,resubmit(,1)",
        "table=0,priority=0,actions=resubmit(,1)",
        "table=1,priority=0,actions=NORMAL",
    ]);
}

fn forward_and_count(flows: &[&str]) {
    let a = Host::new("za", "10.0.9.1/24");
    let b = Host::new("zb", "10.0.9.2/24");
    let br = uniq("br");
    let mut cfg = Config::default();
    let add = |port: &str| Op::AddPort {
        bridge: br.clone(),
        port: port.into(),
        may_exist: false,
        settings: vec![],
    };
    cfg.transact(&[
        Op::AddBr {
            bridge: br.clone(),
            may_exist: false,
        },
        add(&a.port),
        add(&b.port),
        // b's port cannot take offloaded frames: the software segmentation path runs too.
        Op::Set {
            table: "Interface".into(),
            record: b.port.clone(),
            settings: vec![Setting::parse("options:offload=false").unwrap()],
        },
    ])
    .unwrap();
    if !flows.is_empty() {
        cfg.transact(&[Op::ReplaceFlows {
            bridge: br.clone(),
            flows: flows.iter().map(|f| f.to_string()).collect(),
        }])
        .unwrap();
    }
    let mut devices = Devices::default();
    assert!(devices.open_missing(&cfg));
    // Learned flows would go here; these flows learn nothing.
    let (learned, _learned_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut worker = WorkerHandle::spawn(learned, std::time::Duration::ZERO).unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel();
    worker.send(Cmd::Reconfigure(Arc::new(devices.snapshot(&cfg)), tx));
    rx.blocking_recv().unwrap();

    // Warm-up: learn MACs, grow queues and the segmentation arena to their working size.
    assert!(a.ping(&b.ip));
    tcp_transfer(&a, &b, 8 << 20);
    udp_exchange(&a, &b, 100);

    let before = DATAPATH_ALLOCS.load(Ordering::Relaxed);
    let tx_before = devices.stats(&b.port).unwrap().view().tx_packets;
    tcp_transfer(&a, &b, 32 << 20);
    udp_exchange(&a, &b, 300);
    assert!(b.ping(&a.ip));
    let allocs = DATAPATH_ALLOCS.load(Ordering::Relaxed) - before;
    let frames = devices.stats(&b.port).unwrap().view().tx_packets - tx_before;

    assert!(
        frames >= (32 << 20) / 1448,
        "only {frames} frames forwarded: the test did not exercise the datapath"
    );
    assert_eq!(
        allocs, 0,
        "the datapath allocated {allocs} times while forwarding {frames} frames"
    );
    if !flows.is_empty() {
        let rewrite = cfg.bridges[&br]
            .flows
            .iter()
            .find(|f| f.contains("mod_nw_tos"))
            .unwrap();
        let st = devices.flow_stats.get(&br, rewrite).unwrap();
        // Super-frames of up to 64 KiB count once: at least 32 MiB / 64 KiB of them.
        assert!(
            st.n_packets.load(Ordering::Relaxed) >= (32 << 20) / 65536,
            "the rewriting flow did not see the frames"
        );
    }
    worker.shutdown();
    drop(devices);
}
