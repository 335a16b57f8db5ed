//! Classifier lookups per second at 1, 100, 10k and 100k rules with a mix of masks,
//! beside a linear scan of the same rules in the same run.
//!
//! `cargo bench -p ofproto --bench classifier`

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ofproto::classifier::{Classifier, Match};
use ofproto::flow::{FlowKey, DL_TYPE, IN_PORT, NW_DST, NW_PROTO, NW_SRC, TP_DST};

fn xorshift(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// `n` rules spread over 8 masks, shaped like real tables: exact in_port, /24 and /16
/// destinations, ports, protocols and their combinations.
fn rules(n: usize) -> Classifier<usize> {
    let mut c = Classifier::new();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..n {
        let r = xorshift(&mut x);
        let mut v = FlowKey::default();
        let mut m = FlowKey::default();
        v.set(DL_TYPE, 0x0800);
        m.set(DL_TYPE, 0xffff);
        match i % 8 {
            0 => {
                v.set(IN_PORT, r % 4096);
                m.set(IN_PORT, 0xffff_ffff);
            }
            1 => {
                v.set(NW_DST, r & 0xffff_ff00);
                m.set(NW_DST, 0xffff_ff00);
            }
            2 => {
                v.set(NW_DST, r & 0xffff_0000);
                m.set(NW_DST, 0xffff_0000);
            }
            3 => {
                v.set(NW_PROTO, 6);
                m.set(NW_PROTO, 0xff);
                v.set(TP_DST, r % 65536);
                m.set(TP_DST, 0xffff);
            }
            4 => {
                v.set(NW_SRC, r & 0xffff_ffff);
                m.set(NW_SRC, 0xffff_ffff);
            }
            5 => {
                v.set(NW_SRC, r & 0xffff_ff00);
                m.set(NW_SRC, 0xffff_ff00);
                v.set(NW_DST, (r >> 32) & 0xffff_ff00);
                m.set(NW_DST, 0xffff_ff00);
            }
            6 => {
                v.set(IN_PORT, r % 4096);
                m.set(IN_PORT, 0xffff_ffff);
                v.set(NW_PROTO, 17);
                m.set(NW_PROTO, 0xff);
            }
            _ => {
                v.set(NW_DST, r & 0xffff_ffff);
                m.set(NW_DST, 0xffff_ffff);
            }
        }
        c.insert(Match::new(v, m), (r % 1000) as u16 + 1, i);
    }
    c.insert(Match::any(), 0, usize::MAX);
    c
}

fn keys(n: usize) -> Vec<FlowKey> {
    let mut x = 0x1234_5678u64;
    (0..n)
        .map(|_| {
            let r = xorshift(&mut x);
            let mut k = FlowKey::default();
            k.set(DL_TYPE, 0x0800);
            k.set(IN_PORT, r % 4096);
            k.set(NW_SRC, r & 0xffff_ffff);
            k.set(NW_DST, (r >> 16) & 0xffff_ffff);
            k.set(NW_PROTO, if r & 1 == 0 { 6 } else { 17 });
            k.set(TP_DST, (r >> 40) % 65536);
            k
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let ks = keys(1024);
    let mut g = c.benchmark_group("classifier_lookup");
    for n in [1usize, 100, 10_000, 100_000] {
        let cls = rules(n);
        g.throughput(Throughput::Elements(ks.len() as u64));
        g.bench_with_input(BenchmarkId::new("tuple_space", n), &cls, |b, cls| {
            b.iter(|| {
                for k in &ks {
                    black_box(cls.lookup(black_box(k)));
                }
            })
        });
        if n <= 10_000 {
            g.throughput(Throughput::Elements(64));
            g.bench_with_input(BenchmarkId::new("linear_scan", n), &cls, |b, cls| {
                b.iter(|| {
                    for k in &ks[..64] {
                        black_box(cls.lookup_linear(black_box(k)));
                    }
                })
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(2)).warm_up_time(std::time::Duration::from_millis(500));
    targets = bench
}
criterion_main!(benches);
