//! The flow cache's hit path as the datapath runs it per frame: extract the key
//! from the frame's bytes, hash it, find the cached decision. Issue 5 asks for at
//! least 20 million frames/s on one core.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use etherparse::PacketBuilder;
use ofproto::flow::FlowKey;
use ofproto::flow_cache::FlowCache;

/// `n` distinct TCP/IPv4 frames (different ports and addresses).
fn frames(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| {
            let mut f = Vec::new();
            PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
                .ipv4([10, 0, (i >> 8) as u8, i as u8], [10, 1, 0, 1], 64)
                .tcp(1024 + i as u16, 80, 1, 1000)
                .write(&mut f, &[0u8; 18])
                .unwrap();
            f
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("flow_cache");
    for n in [64usize, 1024, 4096] {
        let fs = frames(n);
        let mut cache = FlowCache::new(8192);
        for (i, f) in fs.iter().enumerate() {
            let k = FlowKey::extract(f, 1);
            let h = cache.hash(0, &k);
            cache.put(h, 0, &k, i as u32);
        }
        g.throughput(Throughput::Elements(n as u64));
        g.bench_with_input(BenchmarkId::new("extract_hash_hit", n), &fs, |b, fs| {
            b.iter(|| {
                for f in fs {
                    let k = FlowKey::extract(black_box(f), 1);
                    let h = cache.hash(0, &k);
                    black_box(cache.get(h, 0, &k));
                }
            })
        });
    }
    // The parts, for the profile: key extraction alone.
    let fs = frames(1024);
    g.throughput(Throughput::Elements(1024));
    g.bench_with_input(BenchmarkId::new("extract_only", 1024), &fs, |b, fs| {
        b.iter(|| {
            for f in fs {
                black_box(FlowKey::extract(black_box(f), 1));
            }
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).measurement_time(std::time::Duration::from_secs(2)).warm_up_time(std::time::Duration::from_millis(500));
    targets = bench
}
criterion_main!(benches);
