//! What actions do to a packet's flow key.
//!
//! The datapath and `trace` both run actions; the field-changing ones are defined
//! once here, on the [`FlowKey`], so the two cannot disagree. The key is the truth
//! while actions run: later lookups (`resubmit`, `goto_table`) see the changed
//! fields, and the frame's bytes are brought in line with the key only when the
//! frame is output ([`crate::rewrite`]), as Open vSwitch commits its changes.

use crate::flow::{Access, FlowKey, DL_TYPE, NW_TTL, VLAN_TCI};
use crate::flow_syntax::{
    access_of, Action, FieldMatch, FlowSpec, LearnItem, LearnSpec, PortRef, SubField,
};

/// A change to the flow key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOp {
    /// Sets the bits of `mask` in the field to those of `value`.
    Write {
        access: Access,
        value: u128,
        mask: u128,
    },
    /// Copies `bits` bits from `src` (from bit `src_start`) into `dst` (from `dst_start`).
    Move {
        src: Access,
        src_start: u8,
        dst: Access,
        dst_start: u8,
        bits: u8,
    },
    StripVlan,
    /// Pushes an 802.1Q tag with VID 0 if the frame has none (a tag present stays).
    PushVlan,
    DecTtl,
}

/// What a [`KeyOp`] asks of the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Continue,
    /// `dec_ttl` on a TTL of 0 or 1: the frame is dropped (Open vSwitch would send
    /// it to a controller; there is none).
    Drop,
}

fn ones(bits: u8) -> u128 {
    if bits >= 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    }
}

impl KeyOp {
    /// The key change `a` makes, if it is one.
    pub fn of(a: &Action) -> Option<KeyOp> {
        use crate::flow::*;
        let write = |f: Field, value: u128| KeyOp::Write {
            access: Access::Key(f),
            value,
            mask: u128::from(u64::MAX),
        };
        Some(match a {
            Action::ModVlanVid(v) => KeyOp::Write {
                access: Access::Vid,
                value: u128::from(*v),
                mask: 0xfff,
            },
            Action::ModVlanPcp(p) => KeyOp::Write {
                access: Access::Pcp,
                value: u128::from(*p),
                mask: 7,
            },
            Action::StripVlan => KeyOp::StripVlan,
            Action::PushVlan(_) => KeyOp::PushVlan,
            Action::ModDlSrc(m) => write(DL_SRC, mac_value(m)),
            Action::ModDlDst(m) => write(DL_DST, mac_value(m)),
            Action::ModNwSrc(a) => write(NW_SRC, u128::from(u32::from(*a))),
            Action::ModNwDst(a) => write(NW_DST, u128::from(u32::from(*a))),
            // mod_nw_tos sets the DSCP bits and keeps ECN, as in Open vSwitch.
            Action::ModNwTos(t) => KeyOp::Write {
                access: Access::Key(NW_TOS),
                value: u128::from(*t),
                mask: 0xfc,
            },
            Action::ModTpSrc(p) => write(TP_SRC, u128::from(*p)),
            Action::ModTpDst(p) => write(TP_DST, u128::from(*p)),
            Action::DecTtl => KeyOp::DecTtl,
            Action::SetTunnel(id) => write(TUN_ID, u128::from(*id)),
            Action::WriteMetadata { value, mask } => KeyOp::Write {
                access: Access::Key(METADATA),
                value: u128::from(*value),
                mask: u128::from(*mask),
            },
            Action::SetField { field, value, mask } => KeyOp::Write {
                access: access_of(field)?,
                value: *value,
                mask: *mask,
            },
            Action::Load { value, dst } => KeyOp::Write {
                access: dst.access(),
                value: value << dst.start,
                mask: dst.mask(),
            },
            Action::Move { src, dst } => KeyOp::Move {
                src: src.access(),
                src_start: src.start,
                dst: dst.access(),
                dst_start: dst.start,
                bits: dst.bits,
            },
            _ => return None,
        })
    }

    /// Applies the change to `key`.
    #[inline]
    pub fn apply(&self, key: &mut FlowKey) -> Verdict {
        match *self {
            KeyOp::Write {
                access,
                value,
                mask,
            } => access.write(key, value, mask),
            KeyOp::Move {
                src,
                src_start,
                dst,
                dst_start,
                bits,
            } => {
                let v = (src.read(key) >> src_start) & ones(bits);
                dst.write(key, v << dst_start, ones(bits) << dst_start);
            }
            KeyOp::StripVlan => key.set(VLAN_TCI, 0),
            KeyOp::PushVlan => {
                if key.get(VLAN_TCI) & 0x1000 == 0 {
                    key.set(VLAN_TCI, 0x1000);
                }
            }
            KeyOp::DecTtl => {
                if matches!(key.get(DL_TYPE), 0x0800 | 0x86dd) {
                    let ttl = key.get(NW_TTL);
                    if ttl <= 1 {
                        return Verdict::Drop;
                    }
                    key.set(NW_TTL, ttl - 1);
                }
            }
        }
        Verdict::Continue
    }
}

fn mac_value(m: &[u8; 6]) -> u128 {
    m.iter().fold(0u128, |a, &b| (a << 8) | u128::from(b))
}

impl LearnSpec {
    /// The flow this `learn` adds for a packet whose key is `key`.
    pub fn instantiate(&self, key: &FlowKey) -> FlowSpec {
        let mut spec = FlowSpec {
            table: self.table,
            priority: self.priority,
            cookie: self.cookie,
            idle_timeout: self.idle_timeout,
            hard_timeout: self.hard_timeout,
            matches: Vec::new(),
            actions: Vec::new(),
        };
        let mut put = |dst: &SubField, value: u128| {
            let (v, m) = (value << dst.start, dst.mask());
            match spec.matches.iter_mut().find(|f| f.field == dst.field) {
                Some(f) => {
                    f.value = (f.value & !m) | (v & m);
                    f.mask |= m;
                }
                None => spec.matches.push(FieldMatch {
                    field: dst.field.to_string(),
                    value: v & m,
                    mask: m,
                    port: (dst.field == "in_port").then_some(PortRef::Number(v as u32)),
                }),
            }
        };
        for item in &self.items {
            match item {
                LearnItem::MatchValue { dst, value } => put(dst, *value),
                LearnItem::MatchField { dst, src } => put(dst, src.read(key)),
                _ => {}
            }
        }
        spec.matches.sort_by(|a, b| a.field.cmp(&b.field));
        for item in &self.items {
            match item {
                LearnItem::LoadValue { dst, value } => spec.actions.push(Action::Load {
                    value: *value,
                    dst: *dst,
                }),
                LearnItem::LoadField { dst, src } => spec.actions.push(Action::Load {
                    value: src.read(key),
                    dst: *dst,
                }),
                LearnItem::Output { src } => spec
                    .actions
                    .push(Action::Output(PortRef::Number(src.read(key) as u32))),
                _ => {}
            }
        }
        spec
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::*;

    fn op(text: &str) -> KeyOp {
        let spec = FlowSpec::parse(&format!("actions={text}")).unwrap();
        KeyOp::of(&spec.actions[0]).unwrap()
    }

    #[test]
    fn set_field_load_and_move_change_the_key() {
        let mut k = FlowKey::default();
        k.set(DL_SRC, 0x0200_0000_0001);
        op("set_field:10.0.0.9->ip_dst").apply(&mut k);
        assert_eq!(k.get(NW_DST), 0x0a00_0009);
        op("load:0xab->NXM_NX_REG3[8..15]").apply(&mut k);
        assert_eq!(k.get(REG3), 0xab00);
        op("move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[]").apply(&mut k);
        assert_eq!(k.get(DL_DST), 0x0200_0000_0001);
        op("move:reg3[8..15]->tp_dst[0..7]").apply(&mut k);
        assert_eq!(k.get(TP_DST), 0xab);
        op("set_field:5->vlan_vid").apply(&mut k);
        assert_eq!(k.get(VLAN_TCI), 0x1005, "a VID write pushes a tag");
        op("mod_vlan_pcp:3").apply(&mut k);
        assert_eq!(k.get(VLAN_TCI), 0x1005 | (3 << 13));
        op("strip_vlan").apply(&mut k);
        assert_eq!(k.get(VLAN_TCI), 0);
        k.set(NW_TOS, 0x03);
        op("mod_nw_tos:0xb8").apply(&mut k);
        assert_eq!(k.get(NW_TOS), 0xbb, "mod_nw_tos keeps ECN");
        op("set_field:fd00::5->ipv6_dst").apply(&mut k);
        assert_eq!((k.get(IPV6_DST_HI), k.get(IPV6_DST_LO)), (0xfd00 << 48, 5));
        op("write_metadata:0x10/0xf0").apply(&mut k);
        assert_eq!(k.get(METADATA), 0x10);
    }

    #[test]
    fn dec_ttl_drops_at_one() {
        let mut k = FlowKey::default();
        k.set(DL_TYPE, 0x0800);
        k.set(NW_TTL, 2);
        assert_eq!(op("dec_ttl").apply(&mut k), Verdict::Continue);
        assert_eq!(k.get(NW_TTL), 1);
        assert_eq!(op("dec_ttl").apply(&mut k), Verdict::Drop);
        let mut arp = FlowKey::default();
        arp.set(DL_TYPE, 0x0806);
        assert_eq!(op("dec_ttl").apply(&mut arp), Verdict::Continue);
    }

    #[test]
    fn learn_builds_the_tutorial_flow() {
        let spec = FlowSpec::parse(
            "actions=learn(table=10,NXM_OF_VLAN_TCI[0..11],NXM_OF_ETH_DST[]=NXM_OF_ETH_SRC[],\
             load:NXM_OF_IN_PORT[]->NXM_NX_REG0[0..15])",
        )
        .unwrap();
        let Action::Learn(l) = &spec.actions[0] else {
            panic!("not a learn action")
        };
        let mut k = FlowKey::default();
        k.set(IN_PORT, 3);
        k.set(VLAN_TCI, 0x1000 | 20);
        k.set(DL_SRC, 0x5000_0000_0001);
        let learned = l.instantiate(&k);
        assert_eq!(
            learned.to_string(),
            "table=10,priority=32768,dl_dst=50:00:00:00:00:01,vlan_tci=0x14/0xfff,\
             actions=load:0x3->reg0[0..15]"
        );
        // The printed flow is valid flow syntax (the daemon installs it from text).
        assert_eq!(FlowSpec::parse(&learned.to_string()).unwrap(), learned);
    }
}
