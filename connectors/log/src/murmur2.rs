//! Kafka's default partitioner hash.
//!
//! A port of `org.apache.kafka.common.utils.Utils.murmur2` and `toPositive`: a keyed record lands
//! in partition `to_positive(murmur2(key)) % partitions`, the same partition Kafka's Java producer
//! would choose, so data can move between Rill's log and a Kafka cluster without reshuffling.

/// Kafka's 32-bit murmur2 hash of `data` (seed `0x9747b28c`), bit-for-bit equal to the Java client.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;

    let length = data.len();
    // Java computes `seed ^ length` on ints: the length wraps to 32 bits.
    let mut h: u32 = SEED ^ (length as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// Kafka's `Utils.toPositive`: clears the sign bit (not `abs`, which overflows on `i32::MIN`).
pub fn to_positive(number: i32) -> i32 {
    number & 0x7fff_ffff
}

/// The partition Kafka's default partitioner picks for a non-null key.
pub fn partition_for_key(key: &[u8], partitions: u32) -> u32 {
    // `to_positive` is never negative, so the cast is lossless.
    (to_positive(murmur2(key)) as u32) % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Vectors from Kafka's `UtilsTest.testMurmur2` (and the empty array).
    #[test]
    fn matches_kafka_utils_test_vectors() {
        let cases: [(&[u8], i32); 7] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
            (b"abc", 479_470_107),
            (b"", 275_646_681),
        ];
        for (input, expected) in cases {
            assert_eq!(murmur2(input), expected, "murmur2({:?})", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn positive_modulo_matches_kafka() {
        // Kafka: toPositive(murmur2("foobar")) % 50 == 16.
        assert_eq!(partition_for_key(b"foobar", 50), 16);
        assert_eq!(to_positive(i32::MIN), 0);
        assert_eq!(to_positive(-1), i32::MAX);
        for n in 1..10 {
            assert!(partition_for_key(b"some key", n) < n);
        }
    }
}
