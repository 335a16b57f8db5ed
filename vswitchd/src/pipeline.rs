//! The OpenFlow-style pipeline of a bridge, compiled for the datapath.
//!
//! The configuration holds flows as text; [`compile`] turns a bridge's flows into
//! one classifier per table whose rules carry actions with ports already resolved
//! to datapath indices. A bridge whose only flow is the default
//! `table=0,priority=0,actions=NORMAL` gets no pipeline at all: the datapath then
//! goes straight to NORMAL without extracting a flow key, so the common case pays
//! nothing for programmability.
//!
//! Per-flow counters live in [`FlowStats`], kept by flow text across recompiles, so
//! adding one flow does not reset the others' counters (and `replace-flows` keeps
//! the counters of flows it leaves unchanged).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Instant;

use ofproto::actions::KeyOp;
use ofproto::classifier::Classifier;
use ofproto::flow_syntax::{Action, FlowSpec, LearnSpec, PortRef};
use ofproto::{PortNo, OFPP_LOCAL};

use crate::config::{Bridge, DEFAULT_FLOW};

/// The clock origin shared by the datapath (which stamps `last_used_ms`) and the
/// control side (which turns it into `idle_age`).
pub fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Deepest chain of resubmits a frame may follow (a loop of resubmits ends here).
pub const MAX_RESUBMIT_DEPTH: u8 = 32;

#[derive(Debug)]
pub struct FlowStats {
    pub n_packets: AtomicU64,
    pub n_bytes: AtomicU64,
    /// Milliseconds since [`epoch`] when the flow last matched; 0 = never.
    pub last_used_ms: AtomicU64,
    pub created: Instant,
}

impl FlowStats {
    fn new() -> FlowStats {
        FlowStats {
            n_packets: AtomicU64::new(0),
            n_bytes: AtomicU64::new(0),
            last_used_ms: AtomicU64::new(0),
            created: Instant::now(),
        }
    }

    #[inline]
    pub fn hit(&self, bytes: u64, now_ms: u64) {
        self.n_packets.fetch_add(1, Relaxed);
        self.n_bytes.fetch_add(bytes, Relaxed);
        self.last_used_ms.store(now_ms.max(1), Relaxed);
    }
}

/// An action with its ports resolved to datapath port indices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ActionRt {
    /// To this port; `None` when the named port does not exist (the output is dropped).
    Output(Option<usize>),
    Normal,
    Flood,
    All,
    InPort,
    Drop,
    /// A change to the flow key (VLAN, header rewrites, registers, metadata...);
    /// the frame follows the key when it is output.
    Key(KeyOp),
    Learn(Arc<LearnSpec>),
    Resubmit {
        in_port: Option<usize>,
        table: Option<u8>,
    },
    GotoTable(u8),
}

#[derive(Debug)]
pub struct RuleRt {
    pub actions: Vec<ActionRt>,
    pub stats: Arc<FlowStats>,
}

/// Per-table counters for `dump-tables`, kept across recompiles.
#[derive(Debug, Default)]
pub struct TableStats {
    pub lookups: AtomicU64,
    pub matched: AtomicU64,
}

#[derive(Debug, Default)]
pub struct Pipeline {
    /// Indexed by table number; absent tables miss (drop).
    pub tables: Vec<Option<Classifier<RuleRt>>>,
    /// Indexed by table number, like `tables`.
    pub table_stats: Vec<Arc<TableStats>>,
}

impl Pipeline {
    #[inline]
    pub fn table(&self, t: u8) -> Option<&Classifier<RuleRt>> {
        self.tables.get(usize::from(t))?.as_ref()
    }
}

/// Per-flow counters of every bridge, by (bridge, flow text), and per-table
/// counters by (bridge, table).
#[derive(Default)]
pub struct FlowStatsRegistry {
    stats: HashMap<(String, String), Arc<FlowStats>>,
    tables: HashMap<(String, u8), Arc<TableStats>>,
}

impl FlowStatsRegistry {
    pub fn get(&self, bridge: &str, flow: &str) -> Option<&Arc<FlowStats>> {
        self.stats.get(&(bridge.to_string(), flow.to_string()))
    }

    /// Counters of table `t` of `bridge`, if it was ever compiled.
    pub fn table(&self, bridge: &str, t: u8) -> Option<&Arc<TableStats>> {
        self.tables.get(&(bridge.to_string(), t))
    }

    fn table_entry(&mut self, bridge: &str, t: u8) -> Arc<TableStats> {
        self.tables
            .entry((bridge.to_string(), t))
            .or_default()
            .clone()
    }

    fn entry(&mut self, bridge: &str, flow: &str) -> Arc<FlowStats> {
        self.stats
            .entry((bridge.to_string(), flow.to_string()))
            .or_insert_with(|| Arc::new(FlowStats::new()))
            .clone()
    }

    /// Forgets counters of flows no longer configured.
    pub fn retain(&mut self, cfg: &crate::config::Config) {
        // A set, not a scan per counter: with 100k flows a scan is 10^10 compares.
        let live: std::collections::HashSet<(&str, &str)> = cfg
            .bridges
            .iter()
            .flat_map(|(b, br)| br.flows.iter().map(move |f| (b.as_str(), f.as_str())))
            .collect();
        self.stats
            .retain(|(b, f), _| live.contains(&(b.as_str(), f.as_str())));
    }
}

/// The OpenFlow port number `p` stands for on `bridge` (`None`: no such port, or
/// `IN_PORT`, which depends on the packet).
pub fn ofport_of(bridge: &Bridge, p: &PortRef) -> Option<u32> {
    match p {
        PortRef::Name(n) => bridge.ports.get(n).and_then(|p| p.interface.ofport),
        PortRef::Number(n) => Some(*n),
        PortRef::Local => Some(OFPP_LOCAL),
        PortRef::InPort => None,
    }
}

/// Compiles `bridge`'s flows; `None` when only the default NORMAL flow is there.
/// `index` maps a port name to its datapath index and OpenFlow number.
pub fn compile(
    name: &str,
    bridge: &Bridge,
    index: &dyn Fn(&str) -> Option<(usize, PortNo)>,
    local: Option<usize>,
    registry: &mut FlowStatsRegistry,
) -> Option<Pipeline> {
    if bridge.flows.len() == 1 && bridge.flows[0] == DEFAULT_FLOW {
        return None;
    }
    let by_number = |n: u32| {
        bridge
            .ports
            .keys()
            .filter_map(|p| index(p))
            .find(|(_, of)| *of == n)
            .map(|(i, _)| i)
    };
    let resolve_idx = |p: &PortRef| -> Option<usize> {
        match p {
            PortRef::Name(n) => index(n).map(|(i, _)| i),
            PortRef::Number(n) => by_number(*n),
            PortRef::Local => local,
            PortRef::InPort => None,
        }
    };
    let mut pl = Pipeline::default();
    for text in &bridge.flows {
        let Ok(spec) = FlowSpec::parse(text) else {
            continue;
        };
        // A flow naming a port that is gone cannot match anything: leave it out.
        let Ok(m) = spec.to_match(|p| ofport_of(bridge, p)) else {
            continue;
        };
        let actions = spec
            .actions
            .iter()
            .filter(|a| !matches!(a, Action::Note(_)))
            .map(|a| match a {
                Action::Output(PortRef::InPort) | Action::InPort => ActionRt::InPort,
                Action::Output(p) => ActionRt::Output(resolve_idx(p)),
                Action::Local => ActionRt::Output(local),
                Action::Normal => ActionRt::Normal,
                Action::Flood => ActionRt::Flood,
                Action::All => ActionRt::All,
                Action::Learn(l) => ActionRt::Learn(Arc::new((**l).clone())),
                Action::Resubmit { port, table } => ActionRt::Resubmit {
                    in_port: port.as_ref().and_then(&resolve_idx),
                    table: *table,
                },
                Action::GotoTable(t) => ActionRt::GotoTable(*t),
                other => match KeyOp::of(other) {
                    Some(op) => ActionRt::Key(op),
                    // Flows with any other action were skipped above.
                    None => ActionRt::Drop,
                },
            })
            .collect();
        let t = usize::from(spec.table);
        if pl.tables.len() <= t {
            pl.tables.resize_with(t + 1, || None);
        }
        pl.tables[t].get_or_insert_with(Classifier::new).insert(
            m,
            spec.priority,
            RuleRt {
                actions,
                stats: registry.entry(name, text),
            },
        );
    }
    pl.table_stats = (0..pl.tables.len())
        .map(|t| registry.table_entry(name, t as u8))
        .collect();
    Some(pl)
}
