//! `trace`: what the bridge would do with a packet, narrated, without sending it —
//! like `ovs-appctl ofproto/trace`.
//!
//! It walks the same tables the datapath runs (compiled here from the configuration
//! with the same [`FlowSpec::to_match`]), the same VLAN rules ([`PortVlan`]) and the
//! live MAC table (asked of the datapath), and prints, per table, the flow that
//! matched or the miss, each action, the resubmits, NORMAL's decision, and the final
//! datapath actions.

use std::fmt::Write;

use ofproto::actions::{KeyOp, Verdict};
use ofproto::classifier::Classifier;
use ofproto::flow::{FlowKey, DL_DST, DL_SRC, IN_PORT, VLAN_TCI};
use ofproto::flow_syntax::{Action, FlowFilter, FlowSpec, PortRef};
use ofproto::mac_learning::MacEntry;
use ofproto::rewrite;
use ofproto::{MacAddr, PortNo, OFPP_LOCAL};

use crate::config::{Bridge, Config};
use crate::pipeline::ofport_of;

const MAX_DEPTH: usize = 32;

struct Tracer<'a> {
    bridge: &'a Bridge,
    tables: Vec<Classifier<(String, Vec<Action>)>>,
    fdb: &'a [MacEntry],
    out: String,
    datapath: Vec<String>,
    /// The key the frame's headers match at the last output.
    committed: FlowKey,
}

fn port_name(b: &Bridge, ofport: PortNo) -> Option<&str> {
    b.ports
        .iter()
        .find(|(_, p)| p.interface.ofport == Some(ofport))
        .map(|(n, _)| n.as_str())
}

fn resolver(b: &Bridge) -> impl Fn(&PortRef) -> Option<u32> + '_ {
    move |p: &PortRef| ofport_of(b, p)
}

fn tci_of(key: &FlowKey) -> Option<u16> {
    let t = key.get(VLAN_TCI) as u16;
    (t & 0x1000 != 0).then_some(t & !0x1000)
}

fn tag_desc(tci: Option<u16>) -> String {
    match tci {
        None => "untagged".into(),
        Some(t) => format!("VLAN {} PCP {}", t & 0x0fff, t >> 13),
    }
}

impl Tracer<'_> {
    fn line(&mut self, indent: usize, text: impl AsRef<str>) {
        let _ = writeln!(self.out, "{:indent$}{}", "", text.as_ref(), indent = indent);
    }

    /// Outputs to `port` with tag `tci`; header fields the actions changed since the
    /// last output are listed first, as a `set(...)` datapath action.
    fn emit(&mut self, indent: usize, port: &str, tci: Option<u16>, key: &FlowKey) {
        if rewrite::differs(&self.committed, key) {
            let changed: Vec<String> = rewrite::HEADER_FIELDS
                .iter()
                .filter(|f| self.committed.get(**f) != key.get(**f))
                .map(|f| format!("{}={:#x}", f.name, key.get(*f)))
                .collect();
            self.datapath.push(format!("set({})", changed.join(",")));
            self.committed = *key;
        }
        self.line(indent, format!("-> output to {port} ({})", tag_desc(tci)));
        self.datapath.push(match tci {
            Some(t) => format!("push_vlan(vid={},pcp={}),{port}", t & 0x0fff, t >> 13),
            None => port.to_string(),
        });
    }

    fn table(&mut self, t: u8, key: &mut FlowKey, indent: usize, depth: usize) {
        let hit = self
            .tables
            .get(usize::from(t))
            .and_then(|c| c.lookup(key))
            .map(|(_, r)| r.data.clone());
        let Some((text, actions)) = hit else {
            self.line(indent, format!("{t}. no match: drop"));
            return;
        };
        self.line(indent, format!("{t}. {text}"));
        let in_name = port_name(self.bridge, key.get(IN_PORT) as u32)
            .unwrap_or("?")
            .to_string();
        for a in actions {
            let i = indent + 4;
            match a {
                Action::Output(PortRef::InPort) | Action::InPort => {
                    self.emit(i, &in_name.clone(), tci_of(key), key)
                }
                Action::Output(p) => {
                    let name =
                        match resolver(self.bridge)(&p).and_then(|n| port_name(self.bridge, n)) {
                            Some(n) => n.to_string(),
                            None => {
                                self.line(i, format!("output:{p}: no such port, dropped"));
                                continue;
                            }
                        };
                    if name == in_name {
                        self.line(i, format!("output:{p}: skipped (the input port)"));
                    } else {
                        self.emit(i, &name, tci_of(key), key);
                    }
                }
                Action::Local => {
                    let local = port_name(self.bridge, OFPP_LOCAL)
                        .unwrap_or("LOCAL")
                        .to_string();
                    self.emit(i, &local, tci_of(key), key);
                }
                Action::Flood | Action::All => {
                    self.line(i, format!("{a}: every port but {in_name}"));
                    let ports: Vec<String> = self
                        .bridge
                        .ports
                        .keys()
                        .filter(|p| **p != in_name)
                        .cloned()
                        .collect();
                    for p in ports {
                        self.emit(i + 4, &p, tci_of(key), key);
                    }
                }
                Action::Drop => self.line(i, "drop"),
                Action::Normal => self.normal(key, &in_name, i),
                Action::Resubmit { port, table } => {
                    if depth >= MAX_DEPTH {
                        self.line(i, "resubmit: too deep, stopped");
                        continue;
                    }
                    let saved = key.get(IN_PORT);
                    if let Some(n) = port.as_ref().and_then(|p| resolver(self.bridge)(p)) {
                        key.set(IN_PORT, u64::from(n));
                    }
                    let target = table.unwrap_or(t);
                    self.line(i, format!("resubmit to table {target}"));
                    self.table(target, key, i + 4, depth + 1);
                    key.set(IN_PORT, saved);
                }
                Action::GotoTable(n) if n > t => {
                    self.line(i, format!("goto_table:{n}"));
                    self.table(n, key, indent, depth + 1);
                    return;
                }
                Action::Learn(l) => {
                    let flow = l.instantiate(key);
                    self.line(i, format!("learn: adds {flow}"));
                }
                Action::Note(_) => self.line(i, format!("{a}: nothing to do")),
                other => match KeyOp::of(&other) {
                    Some(op) => {
                        let before = *key;
                        if op.apply(key) == Verdict::Drop {
                            self.line(i, format!("{other}: TTL expired, dropping"));
                            return;
                        }
                        let vlan = if before.get(VLAN_TCI) != key.get(VLAN_TCI) {
                            format!(" -> {}", tag_desc(tci_of(key)))
                        } else {
                            String::new()
                        };
                        self.line(i, format!("{other}{vlan}"));
                    }
                    None => self.line(i, format!("{other}: not run by this datapath")),
                },
            }
        }
    }

    fn normal(&mut self, key: &FlowKey, in_name: &str, indent: usize) {
        let Some(in_port) = self.bridge.ports.get(in_name) else {
            return;
        };
        let tci = tci_of(key);
        let vlan = match in_port.vlan().input(tci) {
            Ok(v) => v,
            Err(reason) => {
                self.line(indent, format!("NORMAL: {reason}"));
                return;
            }
        };
        let mac = |v: u64| {
            let b = v.to_be_bytes();
            MacAddr([b[2], b[3], b[4], b[5], b[6], b[7]])
        };
        let (src, dst) = (mac(key.get(DL_SRC)), mac(key.get(DL_DST)));
        let learned = self
            .fdb
            .iter()
            .find(|e| e.vlan == vlan && e.mac == dst)
            .map(|e| e.port);
        let targets: Vec<String> = if src.is_multicast() {
            self.line(
                indent,
                format!("NORMAL: dropping packet with multicast source address {src}"),
            );
            return;
        } else if dst.is_multicast() {
            self.line(
                indent,
                format!("NORMAL: {dst} is multicast, flooding in VLAN {vlan}"),
            );
            self.flood_targets(in_name, vlan)
        } else if let Some(of) = learned {
            let name = port_name(self.bridge, of).unwrap_or("?").to_string();
            if name == in_name {
                self.line(
                    indent,
                    format!("NORMAL: {dst} learned on the input port {name}, dropping"),
                );
                return;
            }
            self.line(
                indent,
                format!("NORMAL: {dst} learned on {name} in VLAN {vlan}"),
            );
            vec![name]
        } else {
            self.line(
                indent,
                format!("NORMAL: no learned port for {dst} in VLAN {vlan}, flooding"),
            );
            self.flood_targets(in_name, vlan)
        };
        for name in targets {
            let out = self.bridge.ports[&name].vlan().egress_tag(vlan, tci);
            self.emit(indent + 4, &name, out, key);
        }
    }

    fn flood_targets(&self, in_name: &str, vlan: u16) -> Vec<String> {
        self.bridge
            .ports
            .iter()
            .filter(|(n, p)| n.as_str() != in_name && p.vlan().carries(vlan))
            .map(|(n, _)| n.clone())
            .collect()
    }
}

/// Traces `flow` (match syntax, `in_port` required) through `bridge`.
pub fn trace(cfg: &Config, bridge: &str, flow: &str, fdb: &[MacEntry]) -> Result<String, String> {
    let b = cfg.bridge(bridge).map_err(|e| e.to_string())?;
    let f = FlowFilter::parse(flow).map_err(|e| e.to_string())?;
    if !f.spec.matches.iter().any(|m| m.field == "in_port") {
        return Err("trace needs in_port=PORT".into());
    }
    let mut key = f.spec.to_match(resolver(b))?.value;
    let mut tables: Vec<Classifier<(String, Vec<Action>)>> = Vec::new();
    for text in &b.flows {
        let Ok(spec) = FlowSpec::parse(text) else {
            continue;
        };
        let Ok(m) = spec.to_match(resolver(b)) else {
            continue;
        };
        let t = usize::from(spec.table);
        if tables.len() <= t {
            tables.resize_with(t + 1, Classifier::new);
        }
        tables[t].insert(m, spec.priority, (text.clone(), spec.actions.clone()));
    }
    let mut tr = Tracer {
        bridge: b,
        tables,
        fdb,
        out: String::new(),
        datapath: Vec::new(),
        committed: key,
    };
    tr.line(0, format!("Flow: {flow}"));
    tr.line(0, "");
    tr.line(0, format!("bridge(\"{bridge}\")"));
    tr.line(0, "-".repeat(bridge.len() + 10));
    tr.table(0, &mut key, 1, 0);
    tr.line(0, "");
    let actions = if tr.datapath.is_empty() {
        "drop".to_string()
    } else {
        tr.datapath.join(",")
    };
    tr.line(0, format!("Datapath actions: {actions}"));
    Ok(tr.out)
}
