//! Printing answers for people (ovs-vsctl's layouts) and for scripts (`--format=json`).

use std::fmt::Write;

use serde_json::json;
use vswitchd::rpc::{FdbRow, FlowRow, PortStatsRow, State};

use crate::args::{Format, Global};

/// ovs-vsctl's `{k=v, k2=v2}` map notation.
fn map(m: &std::collections::BTreeMap<String, String>) -> String {
    let items: Vec<String> = m.iter().map(|(k, v)| format!("{k}={}", quote(v))).collect();
    format!("{{{}}}", items.join(", "))
}

fn quote(v: &str) -> String {
    if !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
    {
        v.to_string()
    } else {
        format!("{v:?}")
    }
}

fn port_label(of: i64) -> String {
    if of == i64::from(ofproto::OFPP_LOCAL) {
        "LOCAL".into()
    } else {
        of.to_string()
    }
}

pub fn list<'a>(out: &mut String, g: &Global, items: impl Iterator<Item = impl AsRef<str> + 'a>) {
    let items: Vec<String> = items.map(|s| s.as_ref().to_string()).collect();
    match g.format {
        Format::Json => {
            let _ = writeln!(out, "{}", json!(items));
        }
        Format::Table => {
            for i in items {
                let _ = writeln!(out, "{i}");
            }
        }
    }
}

/// Formats a set the way ovs-vsctl does: `[]`, `[10, 20]`.
fn set<T: std::fmt::Display>(items: &[T]) -> String {
    let v: Vec<String> = items.iter().map(|i| i.to_string()).collect();
    format!("[{}]", v.join(", "))
}

fn opt<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref().map_or("[]".into(), |x| quote(&x.to_string()))
}

/// One record of a table as (column, formatted value) pairs, in ovs-vsctl's order.
pub struct Row {
    pub cols: Vec<(&'static str, String)>,
    pub maps: Vec<(&'static str, std::collections::BTreeMap<String, String>)>,
}

fn norm(s: &str) -> String {
    s.to_ascii_lowercase().replace('-', "_")
}

pub fn records(st: &State, table: &str) -> Result<Vec<String>, String> {
    Ok(match norm(table).as_str() {
        "bridge" => st.config.bridges.keys().cloned().collect(),
        "port" | "interface" => st
            .config
            .bridges
            .values()
            .flat_map(|b| b.ports.keys().cloned())
            .collect(),
        _ => {
            return Err(format!(
                "unknown table \"{table}\" (expected Bridge, Port or Interface)"
            ))
        }
    })
}

pub fn row(st: &State, table: &str, record: &str) -> Result<Row, String> {
    let no_row = || format!("no row \"{record}\" in table {table}");
    match norm(table).as_str() {
        "bridge" => {
            let b = st.config.bridges.get(record).ok_or_else(no_row)?;
            let ports: Vec<&String> = b.ports.keys().collect();
            Ok(Row {
                cols: vec![
                    ("name", quote(record)),
                    ("datapath_type", quote(&b.datapath_type)),
                    ("ports", set(&ports)),
                ],
                maps: vec![
                    ("external_ids", b.external_ids.clone()),
                    ("other_config", b.other_config.clone()),
                ],
            })
        }
        "port" => {
            let p = st.config.port(record).ok_or_else(no_row)?;
            Ok(Row {
                cols: vec![
                    ("name", quote(record)),
                    ("interfaces", set(&[record])),
                    ("tag", opt(&p.tag)),
                    ("trunks", set(&p.trunks)),
                    ("vlan_mode", opt(&p.vlan_mode)),
                ],
                maps: vec![
                    ("external_ids", p.external_ids.clone()),
                    ("other_config", p.other_config.clone()),
                ],
            })
        }
        "interface" => {
            let p = st.config.port(record).ok_or_else(no_row)?;
            let i = &p.interface;
            let status = st.status.get(record);
            Ok(Row {
                cols: vec![
                    ("name", quote(record)),
                    (
                        "type",
                        if i.kind == vswitchd::config::IfaceType::System {
                            "\"\"".into()
                        } else {
                            i.kind.to_string()
                        },
                    ),
                    (
                        "ofport",
                        status.map_or("[]".into(), |s| s.ofport.to_string()),
                    ),
                    ("ofport_request", opt(&i.ofport_request)),
                    (
                        "error",
                        status
                            .and_then(|s| s.error.clone())
                            .map_or("[]".into(), |e| format!("{e:?}")),
                    ),
                    (
                        "mac_in_use",
                        status
                            .and_then(|s| s.mac_in_use.clone())
                            .map_or("[]".into(), |m| format!("{m:?}")),
                    ),
                ],
                maps: vec![
                    ("external_ids", i.external_ids.clone()),
                    ("options", i.options.clone()),
                ],
            })
        }
        _ => Err(format!(
            "unknown table \"{table}\" (expected Bridge, Port or Interface)"
        )),
    }
}

/// `get`: one value per line; `COLUMN:KEY` picks a map entry.
pub fn get(out: &mut String, row: &Row, spec: &str) -> Result<(), String> {
    let (col, key) = match spec.split_once(':') {
        Some((c, k)) => (norm(c), Some(k)),
        None => (norm(spec), None),
    };
    if let Some((_, v)) = row.cols.iter().find(|(c, _)| *c == col) {
        if key.is_some() {
            return Err(format!("column {col} is not a map"));
        }
        let _ = writeln!(out, "{v}");
        return Ok(());
    }
    if let Some((_, m)) = row.maps.iter().find(|(c, _)| *c == col) {
        match key {
            Some(k) => match m.get(k) {
                Some(v) => {
                    let _ = writeln!(out, "{}", quote(v));
                }
                None => return Err(format!("no key \"{k}\" in column {col}")),
            },
            None => {
                let _ = writeln!(out, "{}", map(m));
            }
        }
        return Ok(());
    }
    Err(format!("no column named {col}"))
}

/// `list`: every column as `name : value`, aligned as ovs-vsctl does.
pub fn list_row(out: &mut String, row: &Row) {
    let mut all: Vec<(&str, String)> = row.cols.iter().map(|(c, v)| (*c, v.clone())).collect();
    all.extend(row.maps.iter().map(|(c, m)| (*c, map(m))));
    all.sort_by(|a, b| a.0.cmp(b.0));
    for (c, v) in all {
        let _ = writeln!(out, "{c:<19}: {v}");
    }
}

pub fn show(out: &mut String, g: &Global, st: &State) {
    if g.format == Format::Json {
        let _ = writeln!(out, "{}", serde_json::to_string(st).unwrap_or_default());
        return;
    }
    for (bname, b) in &st.config.bridges {
        let _ = writeln!(out, "    Bridge {bname}");
        if !b.datapath_type.is_empty() {
            let _ = writeln!(out, "        datapath_type: {}", b.datapath_type);
        }
        for (pname, p) in &b.ports {
            let _ = writeln!(out, "        Port {pname}");
            if let Some(t) = p.tag {
                let _ = writeln!(out, "            tag: {t}");
            }
            if !p.trunks.is_empty() {
                let _ = writeln!(out, "            trunks: {}", set(&p.trunks));
            }
            if let Some(m) = &p.vlan_mode {
                let _ = writeln!(out, "            vlan_mode: {m}");
            }
            let i = &p.interface;
            let _ = writeln!(out, "            Interface {pname}");
            if i.kind != vswitchd::config::IfaceType::System {
                let _ = writeln!(out, "                type: {}", i.kind);
            }
            if !i.options.is_empty() {
                let _ = writeln!(out, "                options: {}", map(&i.options));
            }
            if let Some(s) = st.status.get(pname) {
                let _ = writeln!(
                    out,
                    "                ofport: {}",
                    if s.ofport < 0 {
                        "-1".into()
                    } else {
                        port_label(s.ofport)
                    }
                );
                if let Some(e) = &s.error {
                    let _ = writeln!(out, "                error: {e:?}");
                }
            }
        }
    }
}

pub fn fdb(out: &mut String, g: &Global, rows: &[FdbRow]) {
    if g.format == Format::Json {
        let _ = writeln!(out, "{}", json!(rows));
        return;
    }
    if !g.no_headings {
        let _ = writeln!(out, " port  VLAN  MAC                Age");
    }
    for r in rows {
        let _ = writeln!(
            out,
            "{:>5}  {:>4}  {}  {:>3}",
            port_label(i64::from(r.port)),
            r.vlan,
            r.mac,
            r.age
        );
    }
}

pub fn port_stats(out: &mut String, g: &Global, rows: &[PortStatsRow]) {
    if g.format == Format::Json {
        let _ = writeln!(out, "{}", json!(rows));
        return;
    }
    if !g.no_headings {
        let _ = writeln!(
            out,
            "{:<15} {:>6} {:>10} {:>12} {:>8} {:>8} {:>10} {:>12} {:>8} {:>8}",
            "port",
            "ofport",
            "rx_pkts",
            "rx_bytes",
            "rx_drop",
            "rx_err",
            "tx_pkts",
            "tx_bytes",
            "tx_drop",
            "tx_err"
        );
    }
    for r in rows {
        let s = &r.stats;
        let _ = writeln!(
            out,
            "{:<15} {:>6} {:>10} {:>12} {:>8} {:>8} {:>10} {:>12} {:>8} {:>8}",
            r.port,
            if r.ofport < 0 {
                "-1".into()
            } else {
                port_label(r.ofport)
            },
            s.rx_packets,
            s.rx_bytes,
            s.rx_dropped,
            s.rx_errors,
            s.tx_packets,
            s.tx_bytes,
            s.tx_dropped,
            s.tx_errors
        );
    }
}

/// `dump-flows` in ovs-ofctl's layout:
/// ` cookie=0x0, duration=1.234s, table=0, n_packets=0, n_bytes=0, idle_age=1, priority=0 actions=NORMAL`
pub fn flows(out: &mut String, g: &Global, rows: &[FlowRow]) {
    if g.format == Format::Json {
        let _ = writeln!(out, "{}", json!(rows));
        return;
    }
    for r in rows {
        // The canonical text starts with table=N and may carry cookie=; both are
        // printed in front already.
        let (head, actions) = r
            .flow
            .split_once(",actions=")
            .unwrap_or((r.flow.as_str(), "drop"));
        let head: Vec<&str> = head
            .split(',')
            .filter(|p| !p.starts_with("table=") && !p.starts_with("cookie="))
            .collect();
        let body = format!("{} actions={actions}", head.join(","));
        let _ = writeln!(
            out,
            " cookie={:#x}, duration={:.3}s, table={}, n_packets={}, n_bytes={}, idle_age={}, {}",
            r.cookie, r.duration, r.table, r.n_packets, r.n_bytes, r.idle_age, body
        );
    }
}
