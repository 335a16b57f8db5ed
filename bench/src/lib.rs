//! Shared bits of the benchmark's traffic tools: argument parsing and a monotonic clock.

use std::time::Duration;

/// Value of `--name VALUE` in `args`, or `default`.
pub fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> T {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("bad value for {name}: {v}"))
        })
        .unwrap_or(default)
}

/// Value of a required `--name VALUE`.
pub fn req(args: &[String], name: &str) -> String {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| panic!("missing {name}"))
}

pub fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}
