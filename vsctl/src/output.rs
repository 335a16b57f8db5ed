//! Printing answers for people (ovs-vsctl's layouts) and for scripts (`--format=json`).

use std::fmt::Write;

use serde_json::json;
use vswitchd::rpc::{FdbRow, PortStatsRow, State};

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
