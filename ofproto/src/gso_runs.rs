//! Planning the runs of a port's queued frames that leave as one super-frame: UDP
//! datagrams ([`crate::udp_gso`]) and TCP segments ([`crate::tcp_gso`]) under one
//! loop, so both kinds end, cap and start their runs by the same walk.

use std::ops::Range;

use crate::vnet_hdr::VnetHdr;
use crate::{tcp_gso, udp_gso};

/// Room for a run's headers (virtio-net header and frame headers), UDP's or TCP's.
pub const HEAD_MAX: usize = tcp_gso::HEAD_MAX;
const _: () = assert!(udp_gso::HEAD_MAX <= HEAD_MAX);

/// The most UDP payload one super-frame carries: under both IPv4's limit (65507
/// bytes) and IPv6's (65527), whatever the IP header.
const UDP_MAX: usize = 65_535 - 40 - 8;

/// What a frame is to a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunShape {
    Udp(udp_gso::Shape),
    Tcp(tcp_gso::Shape),
}

impl RunShape {
    /// The shape of `frame` (without its virtio-net header `hdr`), if it may join a
    /// run; UDP only when `udp` (the kernel takes UDP segmentation from us).
    pub fn of(frame: &[u8], hdr: &VnetHdr, udp: bool) -> Option<RunShape> {
        match udp.then(|| udp_gso::shape(frame, hdr)).flatten() {
            Some(u) => Some(RunShape::Udp(u)),
            None => tcp_gso::shape(frame, hdr).map(RunShape::Tcp),
        }
    }

    /// Bytes before the payload: Ethernet, IP, UDP or TCP.
    pub fn head_len(&self) -> usize {
        match self {
            RunShape::Udp(s) => s.head_len(),
            RunShape::Tcp(s) => s.head_len(),
        }
    }

    fn payload(&self) -> usize {
        match self {
            RunShape::Udp(s) => usize::from(s.payload),
            RunShape::Tcp(s) => usize::from(s.payload),
        }
    }

    /// Whether a run that `first` starts ends with this frame.
    fn ends_run(&self, first: &RunShape) -> bool {
        match (self, first) {
            (RunShape::Udp(s), RunShape::Udp(f)) => s.payload < f.payload,
            (RunShape::Tcp(s), RunShape::Tcp(f)) => s.ends_run(f),
            _ => true,
        }
    }

    /// The most payload a run this frame starts may carry: what one IP length
    /// field holds.
    fn max_total(&self) -> usize {
        match self {
            RunShape::Udp(_) => UDP_MAX,
            // IPv4's total length, the smaller.
            RunShape::Tcp(s) => 0xffff - (s.head_len() - 14),
        }
    }
}

/// Walks `n` queued frames, `shape(k)` giving frame `k`'s bytes and shape (`None`:
/// it joins no run), and calls `run(frames, head, head_len)` for every run of two
/// or more that can leave as one super-frame: `head[..head_len]` is its virtio-net
/// header and headers, each frame's payload follows from its own
/// [`RunShape::head_len`] on. Runs are consecutive frames, at most 64.
pub fn plan<'a>(
    n: usize,
    shape: impl Fn(usize) -> Option<(&'a [u8], RunShape)>,
    mut run: impl FnMut(Range<usize>, &[u8; HEAD_MAX], usize),
) {
    // The kernel's UDP limit; TCP's (65535 per device) binds later.
    const MAX_SEGMENTS: usize = udp_gso::MAX_SEGMENTS;
    let mut i = 0;
    while i + 1 < n {
        let Some((a, sa)) = shape(i) else {
            i += 1;
            continue;
        };
        let (mut j, mut total, mut last) = (i + 1, sa.payload(), sa);
        while j < n && j - i < MAX_SEGMENTS && !last.ends_run(&sa) {
            let Some((b, sb)) = shape(j) else {
                break;
            };
            let joins = match (&sa, &sb) {
                (RunShape::Udp(x), RunShape::Udp(y)) => udp_gso::joins(a, x, b, y, j - i),
                (RunShape::Tcp(x), RunShape::Tcp(y)) => tcp_gso::joins(a, x, b, y, j - i, total),
                _ => false,
            };
            if !joins || total + sb.payload() > sa.max_total() {
                break;
            }
            total += sb.payload();
            last = sb;
            j += 1;
        }
        if j - i >= 2 {
            let mut head = [0u8; HEAD_MAX];
            let len = match (&sa, &last) {
                (RunShape::Udp(s), _) => {
                    let h = (&mut head[..udp_gso::HEAD_MAX]).try_into().unwrap();
                    udp_gso::super_head(a, s, total, h)
                }
                (RunShape::Tcp(s), RunShape::Tcp(l)) => {
                    tcp_gso::super_head(a, s, total, l, &mut head)
                }
                _ => None,
            };
            if let Some(len) = len {
                run(i..j, &head, len);
            }
        }
        i = j;
    }
}
