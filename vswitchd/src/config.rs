//! The configuration model — bridges, ports, interfaces and their options — and the
//! rules for changing it.
//!
//! This is the equivalent of Open vSwitch's database, reduced to the columns the
//! switch uses. It is a plain value: a transaction clones it, applies each
//! [`Op`](crate::rpc::Op) to the clone, validates the whole result, and only then
//! replaces the original, so a refused command never leaves a half-applied change.
//!
//! Each port has exactly one interface of the same name (no bonds), which is what
//! `ovs-vsctl add-port` creates.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use ofproto::mac_learning::{DEFAULT_AGING_SECS, DEFAULT_MAX_ENTRIES};
use ofproto::{PortNo, OFPP_LOCAL, OFPP_MAX};
use serde::{Deserialize, Serialize};

use crate::rpc::{Op, Setting};
use ofproto::flow_syntax::{FlowFilter, FlowSpec};

/// `current` with `new` added in order; a flow with the same table, priority and
/// match as an earlier one replaces it in place. Linear in the number of flows.
fn merge_flows(current: Vec<FlowSpec>, new: Vec<FlowSpec>) -> Vec<String> {
    type RuleKey = (u8, u16, Vec<ofproto::flow_syntax::FieldMatch>);
    let mut out: Vec<FlowSpec> = Vec::with_capacity(current.len() + new.len());
    let mut at: std::collections::HashMap<RuleKey, usize> = std::collections::HashMap::new();
    for spec in current.into_iter().chain(new) {
        let key = (spec.table, spec.priority, spec.matches.clone());
        match at.get(&key) {
            Some(&i) => out[i] = spec,
            None => {
                at.insert(key, out.len());
                out.push(spec);
            }
        }
    }
    out.iter().map(ToString::to_string).collect()
}

/// Parses flow number `index` for bridge `b`, refusing what the datapath cannot do
/// yet and ports the bridge does not have.
fn parse_flow(index: usize, text: &str, bridge: &str, b: &Bridge) -> Result<FlowSpec, ConfigError> {
    let spec = FlowSpec::parse(text).map_err(|e| ConfigError::BadFlow {
        index,
        error: e.to_string(),
    })?;
    check_flow(index, spec, bridge, b)
}

/// Checks a parsed flow against bridge `b`: fields the datapath can match, ports it has.
fn check_flow(
    index: usize,
    spec: FlowSpec,
    bridge: &str,
    b: &Bridge,
) -> Result<FlowSpec, ConfigError> {
    // Ports are resolved when the flow is installed; here only the fields matter.
    spec.to_match(|_| Some(0))
        .map_err(|error| ConfigError::BadFlow { index, error })?;
    if let Some(p) = spec
        .named_ports()
        .into_iter()
        .find(|p| !b.ports.contains_key(*p))
    {
        return Err(ConfigError::FlowPort {
            index,
            port: p.to_string(),
            bridge: bridge.to_string(),
        });
    }
    Ok(spec)
}

/// Longest interface name Linux accepts (IFNAMSIZ - 1).
pub const MAX_NAME_LEN: usize = 15;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Config {
    #[serde(default)]
    pub bridges: BTreeMap<String, Bridge>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bridge {
    #[serde(default)]
    pub ports: BTreeMap<String, Port>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub other_config: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub external_ids: BTreeMap<String, String>,
    /// Accepted for compatibility with Open vSwitch scripts (`datapath_type=netdev`);
    /// this switch has one datapath, so the value is stored and ignored.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub datapath_type: String,
    /// The OpenFlow tables, as canonical ovs-ofctl flow lines. Persisted — unlike
    /// Open vSwitch, whose flows vanish when ovs-vswitchd restarts.
    #[serde(default = "default_flows")]
    pub flows: Vec<String>,
}

/// A new bridge's one flow, as in Open vSwitch.
pub const DEFAULT_FLOW: &str = "table=0,priority=0,actions=NORMAL";

fn default_flows() -> Vec<String> {
    vec![DEFAULT_FLOW.to_string()]
}

impl Default for Bridge {
    fn default() -> Self {
        Bridge {
            ports: BTreeMap::new(),
            other_config: BTreeMap::new(),
            external_ids: BTreeMap::new(),
            datapath_type: String::new(),
            flows: default_flows(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Port {
    pub interface: Interface,
    /// Access VLAN, or native VLAN in the native modes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<u16>,
    /// VLANs a trunk carries; empty means all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trunks: Vec<u16>,
    /// `access`, `trunk`, `native-tagged` or `native-untagged`; unset: access if
    /// `tag` is set, else trunk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vlan_mode: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub other_config: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub external_ids: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IfaceType {
    /// An existing Linux interface, attached with an AF_PACKET socket.
    #[default]
    System,
    /// A TAP device the switch creates and removes.
    Internal,
    /// One end of an in-process link to another bridge (`options:peer`).
    Patch,
    /// A VXLAN tunnel (UDP), done in userspace.
    Vxlan,
    /// A GRE tunnel (IP protocol 47), done in userspace over a raw socket.
    Gre,
}

impl IfaceType {
    pub fn parse(s: &str) -> Option<IfaceType> {
        match s {
            "" | "system" => Some(IfaceType::System),
            "internal" => Some(IfaceType::Internal),
            "patch" => Some(IfaceType::Patch),
            "vxlan" => Some(IfaceType::Vxlan),
            "gre" => Some(IfaceType::Gre),
            _ => None,
        }
    }
}

impl fmt::Display for IfaceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IfaceType::System => "system",
            IfaceType::Internal => "internal",
            IfaceType::Patch => "patch",
            IfaceType::Vxlan => "vxlan",
            IfaceType::Gre => "gre",
        })
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Interface {
    #[serde(rename = "type", default)]
    pub kind: IfaceType,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub options: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub external_ids: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ofport_request: Option<PortNo>,
    /// The MTU the switch sets on the device (`mtu_request`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu_request: Option<u32>,
    /// Assigned by the switch and persisted, so flows and MAC entries keep meaning
    /// the same port across restarts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ofport: Option<PortNo>,
}

impl Interface {
    /// The tunnel kind of a `vxlan` or `gre` interface.
    pub fn tunnel_kind(&self) -> Option<crate::netdev::tunnel::TunnelKind> {
        use crate::netdev::tunnel::TunnelKind;
        match self.kind {
            IfaceType::Vxlan => Some(TunnelKind::Vxlan),
            IfaceType::Gre => Some(TunnelKind::Gre),
            _ => None,
        }
    }

    /// The checked options of a tunnel interface.
    pub fn tunnel(&self) -> Option<crate::tunnel::TunnelConfig> {
        crate::tunnel::TunnelConfig::parse(self.tunnel_kind()?, &self.options).ok()
    }
}

/// Why a change was refused. Messages follow ovs-vsctl's wording where it has one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("no bridge named {0}")]
    NoBridge(String),
    #[error("cannot create a bridge named {0} because a bridge named {0} already exists")]
    BridgeExists(String),
    #[error(
        "cannot create a bridge named {0} because a port named {0} already exists on bridge {1}"
    )]
    BridgeNameIsPort(String, String),
    #[error("cannot create a port named {port} because a port named {port} already exists on bridge {bridge}")]
    PortExists { port: String, bridge: String },
    #[error(
        "\"--may-exist add-port {want} {port}\" but {port} is actually attached to bridge {actual}"
    )]
    PortOnOtherBridge {
        want: String,
        port: String,
        actual: String,
    },
    #[error("no port named {0}")]
    NoPort(String),
    #[error("bridge {bridge} does not have a port {port}")]
    NotOnBridge { bridge: String, port: String },
    #[error("cannot delete port {0} because it is the local port for bridge {0} (deleting this port requires deleting the entire bridge)")]
    DeleteLocalPort(String),
    #[error("no row \"{record}\" in table {table}")]
    NoRow { table: String, record: String },
    #[error("unknown table \"{0}\" (expected Bridge, Port or Interface)")]
    UnknownTable(String),
    #[error("table {table} has no column named {column}")]
    UnknownColumn { table: &'static str, column: String },
    /// ovs-vsctl's wording: the switch maintains these (ofport, statistics, status, ...).
    #[error("cannot modify read-only column {column} in table {table}")]
    ReadOnly { table: &'static str, column: String },
    #[error("{table} column {column}: {reason}")]
    BadValue {
        table: &'static str,
        column: String,
        reason: String,
    },
    #[error("invalid name \"{name}\": {reason}")]
    BadName { name: String, reason: &'static str },
    #[error("flow {index}: {error}")]
    BadFlow { index: usize, error: String },
    #[error("flow {index}: no port named {port} on bridge {bridge}")]
    FlowPort {
        index: usize,
        port: String,
        bridge: String,
    },
    #[error("interface {0}: a patch port needs options:peer naming the port at the other end")]
    PatchWithoutPeer(String),
    #[error("interface {0}: a patch port cannot be its own peer")]
    PatchSelfPeer(String),
    #[error(
        "interface {iface}: ofport_request {ofport} is already used by {other} on bridge {bridge}"
    )]
    OfportTaken {
        iface: String,
        ofport: PortNo,
        other: String,
        bridge: String,
    },
}

/// Refuses names Linux would refuse for a device, so an add never fails later.
pub fn check_name(name: &str) -> Result<(), ConfigError> {
    let bad = |reason| ConfigError::BadName {
        name: name.to_string(),
        reason,
    };
    if name.is_empty() {
        return Err(bad("empty"));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(bad(
            "longer than 15 bytes, the Linux limit for interface names",
        ));
    }
    if name == "." || name == ".." {
        return Err(bad("reserved"));
    }
    if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control())
    {
        return Err(bad("contains '/', ':', whitespace or a control character"));
    }
    Ok(())
}

/// Why `column` of `table` cannot be set: it is one the switch maintains (listed in
/// [`TABLES`]), or it does not exist.
fn not_settable(table: &'static str, column: &str) -> ConfigError {
    let known = TABLES
        .iter()
        .any(|(t, cols)| *t == table && cols.contains(&column));
    if known {
        ConfigError::ReadOnly {
            table,
            column: column.to_string(),
        }
    } else {
        ConfigError::UnknownColumn {
            table,
            column: column.to_string(),
        }
    }
}

/// Open vSwitch's forgiving name matching: case-insensitive, `-` = `_`.
fn norm(s: &str) -> String {
    s.to_ascii_lowercase().replace('-', "_")
}

/// The tables and columns the database commands know, in ovs-vsctl's spelling.
pub const TABLES: &[(&str, &[&str])] = &[
    (
        "Bridge",
        &[
            "name",
            "datapath_type",
            "ports",
            "external_ids",
            "other_config",
        ],
    ),
    (
        "Port",
        &[
            "name",
            "interfaces",
            "tag",
            "trunks",
            "vlan_mode",
            "external_ids",
            "other_config",
        ],
    ),
    (
        "Interface",
        &[
            "name",
            "type",
            "ofport",
            "ofport_request",
            "mtu",
            "mtu_request",
            "error",
            "mac_in_use",
            "statistics",
            "status",
            "external_ids",
            "options",
        ],
    ),
];

/// `name` as one of `candidates`: equal after [`norm`], else the one candidate it is
/// a prefix of (ovs-vsctl accepts any unique abbreviation: `trunk` for `trunks`).
fn unique<'a>(name: &str, candidates: impl Iterator<Item = &'a str> + Clone) -> Option<&'a str> {
    let n = norm(name);
    if let Some(c) = candidates.clone().find(|c| norm(c) == n) {
        return Some(c);
    }
    let mut hits = candidates.filter(|c| !n.is_empty() && norm(c).starts_with(&n));
    match (hits.next(), hits.next()) {
        (Some(c), None) => Some(c),
        _ => None,
    }
}

/// The table `name` stands for (`port`, `Int`, ...).
pub fn resolve_table(name: &str) -> Result<&'static str, ConfigError> {
    unique(name, TABLES.iter().map(|t| t.0))
        .ok_or_else(|| ConfigError::UnknownTable(name.to_string()))
}

/// The column `name` stands for in `table` (`external-ids`, `Trunk`, ...).
pub fn resolve_column(table: &'static str, name: &str) -> Result<&'static str, ConfigError> {
    let cols = TABLES
        .iter()
        .find(|t| t.0 == table)
        .map_or(&[][..], |t| t.1);
    unique(name, cols.iter().copied()).ok_or_else(|| ConfigError::UnknownColumn {
        table,
        column: name.to_string(),
    })
}

/// Clears (`values` empty) or removes `values` from a map column: a value is a key,
/// or `key=value` (removed only if the value matches), as in ovs-vsctl.
fn remove_from_map(map: &mut BTreeMap<String, String>, values: &[String]) {
    if values.is_empty() {
        map.clear();
        return;
    }
    for v in values {
        match v.split_once('=') {
            Some((k, val)) if map.get(k).map(String::as_str) == Some(val.trim_matches('"')) => {
                map.remove(k);
            }
            Some(_) => {}
            None => {
                map.remove(v.trim_matches('"'));
            }
        }
    }
}

fn set_map(
    map: &mut BTreeMap<String, String>,
    table: &'static str,
    s: &Setting,
) -> Result<(), ConfigError> {
    match &s.key {
        Some(k) => {
            map.insert(k.clone(), s.value.clone());
            Ok(())
        }
        None if s.value == "{}" => {
            map.clear();
            Ok(())
        }
        None => Err(ConfigError::BadValue {
            table,
            column: s.column.clone(),
            reason: format!("is a map; use {}:KEY=VALUE", s.column),
        }),
    }
}

fn no_key(table: &'static str, s: &Setting) -> Result<(), ConfigError> {
    match &s.key {
        Some(k) => Err(ConfigError::BadValue {
            table,
            column: s.column.clone(),
            reason: format!("is not a map, so \"{}:{k}\" makes no sense", s.column),
        }),
        None => Ok(()),
    }
}

fn parse_u64_in(
    table: &'static str,
    column: &str,
    v: &str,
    lo: u64,
    hi: u64,
) -> Result<u64, ConfigError> {
    match v.parse::<u64>() {
        Ok(n) if (lo..=hi).contains(&n) => Ok(n),
        _ => Err(ConfigError::BadValue {
            table,
            column: column.to_string(),
            reason: format!("\"{v}\" is not an integer between {lo} and {hi}"),
        }),
    }
}

impl Port {
    /// The port's VLAN rules for the datapath (values were validated at commit).
    pub fn vlan(&self) -> ofproto::vlan::PortVlan {
        ofproto::vlan::PortVlan::new(
            self.tag,
            self.trunks.iter().copied(),
            self.vlan_mode
                .as_deref()
                .and_then(ofproto::vlan::VlanMode::parse),
        )
    }
}

impl Bridge {
    /// `other_config:mac-table-size`, validated at commit.
    pub fn mac_table_size(&self) -> usize {
        self.other_config
            .get("mac-table-size")
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_MAX_ENTRIES)
    }

    /// `other_config:mac-aging-time`, in seconds, validated at commit.
    pub fn mac_aging_secs(&self) -> u64 {
        self.other_config
            .get("mac-aging-time")
            .and_then(|v| v.parse().ok())
            .unwrap_or(DEFAULT_AGING_SECS)
    }
}

impl Config {
    /// Bridge `name`, or the error every command reports for a missing one.
    pub fn bridge(&self, name: &str) -> Result<&Bridge, ConfigError> {
        self.bridges
            .get(name)
            .ok_or_else(|| ConfigError::NoBridge(name.to_string()))
    }

    pub fn bridge_mut(&mut self, name: &str) -> Result<&mut Bridge, ConfigError> {
        self.bridges
            .get_mut(name)
            .ok_or_else(|| ConfigError::NoBridge(name.to_string()))
    }

    /// Port `name`, on whichever bridge holds it (port names are unique).
    pub fn port(&self, name: &str) -> Option<&Port> {
        self.bridges.values().find_map(|b| b.ports.get(name))
    }

    /// The bridge holding port `port`, if any.
    pub fn port_bridge(&self, port: &str) -> Option<&str> {
        self.bridges
            .iter()
            .find(|(_, b)| b.ports.contains_key(port))
            .map(|(n, _)| n.as_str())
    }

    /// Applies a list of ops as one transaction: either all succeed and `self` is
    /// replaced by the result, or `self` is untouched and the first error returned.
    pub fn transact(&mut self, ops: &[Op]) -> Result<(), ConfigError> {
        let mut next = self.clone();
        for op in ops {
            next.apply(op)?;
        }
        next.validate()?;
        next.assign_ofports();
        *self = next;
        Ok(())
    }

    fn apply(&mut self, op: &Op) -> Result<(), ConfigError> {
        match op {
            Op::AddBr { bridge, may_exist } => {
                check_name(bridge)?;
                if self.bridges.contains_key(bridge) {
                    return if *may_exist {
                        Ok(())
                    } else {
                        Err(ConfigError::BridgeExists(bridge.clone()))
                    };
                }
                if let Some(other) = self.port_bridge(bridge) {
                    return Err(ConfigError::BridgeNameIsPort(
                        bridge.clone(),
                        other.to_string(),
                    ));
                }
                let mut b = Bridge::default();
                b.ports.insert(
                    bridge.clone(),
                    Port {
                        interface: Interface {
                            kind: IfaceType::Internal,
                            ..Interface::default()
                        },
                        ..Port::default()
                    },
                );
                self.bridges.insert(bridge.clone(), b);
                Ok(())
            }
            Op::DelBr { bridge, if_exists } => {
                if self.bridges.remove(bridge).is_none() && !*if_exists {
                    return Err(ConfigError::NoBridge(bridge.clone()));
                }
                Ok(())
            }
            Op::AddPort {
                bridge,
                port,
                may_exist,
                settings,
            } => {
                check_name(port)?;
                if !self.bridges.contains_key(bridge) {
                    return Err(ConfigError::NoBridge(bridge.clone()));
                }
                if let Some(actual) = self.port_bridge(port) {
                    if !*may_exist {
                        return Err(ConfigError::PortExists {
                            port: port.clone(),
                            bridge: actual.to_string(),
                        });
                    }
                    if actual != bridge {
                        return Err(ConfigError::PortOnOtherBridge {
                            want: bridge.clone(),
                            port: port.clone(),
                            actual: actual.to_string(),
                        });
                    }
                    // ovs-vsctl applies the column settings of a --may-exist add-port
                    // to the existing port too (libvirt relies on this).
                    let p = self
                        .bridges
                        .get_mut(bridge)
                        .unwrap()
                        .ports
                        .get_mut(port)
                        .unwrap();
                    for s in settings {
                        set_port_column(p, s)?;
                    }
                    return Ok(());
                }
                if self.bridges.contains_key(port) {
                    return Err(ConfigError::PortExists {
                        port: port.clone(),
                        bridge: port.clone(),
                    });
                }
                let mut p = Port::default();
                for s in settings {
                    set_port_column(&mut p, s)?;
                }
                self.bridges
                    .get_mut(bridge)
                    .unwrap()
                    .ports
                    .insert(port.clone(), p);
                Ok(())
            }
            Op::DelPort {
                bridge,
                port,
                if_exists,
            } => {
                let actual = match self.port_bridge(port) {
                    Some(b) => b.to_string(),
                    None if *if_exists => return Ok(()),
                    None => return Err(ConfigError::NoPort(port.clone())),
                };
                if let Some(want) = bridge {
                    if !self.bridges.contains_key(want) {
                        return Err(ConfigError::NoBridge(want.clone()));
                    }
                    if *want != actual {
                        return Err(ConfigError::NotOnBridge {
                            bridge: want.clone(),
                            port: port.clone(),
                        });
                    }
                }
                if actual == *port {
                    return Err(ConfigError::DeleteLocalPort(port.clone()));
                }
                self.bridges.get_mut(&actual).unwrap().ports.remove(port);
                Ok(())
            }
            Op::AddFlows { bridge, flows } => {
                let b = self.bridge_mut(bridge)?;
                let current: Vec<FlowSpec> = b
                    .flows
                    .iter()
                    .filter_map(|f| FlowSpec::parse(f).ok())
                    .collect();
                let mut new = Vec::with_capacity(flows.len());
                for (i, text) in flows.iter().enumerate() {
                    new.push(parse_flow(i + 1, text, bridge, b)?);
                }
                b.flows = merge_flows(current, new);
                Ok(())
            }
            Op::DelFlows {
                bridge,
                strict,
                filter,
            } => {
                let b = self.bridge_mut(bridge)?;
                let f = FlowFilter::parse(filter).map_err(|e| ConfigError::BadFlow {
                    index: 1,
                    error: e.to_string(),
                })?;
                b.flows.retain(|text| {
                    FlowSpec::parse(text).map_or(true, |spec| {
                        !(if *strict {
                            f.is_exactly(&spec)
                        } else {
                            f.covers(&spec)
                        })
                    })
                });
                Ok(())
            }
            Op::ModFlows {
                bridge,
                strict,
                flow,
            } => {
                let b = self.bridge_mut(bridge)?;
                let f = FlowFilter::parse(flow).map_err(|e| ConfigError::BadFlow {
                    index: 1,
                    error: e.to_string(),
                })?;
                let new = check_flow(1, f.spec.clone(), bridge, b)?;
                b.flows = b
                    .flows
                    .iter()
                    .map(|text| match FlowSpec::parse(text) {
                        Ok(mut spec)
                            if (if *strict {
                                f.is_exactly(&spec)
                            } else {
                                f.covers(&spec)
                            }) =>
                        {
                            spec.actions = new.actions.clone();
                            if let Some(c) = f.set_cookie {
                                spec.cookie = c;
                            }
                            spec.to_string()
                        }
                        _ => text.clone(),
                    })
                    .collect();
                Ok(())
            }
            Op::ReplaceFlows { bridge, flows } => {
                let b = self.bridge_mut(bridge)?;
                let mut new = Vec::with_capacity(flows.len());
                for (i, text) in flows.iter().enumerate() {
                    new.push(parse_flow(i + 1, text, bridge, b)?);
                }
                b.flows = merge_flows(Vec::new(), new);
                Ok(())
            }
            Op::AssertBridge { bridge } => match self.bridges.contains_key(bridge) {
                true => Ok(()),
                false => Err(ConfigError::NoBridge(bridge.clone())),
            },
            Op::AssertPort { port } => match self.port_bridge(port) {
                Some(_) => Ok(()),
                None => Err(ConfigError::NoPort(port.clone())),
            },
            Op::Clear {
                table,
                record,
                columns,
            } => {
                for c in columns {
                    self.remove_values(table, record, c, &[])?;
                }
                Ok(())
            }
            Op::Remove {
                table,
                record,
                column,
                values,
            } => self.remove_values(table, record, column, values),
            Op::Set {
                table,
                record,
                settings,
            } => {
                let no_row = || ConfigError::NoRow {
                    table: table.clone(),
                    record: record.clone(),
                };
                match resolve_table(table)? {
                    "Bridge" => {
                        let b = self.bridges.get_mut(record).ok_or_else(no_row)?;
                        for s in settings {
                            set_bridge_column(b, s)?;
                        }
                    }
                    t => {
                        let br = self.port_bridge(record).ok_or_else(no_row)?.to_string();
                        let p = self
                            .bridges
                            .get_mut(&br)
                            .unwrap()
                            .ports
                            .get_mut(record)
                            .unwrap();
                        for s in settings {
                            if t == "Port" {
                                set_port_column(p, s)?;
                            } else {
                                set_iface_column(&mut p.interface, s)?;
                            }
                        }
                    }
                }
                Ok(())
            }
        }
    }

    /// The Port row `record`, for ops that only Port supports so far.
    /// `remove TABLE RECORD COLUMN VALUE...`, or `clear` when `values` is empty.
    fn remove_values(
        &mut self,
        table: &str,
        record: &str,
        column: &str,
        values: &[String],
    ) -> Result<(), ConfigError> {
        let t = resolve_table(table)?;
        let col = resolve_column(t, column)?;
        let read_only = || ConfigError::BadValue {
            table: t,
            column: col.to_string(),
            reason: "this column cannot be cleared or removed from".into(),
        };
        match t {
            "Bridge" => {
                let b = self
                    .bridges
                    .get_mut(record)
                    .ok_or_else(|| ConfigError::NoRow {
                        table: table.to_string(),
                        record: record.to_string(),
                    })?;
                match col {
                    "external_ids" => remove_from_map(&mut b.external_ids, values),
                    "other_config" => remove_from_map(&mut b.other_config, values),
                    _ => return Err(read_only()),
                }
            }
            "Port" => {
                let p = self.port_row(table, record)?;
                match col {
                    "trunks" if values.is_empty() => p.trunks.clear(),
                    "trunks" => {
                        let gone = parse_vlan_list("trunks", &values.join(","))?;
                        p.trunks.retain(|v| !gone.contains(v));
                    }
                    "tag" if values.is_empty() => p.tag = None,
                    "tag" => {
                        let gone = parse_vlan_list("tag", &values.join(","))?;
                        if p.tag.is_some_and(|t| gone.contains(&t)) {
                            p.tag = None;
                        }
                    }
                    "vlan_mode" if values.is_empty() => p.vlan_mode = None,
                    "external_ids" => remove_from_map(&mut p.external_ids, values),
                    "other_config" => remove_from_map(&mut p.other_config, values),
                    _ => return Err(read_only()),
                }
            }
            _ => {
                let i = &mut self.port_row(table, record)?.interface;
                match col {
                    "external_ids" => remove_from_map(&mut i.external_ids, values),
                    "options" => remove_from_map(&mut i.options, values),
                    "ofport_request" if values.is_empty() => i.ofport_request = None,
                    "mtu_request" if values.is_empty() => i.mtu_request = None,
                    _ => return Err(read_only()),
                }
            }
        }
        Ok(())
    }

    /// The Port row `record` (whose Interface row has the same name).
    fn port_row(&mut self, table: &str, record: &str) -> Result<&mut Port, ConfigError> {
        let br = self
            .port_bridge(record)
            .ok_or_else(|| ConfigError::NoRow {
                table: table.to_string(),
                record: record.to_string(),
            })?
            .to_string();
        Ok(self
            .bridges
            .get_mut(&br)
            .unwrap()
            .ports
            .get_mut(record)
            .unwrap())
    }

    /// Checks rules that involve more than one op or one row.
    fn validate(&self) -> Result<(), ConfigError> {
        for (bname, b) in &self.bridges {
            for key in ["mac-table-size", "mac-aging-time"] {
                if let Some(v) = b.other_config.get(key) {
                    parse_u64_in("Bridge", &format!("other_config:{key}"), v, 1, 1 << 24)?;
                }
            }
            let mut requested: BTreeMap<PortNo, &str> = BTreeMap::new();
            for (pname, p) in &b.ports {
                let i = &p.interface;
                if pname == bname && i.kind != IfaceType::Internal {
                    return Err(ConfigError::BadValue {
                        table: "Interface",
                        column: "type".into(),
                        reason: format!(
                            "{pname} is the local port of bridge {bname} and must stay internal"
                        ),
                    });
                }
                if i.kind == IfaceType::Patch {
                    match i.options.get("peer") {
                        None => return Err(ConfigError::PatchWithoutPeer(pname.clone())),
                        Some(peer) if peer == pname => {
                            return Err(ConfigError::PatchSelfPeer(pname.clone()))
                        }
                        Some(_) => {}
                    }
                }
                if let Some(kind) = i.tunnel_kind() {
                    crate::tunnel::TunnelConfig::parse(kind, &i.options).map_err(
                        |(opt, reason)| ConfigError::BadValue {
                            table: "Interface",
                            column: format!("options:{opt}"),
                            reason: format!("{pname}: {reason}"),
                        },
                    )?;
                } else if let Some(k) = i
                    .options
                    .keys()
                    .find(|k| crate::tunnel::KNOWN_OPTIONS.contains(&k.as_str()))
                {
                    return Err(ConfigError::BadValue {
                        table: "Interface",
                        column: format!("options:{k}"),
                        reason: format!(
                            "{pname}: a tunnel option on a {} interface (set type=vxlan or gre)",
                            i.kind
                        ),
                    });
                }
                if let Some(req) = i.ofport_request {
                    if let Some(other) = requested.insert(req, pname) {
                        return Err(ConfigError::OfportTaken {
                            iface: pname.clone(),
                            ofport: req,
                            other: other.to_string(),
                            bridge: bname.clone(),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Gives every interface an OpenFlow port number: LOCAL for the bridge's own
    /// port, `ofport_request` when set, otherwise the lowest free number from 1. A
    /// number once given is kept for the life of the interface.
    fn assign_ofports(&mut self) {
        for (bname, b) in self.bridges.iter_mut() {
            // Honour requests first, taking the number away from whoever held it.
            let requested: BTreeSet<PortNo> = b
                .ports
                .values()
                .filter_map(|p| p.interface.ofport_request)
                .collect();
            for (pname, p) in b.ports.iter_mut() {
                let i = &mut p.interface;
                if pname == bname {
                    i.ofport = Some(OFPP_LOCAL);
                } else if let Some(req) = i.ofport_request {
                    i.ofport = Some(req);
                } else if i
                    .ofport
                    .is_some_and(|n| requested.contains(&n) || n == OFPP_LOCAL)
                {
                    i.ofport = None;
                }
            }
            let mut used: BTreeSet<PortNo> = b
                .ports
                .values()
                .filter_map(|p| p.interface.ofport)
                .collect();
            let mut next = 1;
            for p in b.ports.values_mut() {
                if p.interface.ofport.is_none() {
                    while used.contains(&next) {
                        next += 1;
                    }
                    p.interface.ofport = Some(next);
                    used.insert(next);
                }
            }
        }
    }
}

fn set_bridge_column(b: &mut Bridge, s: &Setting) -> Result<(), ConfigError> {
    match resolve_column("Bridge", &s.column)? {
        "other_config" => set_map(&mut b.other_config, "Bridge", s),
        "external_ids" => set_map(&mut b.external_ids, "Bridge", s),
        "datapath_type" => {
            no_key("Bridge", s)?;
            b.datapath_type = s.value.clone();
            Ok(())
        }
        _ => Err(not_settable("Bridge", &s.column)),
    }
}

/// Parses VLAN IDs as ovs-vsctl writes them: `10`, `10,20`, `[10, 20]`, `[]`.
pub fn parse_vlan_list(column: &str, v: &str) -> Result<Vec<u16>, ConfigError> {
    let inner = v.trim().trim_start_matches('[').trim_end_matches(']');
    let mut out = Vec::new();
    for item in inner.split([',', ' ']).filter(|s| !s.is_empty()) {
        match item.parse::<u16>() {
            Ok(n) if n <= ofproto::vlan::VID_MAX => out.push(n),
            _ => {
                return Err(ConfigError::BadValue {
                    table: "Port",
                    column: column.to_string(),
                    reason: format!("\"{item}\" is not a VLAN ID (0 to 4095)"),
                })
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

fn set_port_column(p: &mut Port, s: &Setting) -> Result<(), ConfigError> {
    match resolve_column("Port", &s.column)? {
        "tag" => {
            no_key("Port", s)?;
            let v = parse_vlan_list("tag", &s.value)?;
            if v.len() > 1 {
                return Err(ConfigError::BadValue {
                    table: "Port",
                    column: "tag".into(),
                    reason: format!("\"{}\" is more than one VLAN ID", s.value),
                });
            }
            p.tag = v.first().copied();
            Ok(())
        }
        "trunks" => {
            no_key("Port", s)?;
            p.trunks = parse_vlan_list("trunks", &s.value)?;
            Ok(())
        }
        "vlan_mode" => {
            no_key("Port", s)?;
            if s.value.is_empty() || s.value == "[]" {
                p.vlan_mode = None;
            } else if ofproto::vlan::VlanMode::parse(&s.value).is_some() {
                p.vlan_mode = Some(s.value.clone());
            } else {
                return Err(ConfigError::BadValue {
                    table: "Port",
                    column: "vlan_mode".into(),
                    reason: format!(
                        "unknown VLAN mode \"{}\" (expected access, trunk, native-tagged or native-untagged)",
                        s.value
                    ),
                });
            }
            Ok(())
        }
        "other_config" => set_map(&mut p.other_config, "Port", s),
        "external_ids" => set_map(&mut p.external_ids, "Port", s),
        _ => Err(not_settable("Port", &s.column)),
    }
}

fn set_iface_column(i: &mut Interface, s: &Setting) -> Result<(), ConfigError> {
    match resolve_column("Interface", &s.column)? {
        "type" => {
            no_key("Interface", s)?;
            i.kind = IfaceType::parse(&s.value).ok_or_else(|| ConfigError::BadValue {
                table: "Interface",
                column: "type".into(),
                reason: format!(
                    "unknown interface type \"{}\" (expected system, internal, patch, vxlan or gre)",
                    s.value
                ),
            })?;
            Ok(())
        }
        "options" => {
            let known = |k: &str| {
                matches!(k, "peer" | "offload" | "rx_ring")
                    || crate::tunnel::KNOWN_OPTIONS.contains(&k)
            };
            if let Some(k) = s.key.as_deref().filter(|k| !known(k)) {
                return Err(ConfigError::BadValue {
                    table: "Interface",
                    column: format!("options:{k}"),
                    reason: format!(
                        "unknown option (this switch knows options:peer for patch ports, \
                         options:offload and options:rx_ring, and for tunnels options:{})",
                        crate::tunnel::KNOWN_OPTIONS.join(", options:")
                    ),
                });
            }
            if let Some(k @ ("offload" | "rx_ring")) = s.key.as_deref() {
                if !matches!(s.value.as_str(), "true" | "false") {
                    return Err(ConfigError::BadValue {
                        table: "Interface",
                        column: format!("options:{k}"),
                        reason: format!("\"{}\" is not true or false", s.value),
                    });
                }
            }
            set_map(&mut i.options, "Interface", s)
        }
        "external_ids" => set_map(&mut i.external_ids, "Interface", s),
        "mtu_request" => {
            no_key("Interface", s)?;
            i.mtu_request =
                Some(parse_u64_in("Interface", "mtu_request", &s.value, 68, 65535)? as u32);
            Ok(())
        }
        "ofport_request" => {
            no_key("Interface", s)?;
            i.ofport_request = if s.value.is_empty() || s.value == "[]" {
                None
            } else {
                Some(parse_u64_in(
                    "Interface",
                    "ofport_request",
                    &s.value,
                    1,
                    u64::from(OFPP_MAX) - 1,
                )? as PortNo)
            };
            Ok(())
        }
        _ => Err(not_settable("Interface", &s.column)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add_br(b: &str) -> Op {
        Op::AddBr {
            bridge: b.into(),
            may_exist: false,
        }
    }
    fn add_port(b: &str, p: &str) -> Op {
        Op::AddPort {
            bridge: b.into(),
            port: p.into(),
            may_exist: false,
            settings: vec![],
        }
    }
    fn set(table: &str, rec: &str, s: &str) -> Op {
        Op::Set {
            table: table.into(),
            record: rec.into(),
            settings: vec![Setting::parse(s).unwrap()],
        }
    }

    #[test]
    fn add_br_creates_its_internal_local_port() {
        let mut c = Config::default();
        c.transact(&[add_br("br0")]).unwrap();
        let p = &c.bridges["br0"].ports["br0"];
        assert_eq!(p.interface.kind, IfaceType::Internal);
        assert_eq!(p.interface.ofport, Some(OFPP_LOCAL));
    }

    #[test]
    fn failed_transaction_changes_nothing() {
        let mut c = Config::default();
        c.transact(&[add_br("br0")]).unwrap();
        let before = c.clone();
        let err = c
            .transact(&[add_port("br0", "p1"), add_port("nosuchbr", "p2")])
            .unwrap_err();
        assert_eq!(err.to_string(), "no bridge named nosuchbr");
        assert_eq!(c, before);
        // A valid op followed by a failing validation also leaves nothing behind.
        let err = c
            .transact(&[add_port("br0", "p1"), set("Interface", "p1", "type=patch")])
            .unwrap_err();
        assert!(matches!(err, ConfigError::PatchWithoutPeer(_)));
        assert_eq!(c, before);
    }

    #[test]
    fn may_exist_and_if_exists() {
        let mut c = Config::default();
        c.transact(&[add_br("br0"), add_br("br1"), add_port("br0", "p1")])
            .unwrap();
        assert!(matches!(
            c.transact(&[add_br("br0")]),
            Err(ConfigError::BridgeExists(_))
        ));
        c.transact(&[Op::AddBr {
            bridge: "br0".into(),
            may_exist: true,
        }])
        .unwrap();
        assert!(matches!(
            c.transact(&[add_port("br0", "p1")]),
            Err(ConfigError::PortExists { .. })
        ));
        c.transact(&[Op::AddPort {
            bridge: "br0".into(),
            port: "p1".into(),
            may_exist: true,
            settings: vec![],
        }])
        .unwrap();
        let e = c
            .transact(&[Op::AddPort {
                bridge: "br1".into(),
                port: "p1".into(),
                may_exist: true,
                settings: vec![],
            }])
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            "\"--may-exist add-port br1 p1\" but p1 is actually attached to bridge br0"
        );
        assert!(matches!(
            c.transact(&[Op::DelPort {
                bridge: None,
                port: "zz".into(),
                if_exists: false
            }]),
            Err(ConfigError::NoPort(_))
        ));
        c.transact(&[Op::DelPort {
            bridge: None,
            port: "zz".into(),
            if_exists: true,
        }])
        .unwrap();
        c.transact(&[Op::DelBr {
            bridge: "zz".into(),
            if_exists: true,
        }])
        .unwrap();
        assert!(matches!(
            c.transact(&[Op::DelPort {
                bridge: Some("br1".into()),
                port: "p1".into(),
                if_exists: false
            }]),
            Err(ConfigError::NotOnBridge { .. })
        ));
        assert!(matches!(
            c.transact(&[Op::DelPort {
                bridge: None,
                port: "br0".into(),
                if_exists: false
            }]),
            Err(ConfigError::DeleteLocalPort(_))
        ));
    }

    #[test]
    fn ofports_are_stable_and_honour_requests() {
        let mut c = Config::default();
        c.transact(&[
            add_br("br0"),
            add_port("br0", "a"),
            add_port("br0", "b"),
            add_port("br0", "c"),
        ])
        .unwrap();
        let of = |c: &Config, p: &str| c.bridges["br0"].ports[p].interface.ofport.unwrap();
        assert_eq!((of(&c, "a"), of(&c, "b"), of(&c, "c")), (1, 2, 3));
        c.transact(&[Op::DelPort {
            bridge: None,
            port: "a".into(),
            if_exists: false,
        }])
        .unwrap();
        c.transact(&[add_port("br0", "d")]).unwrap();
        assert_eq!((of(&c, "b"), of(&c, "c"), of(&c, "d")), (2, 3, 1));
        c.transact(&[set("Interface", "d", "ofport_request=10")])
            .unwrap();
        assert_eq!(of(&c, "d"), 10);
        let e = c
            .transact(&[set("Interface", "b", "ofport_request=10")])
            .unwrap_err();
        assert!(matches!(e, ConfigError::OfportTaken { .. }));
        // Taking a number someone holds moves them to a free one.
        c.transact(&[set("Interface", "b", "ofport_request=3")])
            .unwrap();
        assert_eq!(of(&c, "b"), 3);
        assert_ne!(of(&c, "c"), 3);
    }

    #[test]
    fn bad_values_name_the_column() {
        let mut c = Config::default();
        c.transact(&[add_br("br0"), add_port("br0", "p1")]).unwrap();
        let e = c
            .transact(&[set("Interface", "p1", "type=bogus")])
            .unwrap_err();
        assert!(
            e.to_string().contains("unknown interface type \"bogus\""),
            "{e}"
        );
        let e = c
            .transact(&[set("Bridge", "br0", "other_config:mac-table-size=lots")])
            .unwrap_err();
        assert!(e.to_string().contains("other_config:mac-table-size"), "{e}");
        let e = c
            .transact(&[set("Interface", "p1", "colour=blue")])
            .unwrap_err();
        assert_eq!(e.to_string(), "table Interface has no column named colour");
        for col in ["statistics:rx_packets=1", "status:rx_mode=ring", "ofport=3"] {
            let e = c.transact(&[set("Interface", "p1", col)]).unwrap_err();
            let name = col.split([':', '=']).next().unwrap();
            assert_eq!(
                e.to_string(),
                format!("cannot modify read-only column {name} in table Interface")
            );
        }
        let e = c.transact(&[set("Wheel", "p1", "a=b")]).unwrap_err();
        assert!(matches!(e, ConfigError::UnknownTable(_)));
        let e = c
            .transact(&[add_port("br0", "a-name-far-too-long")])
            .unwrap_err();
        assert!(matches!(e, ConfigError::BadName { .. }));
        // Forgiving names: table case, '-' for '_'.
        c.transact(&[set("interface", "p1", "external-ids:vm-id=42")])
            .unwrap();
        assert_eq!(
            c.bridges["br0"].ports["p1"].interface.external_ids["vm-id"],
            "42"
        );
    }

    #[test]
    fn vlan_columns_validate_and_edit() {
        let mut c = Config::default();
        c.transact(&[
            add_br("br0"),
            Op::AddPort {
                bridge: "br0".into(),
                port: "vm4".into(),
                may_exist: false,
                settings: vec![Setting::parse("tag=10").unwrap()],
            },
            add_port("br0", "up"),
        ])
        .unwrap();
        assert_eq!(c.bridges["br0"].ports["vm4"].tag, Some(10));
        c.transact(&[set("port", "up", "trunks=[30, 10,20]")])
            .unwrap();
        assert_eq!(c.bridges["br0"].ports["up"].trunks, vec![10, 20, 30]);
        c.transact(&[Op::Remove {
            table: "Port".into(),
            record: "up".into(),
            column: "trunks".into(),
            values: vec!["20".into()],
        }])
        .unwrap();
        assert_eq!(c.bridges["br0"].ports["up"].trunks, vec![10, 30]);
        c.transact(&[Op::Clear {
            table: "Port".into(),
            record: "vm4".into(),
            columns: vec!["tag".into()],
        }])
        .unwrap();
        assert_eq!(c.bridges["br0"].ports["vm4"].tag, None);
        let before = c.clone();
        for bad in [
            "tag=4096",
            "tag=ten",
            "tag=1,2",
            "trunks=10,x",
            "vlan_mode=hybrid",
            "trunks=-1",
        ] {
            let e = c.transact(&[set("Port", "up", bad)]).unwrap_err();
            assert!(matches!(e, ConfigError::BadValue { .. }), "{bad}: {e}");
        }
        assert_eq!(c, before, "a refused VLAN change left something behind");
        c.transact(&[set("Port", "up", "vlan_mode=native-untagged")])
            .unwrap();
        assert_eq!(
            c.bridges["br0"].ports["up"].vlan().mode,
            ofproto::vlan::VlanMode::NativeUntagged
        );
    }

    #[test]
    fn serializes_round_trip() {
        let mut c = Config::default();
        c.transact(&[
            add_br("br0"),
            add_port("br0", "p1"),
            set("Interface", "p1", "type=patch"),
            set("Interface", "p1", "options:peer=p2"),
        ])
        .unwrap();
        let s = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<Config>(&s).unwrap(), c);
    }
}
