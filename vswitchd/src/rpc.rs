//! The control protocol, shared by `vswitchd` and `vsctl`: JSON-RPC 2.0, one request
//! per line, over the unix socket `RUNDIR/vswitchd.sock`.
//!
//! Methods:
//! - `transact {ops: [Op]}` — applies every op to a copy of the configuration,
//!   validates the result, persists it, and only then makes it current: all or
//!   nothing. Returns the resulting [`State`].
//! - `get-state` — the current [`State`].
//! - `fdb-show {bridge}` — the MAC table, as [`FdbRow`]s.
//! - `port-stats {bridge}` — per-port counters, as [`PortStatsRow`]s.
//!
//! Errors use JSON-RPC's codes for protocol faults (-32700 parse error, -32600
//! invalid or oversized request, -32601 unknown method, -32602 bad params) and
//! [`APP_ERROR`] for a refused command, whose message is the one `vsctl` prints.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::config::Config;
use crate::stats::StatsView;

pub const SOCKET_NAME: &str = "vswitchd.sock";
pub const DEFAULT_RUNDIR: &str = "/run/vswitch";
pub const DEFAULT_DB: &str = "/var/lib/vswitch/conf.json";
/// Largest request line the daemon reads; longer ones are refused with -32600.
/// Large enough for `add-flows` of 100k+ flows; the bound keeps a runaway client
/// from exhausting memory (the socket is root-only).
pub const MAX_REQUEST_BYTES: usize = 64 << 20;

pub const PARSE_ERROR: i64 = -32700;
pub const INVALID_REQUEST: i64 = -32600;
pub const METHOD_NOT_FOUND: i64 = -32601;
pub const INVALID_PARAMS: i64 = -32602;
/// A well-formed request the daemon refused (no such bridge, bad value, ...).
pub const APP_ERROR: i64 = 1;

/// One change to the configuration. A transaction is a list of these.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum Op {
    AddBr {
        bridge: String,
        #[serde(default)]
        may_exist: bool,
    },
    DelBr {
        bridge: String,
        #[serde(default)]
        if_exists: bool,
    },
    AddPort {
        bridge: String,
        port: String,
        #[serde(default)]
        may_exist: bool,
        /// `column[:key]=value` settings for the new Port row, as `ovs-vsctl add-port` takes.
        #[serde(default)]
        settings: Vec<Setting>,
    },
    DelPort {
        #[serde(default)]
        bridge: Option<String>,
        port: String,
        #[serde(default)]
        if_exists: bool,
    },
    Set {
        table: String,
        record: String,
        settings: Vec<Setting>,
    },
    /// Empties columns (`vsctl clear TABLE RECORD COLUMN...`).
    Clear {
        table: String,
        record: String,
        columns: Vec<String>,
    },
    /// Removes values from a set or map column (`vsctl remove TABLE RECORD COLUMN VALUE...`).
    Remove {
        table: String,
        record: String,
        column: String,
        values: Vec<String>,
    },
    /// Adds flows (ovs-ofctl syntax); one with the same table, priority and match
    /// as an existing flow replaces it.
    AddFlows { bridge: String, flows: Vec<String> },
    /// Deletes the flows `filter` selects (all when empty); `strict` selects by
    /// exact table, priority and match.
    DelFlows {
        bridge: String,
        #[serde(default)]
        strict: bool,
        #[serde(default)]
        filter: String,
    },
    /// Gives the flows `flow`'s match selects the actions of `flow`.
    ModFlows {
        bridge: String,
        #[serde(default)]
        strict: bool,
        flow: String,
    },
    /// Makes the bridge's flows exactly `flows` (unchanged ones keep their counters).
    ReplaceFlows { bridge: String, flows: Vec<String> },
    /// Fails the transaction unless the bridge exists (a read command chained after
    /// writes, e.g. `add-port br0 p1 -- list-ports br9`, must abort the writes).
    AssertBridge { bridge: String },
    /// Fails the transaction unless the port exists.
    AssertPort { port: String },
}

/// `column[:key]=value` from the command line, as typed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Setting {
    pub column: String,
    #[serde(default)]
    pub key: Option<String>,
    pub value: String,
}

impl Setting {
    /// Parses `column[:key]=value`. Surrounding double quotes around the value are
    /// removed, as ovs-vsctl does (`external-ids:attached-mac="52:54:00:00:00:01"`).
    pub fn parse(s: &str) -> Result<Setting, String> {
        let (lhs, value) = s
            .split_once('=')
            .ok_or_else(|| format!("'{s}' is not of the form column[:key]=value"))?;
        let (column, key) = match lhs.split_once(':') {
            Some((c, k)) => (c, Some(k.to_string())),
            None => (lhs, None),
        };
        if column.is_empty() || key.as_deref() == Some("") {
            return Err(format!("'{s}' is not of the form column[:key]=value"));
        }
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        Ok(Setting {
            column: column.to_string(),
            key,
            value: value.to_string(),
        })
    }
}

/// What `show` needs beyond the configuration: the live state of each interface.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IfaceStatus {
    /// OpenFlow port number, or -1 when the interface could not be attached.
    pub ofport: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifindex: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_in_use: Option<String>,
    /// The device's MTU now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// Counters, with Open vSwitch's `statistics` keys.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub statistics: Option<crate::stats::StatsView>,
    /// Open vSwitch's `status` column: facts about the attached device. Ours:
    /// `rx_mode` (`ring`: a TPACKET_V2 receive ring; `recvmmsg`; `read`: a TAP).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub status: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub config: Config,
    /// Keyed by interface name.
    pub status: BTreeMap<String, IfaceStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdbRow {
    pub port: u32,
    pub port_name: String,
    pub vlan: u16,
    pub mac: String,
    pub age: u64,
}

/// A row of `dump-flows`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowRow {
    /// The flow in ovs-ofctl syntax (canonical form).
    pub flow: String,
    pub table: u8,
    pub priority: u16,
    pub cookie: u64,
    pub n_packets: u64,
    pub n_bytes: u64,
    /// Seconds since the flow was added.
    pub duration: f64,
    /// Seconds since the flow last matched a packet (or since it was added).
    pub idle_age: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortStatsRow {
    pub port: String,
    pub ofport: i64,
    #[serde(flatten)]
    pub stats: StatsView,
}

/// Builds the text of a JSON-RPC error response.
pub fn error_response(id: &Value, code: i64, message: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}})
}

/// Why a call failed, from the client's side.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to vswitchd at {path} (is it running?): {source}")]
    Connect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no answer from vswitchd at {path} within {secs} s")]
    Timeout { path: PathBuf, secs: u64 },
    #[error("lost connection to vswitchd at {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("malformed answer from vswitchd: {0}")]
    Protocol(String),
    /// The daemon refused the request; the message is meant for the user.
    #[error("{message}")]
    Refused { code: i64, message: String },
}

/// Sends one request and waits for its answer, never longer than `timeout`.
pub fn call(
    path: &Path,
    method: &str,
    params: Value,
    timeout: Duration,
) -> Result<Value, ClientError> {
    let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
        path: path.to_path_buf(),
        source,
    })?;
    let io_err = |source: std::io::Error| {
        if matches!(
            source.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ) {
            ClientError::Timeout {
                path: path.to_path_buf(),
                secs: timeout.as_secs(),
            }
        } else {
            ClientError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    };
    stream.set_read_timeout(Some(timeout)).map_err(io_err)?;
    stream.set_write_timeout(Some(timeout)).map_err(io_err)?;
    let mut line =
        serde_json::to_vec(&json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}))
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
    line.push(b'\n');
    // If the daemon refuses the request part-way (too large), it answers and hangs
    // up: the write fails, but its answer is still there to read.
    let written = (&stream).write_all(&line);
    let mut reader = BufReader::new(&stream);
    let mut answer = String::new();
    let read = reader.read_line(&mut answer);
    if answer.is_empty() {
        written.map_err(io_err)?;
        read.map_err(io_err)?;
        return Err(ClientError::Protocol(
            "connection closed without an answer".into(),
        ));
    }
    let v: Value =
        serde_json::from_str(&answer).map_err(|e| ClientError::Protocol(e.to_string()))?;
    if let Some(err) = v.get("error") {
        return Err(ClientError::Refused {
            code: err.get("code").and_then(Value::as_i64).unwrap_or(APP_ERROR),
            message: err
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("unknown error")
                .to_string(),
        });
    }
    v.get("result")
        .cloned()
        .ok_or_else(|| ClientError::Protocol("answer has neither result nor error".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_like_ovs_vsctl() {
        assert_eq!(
            Setting::parse("options:peer=patch1").unwrap(),
            Setting {
                column: "options".into(),
                key: Some("peer".into()),
                value: "patch1".into()
            }
        );
        assert_eq!(
            Setting::parse("external-ids:attached-mac=\"52:54:00:00:00:01\"")
                .unwrap()
                .value,
            "52:54:00:00:00:01"
        );
        assert_eq!(Setting::parse("type=internal").unwrap().key, None);
        assert!(Setting::parse("type").is_err());
        assert!(Setting::parse("=x").is_err());
        assert!(Setting::parse("options:=x").is_err());
    }

    #[test]
    fn ops_have_a_stable_wire_form() {
        let op = Op::AddBr {
            bridge: "br0".into(),
            may_exist: true,
        };
        let v = serde_json::to_value(&op).unwrap();
        assert_eq!(
            v,
            json!({"op": "add-br", "bridge": "br0", "may_exist": true})
        );
        let back: Op = serde_json::from_value(json!({"op": "del-port", "port": "p1"})).unwrap();
        assert_eq!(
            back,
            Op::DelPort {
                bridge: None,
                port: "p1".into(),
                if_exists: false
            }
        );
    }
}
