//! UDP request/response latency. `--serve ADDR` echoes; `--to ADDR --count N` sends
//! one datagram at a time and prints `{"p50_us": .., "p99_us": .., "lost": ..}`.

use std::net::UdpSocket;
use std::time::{Duration, Instant};

use vswitch_bench::{arg, req};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--serve") {
        let s = UdpSocket::bind(req(&args, "--serve")).expect("bind");
        println!("{{\"ready\": true}}");
        let mut buf = [0u8; 2048];
        let deadline = Duration::from_secs_f64(arg(&args, "--max", 120.0));
        let start = Instant::now();
        s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
        while start.elapsed() < deadline {
            if let Ok((n, from)) = s.recv_from(&mut buf) {
                if &buf[..n] == b"quit" {
                    break;
                }
                let _ = s.send_to(&buf[..n], from);
            }
        }
        return;
    }
    let to = req(&args, "--to");
    let count: usize = arg(&args, "--count", 10_000);
    let s = UdpSocket::bind("0.0.0.0:0").unwrap();
    s.connect(&to).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut rtts = Vec::with_capacity(count);
    let mut lost = 0;
    let mut lost_in_a_row = 0;
    let mut buf = [0u8; 64];
    // Warm up caches, ARP and MAC tables.
    for i in 0..100u32 {
        let _ = s.send(&i.to_be_bytes());
        let _ = s.recv(&mut buf);
    }
    for i in 0..count as u32 {
        let t = Instant::now();
        s.send(&i.to_be_bytes()).unwrap();
        loop {
            match s.recv(&mut buf) {
                Ok(4) if buf[..4] == i.to_be_bytes() => {
                    rtts.push(t.elapsed().as_nanos() as u64);
                    lost_in_a_row = 0;
                    break;
                }
                Ok(_) => continue,
                Err(_) => {
                    lost += 1;
                    lost_in_a_row += 1;
                    break;
                }
            }
        }
        // A path that answers nothing is not worth 200 ms per remaining probe.
        if lost_in_a_row >= 20 {
            lost += count - 1 - i as usize;
            break;
        }
    }
    let _ = s.send(b"quit");
    rtts.sort_unstable();
    // No answer at all (a switch that drops UDP) is null, not zero latency.
    let pct = |p: f64| {
        rtts.get(((rtts.len() as f64 - 1.0) * p) as usize)
            .map_or("null".to_string(), |&v| format!("{:.1}", v as f64 / 1000.0))
    };
    println!(
        "{{\"p50_us\": {}, \"p99_us\": {}, \"lost\": {lost}}}",
        pct(0.5),
        pct(0.99)
    );
}
