//! The Internet checksum (RFC 1071), with an accumulator wide enough to sum a
//! 64 KiB super-frame without intermediate folding.

/// Adds `data` to a running ones'-complement sum. Bytes are summed as big-endian
/// 16-bit words; an odd trailing byte is padded with zero.
#[inline]
pub fn add(mut acc: u64, data: &[u8]) -> u64 {
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        // Sum the four 16-bit words of w: split into two 32-bit halves to keep carries.
        acc += (w >> 32) + (w & 0xffff_ffff);
    }
    let mut rest = chunks.remainder();
    while rest.len() >= 2 {
        acc += u64::from(u16::from_be_bytes([rest[0], rest[1]]));
        rest = &rest[2..];
    }
    if let [b] = rest {
        acc += u64::from(*b) << 8;
    }
    acc
}

/// Folds a running sum to 16 bits (not complemented).
#[inline]
pub fn fold(mut acc: u64) -> u16 {
    while acc >> 16 != 0 {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The checksum to store in a header: the complement of the folded sum.
#[inline]
pub fn finish(acc: u64) -> u16 {
    !fold(acc)
}

/// Checksum of `data` alone.
pub fn checksum(data: &[u8]) -> u16 {
    finish(add(0, data))
}

/// Sum of the IPv4 pseudo-header for an L4 segment of `l4_len` bytes.
pub fn pseudo_v4(src: &[u8], dst: &[u8], proto: u8, l4_len: usize) -> u64 {
    let acc = add(0, src);
    let acc = add(acc, dst);
    acc + u64::from(proto) + l4_len as u64
}

/// Sum of the IPv6 pseudo-header for an L4 segment of `l4_len` bytes.
pub fn pseudo_v6(src: &[u8], dst: &[u8], proto: u8, l4_len: usize) -> u64 {
    let acc = add(0, src);
    let acc = add(acc, dst);
    acc + u64::from(proto) + l4_len as u64
}

/// Sum of the pseudo-header for an L4 segment of `l4_len` bytes behind the IPv4
/// (`v4`) or IPv6 header at `l3` in `frame`: its addresses, `proto`, the length.
pub fn pseudo_at(frame: &[u8], l3: usize, v4: bool, proto: u8, l4_len: usize) -> u64 {
    if v4 {
        pseudo_v4(
            &frame[l3 + 12..l3 + 16],
            &frame[l3 + 16..l3 + 20],
            proto,
            l4_len,
        )
    } else {
        pseudo_v6(
            &frame[l3 + 8..l3 + 24],
            &frame[l3 + 24..l3 + 40],
            proto,
            l4_len,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3: bytes 00 01 f2 03 f4 f5 f6 f7 sum to ddf2.
        let d = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(add(0, &d)), 0xddf2);
        assert_eq!(checksum(&d), !0xddf2);
    }

    #[test]
    fn wide_and_narrow_paths_agree() {
        let data: Vec<u8> = (0..70_001u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in [0, 1, 2, 7, 8, 9, 15, 16, 17, 1500, 65_535, 70_001] {
            let d = &data[..len];
            let mut naive: u64 = 0;
            for c in d.chunks(2) {
                let w = if c.len() == 2 {
                    u16::from_be_bytes([c[0], c[1]])
                } else {
                    u16::from(c[0]) << 8
                };
                naive += u64::from(w);
            }
            assert_eq!(fold(add(0, d)), fold(naive), "len {len}");
        }
    }

    #[test]
    fn ipv4_header_checksum() {
        // A real IPv4 header with its checksum (0xb861) zeroed.
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum(&h), 0xb861);
        h[10..12].copy_from_slice(&0xb861u16.to_be_bytes());
        assert_eq!(
            checksum(&h),
            0,
            "a header with a valid checksum sums to zero"
        );
    }
}
