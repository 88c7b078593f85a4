//! Corruption test: flip bytes in segment files, reopen, and check that recovery keeps every
//! record before the damage, serves nothing damaged, and that appends continue.

use std::path::{Path, PathBuf};

use rand::{Rng, SeedableRng};
use rill_log::{Durability, Log, LogError, Record, TopicConfig};

const RECORDS: u64 = 400;

/// Random seed, or `RILL_CORRUPTION_SEED` to replay a failure.
fn seed() -> u64 {
    let seed = std::env::var("RILL_CORRUPTION_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("corruption seed {seed} (set RILL_CORRUPTION_SEED to replay)");
    seed
}

fn value(i: u64) -> String {
    format!("value-{i}-{}", "v".repeat((i % 97) as usize))
}

fn build(dir: &Path, segment_bytes: u64) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
    let log = Log::open(dir).expect("open");
    let cfg = TopicConfig { segment_bytes, retention_ms: None, durability: Durability::None, ..TopicConfig::default() };
    log.create_topic("t", cfg).expect("create");
    let mut i = 0;
    while i < RECORDS {
        let n = (1 + i % 4).min(RECORDS - i);
        let records: Vec<Record> =
            (i..i + n).map(|j| Record::new(j as i64, Some(format!("k{j}")), Some(value(j)))).collect();
        rt.block_on(log.append("t", 0, &records)).expect("append");
        i += n;
    }
}

fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).expect("ls") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("type").is_dir() {
            std::fs::create_dir_all(&target).expect("mkdir");
            copy_dir(&entry.path(), &target);
        } else if entry.file_name() != ".lock" {
            std::fs::copy(entry.path(), &target).expect("copy");
        }
    }
}

fn segments(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir.join("topics/t/0"))
        .expect("ls")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    v.sort();
    v
}

/// Byte ranges (start, end, last offset) of the batches in a segment file (parsed by hand).
fn batch_spans(file: &Path) -> Vec<(u64, u64, u64)> {
    let bytes = std::fs::read(file).expect("read");
    let mut out = Vec::new();
    let mut pos = 0usize;
    while pos + 61 <= bytes.len() {
        let base = i64::from_be_bytes(bytes[pos..pos + 8].try_into().expect("8")) as u64;
        let len = i32::from_be_bytes(bytes[pos + 8..pos + 12].try_into().expect("4")) as usize + 12;
        let delta = i32::from_be_bytes(bytes[pos + 23..pos + 27].try_into().expect("4")) as u64;
        out.push((pos as u64, (pos + len) as u64, base + delta));
        pos += len;
    }
    out
}

/// Reads everything it can; on a corrupt batch skips to the next segment. Returns served
/// (offset, value) pairs and the number of corruption errors met.
fn read_served(log: &Log) -> (Vec<(u64, String)>, usize) {
    let mut out = Vec::new();
    let mut errors = 0;
    let mut offset = log.start_offset("t", 0).expect("start");
    let end = log.end_offset("t", 0).expect("end");
    while offset < end {
        match log.read("t", 0, offset, 2048) {
            Ok(f) => {
                for r in f.records() {
                    out.push((r.offset, String::from_utf8(r.value.expect("value").to_vec()).expect("utf8")));
                }
                offset = f.next_offset();
            }
            Err(LogError::Corrupt { .. }) => {
                errors += 1;
                offset += 1;
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
    }
    (out, errors)
}

#[test]
fn flipped_bytes_in_the_tail_are_truncated_and_appends_continue() {
    let pristine = tempfile::tempdir().expect("tempdir");
    build(pristine.path(), 1 << 20); // one segment
    let seed = seed();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("rt");
    for round in 0..12 {
        let dir = tempfile::tempdir().expect("tempdir");
        copy_dir(pristine.path(), dir.path());
        let seg = segments(dir.path()).pop().expect("segment");
        let spans = batch_spans(&seg);
        let size = std::fs::metadata(&seg).expect("meta").len();
        // Damage 1..4 bytes somewhere in the last third.
        let at = rng.random_range(size * 2 / 3..size);
        let mut bytes = std::fs::read(&seg).expect("read");
        let flips = rng.random_range(1..=4u64);
        for k in 0..flips {
            if let Some(b) = bytes.get_mut((at + k) as usize) {
                *b ^= rng.random_range(1..=255u8);
            }
        }
        std::fs::write(&seg, &bytes).expect("write");
        // Everything in batches that end before the damage must survive.
        let intact_end = spans.iter().filter(|s| s.1 <= at).map(|s| s.2 + 1).max().unwrap_or(0);

        let log = Log::open(dir.path()).expect("reopen after corruption");
        let (served, errors) = read_served(&log);
        assert_eq!(errors, 0, "round {round}: the tail was truncated, nothing corrupt remains");
        for (o, v) in &served {
            assert_eq!(v, &value(*o), "round {round}: record {o} served damaged");
        }
        let offsets: Vec<u64> = served.iter().map(|s| s.0).collect();
        assert_eq!(offsets, (0..offsets.len() as u64).collect::<Vec<_>>(), "round {round}: a prefix survives");
        assert!(offsets.len() as u64 >= intact_end, "round {round}: lost records before the damage at {at}");
        let end = log.end_offset("t", 0).expect("end");
        assert_eq!(end, offsets.len() as u64);
        let ack = rt
            .block_on(log.append("t", 0, &[Record::new(1, Some("new"), Some(value(end)))]))
            .expect("append after recovery");
        assert_eq!(ack.base_offset, end);
        drop(log);
        let log = Log::open(dir.path()).expect("reopen again");
        assert_eq!(log.end_offset("t", 0).expect("end"), end + 1);
    }
}

#[test]
fn damage_inside_closed_segments_is_never_served() {
    let pristine = tempfile::tempdir().expect("tempdir");
    build(pristine.path(), 4096); // many segments
    let seed = seed();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    for round in 0..8 {
        let dir = tempfile::tempdir().expect("tempdir");
        copy_dir(pristine.path(), dir.path());
        let segs = segments(dir.path());
        assert!(segs.len() > 4);
        let seg = &segs[rng.random_range(0..segs.len() - 1)];
        let mut bytes = std::fs::read(seg).expect("read");
        let at = rng.random_range(0..bytes.len());
        bytes[at] ^= 0x40;
        std::fs::write(seg, &bytes).expect("write");
        if round % 2 == 0 {
            // Also lose an index file: it is rebuilt.
            let _ = std::fs::remove_file(seg.with_extension("index"));
        }
        let log = Log::open(dir.path()).expect("reopen after corruption");
        let (served, _errors) = read_served(&log);
        for (o, v) in &served {
            assert_eq!(v, &value(*o), "round {round}: record {o} served damaged");
        }
        assert!(served.len() as u64 > RECORDS / 2, "round {round}: most records are still served");
        assert_eq!(log.end_offset("t", 0).expect("end"), RECORDS, "later segments are kept");
    }
}
