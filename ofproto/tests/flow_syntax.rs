//! The flow syntax corpus: every line parses; printing then parsing gives the same
//! flow; printing is stable. And invalid flows fail with the expected message.

use ofproto::flow_syntax::FlowSpec;

#[test]
fn corpus_round_trips() {
    let corpus = include_str!("data/flows.txt");
    let mut n = 0;
    for (i, line) in corpus.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let spec = FlowSpec::parse(line).unwrap_or_else(|e| panic!("line {}: {line}\n{e}", i + 1));
        let printed = spec.to_string();
        let again = FlowSpec::parse(&printed)
            .unwrap_or_else(|e| panic!("line {}: printed form {printed}\n{e}", i + 1));
        assert_eq!(again, spec, "line {}: {line}\nprinted: {printed}", i + 1);
        assert_eq!(
            again.to_string(),
            printed,
            "line {}: printing is not stable",
            i + 1
        );
        n += 1;
    }
    assert!(n >= 100, "corpus has only {n} flows");
}

#[test]
fn canonical_forms() {
    let a = FlowSpec::parse("tcp,tp_dst=22,actions=drop").unwrap();
    let b = FlowSpec::parse("tp_dst=22,dl_type=0x0800,nw_proto=6,actions=drop").unwrap();
    assert_eq!(a, b, "shorthand and spelled-out fields differ");
    assert_eq!(
        a.to_string(),
        "table=0,priority=32768,tcp,tp_dst=22,actions=drop"
    );
    let c = FlowSpec::parse("ip,nw_dst=10.0.0.77/24,actions=NORMAL").unwrap();
    assert_eq!(
        c.to_string(),
        "table=0,priority=32768,ip,nw_dst=10.0.0.0/24,actions=NORMAL"
    );
}

#[test]
fn invalid_flows_say_what_and_where() {
    let cases = [
        (
            "ip,nw_scr=10.0.0.1,actions=drop",
            "unknown field 'nw_scr' (did you mean 'nw_src'?) at column 4",
        ),
        (
            "tp_dst=22,actions=drop",
            "tp_dst requires tcp, udp or sctp (add e.g. 'tcp,') at column 1",
        ),
        ("ip,tcp_flags=0x2,actions=drop", "tcp_flags requires tcp"),
        ("nw_src=10.0.0.1,actions=drop", "nw_src requires ip or arp"),
        ("ipv6_src=::1,actions=drop", "ipv6_src requires ipv6"),
        (
            "icmp_type=8,actions=drop",
            "icmp_type requires icmp or icmp6",
        ),
        ("arp_op=1,actions=drop", "arp_op requires arp"),
        (
            "priority=70000,actions=drop",
            "priority: \"70000\" is not a number up to 65535 at column 1",
        ),
        (
            "table=255,actions=drop",
            "table: \"255\" is not a number up to 254",
        ),
        (
            "ip,nw_dst=10.0.0.300,actions=drop",
            "nw_dst: \"10.0.0.300\" is not an IPv4 address at column 4",
        ),
        ("dl_src=00:11:22,actions=drop", "is not a MAC address"),
        (
            "ip,nw_dst=10.0.0.0/33,actions=drop",
            "is not a valid prefix length",
        ),
        ("dl_type=0x0800,actions=drop,,NORMAL", "empty action"),
        ("in_port=1", "missing actions="),
        (
            "in_port=1,actions=frobnicate:3",
            "action \"frobnicate:3\": unknown action",
        ),
        ("actions=mod_vlan_vid:4096", "expected a number up to 4095"),
        ("tcp,udp,actions=drop", "nw_proto set twice"),
        ("ip,ipv6,actions=drop", "dl_type set twice"),
        (
            "in_port=1,in_port=2,actions=drop",
            "in_port is matched twice",
        ),
        (
            "dl_vlan=10/0xff,actions=drop",
            "dl_vlan: this field cannot be masked",
        ),
        ("tcp=1,actions=drop", "'tcp' takes no value"),
        ("reg16=1,actions=drop", "unknown field 'reg16'"),
        ("nw_proto=6,actions=drop", "nw_proto requires ip or ipv6"),
        ("dl_vlan=4096,actions=drop", "does not fit in 12 bits"),
        (
            "actions=load:0x100->reg0[0..7]",
            "0x100 does not fit in reg0[0..7]",
        ),
        (
            "actions=move:reg0[0..3]->reg1[0..7]",
            "reg0[0..3] is 4 bits but reg1[0..7] is 8 bits",
        ),
        (
            "actions=load:1->reg0[8..40]",
            "bits 8..40 are outside reg0's 32 bits",
        ),
        ("actions=load:1->reg0[3..1]", "bits 3..1 are outside"),
        (
            "actions=set_field:1->nw_scr",
            "unknown field 'nw_scr' (did you mean 'nw_src'?)",
        ),
        ("actions=set_field:1->in_port", "in_port cannot be set"),
        (
            "actions=set_field:10.0.0.300->nw_dst",
            "nw_dst: \"10.0.0.300\" is not an IPv4 address",
        ),
        ("actions=note:abc", "expected hex bytes"),
        (
            "actions=push_vlan:0x9100",
            "the TPID must be 0x8100 or 0x88a8",
        ),
        (
            "actions=learn(table=300)",
            "learn: table: \"300\" is not a number up to 254",
        ),
        (
            "actions=learn(NXM_OF_ETH_DST[]=NXM_OF_IP_SRC[])",
            "learn: nw_src[] is 32 bits but dl_dst[] is 48 bits",
        ),
        (
            "actions=learn(load:reg0[]->reg99[])",
            "unknown field 'reg99'",
        ),
    ];
    for (flow, want) in cases {
        let e = FlowSpec::parse(flow).expect_err(flow).to_string();
        assert!(e.contains(want), "{flow}: got \"{e}\", want \"{want}\"");
    }
}
