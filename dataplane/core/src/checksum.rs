//! The Internet checksum (RFC 1071): the ones' complement sum the IPv4 header, TCP, UDP and
//! ICMP checksums are made of. One place for it: the segmentation of frames too long for the
//! output (`segment`) writes checksums with it, and the test fixtures build and check frames
//! with it.

/// Adds the 16-bit big-endian words of `bytes` to `sum` (not folded yet); an odd last byte
/// counts as the high byte of a word, so only the last of several pieces may be odd.
pub fn add(mut sum: u32, bytes: &[u8]) -> u32 {
    let mut words = bytes.chunks_exact(2);
    for w in words.by_ref() {
        sum = sum.wrapping_add(u32::from(u16::from_be_bytes([w[0], w[1]])));
        // Fold as we go, so no length of input can overflow the accumulator.
        if sum > 0xFFFF_0000 {
            sum = (sum & 0xFFFF) + (sum >> 16);
        }
    }
    if let [last] = words.remainder() {
        sum = sum.wrapping_add(u32::from(*last) << 8);
    }
    sum
}

/// The sum folded to 16 bits (0xFFFF over bytes whose checksum is right).
pub fn fold(mut sum: u32) -> u16 {
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    sum as u16
}

/// The checksum to write: the complement of the folded sum.
pub fn finish(sum: u32) -> u16 {
    !fold(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc_1071_example_and_an_odd_tail() {
        // RFC 1071 §3: 00 01 f2 03 f4 f5 f6 f7 sums to ddf2.
        assert_eq!(fold(add(0, &[0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7])), 0xddf2);
        assert_eq!(fold(add(0, &[0x12])), 0x1200);
        // A long run of 0xFFFF words cannot overflow the accumulator.
        assert_eq!(fold(add(0, &vec![0xFF; 1 << 20])), 0xFFFF);
    }
}
