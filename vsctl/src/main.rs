//! `vsctl` — drives `vswitchd` with `ovs-vsctl`'s syntax and exit codes.
//!
//! The chain of commands becomes one transaction: every command that changes
//! something is sent as one `transact` request (all or nothing), and read-only
//! commands are answered from the state that transaction left behind. Exit status:
//! 0 on success, 1 on any error (nothing changed), 2 when `br-exists` finds no bridge.

mod args;
mod output;

use std::process::ExitCode;

use serde_json::{json, Value};
use vswitchd::rpc::{self, ClientError, Op, Setting, State};

use args::{Command, Global, Parsed};

const USAGE: &str = "\
vsctl: drives vswitchd, with ovs-vsctl's syntax
usage: vsctl [OPTIONS] COMMAND [ARG...] [-- [OPTIONS] COMMAND [ARG...]]...

Bridge commands:
  add-br BRIDGE                 create a bridge (and its internal port BRIDGE)
  del-br BRIDGE                 delete a bridge and all its ports
  list-br                       print the names of all bridges
  br-exists BRIDGE              exit 2 if BRIDGE does not exist
Port commands:
  add-port BRIDGE PORT [COLUMN[:KEY]=VALUE]...   add a port (an existing interface by default)
  del-port [BRIDGE] PORT        delete a port
  list-ports BRIDGE             print the ports of BRIDGE
  port-to-br PORT               print the bridge that contains PORT
  iface-to-br IFACE             print the bridge that contains IFACE
Database commands (tables Bridge, Port, Interface):
  set TABLE RECORD COLUMN[:KEY]=VALUE...         e.g. set Interface p0 type=internal, set Port vm1 tag=10
  get TABLE RECORD COLUMN[:KEY]...               print values, e.g. get Port vm1 tag
  list TABLE [RECORD]...                         print whole records
  find TABLE [COLUMN[:KEY]=VALUE]...             print records whose columns have these values
  clear TABLE RECORD COLUMN...                   empty columns (Port), e.g. clear Port vm1 tag
  remove TABLE RECORD COLUMN VALUE...            remove values (Port), e.g. remove Port up trunks 20
Flow commands (ovs-ofctl syntax; flows persist across restarts):
  add-flow BRIDGE FLOW          add or replace one flow
  add-flows BRIDGE FILE         add flows from FILE (- for stdin), all or nothing
  replace-flows BRIDGE FILE     make the tables exactly FILE's flows
  del-flows BRIDGE [MATCH]      delete matching flows (all without MATCH; --strict)
  mod-flows BRIDGE FLOW         change the actions of matching flows (--strict)
  dump-flows BRIDGE [MATCH]     print flows with n_packets, n_bytes, duration, idle_age
  dump-tables BRIDGE            per table: active flows, lookups, matches
  trace BRIDGE FLOW             what the bridge would do with a packet (in_port=.. required),
                                table by table, with NORMAL's decision; sends nothing
Status:
  show                          print an overview of the configuration
  fdb-show BRIDGE               print the MAC learning table (like ovs-appctl fdb/show)
  port-stats BRIDGE             print per-port counters
Options:
  --db=unix:PATH                control socket (default $VSWITCH_RUNDIR/vswitchd.sock,
                                else /run/vswitch/vswitchd.sock)
  -t, --timeout=SECS            give up after SECS seconds (default 30)
  -f, --format=table|json       output format for show, list-br, list-ports, fdb-show, port-stats
  --no-headings                 omit table headings
  --columns=COL,...             list/find: print only these columns, in this order
  --data=json                   print values in OVSDB's JSON notation
  --bare                        list/find/get: values only
  --may-exist, --if-exists      per-command: do not fail if the object exists / is missing
  -h, --help, -V, --version";

/// A failure with the exit status it maps to.
struct Failure {
    code: u8,
    message: String,
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure {
            code: 1,
            message: e.to_string(),
        }
    }
}

fn need(cmd: &Command, min: usize, max: usize, usage: &str) -> Result<(), Failure> {
    if cmd.args.len() < min || cmd.args.len() > max {
        return Err(Failure {
            code: 1,
            message: format!("'{}' command requires arguments: {usage}", cmd.name),
        });
    }
    Ok(())
}

fn settings(raw: &[String]) -> Result<Vec<Setting>, Failure> {
    raw.iter()
        .map(|s| Setting::parse(s).map_err(Failure::from))
        .collect()
}

/// The write op for a command, the assertion a chained read needs, or neither.
fn to_op(cmd: &Command) -> Result<Option<Op>, Failure> {
    let a = &cmd.args;
    Ok(Some(match cmd.name.as_str() {
        "add-br" => {
            if a.len() == 3 {
                return Err("fake bridges (add-br BRIDGE PARENT VLAN) are not supported".into());
            }
            need(cmd, 1, 1, "BRIDGE")?;
            Op::AddBr {
                bridge: a[0].clone(),
                may_exist: cmd.may_exist,
            }
        }
        "del-br" => {
            need(cmd, 1, 1, "BRIDGE")?;
            Op::DelBr {
                bridge: a[0].clone(),
                if_exists: cmd.if_exists,
            }
        }
        "add-port" => {
            need(cmd, 2, usize::MAX, "BRIDGE PORT [COLUMN[:KEY]=VALUE]...")?;
            Op::AddPort {
                bridge: a[0].clone(),
                port: a[1].clone(),
                may_exist: cmd.may_exist,
                settings: settings(&a[2..])?,
            }
        }
        "del-port" => {
            need(cmd, 1, 2, "[BRIDGE] PORT")?;
            let (bridge, port) = if a.len() == 2 {
                (Some(a[0].clone()), a[1].clone())
            } else {
                (None, a[0].clone())
            };
            Op::DelPort {
                bridge,
                port,
                if_exists: cmd.if_exists,
            }
        }
        "set" => {
            need(cmd, 3, usize::MAX, "TABLE RECORD COLUMN[:KEY]=VALUE...")?;
            Op::Set {
                table: a[0].clone(),
                record: a[1].clone(),
                settings: settings(&a[2..])?,
            }
        }
        "clear" => {
            need(cmd, 3, usize::MAX, "TABLE RECORD COLUMN...")?;
            Op::Clear {
                table: a[0].clone(),
                record: a[1].clone(),
                columns: a[2..].to_vec(),
            }
        }
        "remove" => {
            need(cmd, 4, usize::MAX, "TABLE RECORD COLUMN VALUE...")?;
            Op::Remove {
                table: a[0].clone(),
                record: a[1].clone(),
                column: a[2].clone(),
                values: a[3..].to_vec(),
            }
        }
        "get" => {
            need(cmd, 3, usize::MAX, "TABLE RECORD COLUMN[:KEY]...")?;
            return Ok(None);
        }
        "list" => {
            need(cmd, 1, usize::MAX, "TABLE [RECORD]...")?;
            return Ok(None);
        }
        "find" => {
            need(cmd, 1, usize::MAX, "TABLE [COLUMN[:KEY]=VALUE]...")?;
            return Ok(None);
        }
        "add-flow" => {
            need(cmd, 2, 2, "BRIDGE FLOW")?;
            Op::AddFlows {
                bridge: a[0].clone(),
                flows: vec![a[1].clone()],
            }
        }
        "add-flows" => {
            need(cmd, 2, 2, "BRIDGE FILE (- for stdin)")?;
            Op::AddFlows {
                bridge: a[0].clone(),
                flows: read_flows(&a[1])?,
            }
        }
        "replace-flows" => {
            need(cmd, 2, 2, "BRIDGE FILE (- for stdin)")?;
            Op::ReplaceFlows {
                bridge: a[0].clone(),
                flows: read_flows(&a[1])?,
            }
        }
        "del-flows" => {
            need(cmd, 1, 2, "BRIDGE [MATCH]")?;
            Op::DelFlows {
                bridge: a[0].clone(),
                strict: cmd.strict,
                filter: a.get(1).cloned().unwrap_or_default(),
            }
        }
        "mod-flows" => {
            need(cmd, 2, 2, "BRIDGE FLOW")?;
            Op::ModFlows {
                bridge: a[0].clone(),
                strict: cmd.strict,
                flow: a[1].clone(),
            }
        }
        "dump-tables" => {
            need(cmd, 1, 1, "BRIDGE")?;
            Op::AssertBridge {
                bridge: a[0].clone(),
            }
        }
        "trace" => {
            need(cmd, 2, 2, "BRIDGE FLOW")?;
            Op::AssertBridge {
                bridge: a[0].clone(),
            }
        }
        "dump-flows" => {
            need(cmd, 1, 2, "BRIDGE [MATCH]")?;
            Op::AssertBridge {
                bridge: a[0].clone(),
            }
        }
        "list-ports" | "fdb-show" | "port-stats" => {
            need(cmd, 1, 1, "BRIDGE")?;
            Op::AssertBridge {
                bridge: a[0].clone(),
            }
        }
        "port-to-br" | "iface-to-br" => {
            need(cmd, 1, 1, "PORT")?;
            Op::AssertPort { port: a[0].clone() }
        }
        "br-exists" => {
            need(cmd, 1, 1, "BRIDGE")?;
            return Ok(None);
        }
        "list-br" | "show" | "init" => {
            need(cmd, 0, 0, "(none)")?;
            return Ok(None);
        }
        other => return Err(format!("unknown command '{other}'; use --help for help").into()),
    }))
}

/// Flow lines from a file, or stdin for "-": one per line, blank lines and `#`
/// comments skipped, as ovs-ofctl add-flows reads them.
fn read_flows(path: &str) -> Result<Vec<String>, Failure> {
    let text = if path == "-" {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s)?;
        s
    } else {
        std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?
    };
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect())
}

fn is_write(op: &Op) -> bool {
    !matches!(op, Op::AssertBridge { .. } | Op::AssertPort { .. })
}

fn call(g: &Global, method: &str, params: Value) -> Result<Value, Failure> {
    rpc::call(&g.socket, method, params, g.timeout).map_err(|e| match e {
        ClientError::Refused { message, .. } => Failure { code: 1, message },
        other => other.into(),
    })
}

fn run(g: &Global, cmds: &[Command]) -> Result<(), Failure> {
    let mut ops = Vec::new();
    for c in cmds {
        if let Some(op) = to_op(c)? {
            ops.push(op);
        }
    }
    let state: State = if ops.iter().any(is_write) {
        serde_json::from_value(call(g, "transact", json!({ "ops": ops }))?)?
    } else {
        serde_json::from_value(call(g, "get-state", json!({}))?)?
    };
    let mut out = String::new();
    let mut exit = 0;
    for c in cmds {
        let a = &c.args;
        match c.name.as_str() {
            "list-br" => output::list(&mut out, g, state.config.bridges.keys()),
            "br-exists" if !state.config.bridges.contains_key(&a[0]) => exit = 2,
            "list-ports" => {
                let b = state
                    .config
                    .bridges
                    .get(&a[0])
                    .ok_or_else(|| format!("no bridge named {}", a[0]))?;
                // As ovs-vsctl: the bridge's own internal port is not listed.
                output::list(&mut out, g, b.ports.keys().filter(|p| **p != a[0]));
            }
            "port-to-br" | "iface-to-br" => {
                let b = state
                    .config
                    .port_bridge(&a[0])
                    .ok_or_else(|| format!("no port named {}", a[0]))?;
                output::list(&mut out, g, std::iter::once(b));
            }
            "show" => output::show(&mut out, g, &state),
            "get" => {
                let row = match output::row(&state, &a[0], &a[1]) {
                    Ok(r) => r,
                    Err(_) if c.if_exists => continue,
                    Err(e) => return Err(e.into()),
                };
                for col in &a[2..] {
                    output::get(&mut out, g, &row, col)
                        .map_err(|e| format!("{e} (table {}, record {})", a[0], a[1]))?;
                }
            }
            "list" | "find" => {
                let (records, conds): (Vec<String>, &[String]) = if c.name == "find" {
                    (output::records(&state, &a[0])?, &a[1..])
                } else if a.len() > 1 {
                    (a[1..].to_vec(), &[])
                } else {
                    (output::records(&state, &a[0])?, &[])
                };
                let mut rows = Vec::new();
                for r in &records {
                    let row = output::row(&state, &a[0], r)?;
                    let mut keep = true;
                    for c in conds {
                        keep &= output::matches(&row, c)?;
                    }
                    if keep {
                        rows.push(row);
                    }
                }
                output::records_out(&mut out, g, &rows, c.columns.as_deref())?;
            }
            "fdb-show" => {
                let rows: Vec<rpc::FdbRow> =
                    serde_json::from_value(call(g, "fdb-show", json!({"bridge": a[0]}))?)?;
                output::fdb(&mut out, g, &rows);
            }
            "dump-tables" => {
                let v = call(g, "dump-tables", json!({"bridge": a[0]}))?;
                match g.format {
                    args::Format::Json => out.push_str(&format!("{v}\n")),
                    args::Format::Table => {
                        for t in v.as_array().into_iter().flatten() {
                            out.push_str(&format!(
                                "  table {}: active={}, lookup={}, matched={}\n",
                                t["table"], t["active"], t["lookups"], t["matched"]
                            ));
                        }
                    }
                }
            }
            "trace" => {
                let v = call(g, "trace", json!({"bridge": a[0], "flow": a[1]}))?;
                match g.format {
                    args::Format::Json => out.push_str(&format!("{v}\n")),
                    args::Format::Table => out.push_str(v["text"].as_str().unwrap_or_default()),
                }
            }
            "dump-flows" => {
                let filter = a.get(1).cloned().unwrap_or_default();
                let rows: Vec<rpc::FlowRow> = serde_json::from_value(call(
                    g,
                    "dump-flows",
                    json!({"bridge": a[0], "filter": filter}),
                )?)?;
                output::flows(&mut out, g, &rows);
            }
            "port-stats" => {
                let rows: Vec<rpc::PortStatsRow> =
                    serde_json::from_value(call(g, "port-stats", json!({"bridge": a[0]}))?)?;
                output::port_stats(&mut out, g, &rows);
            }
            _ => {}
        }
    }
    print!("{out}");
    if exit != 0 {
        return Err(Failure {
            code: exit,
            message: String::new(),
        });
    }
    Ok(())
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let result = match args::parse(&argv) {
        Ok(Parsed::Help) => {
            println!("{USAGE}");
            Ok(())
        }
        Ok(Parsed::Version) => {
            println!("vsctl {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Ok(Parsed::Run(g, cmds)) => run(&g, &cmds),
        Err(e) => Err(Failure {
            code: 1,
            message: e,
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if !f.message.is_empty() {
                eprintln!("vsctl: {}", f.message);
            }
            ExitCode::from(f.code)
        }
    }
}
