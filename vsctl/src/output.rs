//! Printing answers for people (ovs-vsctl's layouts) and for scripts (`--format=json`).

use std::fmt::Write;

use serde_json::json;
use vswitchd::rpc::{FdbRow, FlowRow, PortStatsRow, State};

use crate::args::{Format, Global};

/// ovs-vsctl's `{k=v, k2=v2}` map notation.
fn map(m: &std::collections::BTreeMap<String, String>, numeric: bool) -> String {
    let items: Vec<String> = m
        .iter()
        .map(|(k, v)| format!("{k}={}", if numeric { v.clone() } else { quote(v) }))
        .collect();
    format!("{{{}}}", items.join(", "))
}

/// A string as OVSDB prints it: bare when it reads as an identifier (starts with a
/// letter or `_`, then letters, digits, `-_.`) and is not `true`/`false`; quoted
/// otherwise, so `"1"` stays a string and not a number.
fn quote(v: &str) -> String {
    let bare = v
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && v != "true"
        && v != "false";
    if bare {
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

/// One value of a record: how ovs-vsctl prints it, and the same in OVSDB's JSON.
#[derive(Clone)]
pub struct Cell {
    pub text: String,
    pub json: serde_json::Value,
}

fn cell_str(v: &str) -> Cell {
    Cell {
        text: quote(v),
        json: json!(v),
    }
}

fn cell_opt<T: std::fmt::Display + serde::Serialize>(v: &Option<T>) -> Cell {
    match v {
        Some(x) => {
            let j = json!(x);
            Cell {
                text: match &j {
                    serde_json::Value::String(s) => quote(s),
                    _ => x.to_string(),
                },
                json: j,
            }
        }
        None => Cell {
            text: "[]".into(),
            json: json!(["set", []]),
        },
    }
}

fn cell_set<T: std::fmt::Display + serde::Serialize>(items: &[T]) -> Cell {
    Cell {
        text: set(items),
        json: if items.len() == 1 {
            json!(items[0])
        } else {
            json!(["set", items])
        },
    }
}

/// Map columns whose values are integers (printed bare, JSON numbers).
const INTEGER_MAPS: &[&str] = &["statistics"];

fn map_value(col: &str, v: &str) -> Cell {
    match v.parse::<i64>() {
        Ok(n) if INTEGER_MAPS.contains(&col) => Cell {
            text: v.to_string(),
            json: json!(n),
        },
        _ => cell_str(v),
    }
}

fn cell_map(col: &str, m: &std::collections::BTreeMap<String, String>) -> Cell {
    let pairs: Vec<serde_json::Value> = m
        .iter()
        .map(|(k, v)| json!([k, map_value(col, v).json]))
        .collect();
    Cell {
        text: map(m, INTEGER_MAPS.contains(&col)),
        json: json!(["map", pairs]),
    }
}

/// One record of a table: its columns in ovs-vsctl's order, and its map columns
/// (for `COLUMN:KEY`).
pub struct Row {
    pub table: &'static str,
    pub cols: Vec<(&'static str, Cell)>,
    pub maps: Vec<(&'static str, std::collections::BTreeMap<String, String>)>,
}

impl Row {
    fn new(
        table: &'static str,
        cols: Vec<(&'static str, Cell)>,
        maps: Vec<(&'static str, std::collections::BTreeMap<String, String>)>,
    ) -> Row {
        let mut cols = cols;
        cols.extend(maps.iter().map(|(c, m)| (*c, cell_map(c, m))));
        cols.sort_by(|a, b| a.0.cmp(b.0));
        Row { table, cols, maps }
    }

    fn cell(&self, col: &str) -> Option<&Cell> {
        self.cols.iter().find(|(c, _)| *c == col).map(|(_, v)| v)
    }
}

fn table_of(name: &str) -> Result<&'static str, String> {
    vswitchd::config::resolve_table(name)
        .map_err(|_| format!("unknown table \"{name}\" (expected Bridge, Port or Interface)"))
}

fn column_of(table: &'static str, name: &str) -> Result<&'static str, String> {
    vswitchd::config::resolve_column(table, name).map_err(|e| e.to_string())
}

pub fn records(st: &State, table: &str) -> Result<Vec<String>, String> {
    Ok(match table_of(table)? {
        "Bridge" => st.config.bridges.keys().cloned().collect(),
        _ => st
            .config
            .bridges
            .values()
            .flat_map(|b| b.ports.keys().cloned())
            .collect(),
    })
}

pub fn row(st: &State, table: &str, record: &str) -> Result<Row, String> {
    let no_row = || format!("no row \"{record}\" in table {table}");
    match table_of(table)? {
        "Bridge" => {
            let b = st.config.bridges.get(record).ok_or_else(no_row)?;
            let ports: Vec<&String> = b.ports.keys().collect();
            Ok(Row::new(
                "Bridge",
                vec![
                    ("name", cell_str(record)),
                    ("datapath_type", cell_str(&b.datapath_type)),
                    ("ports", cell_set(&ports)),
                ],
                vec![
                    ("external_ids", b.external_ids.clone()),
                    ("other_config", b.other_config.clone()),
                ],
            ))
        }
        "Port" => {
            let p = st.config.port(record).ok_or_else(no_row)?;
            Ok(Row::new(
                "Port",
                vec![
                    ("name", cell_str(record)),
                    ("interfaces", cell_set(&[record])),
                    ("tag", cell_opt(&p.tag)),
                    ("trunks", cell_set(&p.trunks)),
                    (
                        "vlan_mode",
                        cell_opt(&p.vlan_mode.as_ref().map(|m| m.to_string())),
                    ),
                ],
                vec![
                    ("external_ids", p.external_ids.clone()),
                    ("other_config", p.other_config.clone()),
                ],
            ))
        }
        _ => {
            let p = st.config.port(record).ok_or_else(no_row)?;
            let i = &p.interface;
            let status = st.status.get(record);
            let kind = if i.kind == vswitchd::config::IfaceType::System {
                String::new()
            } else {
                i.kind.to_string()
            };
            let stats: std::collections::BTreeMap<String, String> = status
                .and_then(|s| s.statistics)
                .and_then(|v| serde_json::to_value(v).ok())
                .and_then(|v| v.as_object().cloned())
                .map(|o| o.into_iter().map(|(k, v)| (k, v.to_string())).collect())
                .unwrap_or_default();
            Ok(Row::new(
                "Interface",
                vec![
                    ("name", cell_str(record)),
                    ("type", cell_str(&kind)),
                    (
                        "ofport",
                        Cell {
                            text: status.map_or("[]".into(), |s| s.ofport.to_string()),
                            json: status.map_or(json!(["set", []]), |s| json!(s.ofport)),
                        },
                    ),
                    ("ofport_request", cell_opt(&i.ofport_request)),
                    ("mtu", cell_opt(&status.and_then(|s| s.mtu))),
                    ("mtu_request", cell_opt(&i.mtu_request)),
                    ("error", cell_opt(&status.and_then(|s| s.error.clone()))),
                    (
                        "mac_in_use",
                        cell_opt(&status.and_then(|s| s.mac_in_use.clone())),
                    ),
                ],
                vec![
                    ("external_ids", i.external_ids.clone()),
                    ("options", i.options.clone()),
                    ("statistics", stats),
                    (
                        "status",
                        status.map(|s| s.status.clone()).unwrap_or_default(),
                    ),
                ],
            ))
        }
    }
}

/// `get`: one value per line; `COLUMN:KEY` picks a map entry.
pub fn get(out: &mut String, g: &Global, row: &Row, spec: &str) -> Result<(), String> {
    let (col, key) = match spec.split_once(':') {
        Some((c, k)) => (column_of(row.table, c)?, Some(k)),
        None => (column_of(row.table, spec)?, None),
    };
    let text = |c: &Cell| {
        if g.data_json {
            c.json.to_string()
        } else {
            c.text.clone()
        }
    };
    match (key, row.maps.iter().find(|(c, _)| *c == col)) {
        (Some(k), Some((_, m))) => match m.get(k) {
            Some(v) => {
                let _ = writeln!(out, "{}", text(&map_value(col, v)));
            }
            None => return Err(format!("no key \"{k}\" in column {col}")),
        },
        (Some(_), None) => return Err(format!("column {col} is not a map")),
        (None, _) => {
            let c = row
                .cell(col)
                .ok_or_else(|| format!("no column named {col}"))?;
            let _ = writeln!(out, "{}", text(c));
        }
    }
    Ok(())
}

/// Whether `row` satisfies `COLUMN[:KEY]=VALUE` (`find`'s condition; `VALUE` as
/// ovs-vsctl prints it, quoted or not).
pub fn matches(row: &Row, cond: &str) -> Result<bool, String> {
    let (lhs, want) = cond
        .split_once('=')
        .ok_or_else(|| format!("\"{cond}\": expected COLUMN[:KEY]=VALUE"))?;
    let want = want.trim_matches('"');
    let (col, key) = match lhs.split_once(':') {
        Some((c, k)) => (column_of(row.table, c)?, Some(k)),
        None => (column_of(row.table, lhs)?, None),
    };
    Ok(match key {
        Some(k) => row
            .maps
            .iter()
            .find(|(c, _)| *c == col)
            .and_then(|(_, m)| m.get(k))
            .is_some_and(|v| v == want),
        None => row
            .cell(col)
            .is_some_and(|c| c.text.trim_matches('"') == want || c.json == json!(want)),
    })
}

/// `list` and `find`: records in ovs-vsctl's layouts — `name : value` blocks (the
/// default), an aligned table (`--format=table`), JSON (`--format=json`), or bare
/// values (`--bare`); `columns` picks and orders columns.
pub fn records_out(
    out: &mut String,
    g: &Global,
    rows: &[Row],
    columns: Option<&[String]>,
) -> Result<(), String> {
    let Some(first) = rows.first() else {
        if g.format == Format::Json {
            let _ = writeln!(out, "{}", json!({"data": [], "headings": []}));
        }
        return Ok(());
    };
    let cols: Vec<&'static str> = match columns {
        Some(cs) => cs
            .iter()
            .map(|c| column_of(first.table, c))
            .collect::<Result<_, _>>()?,
        None => first.cols.iter().map(|(c, _)| *c).collect(),
    };
    let text = |c: &Cell| {
        if g.data_json {
            c.json.to_string()
        } else {
            c.text.clone()
        }
    };
    let cells = |r: &Row| -> Vec<Cell> {
        cols.iter()
            .map(|c| {
                r.cell(c)
                    .cloned()
                    .unwrap_or_else(|| cell_opt::<String>(&None))
            })
            .collect()
    };
    if g.format == Format::Json {
        let data: Vec<Vec<serde_json::Value>> = rows
            .iter()
            .map(|r| cells(r).into_iter().map(|c| c.json).collect())
            .collect();
        let _ = writeln!(out, "{}", json!({"data": data, "headings": cols}));
    } else if g.bare {
        for (i, r) in rows.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            for c in cells(r) {
                let _ = writeln!(out, "{}", text(&c).trim_matches('"'));
            }
        }
    } else if g.table_asked {
        let table: Vec<Vec<String>> = rows
            .iter()
            .map(|r| cells(r).iter().map(text).collect())
            .collect();
        let widths: Vec<usize> = cols
            .iter()
            .enumerate()
            .map(|(i, c)| {
                table
                    .iter()
                    .map(|r| r[i].len())
                    .max()
                    .unwrap_or(0)
                    .max(c.len())
            })
            .collect();
        let line = |out: &mut String, vals: Vec<&str>| {
            let v: Vec<String> = vals
                .iter()
                .zip(&widths)
                .map(|(s, w)| format!("{s:<w$}"))
                .collect();
            let _ = writeln!(out, "{}", v.join(" ").trim_end());
        };
        if !g.no_headings {
            line(out, cols.to_vec());
            line(
                out,
                widths
                    .iter()
                    .map(|w| "-".repeat(*w))
                    .collect::<Vec<_>>()
                    .iter()
                    .map(String::as_str)
                    .collect(),
            );
        }
        for r in &table {
            line(out, r.iter().map(String::as_str).collect());
        }
    } else {
        for (i, r) in rows.iter().enumerate() {
            if i > 0 {
                out.push('\n');
            }
            for (c, v) in cols.iter().zip(cells(r)) {
                let _ = writeln!(out, "{c:<19}: {}", text(&v));
            }
        }
    }
    Ok(())
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
                let _ = writeln!(out, "                options: {}", map(&i.options, false));
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
