//! ovs-ofctl's flow syntax: parse a flow line into a [`FlowSpec`] and print it back.
//!
//! `table=0,priority=100,in_port=vm1,ip,nw_dst=10.0.0.0/24,actions=mod_vlan_vid:10,output:uplink`
//!
//! The parsed form is canonical — shorthands (`tcp`, `ip`, ...) become the fields
//! they stand for, masks are normalised — and [`FlowSpec`]'s `Display` prints it in
//! the same syntax, folding fields back into shorthands, so that printing then
//! parsing gives the same spec. Errors name the field and the column where it starts
//! (`unknown field 'nw_scr' at column 24 (did you mean 'nw_src'?)`), and
//! prerequisites are enforced as ovs-ofctl does (`tp_dst` needs `tcp`, `udp` or
//! `sctp`). Ports may be named; names are resolved to numbers when the flow is
//! installed, against the bridge it is installed on.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::flow::*;

/// A port as written: a name, a number, or a reserved port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PortRef {
    Number(u32),
    Name(String),
    Local,
    InPort,
}

impl fmt::Display for PortRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortRef::Number(n) => write!(f, "{n}"),
            PortRef::Name(s) => f.write_str(s),
            PortRef::Local => f.write_str("LOCAL"),
            PortRef::InPort => f.write_str("IN_PORT"),
        }
    }
}

fn port_ref(s: &str) -> PortRef {
    match s {
        "LOCAL" | "local" => PortRef::Local,
        "IN_PORT" | "in_port" => PortRef::InPort,
        _ => match parse_u64(s) {
            Some(n) if n <= u64::from(u32::MAX) => PortRef::Number(n as u32),
            _ => PortRef::Name(s.to_string()),
        },
    }
}

/// How a field's values are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A number, printed in hex (`dl_type=0x800`, `metadata=0x1`).
    Int,
    /// A number ovs-ofctl prints in decimal (ports, protocols, TTL, VLAN ID).
    Dec,
    Mac,
    Ipv4,
    Ipv6,
    Port,
}

/// What must already be matched for a field to make sense.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Prereq {
    None,
    Ip,
    Ipv6,
    IpOrArp,
    Arp,
    L4,
    Tcp,
    Icmp,
}

struct FieldDef {
    name: &'static str,
    aliases: &'static [&'static str],
    kind: Kind,
    bits: u8,
    maskable: bool,
    /// How the field reads and writes a flow key.
    access: Access,
    prereq: Prereq,
}

const FIELD_DEFS: &[FieldDef] = &[
    FieldDef {
        name: "in_port",
        aliases: &[],
        kind: Kind::Port,
        // As NXM_OF_IN_PORT: 16 bits, so `load:NXM_OF_IN_PORT[]->reg0[0..15]` fits.
        bits: 16,
        maskable: false,
        access: Access::Key(IN_PORT),
        prereq: Prereq::None,
    },
    FieldDef {
        name: "dl_src",
        aliases: &["eth_src"],
        kind: Kind::Mac,
        bits: 48,
        maskable: true,
        access: Access::Key(DL_SRC),
        prereq: Prereq::None,
    },
    FieldDef {
        name: "dl_dst",
        aliases: &["eth_dst"],
        kind: Kind::Mac,
        bits: 48,
        maskable: true,
        access: Access::Key(DL_DST),
        prereq: Prereq::None,
    },
    FieldDef {
        name: "dl_type",
        aliases: &["eth_type"],
        kind: Kind::Int,
        bits: 16,
        maskable: false,
        access: Access::Key(DL_TYPE),
        prereq: Prereq::None,
    },
    FieldDef {
        name: "dl_vlan",
        aliases: &[],
        kind: Kind::Dec,
        bits: 12,
        maskable: false,
        access: Access::Vid,
        prereq: Prereq::None,
    },
    FieldDef {
        name: "dl_vlan_pcp",
        aliases: &[],
        kind: Kind::Dec,
        bits: 3,
        maskable: false,
        access: Access::Pcp,
        prereq: Prereq::None,
    },
    FieldDef {
        name: "vlan_tci",
        aliases: &[],
        kind: Kind::Int,
        bits: 16,
        maskable: true,
        access: Access::Key(VLAN_TCI),
        prereq: Prereq::None,
    },
    FieldDef {
        name: "nw_src",
        aliases: &["ip_src"],
        kind: Kind::Ipv4,
        bits: 32,
        maskable: true,
        access: Access::Key(NW_SRC),
        prereq: Prereq::IpOrArp,
    },
    FieldDef {
        name: "nw_dst",
        aliases: &["ip_dst"],
        kind: Kind::Ipv4,
        bits: 32,
        maskable: true,
        access: Access::Key(NW_DST),
        prereq: Prereq::IpOrArp,
    },
    FieldDef {
        name: "nw_proto",
        aliases: &["ip_proto"],
        kind: Kind::Dec,
        bits: 8,
        maskable: false,
        access: Access::Key(NW_PROTO),
        prereq: Prereq::Ip,
    },
    FieldDef {
        name: "nw_tos",
        aliases: &[],
        kind: Kind::Dec,
        bits: 8,
        maskable: false,
        access: Access::Key(NW_TOS),
        prereq: Prereq::Ip,
    },
    FieldDef {
        name: "ip_dscp",
        aliases: &[],
        kind: Kind::Dec,
        bits: 6,
        maskable: false,
        access: Access::Dscp,
        prereq: Prereq::Ip,
    },
    FieldDef {
        name: "ip_ecn",
        aliases: &["nw_ecn"],
        kind: Kind::Dec,
        bits: 2,
        maskable: false,
        access: Access::Ecn,
        prereq: Prereq::Ip,
    },
    FieldDef {
        name: "nw_ttl",
        aliases: &[],
        kind: Kind::Dec,
        bits: 8,
        maskable: false,
        access: Access::Key(NW_TTL),
        prereq: Prereq::Ip,
    },
    FieldDef {
        name: "tp_src",
        aliases: &["tcp_src", "udp_src", "sctp_src"],
        kind: Kind::Dec,
        bits: 16,
        maskable: true,
        access: Access::Key(TP_SRC),
        prereq: Prereq::L4,
    },
    FieldDef {
        name: "tp_dst",
        aliases: &["tcp_dst", "udp_dst", "sctp_dst"],
        kind: Kind::Dec,
        bits: 16,
        maskable: true,
        access: Access::Key(TP_DST),
        prereq: Prereq::L4,
    },
    FieldDef {
        name: "tcp_flags",
        aliases: &[],
        kind: Kind::Int,
        bits: 12,
        maskable: true,
        access: Access::Key(TCP_FLAGS),
        prereq: Prereq::Tcp,
    },
    FieldDef {
        name: "icmp_type",
        aliases: &["icmpv6_type"],
        kind: Kind::Dec,
        bits: 8,
        maskable: false,
        access: Access::Key(TP_SRC),
        prereq: Prereq::Icmp,
    },
    FieldDef {
        name: "icmp_code",
        aliases: &["icmpv6_code"],
        kind: Kind::Dec,
        bits: 8,
        maskable: false,
        access: Access::Key(TP_DST),
        prereq: Prereq::Icmp,
    },
    FieldDef {
        name: "arp_op",
        aliases: &[],
        kind: Kind::Dec,
        bits: 16,
        maskable: false,
        access: Access::Key(NW_PROTO),
        prereq: Prereq::Arp,
    },
    FieldDef {
        name: "arp_spa",
        aliases: &[],
        kind: Kind::Ipv4,
        bits: 32,
        maskable: true,
        access: Access::Key(NW_SRC),
        prereq: Prereq::Arp,
    },
    FieldDef {
        name: "arp_tpa",
        aliases: &[],
        kind: Kind::Ipv4,
        bits: 32,
        maskable: true,
        access: Access::Key(NW_DST),
        prereq: Prereq::Arp,
    },
    FieldDef {
        name: "arp_sha",
        aliases: &[],
        kind: Kind::Mac,
        bits: 48,
        maskable: true,
        access: Access::Key(ARP_SHA),
        prereq: Prereq::Arp,
    },
    FieldDef {
        name: "arp_tha",
        aliases: &[],
        kind: Kind::Mac,
        bits: 48,
        maskable: true,
        access: Access::Key(ARP_THA),
        prereq: Prereq::Arp,
    },
    FieldDef {
        name: "ipv6_src",
        aliases: &[],
        kind: Kind::Ipv6,
        bits: 128,
        maskable: true,
        access: Access::Ipv6Src,
        prereq: Prereq::Ipv6,
    },
    FieldDef {
        name: "ipv6_dst",
        aliases: &[],
        kind: Kind::Ipv6,
        bits: 128,
        maskable: true,
        access: Access::Ipv6Dst,
        prereq: Prereq::Ipv6,
    },
    FieldDef {
        name: "ipv6_label",
        aliases: &[],
        kind: Kind::Int,
        bits: 20,
        maskable: true,
        access: Access::Key(IPV6_LABEL),
        prereq: Prereq::Ipv6,
    },
    FieldDef {
        name: "tun_id",
        aliases: &["tunnel_id"],
        kind: Kind::Int,
        bits: 64,
        maskable: true,
        access: Access::Key(TUN_ID),
        prereq: Prereq::None,
    },
    FieldDef {
        name: "tun_src",
        aliases: &[],
        kind: Kind::Ipv4,
        bits: 32,
        maskable: true,
        access: Access::Key(TUN_SRC),
        prereq: Prereq::None,
    },
    FieldDef {
        name: "tun_dst",
        aliases: &[],
        kind: Kind::Ipv4,
        bits: 32,
        maskable: true,
        access: Access::Key(TUN_DST),
        prereq: Prereq::None,
    },
    FieldDef {
        name: "metadata",
        aliases: &[],
        kind: Kind::Int,
        bits: 64,
        maskable: true,
        access: Access::Key(METADATA),
        prereq: Prereq::None,
    },
];

/// The registers `reg0`..`reg15`: 32-bit, maskable, no prerequisites.
const REG_DEFS: &[FieldDef] = &[
    FieldDef {
        name: "reg0",
        aliases: &[],
        kind: Kind::Int,
        bits: 32,
        maskable: true,
        access: Access::Key(REGS[0]),
        prereq: Prereq::None,
    },
    FieldDef {
        name: "reg1",
        aliases: &[],
        kind: Kind::Int,
        bits: 32,
        maskable: true,
        access: Access::Key(REGS[1]),
        prereq: Prereq::None,
    },
    FieldDef {
        name: "reg2",
        aliases: &[],
        kind: Kind::Int,
        bits: 32,
        maskable: true,
        access: Access::Key(REGS[2]),
        prereq: Prereq::None,
    },
    FieldDef {
        name: "reg3",
        aliases: &[],
        kind: Kind::Int,
        bits: 32,
        maskable: true,
        access: Access::Key(REGS[3]),
        prereq: Prereq::None,
    },
    FieldDef {
        name: "reg4",
        aliases: &[],
        kind: Kind::Int,
        bits: 32,
        maskable: true,
        access: Access::Key(REGS[4]),
        prereq: Prereq::None,
    },
    FieldDef {
        name: "reg5",
        aliases: &[],
        kind: Kind::Int,
        bits: 32,
        maskable: true,
        access: Access::Key(REGS[5]),
        prereq: Prereq::None,
    },
    FieldDef {
        name: "reg6",
        aliases: &[],
        kind: Kind::Int,
        bits: 32,
        maskable: true,
        access: Access::Key(REGS[6]),
        prereq: Prereq::None,
    },
    FieldDef {
        name: "reg7",
        aliases: &[],
        kind: Kind::Int,
        bits: 32,
        maskable: true,
        access: Access::Key(REGS[7]),
        prereq: Prereq::None,
    },
    FieldDef {
        name: "reg8",
        aliases: &[],
        kind: Kind::Int,
        bits: 32,
        maskable: true,
        access: Access::Key(REGS[8]),
        prereq: Prereq::None,
    },
    FieldDef {
        name: "reg9",
        aliases: &[],
        kind: Kind::Int,
        bits: 32,
        maskable: true,
        access: Access::Key(REGS[9]),
        prereq: Prereq::None,
    },
    FieldDef {
        name: "reg10",
        aliases: &[],
        kind: Kind::Int,
        bits: 32,
        maskable: true,
        access: Access::Key(REGS[10]),
        prereq: Prereq::None,
    },
    FieldDef {
        name: "reg11",
        aliases: &[],
        kind: Kind::Int,
        bits: 32,
        maskable: true,
        access: Access::Key(REGS[11]),
        prereq: Prereq::None,
    },
    FieldDef {
        name: "reg12",
        aliases: &[],
        kind: Kind::Int,
        bits: 32,
        maskable: true,
        access: Access::Key(REGS[12]),
        prereq: Prereq::None,
    },
    FieldDef {
        name: "reg13",
        aliases: &[],
        kind: Kind::Int,
        bits: 32,
        maskable: true,
        access: Access::Key(REGS[13]),
        prereq: Prereq::None,
    },
    FieldDef {
        name: "reg14",
        aliases: &[],
        kind: Kind::Int,
        bits: 32,
        maskable: true,
        access: Access::Key(REGS[14]),
        prereq: Prereq::None,
    },
    FieldDef {
        name: "reg15",
        aliases: &[],
        kind: Kind::Int,
        bits: 32,
        maskable: true,
        access: Access::Key(REGS[15]),
        prereq: Prereq::None,
    },
];

/// Open vSwitch's NXM/OXM names (as `load`, `move` and `learn` are usually written
/// in its documentation) and OXM-style names, with the field each stands for.
const NXM_NAMES: &[(&str, &str)] = &[
    ("NXM_OF_IN_PORT", "in_port"),
    ("NXM_OF_ETH_SRC", "dl_src"),
    ("NXM_OF_ETH_DST", "dl_dst"),
    ("NXM_OF_ETH_TYPE", "dl_type"),
    ("NXM_OF_VLAN_TCI", "vlan_tci"),
    ("OXM_OF_VLAN_VID", "dl_vlan"),
    ("vlan_vid", "dl_vlan"),
    ("OXM_OF_VLAN_PCP", "dl_vlan_pcp"),
    ("vlan_pcp", "dl_vlan_pcp"),
    ("NXM_OF_IP_SRC", "nw_src"),
    ("NXM_OF_IP_DST", "nw_dst"),
    ("NXM_OF_IP_PROTO", "nw_proto"),
    ("NXM_OF_IP_TOS", "nw_tos"),
    ("OXM_OF_IP_DSCP", "ip_dscp"),
    ("NXM_NX_IP_ECN", "ip_ecn"),
    ("NXM_NX_IP_TTL", "nw_ttl"),
    ("NXM_OF_TCP_SRC", "tp_src"),
    ("NXM_OF_TCP_DST", "tp_dst"),
    ("NXM_OF_UDP_SRC", "tp_src"),
    ("NXM_OF_UDP_DST", "tp_dst"),
    ("NXM_NX_TCP_FLAGS", "tcp_flags"),
    ("NXM_OF_ICMP_TYPE", "icmp_type"),
    ("NXM_OF_ICMP_CODE", "icmp_code"),
    ("NXM_OF_ARP_OP", "arp_op"),
    ("NXM_OF_ARP_SPA", "arp_spa"),
    ("NXM_OF_ARP_TPA", "arp_tpa"),
    ("NXM_NX_ARP_SHA", "arp_sha"),
    ("NXM_NX_ARP_THA", "arp_tha"),
    ("NXM_NX_IPV6_SRC", "ipv6_src"),
    ("NXM_NX_IPV6_DST", "ipv6_dst"),
    ("NXM_NX_IPV6_LABEL", "ipv6_label"),
    ("NXM_NX_TUN_ID", "tun_id"),
    ("NXM_NX_TUN_IPV4_SRC", "tun_src"),
    ("NXM_NX_TUN_IPV4_DST", "tun_dst"),
    ("OXM_OF_METADATA", "metadata"),
    ("NXM_NX_REG0", "reg0"),
    ("NXM_NX_REG1", "reg1"),
    ("NXM_NX_REG2", "reg2"),
    ("NXM_NX_REG3", "reg3"),
    ("NXM_NX_REG4", "reg4"),
    ("NXM_NX_REG5", "reg5"),
    ("NXM_NX_REG6", "reg6"),
    ("NXM_NX_REG7", "reg7"),
    ("NXM_NX_REG8", "reg8"),
    ("NXM_NX_REG9", "reg9"),
    ("NXM_NX_REG10", "reg10"),
    ("NXM_NX_REG11", "reg11"),
    ("NXM_NX_REG12", "reg12"),
    ("NXM_NX_REG13", "reg13"),
    ("NXM_NX_REG14", "reg14"),
    ("NXM_NX_REG15", "reg15"),
];

fn field_def(name: &str) -> Option<&'static FieldDef> {
    let name = NXM_NAMES
        .iter()
        .find(|(n, _)| *n == name)
        .map_or(name, |(_, canonical)| canonical);
    FIELD_DEFS
        .iter()
        .chain(REG_DEFS)
        .find(|d| d.name == name || d.aliases.contains(&name))
}

/// One matched field, canonical: the field's primary name (or `regN`), the value
/// and the mask (all ones when exact), both within the field's width.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FieldMatch {
    pub field: String,
    pub value: u128,
    pub mask: u128,
    /// For `in_port` only: the port as written.
    pub port: Option<PortRef>,
}

/// A flow line: where it goes, what it matches, what it does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowSpec {
    pub table: u8,
    pub priority: u16,
    pub cookie: u64,
    pub idle_timeout: u16,
    pub hard_timeout: u16,
    /// Sorted by field name, so equal flows compare equal however they were written.
    pub matches: Vec<FieldMatch>,
    pub actions: Vec<Action>,
}

/// Open vSwitch's default priority for a flow that names none.
pub const DEFAULT_PRIORITY: u16 = 32768;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Output(PortRef),
    Normal,
    Flood,
    All,
    InPort,
    Local,
    Drop,
    ModVlanVid(u16),
    ModVlanPcp(u8),
    StripVlan,
    PushVlan(u16),
    ModDlSrc([u8; 6]),
    ModDlDst([u8; 6]),
    ModNwSrc(Ipv4Addr),
    ModNwDst(Ipv4Addr),
    ModNwTos(u8),
    ModTpSrc(u16),
    ModTpDst(u16),
    DecTtl,
    SetTunnel(u64),
    GotoTable(u8),
    Resubmit {
        port: Option<PortRef>,
        table: Option<u8>,
    },
    WriteMetadata {
        value: u64,
        mask: u64,
    },
    /// `set_field:VALUE[/MASK]->FIELD`; `value` and `mask` within the field's width.
    SetField {
        field: &'static str,
        value: u128,
        mask: u128,
    },
    /// `load:VALUE->FIELD[a..b]`.
    Load {
        value: u128,
        dst: SubField,
    },
    /// `move:SRC[a..b]->DST[c..d]`.
    Move {
        src: SubField,
        dst: SubField,
    },
    /// `note:HEX...`: does nothing; a place for a controller's bytes.
    Note(Vec<u8>),
    Learn(Box<LearnSpec>),
}

/// A field or a bit range of one, as `load`, `move` and `learn` name them:
/// `reg0[0..15]`, `NXM_OF_ETH_SRC[]` (whole field), `vlan_tci[12]` (one bit).
/// `field` is the canonical name, so however it was written it prints the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SubField {
    pub field: &'static str,
    pub start: u8,
    pub bits: u8,
}

/// How the field named `name` (any spelling) reads and writes a flow key.
pub fn access_of(name: &str) -> Option<Access> {
    field_def(name).map(|d| d.access)
}

impl SubField {
    /// How the field reads and writes a flow key.
    pub fn access(&self) -> Access {
        access_of(self.field).expect("a SubField names a known field")
    }

    /// The field's whole width in bits.
    pub fn field_bits(&self) -> u8 {
        field_def(self.field).map_or(0, |d| d.bits)
    }

    /// The mask of the range, in the field's own alignment.
    pub fn mask(&self) -> u128 {
        width_mask(self.bits) << self.start
    }

    /// The range's value in `key`, right-aligned.
    pub fn read(&self, key: &FlowKey) -> u128 {
        (self.access().read(key) >> self.start) & width_mask(self.bits)
    }

    fn parse(s: &str, col: usize) -> Result<SubField, ParseError> {
        let s = s.trim();
        let (name, range) = match s.split_once('[') {
            Some((n, r)) => (
                n,
                Some(
                    r.strip_suffix(']')
                        .ok_or_else(|| err(col, format!("\"{s}\": missing ']'")))?,
                ),
            ),
            None => (s, None),
        };
        let def = field_def(name)
            .ok_or_else(|| err(col, format!("unknown field '{name}'{}", suggest(name))))?;
        let whole = (0u8, def.bits);
        let (start, bits) = match range {
            None | Some("") => whole,
            Some(r) => {
                let bad = || {
                    err(
                        col,
                        format!("\"{s}\": bad bit range (use [], [N] or [A..B])"),
                    )
                };
                let n = |t: &str| t.trim().parse::<u8>().map_err(|_| bad());
                let (a, b) = match r.split_once("..") {
                    Some((a, b)) => (n(a)?, n(b)?),
                    None => (n(r)?, n(r)?),
                };
                if a > b || b >= def.bits {
                    return Err(err(
                        col,
                        format!(
                            "\"{s}\": bits {a}..{b} are outside {name}'s {} bits",
                            def.bits
                        ),
                    ));
                }
                (a, b - a + 1)
            }
        };
        Ok(SubField {
            field: def.name,
            start,
            bits,
        })
    }
}

impl fmt::Display for SubField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == 0 && self.bits == self.field_bits() {
            write!(f, "{}[]", self.field)
        } else if self.bits == 1 {
            write!(f, "{}[{}]", self.field, self.start)
        } else {
            write!(
                f,
                "{}[{}..{}]",
                self.field,
                self.start,
                self.start + self.bits - 1
            )
        }
    }
}

/// `learn(...)`: a flow to add when a packet runs this action, built from the
/// packet's own fields (ovs-actions(7)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LearnSpec {
    pub table: u8,
    pub priority: u16,
    pub idle_timeout: u16,
    pub hard_timeout: u16,
    pub cookie: u64,
    pub items: Vec<LearnItem>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LearnItem {
    /// `dst=VALUE`: the new flow matches `dst` against a constant.
    MatchValue { dst: SubField, value: u128 },
    /// `dst=src` (or just `dst`, when `src` is the same field): the new flow matches
    /// `dst` against the value `src` has in this packet.
    MatchField { dst: SubField, src: SubField },
    /// `load:VALUE->dst`: the new flow loads a constant.
    LoadValue { dst: SubField, value: u128 },
    /// `load:src->dst`: the new flow loads the value `src` has in this packet.
    LoadField { dst: SubField, src: SubField },
    /// `output:src`: the new flow outputs to the port `src` holds in this packet.
    Output { src: SubField },
}

/// Default table of a learned flow, as in Open vSwitch.
const LEARN_DEFAULT_TABLE: u8 = 1;

fn parse_learn(inner: &str, col: usize) -> Result<LearnSpec, ParseError> {
    let mut spec = LearnSpec {
        table: LEARN_DEFAULT_TABLE,
        priority: DEFAULT_PRIORITY,
        idle_timeout: 0,
        hard_timeout: 0,
        cookie: 0,
        items: Vec::new(),
    };
    let same_width = |dst: &SubField, src: &SubField, c: usize| {
        if dst.bits == src.bits {
            Ok(())
        } else {
            Err(err(
                c,
                format!(
                    "learn: {src} is {} bits but {dst} is {} bits",
                    src.bits, dst.bits
                ),
            ))
        }
    };
    for (off, raw) in split_top(inner) {
        let t = raw.trim();
        let c = col + "learn(".len() + off + (raw.len() - raw.trim_start().len());
        if t.is_empty() {
            continue;
        }
        let num = |v: &str, max: u64, what: &str| {
            parse_u64(v.trim()).filter(|n| *n <= max).ok_or_else(|| {
                err(
                    c,
                    format!("learn: {what}: \"{v}\" is not a number up to {max}"),
                )
            })
        };
        if let Some(rest) = t.strip_prefix("load:") {
            let (src, dst) = rest
                .split_once("->")
                .ok_or_else(|| err(c, "learn: expected load:SRC->DST"))?;
            let dst = SubField::parse(dst, c)?;
            match parse_u128(src.trim()) {
                Some(value) if value <= width_mask(dst.bits) => {
                    spec.items.push(LearnItem::LoadValue { dst, value })
                }
                Some(_) => return Err(err(c, format!("learn: {src} does not fit in {dst}"))),
                None => {
                    let src = SubField::parse(src, c)?;
                    same_width(&dst, &src, c)?;
                    spec.items.push(LearnItem::LoadField { dst, src });
                }
            }
            continue;
        }
        if let Some(rest) = t.strip_prefix("output:") {
            let src = SubField::parse(rest, c)?;
            spec.items.push(LearnItem::Output { src });
            continue;
        }
        match t.split_once('=') {
            Some(("table", v)) => spec.table = num(v, 254, "table")? as u8,
            Some(("priority", v)) => spec.priority = num(v, 65535, "priority")? as u16,
            Some(("idle_timeout", v)) => spec.idle_timeout = num(v, 65535, "idle_timeout")? as u16,
            Some(("hard_timeout", v)) => spec.hard_timeout = num(v, 65535, "hard_timeout")? as u16,
            Some(("cookie", v)) => spec.cookie = num(v, u64::MAX, "cookie")?,
            Some((d, v)) => {
                let dst = SubField::parse(d, c)?;
                let v = v.trim();
                let whole = dst.start == 0 && dst.bits == dst.field_bits();
                let def = field_def(dst.field).expect("parsed field");
                let constant = if whole {
                    parse_value(def, v, c).ok().map(|(val, _)| val)
                } else {
                    parse_u128(v)
                };
                match constant {
                    Some(value) if value <= width_mask(dst.bits) => {
                        spec.items.push(LearnItem::MatchValue { dst, value })
                    }
                    Some(_) => return Err(err(c, format!("learn: {v} does not fit in {dst}"))),
                    None => {
                        let src = SubField::parse(v, c)?;
                        same_width(&dst, &src, c)?;
                        spec.items.push(LearnItem::MatchField { dst, src });
                    }
                }
            }
            None => {
                let f = SubField::parse(t, c)?;
                spec.items.push(LearnItem::MatchField { dst: f, src: f });
            }
        }
    }
    Ok(spec)
}

impl fmt::Display for LearnSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "learn(table={},priority={}", self.table, self.priority)?;
        if self.idle_timeout != 0 {
            write!(f, ",idle_timeout={}", self.idle_timeout)?;
        }
        if self.hard_timeout != 0 {
            write!(f, ",hard_timeout={}", self.hard_timeout)?;
        }
        if self.cookie != 0 {
            write!(f, ",cookie={:#x}", self.cookie)?;
        }
        for item in &self.items {
            match item {
                LearnItem::MatchValue { dst, value } => write!(f, ",{dst}={value:#x}")?,
                LearnItem::MatchField { dst, src } if dst == src => write!(f, ",{dst}")?,
                LearnItem::MatchField { dst, src } => write!(f, ",{dst}={src}")?,
                LearnItem::LoadValue { dst, value } => write!(f, ",load:{value:#x}->{dst}")?,
                LearnItem::LoadField { dst, src } => write!(f, ",load:{src}->{dst}")?,
                LearnItem::Output { src } => write!(f, ",output:{src}")?,
            }
        }
        f.write_str(")")
    }
}

fn parse_note(hex: &str) -> Option<Vec<u8>> {
    let digits: Vec<u8> = hex.bytes().filter(|b| *b != b'.').collect();
    if !digits.len().is_multiple_of(2) {
        return None;
    }
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).ok()?, 16).ok())
        .collect()
}

/// Why a flow line was refused: what, and at which column (1-based) it starts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} at column {column}")]
pub struct ParseError {
    pub column: usize,
    pub message: String,
}

fn err(column: usize, message: impl Into<String>) -> ParseError {
    ParseError {
        column,
        message: message.into(),
    }
}

fn parse_u64(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

fn parse_u128(s: &str) -> Option<u128> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u128::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

fn parse_mac(s: &str) -> Option<u128> {
    let m: crate::MacAddr = s.parse().ok()?;
    Some(m.0.iter().fold(0u128, |a, &b| (a << 8) | u128::from(b)))
}

fn width_mask(bits: u8) -> u128 {
    if bits >= 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    }
}

/// Splits `s` on commas that are not inside parentheses, keeping each piece's offset.
fn split_top(s: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0i32, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push((start, &s[start..i]));
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push((start, &s[start..]));
    out
}

/// Edit distance counting an adjacent transposition as one edit (optimal string
/// alignment), so the typical typo `nw_scr` is one step from `nw_src`.
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            d[i][j] = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                d[i][j] = d[i][j].min(d[i - 2][j - 2] + 1);
            }
        }
    }
    d[a.len()][b.len()]
}

fn suggest(name: &str) -> String {
    let candidates = FIELD_DEFS
        .iter()
        .flat_map(|d| std::iter::once(d.name).chain(d.aliases.iter().copied()))
        .chain([
            "table",
            "priority",
            "cookie",
            "idle_timeout",
            "hard_timeout",
            "actions",
        ])
        .chain(SHORTHANDS.iter().map(|s| s.0));
    match candidates.map(|c| (edit_distance(name, c), c)).min() {
        Some((d, c)) if d <= 2 => format!(" (did you mean '{c}'?)"),
        _ => String::new(),
    }
}

/// Shorthand → (dl_type, nw_proto).
const SHORTHANDS: &[(&str, u16, Option<u8>)] = &[
    ("ip", 0x0800, None),
    ("ipv6", 0x86dd, None),
    ("arp", 0x0806, None),
    ("icmp", 0x0800, Some(1)),
    ("icmp6", 0x86dd, Some(58)),
    ("tcp", 0x0800, Some(6)),
    ("tcp6", 0x86dd, Some(6)),
    ("udp", 0x0800, Some(17)),
    ("udp6", 0x86dd, Some(17)),
    ("sctp", 0x0800, Some(132)),
    ("sctp6", 0x86dd, Some(132)),
];

fn parse_value(def: &FieldDef, raw: &str, col: usize) -> Result<(u128, u128), ParseError> {
    let full = width_mask(def.bits);
    let bad = |what: &str| err(col, format!("{}: \"{raw}\" is not {what}", def.name));
    let (v, m) = match raw.split_once('/') {
        Some((v, m)) => {
            if !def.maskable {
                return Err(err(
                    col,
                    format!("{}: this field cannot be masked", def.name),
                ));
            }
            (v, Some(m))
        }
        None => (raw, None),
    };
    let value = match def.kind {
        Kind::Int | Kind::Dec | Kind::Port => parse_u128(v).ok_or_else(|| bad("a number"))?,
        Kind::Mac => parse_mac(v).ok_or_else(|| bad("a MAC address"))?,
        Kind::Ipv4 => u128::from(u32::from(
            v.parse::<Ipv4Addr>().map_err(|_| bad("an IPv4 address"))?,
        )),
        Kind::Ipv6 => u128::from(v.parse::<Ipv6Addr>().map_err(|_| bad("an IPv6 address"))?),
    };
    if value > full {
        return Err(err(
            col,
            format!("{}: {raw} does not fit in {} bits", def.name, def.bits),
        ));
    }
    let mask = match m {
        None => full,
        Some(m) => match def.kind {
            Kind::Ipv4 | Kind::Ipv6 if !m.contains(['.', ':']) => {
                let len: u8 = m.parse().map_err(|_| bad("a prefix length"))?;
                if len > def.bits {
                    return Err(bad("a valid prefix length"));
                }
                if len == 0 {
                    0
                } else {
                    full & !(width_mask(def.bits - len))
                }
            }
            Kind::Ipv4 => u128::from(u32::from(
                m.parse::<Ipv4Addr>().map_err(|_| bad("an IPv4 mask"))?,
            )),
            Kind::Ipv6 => u128::from(m.parse::<Ipv6Addr>().map_err(|_| bad("an IPv6 mask"))?),
            Kind::Mac => parse_mac(m).ok_or_else(|| bad("a MAC mask"))?,
            _ => parse_u128(m).ok_or_else(|| bad("a number mask"))? & full,
        },
    };
    Ok((value & mask, mask))
}

fn parse_action(tok: &str, col: usize) -> Result<Action, ParseError> {
    let bad = |what: &str| err(col, format!("action \"{tok}\": {what}"));
    let num = |s: &str, max: u64| {
        parse_u64(s)
            .filter(|n| *n <= max)
            .ok_or_else(|| bad(&format!("expected a number up to {max}")))
    };
    let (name, arg) = match tok.split_once(':') {
        Some((n, a)) => (n, Some(a)),
        None => (tok, None),
    };
    let need = || arg.ok_or_else(|| bad("missing argument"));
    Ok(match (name.to_ascii_lowercase().as_str(), arg) {
        ("normal", None) => Action::Normal,
        ("flood", None) => Action::Flood,
        ("all", None) => Action::All,
        ("in_port", None) => Action::InPort,
        ("local", None) => Action::Local,
        ("drop", None) => Action::Drop,
        ("strip_vlan" | "pop_vlan", None) => Action::StripVlan,
        ("dec_ttl", None) => Action::DecTtl,
        ("output", _) => Action::Output(port_ref(need()?)),
        ("mod_vlan_vid", _) => Action::ModVlanVid(num(need()?, 4095)? as u16),
        ("mod_vlan_pcp", _) => Action::ModVlanPcp(num(need()?, 7)? as u8),
        ("push_vlan", _) => match num(need()?, 0xffff)? as u16 {
            t @ (0x8100 | 0x88a8) => Action::PushVlan(t),
            _ => return Err(bad("the TPID must be 0x8100 or 0x88a8")),
        },
        ("mod_dl_src", _) => Action::ModDlSrc(
            need()?
                .parse::<crate::MacAddr>()
                .map_err(|e| bad(&e.to_string()))?
                .0,
        ),
        ("mod_dl_dst", _) => Action::ModDlDst(
            need()?
                .parse::<crate::MacAddr>()
                .map_err(|e| bad(&e.to_string()))?
                .0,
        ),
        ("mod_nw_src", _) => Action::ModNwSrc(
            need()?
                .parse()
                .map_err(|_| bad("expected an IPv4 address"))?,
        ),
        ("mod_nw_dst", _) => Action::ModNwDst(
            need()?
                .parse()
                .map_err(|_| bad("expected an IPv4 address"))?,
        ),
        ("mod_nw_tos", _) => Action::ModNwTos(num(need()?, 255)? as u8),
        ("mod_tp_src", _) => Action::ModTpSrc(num(need()?, 65535)? as u16),
        ("mod_tp_dst", _) => Action::ModTpDst(num(need()?, 65535)? as u16),
        ("set_tunnel" | "set_tunnel64", _) => Action::SetTunnel(num(need()?, u64::MAX)?),
        ("goto_table", _) => Action::GotoTable(num(need()?, 254)? as u8),
        ("resubmit", Some(p)) => Action::Resubmit {
            port: Some(port_ref(p)),
            table: None,
        },
        ("write_metadata", _) => {
            let a = need()?;
            let (v, m) = a.split_once('/').unwrap_or((a, "0xffffffffffffffff"));
            Action::WriteMetadata {
                value: num(v, u64::MAX)?,
                mask: num(m, u64::MAX)?,
            }
        }
        ("set_field", Some(a)) => {
            let (v, dst) = a
                .split_once("->")
                .ok_or_else(|| bad("expected set_field:VALUE->FIELD"))?;
            let def = field_def(dst.trim()).ok_or_else(|| {
                err(
                    col,
                    format!("unknown field '{}'{}", dst.trim(), suggest(dst.trim())),
                )
            })?;
            if def.kind == Kind::Port {
                return Err(bad("in_port cannot be set (use resubmit)"));
            }
            let (value, mask) = parse_value(def, v.trim(), col)?;
            Action::SetField {
                field: def.name,
                value,
                mask,
            }
        }
        ("load", Some(a)) => {
            let (v, dst) = a
                .split_once("->")
                .ok_or_else(|| bad("expected load:VALUE->FIELD[RANGE]"))?;
            let dst = SubField::parse(dst, col)?;
            let value = parse_u128(v.trim()).ok_or_else(|| bad("expected a number to load"))?;
            if value > width_mask(dst.bits) {
                return Err(bad(&format!("{v} does not fit in {dst}")));
            }
            Action::Load { value, dst }
        }
        ("move", Some(a)) => {
            let (src, dst) = a
                .split_once("->")
                .ok_or_else(|| bad("expected move:SRC[RANGE]->DST[RANGE]"))?;
            let (src, dst) = (SubField::parse(src, col)?, SubField::parse(dst, col)?);
            if src.bits != dst.bits {
                return Err(bad(&format!(
                    "{src} is {} bits but {dst} is {} bits",
                    src.bits, dst.bits
                )));
            }
            Action::Move { src, dst }
        }
        ("note", Some(a)) => {
            Action::Note(parse_note(a).ok_or_else(|| bad("expected hex bytes, e.g. note:01.02"))?)
        }
        _ if tok.starts_with("resubmit(") && tok.ends_with(')') => {
            let inner = &tok["resubmit(".len()..tok.len() - 1];
            let (p, t) = inner
                .split_once(',')
                .ok_or_else(|| bad("expected resubmit(PORT,TABLE)"))?;
            Action::Resubmit {
                port: (!p.is_empty()).then(|| port_ref(p)),
                table: if t.is_empty() {
                    None
                } else {
                    Some(num(t, 254)? as u8)
                },
            }
        }
        _ if tok.starts_with("learn(") && tok.ends_with(')') => Action::Learn(Box::new(
            parse_learn(&tok["learn(".len()..tok.len() - 1], col)?,
        )),
        // A bare port name or number is an output action, as in ovs-ofctl.
        (_, None)
            if !tok.is_empty()
                && tok
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) =>
        {
            Action::Output(port_ref(tok))
        }
        _ => return Err(bad("unknown action")),
    })
}

impl FlowSpec {
    /// Parses a flow as `ovs-ofctl add-flow` takes it. `actions=` is required.
    pub fn parse(line: &str) -> Result<FlowSpec, ParseError> {
        let mut spec = FlowSpec {
            table: 0,
            priority: DEFAULT_PRIORITY,
            cookie: 0,
            idle_timeout: 0,
            hard_timeout: 0,
            matches: Vec::new(),
            actions: Vec::new(),
        };
        let (head, actions) = match line.find("actions=") {
            Some(i) => (
                &line[..i],
                Some((i + "actions=".len(), &line[i + "actions=".len()..])),
            ),
            None => (line, None),
        };
        let mut dl_type: Option<(u16, usize)> = None;
        let mut nw_proto: Option<(u8, usize)> = None;
        let mut fields: Vec<(FieldMatch, Prereq, usize)> = Vec::new();
        for (off, tok) in split_top(head) {
            let tok_trim = tok.trim();
            let col = off + 1 + (tok.len() - tok.trim_start().len());
            if tok_trim.is_empty() {
                continue;
            }
            let (key, val) = match tok_trim.split_once('=') {
                Some((k, v)) => (k.trim(), Some(v.trim())),
                None => (tok_trim, None),
            };
            if let Some(&(_, t, p)) = SHORTHANDS.iter().find(|s| s.0 == key) {
                if val.is_some() {
                    return Err(err(col, format!("'{key}' takes no value")));
                }
                set_once(&mut dl_type, t, col, "dl_type")?;
                if let Some(p) = p {
                    set_once(&mut nw_proto, p, col, "nw_proto")?;
                }
                continue;
            }
            let Some(val) = val else {
                return Err(err(col, format!("unknown field '{key}'{}", suggest(key))));
            };
            let num_or = |max: u64, what: &str| {
                parse_u64(val).filter(|n| *n <= max).ok_or_else(|| {
                    err(
                        col,
                        format!("{what}: \"{val}\" is not a number up to {max}"),
                    )
                })
            };
            match key {
                "table" => spec.table = num_or(254, "table")? as u8,
                "priority" => spec.priority = num_or(65535, "priority")? as u16,
                "cookie" => spec.cookie = num_or(u64::MAX, "cookie")?,
                "idle_timeout" => spec.idle_timeout = num_or(65535, "idle_timeout")? as u16,
                "hard_timeout" => spec.hard_timeout = num_or(65535, "hard_timeout")? as u16,
                "dl_type" | "eth_type" => set_once(
                    &mut dl_type,
                    num_or(0xffff, "dl_type")? as u16,
                    col,
                    "dl_type",
                )?,
                "nw_proto" | "ip_proto" => set_once(
                    &mut nw_proto,
                    num_or(255, "nw_proto")? as u8,
                    col,
                    "nw_proto",
                )?,
                _ => {
                    let Some(def) = field_def(key) else {
                        return Err(err(col, format!("unknown field '{key}'{}", suggest(key))));
                    };
                    let name = def.name.to_string();
                    let fm = if def.kind == Kind::Port {
                        let p = port_ref(val);
                        let value = match &p {
                            PortRef::Number(n) => u128::from(*n),
                            PortRef::Local => u128::from(crate::OFPP_LOCAL),
                            _ => 0,
                        };
                        FieldMatch {
                            field: name,
                            value,
                            mask: width_mask(def.bits),
                            port: Some(p),
                        }
                    } else {
                        let (value, mask) = parse_value(def, val, col)?;
                        FieldMatch {
                            field: name,
                            value,
                            mask,
                            port: None,
                        }
                    };
                    if fields.iter().any(|(f, _, _)| f.field == fm.field) {
                        return Err(err(col, format!("{} is matched twice", fm.field)));
                    }
                    fields.push((fm, def.prereq, col));
                }
            }
        }
        // Prerequisites, as ovs-ofctl enforces them.
        let t = dl_type.map(|d| d.0);
        let p = nw_proto.map(|d| d.0);
        let is_ip = matches!(t, Some(0x0800 | 0x86dd));
        if let Some((_, col)) = nw_proto {
            if !is_ip {
                return Err(err(col, "nw_proto requires ip or ipv6 (add e.g. 'ip,')"));
            }
        }
        for (fm, pre, col) in &fields {
            let ok = match pre {
                Prereq::None => true,
                Prereq::Ip => is_ip,
                Prereq::Ipv6 => t == Some(0x86dd),
                Prereq::IpOrArp => matches!(t, Some(0x0800 | 0x0806)),
                Prereq::Arp => t == Some(0x0806),
                Prereq::L4 => is_ip && matches!(p, Some(6 | 17 | 132)),
                Prereq::Tcp => is_ip && p == Some(6),
                Prereq::Icmp => {
                    (t == Some(0x0800) && p == Some(1)) || (t == Some(0x86dd) && p == Some(58))
                }
            };
            if !ok {
                let need = match pre {
                    Prereq::Ip => "ip or ipv6",
                    Prereq::Ipv6 => "ipv6",
                    Prereq::IpOrArp => "ip or arp",
                    Prereq::Arp => "arp",
                    Prereq::L4 => "tcp, udp or sctp",
                    Prereq::Tcp => "tcp",
                    Prereq::Icmp => "icmp or icmp6",
                    Prereq::None => "",
                };
                return Err(err(
                    *col,
                    format!(
                        "{} requires {need} (add e.g. '{},')",
                        fm.field,
                        need.split([' ', ',']).next().unwrap()
                    ),
                ));
            }
        }
        if let Some((v, _)) = dl_type {
            fields.push((
                FieldMatch {
                    field: "dl_type".into(),
                    value: u128::from(v),
                    mask: 0xffff,
                    port: None,
                },
                Prereq::None,
                0,
            ));
        }
        if let Some((v, _)) = nw_proto {
            fields.push((
                FieldMatch {
                    field: "nw_proto".into(),
                    value: u128::from(v),
                    mask: 0xff,
                    port: None,
                },
                Prereq::None,
                0,
            ));
        }
        spec.matches = fields.into_iter().map(|f| f.0).collect();
        spec.matches.sort_by(|a, b| a.field.cmp(&b.field));
        let Some((acol, actions)) = actions else {
            return Err(err(
                line.len() + 1,
                "missing actions= (use actions=drop to drop)",
            ));
        };
        for (off, tok) in split_top(actions) {
            let t = tok.trim();
            if t.is_empty() {
                return Err(err(acol + off + 1, "empty action"));
            }
            spec.actions.push(parse_action(t, acol + off + 1)?);
        }
        Ok(spec)
    }

    fn get(&self, field: &str) -> Option<&FieldMatch> {
        self.matches.iter().find(|m| m.field == field)
    }
}

fn set_once<T: PartialEq + Copy + fmt::Display>(
    slot: &mut Option<(T, usize)>,
    v: T,
    col: usize,
    what: &str,
) -> Result<(), ParseError> {
    match slot {
        Some((old, _)) if *old != v => Err(err(col, format!("{what} set twice ({old} and {v})"))),
        _ => {
            *slot = Some((v, col));
            Ok(())
        }
    }
}

fn fmt_value(def: Option<&FieldDef>, fm: &FieldMatch, f: &mut fmt::Formatter<'_>) -> fmt::Result {
    if let Some(p) = &fm.port {
        return write!(f, "{p}");
    }
    let (kind, bits) = def.map_or((Kind::Int, 32), |d| (d.kind, d.bits));
    let full = width_mask(bits);
    let decimal = kind == Kind::Dec && fm.mask == full;
    let one = |f: &mut fmt::Formatter<'_>, v: u128| -> fmt::Result {
        match kind {
            Kind::Mac => {
                let b = v.to_be_bytes();
                write!(f, "{}", crate::MacAddr(b[10..16].try_into().unwrap()))
            }
            Kind::Ipv4 => write!(f, "{}", Ipv4Addr::from(v as u32)),
            Kind::Ipv6 => write!(f, "{}", Ipv6Addr::from(v)),
            _ if decimal => write!(f, "{v}"),
            _ => write!(f, "{v:#x}"),
        }
    };
    one(f, fm.value)?;
    if fm.mask != full {
        f.write_str("/")?;
        // A prefix mask prints as a length, as ovs-ofctl does.
        let ones = fm.mask.count_ones() as u8;
        if matches!(kind, Kind::Ipv4 | Kind::Ipv6) && fm.mask == full & !width_mask(bits - ones) {
            write!(f, "{ones}")?;
        } else {
            one(f, fm.mask)?;
        }
    }
    Ok(())
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Output(p) => write!(f, "output:{p}"),
            Action::Normal => f.write_str("NORMAL"),
            Action::Flood => f.write_str("FLOOD"),
            Action::All => f.write_str("ALL"),
            Action::InPort => f.write_str("IN_PORT"),
            Action::Local => f.write_str("LOCAL"),
            Action::Drop => f.write_str("drop"),
            Action::ModVlanVid(v) => write!(f, "mod_vlan_vid:{v}"),
            Action::ModVlanPcp(v) => write!(f, "mod_vlan_pcp:{v}"),
            Action::StripVlan => f.write_str("strip_vlan"),
            Action::PushVlan(t) => write!(f, "push_vlan:{t:#06x}"),
            Action::ModDlSrc(m) => write!(f, "mod_dl_src:{}", crate::MacAddr(*m)),
            Action::ModDlDst(m) => write!(f, "mod_dl_dst:{}", crate::MacAddr(*m)),
            Action::ModNwSrc(a) => write!(f, "mod_nw_src:{a}"),
            Action::ModNwDst(a) => write!(f, "mod_nw_dst:{a}"),
            Action::ModNwTos(v) => write!(f, "mod_nw_tos:{v}"),
            Action::ModTpSrc(v) => write!(f, "mod_tp_src:{v}"),
            Action::ModTpDst(v) => write!(f, "mod_tp_dst:{v}"),
            Action::DecTtl => f.write_str("dec_ttl"),
            Action::SetTunnel(v) => write!(f, "set_tunnel:{v:#x}"),
            Action::GotoTable(t) => write!(f, "goto_table:{t}"),
            Action::Resubmit { port, table } => {
                let p = port.as_ref().map_or(String::new(), |p| p.to_string());
                let t = table.map_or(String::new(), |t| t.to_string());
                write!(f, "resubmit({p},{t})")
            }
            Action::WriteMetadata { value, mask } => {
                write!(f, "write_metadata:{value:#x}/{mask:#x}")
            }
            Action::SetField { field, value, mask } => {
                f.write_str("set_field:")?;
                let def = field_def(field);
                let fm = FieldMatch {
                    field: field.to_string(),
                    value: *value,
                    mask: *mask,
                    port: None,
                };
                fmt_value(def, &fm, f)?;
                write!(f, "->{field}")
            }
            Action::Load { value, dst } => write!(f, "load:{value:#x}->{dst}"),
            Action::Move { src, dst } => write!(f, "move:{src}->{dst}"),
            Action::Note(bytes) => {
                f.write_str("note:")?;
                for (i, b) in bytes.iter().enumerate() {
                    if i > 0 {
                        f.write_str(".")?;
                    }
                    write!(f, "{b:02x}")?;
                }
                Ok(())
            }
            Action::Learn(l) => write!(f, "{l}"),
        }
    }
}

impl fmt::Display for FlowSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "table={},priority={}", self.table, self.priority)?;
        if self.cookie != 0 {
            write!(f, ",cookie={:#x}", self.cookie)?;
        }
        if self.idle_timeout != 0 {
            write!(f, ",idle_timeout={}", self.idle_timeout)?;
        }
        if self.hard_timeout != 0 {
            write!(f, ",hard_timeout={}", self.hard_timeout)?;
        }
        // Fold dl_type/nw_proto back into a shorthand where one exists.
        let t = self.get("dl_type").map(|m| m.value as u16);
        let p = self.get("nw_proto").map(|m| m.value as u8);
        let short = SHORTHANDS
            .iter()
            .find(|s| Some(s.1) == t && s.2 == p)
            .or_else(|| SHORTHANDS.iter().find(|s| Some(s.1) == t && s.2.is_none()));
        let mut skip_proto = false;
        if let Some(s) = short {
            write!(f, ",{}", s.0)?;
            skip_proto = s.2.is_some();
        }
        for m in &self.matches {
            if (m.field == "dl_type" && short.is_some()) || (m.field == "nw_proto" && skip_proto) {
                continue;
            }
            write!(f, ",{}=", m.field)?;
            fmt_value(field_def(&m.field), m, f)?;
        }
        f.write_str(",actions=")?;
        if self.actions.is_empty() {
            return f.write_str("drop");
        }
        for (i, a) in self.actions.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{a}")?;
        }
        Ok(())
    }
}

/// A match used to select flows (`del-flows`, `dump-flows`, `mod-flows`): a flow
/// line whose actions are optional, remembering whether table and priority were
/// given (when absent they select any).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowFilter {
    pub spec: FlowSpec,
    pub table: Option<u8>,
    pub priority: Option<u16>,
    /// `cookie=VALUE/MASK`: only flows whose cookie matches under the mask (a mask
    /// of `-1` is an exact match).
    pub cookie_mask: Option<(u64, u64)>,
    /// `cookie=VALUE` without a mask: not a selector; `mod-flows` sets it.
    pub set_cookie: Option<u64>,
}

impl FlowFilter {
    /// Parses `s`; an empty string selects every flow.
    pub fn parse(s: &str) -> Result<FlowFilter, ParseError> {
        let given = |key: &str| split_top(s).iter().any(|(_, t)| t.trim().starts_with(key));
        // `cookie=V/M` selects and is not flow syntax; take it out (keeping columns
        // of later tokens right by blanking it instead of removing it).
        let mut cookie_mask = None;
        let mut rest = String::with_capacity(s.len());
        for (i, (off, tok)) in split_top(s).into_iter().enumerate() {
            if i > 0 {
                rest.push(',');
            }
            let t = tok.trim();
            match t.strip_prefix("cookie=").and_then(|c| c.split_once('/')) {
                Some((v, m)) => {
                    let num = |x: &str| {
                        if x == "-1" {
                            return Some(u64::MAX);
                        }
                        parse_u64(x)
                    };
                    let (Some(v), Some(m)) = (num(v), num(m)) else {
                        return Err(err(off + 1, format!("cookie: \"{t}\" is not VALUE/MASK")));
                    };
                    cookie_mask = Some((v & m, m));
                    rest.push_str(&" ".repeat(tok.len()));
                }
                None => rest.push_str(tok),
            }
        }
        let set_cookie = split_top(&rest)
            .iter()
            .any(|(_, t)| t.trim().starts_with("cookie="));
        let s = rest.as_str();
        let spec = if s.contains("actions=") {
            FlowSpec::parse(s)?
        } else if s.trim().is_empty() {
            FlowSpec::parse("actions=drop")?
        } else {
            FlowSpec::parse(&format!("{s},actions=drop"))?
        };
        Ok(FlowFilter {
            table: given("table=").then_some(spec.table),
            priority: given("priority=").then_some(spec.priority),
            cookie_mask,
            set_cookie: set_cookie.then_some(spec.cookie),
            spec,
        })
    }

    fn cookie_ok(&self, flow: &FlowSpec) -> bool {
        self.cookie_mask.is_none_or(|(v, m)| flow.cookie & m == v)
    }

    /// Non-strict selection, as ovs-ofctl's: the flow is in the table (if given) and
    /// matches every field of the filter at least as specifically, with the same
    /// value under the filter's mask.
    pub fn covers(&self, flow: &FlowSpec) -> bool {
        if self.table.is_some_and(|t| t != flow.table) || !self.cookie_ok(flow) {
            return false;
        }
        self.spec.matches.iter().all(|want| {
            flow.matches.iter().any(|have| {
                have.field == want.field
                    && have.mask & want.mask == want.mask
                    && have.value & want.mask == want.value
                    && (want.port.is_none() || have.port == want.port)
            })
        })
    }

    /// Strict selection: same table, priority and match exactly.
    pub fn is_exactly(&self, flow: &FlowSpec) -> bool {
        self.table.unwrap_or(0) == flow.table
            && self.priority.unwrap_or(DEFAULT_PRIORITY) == flow.priority
            && self.spec.matches == flow.matches
            && self.cookie_ok(flow)
    }
}

impl FlowSpec {
    /// Whether `other` is the same rule (table, priority, match): adding it replaces this one.
    pub fn same_rule(&self, other: &FlowSpec) -> bool {
        self.table == other.table
            && self.priority == other.priority
            && self.matches == other.matches
    }

    /// The ports this flow names (in `in_port` or actions), to check they exist.
    pub fn named_ports(&self) -> Vec<&str> {
        let mut v: Vec<&str> = self
            .matches
            .iter()
            .filter_map(|m| match &m.port {
                Some(PortRef::Name(n)) => Some(n.as_str()),
                _ => None,
            })
            .collect();
        for a in &self.actions {
            match a {
                Action::Output(PortRef::Name(n))
                | Action::Resubmit {
                    port: Some(PortRef::Name(n)),
                    ..
                } => v.push(n),
                _ => {}
            }
        }
        v
    }
}

#[cfg(test)]
mod filter_tests {
    use super::*;

    #[test]
    fn non_strict_and_strict_selection() {
        let f1 = FlowSpec::parse("priority=200,tcp,tp_dst=22,actions=drop").unwrap();
        let f2 = FlowSpec::parse("priority=100,ip,nw_dst=10.0.0.0/24,actions=NORMAL").unwrap();
        let f3 = FlowSpec::parse("table=1,priority=0,actions=NORMAL").unwrap();
        let all = FlowFilter::parse("").unwrap();
        assert!(all.covers(&f1) && all.covers(&f2) && all.covers(&f3));
        let tcp = FlowFilter::parse("tcp").unwrap();
        assert!(tcp.covers(&f1) && !tcp.covers(&f2) && !tcp.covers(&f3));
        let net = FlowFilter::parse("ip,nw_dst=10.0.0.0/16").unwrap();
        assert!(net.covers(&f2), "a /24 flow falls under a /16 filter");
        let narrow = FlowFilter::parse("ip,nw_dst=10.0.0.0/25").unwrap();
        assert!(
            !narrow.covers(&f2),
            "a /24 flow is broader than a /25 filter"
        );
        assert!(FlowFilter::parse("table=1").unwrap().covers(&f3));
        let c5 = FlowSpec::parse("cookie=0x15,priority=3,actions=drop").unwrap();
        let by_cookie = FlowFilter::parse("cookie=0x5/0xf").unwrap();
        assert!(by_cookie.covers(&c5) && !by_cookie.covers(&f1));
        assert!(!FlowFilter::parse("cookie=0x5/-1").unwrap().covers(&c5));
        assert!(FlowFilter::parse("cookie=0x15/-1,priority=3")
            .unwrap()
            .is_exactly(&c5));
        let set = FlowFilter::parse("cookie=1/-1,cookie=2,actions=NORMAL").unwrap();
        assert_eq!(
            (set.cookie_mask, set.set_cookie),
            (Some((1, u64::MAX)), Some(2))
        );
        assert!(FlowFilter::parse("cookie=x/1")
            .unwrap_err()
            .to_string()
            .contains("is not VALUE/MASK"));
        assert!(!FlowFilter::parse("table=1").unwrap().covers(&f1));
        let strict = FlowFilter::parse("priority=200,tcp,tp_dst=22").unwrap();
        assert!(strict.is_exactly(&f1) && !strict.is_exactly(&f2));
        assert!(
            !FlowFilter::parse("tcp,tp_dst=22").unwrap().is_exactly(&f1),
            "strict needs the priority too"
        );
        assert!(
            f1.same_rule(&FlowSpec::parse("tp_dst=22,tcp,priority=200,actions=NORMAL").unwrap())
        );
        assert_eq!(
            FlowSpec::parse("in_port=vm1,actions=output:up,resubmit(p3,1)")
                .unwrap()
                .named_ports(),
            vec!["vm1", "up", "p3"]
        );
    }
}

impl FlowSpec {
    /// The classifier match of this flow, with named ports resolved by `port`
    /// (`None`: no such port). Fails for fields the datapath cannot match yet.
    pub fn to_match(
        &self,
        port: impl Fn(&PortRef) -> Option<u32>,
    ) -> Result<crate::classifier::Match, String> {
        use crate::flow::*;
        const IN_PORT_ACCESS: Access = Access::Key(IN_PORT);
        let mut v = FlowKey::default();
        let mut m = FlowKey::default();
        for fm in &self.matches {
            if fm.field == "in_port" {
                let p = fm.port.as_ref().ok_or("in_port without a port")?;
                let n = port(p).ok_or_else(|| format!("no port {p}"))?;
                IN_PORT_ACCESS.put_match(&mut v, &mut m, u128::from(n), 0xffff_ffff);
                continue;
            }
            let def = field_def(&fm.field).ok_or_else(|| format!("unknown field {}", fm.field))?;
            def.access.put_match(&mut v, &mut m, fm.value, fm.mask);
        }
        Ok(crate::classifier::Match::new(v, m))
    }
}

#[cfg(test)]
mod to_match_tests {
    use super::*;
    use crate::flow::FlowKey;
    use etherparse::PacketBuilder;

    fn frame_tcp(dport: u16, vlan: Option<u16>) -> Vec<u8> {
        let mut f = Vec::new();
        let b = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        match vlan {
            Some(v) => b
                .single_vlan(v.try_into().unwrap())
                .ipv4([10, 0, 0, 1], [10, 0, 0, 5], 64)
                .tcp(40000, dport, 1, 100)
                .write(&mut f, b"x")
                .unwrap(),
            None => b
                .ipv4([10, 0, 0, 1], [10, 0, 0, 5], 64)
                .tcp(40000, dport, 1, 100)
                .write(&mut f, b"x")
                .unwrap(),
        }
        f
    }

    #[test]
    fn compiled_matches_select_the_right_frames() {
        let ports = |p: &PortRef| match p {
            PortRef::Name(n) if n == "vm1" => Some(7),
            PortRef::Number(n) => Some(*n),
            _ => None,
        };
        let ssh = FlowSpec::parse("tcp,tp_dst=22,actions=drop")
            .unwrap()
            .to_match(ports)
            .unwrap();
        let net = FlowSpec::parse("in_port=vm1,ip,nw_dst=10.0.0.0/24,actions=NORMAL")
            .unwrap()
            .to_match(ports)
            .unwrap();
        let v10 = FlowSpec::parse("dl_vlan=10,actions=NORMAL")
            .unwrap()
            .to_match(ports)
            .unwrap();
        let k22 = FlowKey::extract(&frame_tcp(22, None), 7);
        let k80 = FlowKey::extract(&frame_tcp(80, None), 7);
        let k80_other_port = FlowKey::extract(&frame_tcp(80, None), 8);
        let k80_v10 = FlowKey::extract(&frame_tcp(80, Some(10)), 8);
        assert!(ssh.matches(&k22) && !ssh.matches(&k80));
        assert!(net.matches(&k80) && !net.matches(&k80_other_port));
        assert!(v10.matches(&k80_v10) && !v10.matches(&k80));
        assert!(FlowSpec::parse("in_port=nosuch,actions=drop")
            .unwrap()
            .to_match(ports)
            .is_err());
        assert!(FlowSpec::parse("reg0=1,actions=drop")
            .unwrap()
            .to_match(ports)
            .unwrap()
            .matches(&{
                let mut k = FlowKey::default();
                k.set(crate::flow::REG0, 1);
                k
            }));
    }
}
