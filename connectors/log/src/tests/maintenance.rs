//! Retention and compaction, including the compaction and timestamp-lookup property tests.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use proptest::prelude::*;

use super::{read_all, rec, rt, small, Row};
use crate::{CleanupPolicy, Log, LogError, Record, TopicConfig};

#[test]
fn retention_deletes_old_segments_but_never_the_active_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path()).expect("open");
    let rt = rt();
    let cfg = TopicConfig { retention_bytes: Some(8192), ..small(1) };
    log.create_topic("t", cfg).expect("create");
    for i in 0..200i64 {
        rt.block_on(log.append("t", 0, &[rec(i, Some("k"), Some(&"v".repeat(100)))])).expect("append");
    }
    let p = log.partition("t", 0).expect("p");
    let before = p.segment_count();
    log.enforce_retention(1_000).expect("retention");
    assert!(p.segment_count() < before);
    assert!(p.size_bytes() >= 8192 - 4096, "keeps at least the limit minus one segment");
    assert!(p.size_bytes() < 8192 + 4096 + 200);
    let start = log.start_offset("t", 0).expect("start");
    assert!(start > 0);
    assert!(matches!(log.read("t", 0, 0, 100), Err(LogError::OffsetOutOfRange { .. })));
    let rows = read_all(&log, "t", 0);
    assert_eq!(rows.first().map(|r| r.0), Some(start));
    assert_eq!(rows.last().map(|r| r.0), Some(199));

    // Time: everything older than retention.ms, except the active segment.
    log.create_topic("old", TopicConfig { retention_ms: Some(1000), ..small(1) }).expect("create");
    for i in 0..100i64 {
        rt.block_on(log.append("old", 0, &[rec(i, Some("k"), Some(&"v".repeat(100)))])).expect("append");
    }
    log.enforce_retention(50).expect("nothing is old yet");
    assert_eq!(log.start_offset("old", 0).expect("start"), 0);
    log.enforce_retention(1_000_000).expect("all old");
    let p = log.partition("old", 0).expect("p");
    assert_eq!(p.segment_count(), 1);
    assert_eq!(log.end_offset("old", 0).expect("end"), 100);
    drop(log);
    let log = Log::open(dir.path()).expect("reopen");
    assert_eq!(log.start_offset("t", 0).expect("start"), start);
}

#[test]
fn delete_records_frees_whole_segments_before_the_offset_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path()).expect("open");
    let rt = rt();
    log.create_topic("r", small(1)).expect("create");
    for i in 0..200i64 {
        rt.block_on(log.append("r", 0, &[rec(i, Some("k"), Some(&"v".repeat(100)))])).expect("append");
    }
    let p = log.partition("r", 0).expect("p");
    let before = p.segment_count();
    assert!(before > 3, "small segments: {before}");
    assert_eq!(log.delete_records("r", 0, 0).expect("nothing"), 0);
    let start = log.delete_records("r", 0, 120).expect("delete");
    assert!(start > 0 && start <= 120, "the start moves to the segment holding 120: {start}");
    assert!(p.segment_count() < before);
    let rows = read_all(&log, "r", 0);
    assert_eq!(rows.first().map(|r| r.0), Some(start), "records from the new start are all there");
    assert_eq!(rows.len() as u64, 200 - start);
    // Never the active segment, even when every record is before the offset.
    log.delete_records("r", 0, 1_000).expect("delete all");
    assert_eq!(p.segment_count(), 1);
    assert_eq!(log.end_offset("r", 0).expect("end"), 200);
    drop(log);
    let log = Log::open(dir.path()).expect("reopen");
    assert!(log.start_offset("r", 0).expect("start") > start, "the deletion survives a restart");
}

#[test]
fn compaction_keeps_newest_per_key_and_expires_tombstones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = rt();
    let log = Log::open(dir.path()).expect("open");
    let cfg = TopicConfig { cleanup_policy: CleanupPolicy::Compact, delete_retention_ms: 1000, ..small(1) };
    log.create_topic("c", cfg).expect("create");
    let pad = "p".repeat(200);
    for i in 0..60i64 {
        let k = format!("k{}", i % 5);
        let v = if i == 57 { None } else { Some(format!("{i}-{pad}")) };
        rt.block_on(log.append("c", 0, &[rec(i, Some(&k), v.as_deref())])).expect("append");
    }
    // Push everything into closed segments.
    for i in 0..20i64 {
        rt.block_on(log.append("c", 0, &[rec(100 + i, Some("other"), Some(&pad))])).expect("append");
    }
    let stats = log.compact_with_stats(10_000).expect("compact");
    assert!(stats.records_removed > 50, "{stats:?}");
    let rows = read_all(&log, "c", 0);
    let latest: BTreeMap<Vec<u8>, (u64, Option<Vec<u8>>)> =
        rows.iter().map(|r| (r.2.clone().unwrap_or_default(), (r.0, r.3.clone()))).collect();
    // k2's newest record is the tombstone at offset 57: kept until its horizon.
    assert_eq!(latest.get(b"k2".as_slice()), Some(&(57, None)));
    assert_eq!(latest.get(b"k1".as_slice()).map(|x| x.0), Some(56));
    let keys_seen: Vec<_> = rows.iter().filter(|r| r.2.as_deref() != Some(b"other")).collect();
    assert_eq!(keys_seen.len(), 5, "one record per key: {keys_seen:?}");
    // Before the horizon nothing changes; after it the tombstone goes.
    log.compact(10_500).expect("compact");
    assert!(read_all(&log, "c", 0).iter().any(|r| r.0 == 57));
    log.compact(11_001).expect("compact");
    assert!(!read_all(&log, "c", 0).iter().any(|r| r.0 == 57));
    let rows = read_all(&log, "c", 0);
    drop(log);
    let log = Log::open(dir.path()).expect("reopen");
    assert_eq!(read_all(&log, "c", 0), rows);
    assert_eq!(log.end_offset("c", 0).expect("end"), 80);
}

#[test]
fn compaction_drops_aborted_transactions_and_skips_open_ones() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = rt();
    let log = Log::open(dir.path()).expect("open");
    let cfg = TopicConfig { cleanup_policy: CleanupPolicy::Compact, ..small(1) };
    log.create_topic("c", cfg).expect("create");
    let pad = "p".repeat(300);
    let committed = format!("committed-{pad}");
    rt.block_on(log.append("c", 0, &[rec(0, Some("k"), Some(&committed))])).expect("append");
    // An aborted newer value of `k` must not survive compaction as "the newest".
    for i in 0..10i64 {
        rt.block_on(log.append_transactional("c", 0, &[rec(i, Some("k"), Some(&format!("aborted-{pad}")))], 1, 1))
            .expect("txn");
    }
    log.end_transaction("c", 0, 1, 1, crate::TxnEnd::Abort).expect("abort");
    for i in 0..20i64 {
        rt.block_on(log.append("c", 0, &[rec(100 + i, Some("other"), Some(&pad))])).expect("append");
    }
    log.compact_with_stats(10_000).expect("compact");
    let rows = read_all(&log, "c", 0);
    let k: Vec<_> = rows.iter().filter(|r| r.2.as_deref() == Some(b"k")).collect();
    assert_eq!(k.len(), 1, "{k:?}");
    assert_eq!(k[0].3.as_deref(), Some(committed.as_bytes()));
    // An open transaction holds compaction back: nothing at or after it is rewritten.
    rt.block_on(log.append_transactional("c", 0, &[rec(0, Some("k"), Some(&format!("open-{pad}")))], 2, 1))
        .expect("txn");
    for i in 0..20i64 {
        rt.block_on(log.append("c", 0, &[rec(200 + i, Some("k"), Some(&pad))])).expect("append");
    }
    log.compact_with_stats(20_000).expect("compact");
    log.end_transaction("c", 0, 2, 1, crate::TxnEnd::Commit).expect("commit");
    let rows = read_all(&log, "c", 0);
    assert!(rows.iter().any(|r| r.3.as_deref() == Some(format!("open-{pad}").as_bytes())), "open value survived");
}

#[test]
fn interrupted_compaction_swap_is_finished_or_discarded_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = rt();
    let pdir = dir.path().join("topics/c/0");
    let cfg = TopicConfig { cleanup_policy: CleanupPolicy::Compact, delete_retention_ms: 0, ..small(1) };
    let before;
    {
        let log = Log::open(dir.path()).expect("open");
        log.create_topic("c", cfg).expect("create");
        for i in 0..100i64 {
            let k = format!("k{}", i % 3);
            rt.block_on(log.append("c", 0, &[rec(i, Some(&k), Some(&"v".repeat(120)))])).expect("append");
        }
        before = read_all(&log, "c", 0);
    }
    // An uncommitted swap (cleaned files, no manifest) is discarded.
    std::fs::write(pdir.join("00000000000000000000.log.cleaned"), b"junk").expect("write");
    {
        let log = Log::open(dir.path()).expect("reopen");
        assert_eq!(read_all(&log, "c", 0), before);
        assert!(!pdir.join("00000000000000000000.log.cleaned").exists());
        log.compact(1).expect("compact");
    }
    let after: Vec<Row>;
    {
        let log = Log::open(dir.path()).expect("reopen");
        after = read_all(&log, "c", 0);
        assert!(after.len() < before.len());
    }
    // Simulate a crash right after the commit point: restore the manifest and cleaned files
    // as they were, with the old segments still in place, then check open finishes the swap.
    // (Built by compacting a copy.)
    let copy = tempfile::tempdir().expect("tempdir");
    {
        let log = Log::open(copy.path()).expect("open copy");
        log.create_topic(
            "c",
            TopicConfig { cleanup_policy: CleanupPolicy::Compact, delete_retention_ms: 0, ..small(1) },
        )
        .expect("create");
        for i in 0..100i64 {
            let k = format!("k{}", i % 3);
            rt.block_on(log.append("c", 0, &[rec(i, Some(&k), Some(&"v".repeat(120)))])).expect("append");
        }
    }
    let cdir = copy.path().join("topics/c/0");
    let first = "00000000000000000000";
    let seg_names: Vec<String> = std::fs::read_dir(&cdir)
        .expect("ls")
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .filter(|n| n.ends_with(".log"))
        .collect();
    let mut bases: Vec<u64> = seg_names.iter().filter_map(|n| crate::segment::parse_file_name(n, "log")).collect();
    bases.sort_unstable();
    let replaces = &bases[..2];
    // Cleaned output for the first two segments: just the first segment's bytes (a valid log).
    std::fs::copy(cdir.join(format!("{first}.log")), cdir.join(format!("{first}.log.cleaned"))).expect("copy");
    let manifest = serde_json::json!({ "replaces": replaces, "output": true });
    std::fs::write(cdir.join(format!("{first}.compact.json")), manifest.to_string()).expect("manifest");
    let log = Log::open(copy.path()).expect("open finishes the swap");
    assert!(!cdir.join(format!("{first}.compact.json")).exists());
    assert!(!cdir.join(crate::segment::file_name(bases[1], "log")).exists(), "replaced segment deleted");
    let rows = read_all(&log, "c", 0);
    assert!(rows.iter().all(|r| r.0 < bases[1] || r.0 >= bases[2]), "the gap is skipped");
}

// ---------------------------------------------------------------------------------------------
// Property tests.

/// Appends `ops` (key index, value or tombstone) in batches of the given sizes.
fn append_ops(log: &Log, topic: &str, ops: &[(u8, Option<u16>)], batch: usize) {
    let rt = rt();
    let pad = "x".repeat(40);
    for (n, chunk) in ops.chunks(batch.max(1)).enumerate() {
        let records: Vec<Record> = chunk
            .iter()
            .enumerate()
            .map(|(i, (k, v))| {
                let value = v.map(|v| format!("{v}-{pad}"));
                rec((n * 100 + i) as i64, Some(&format!("key{k}")), value.as_deref())
            })
            .collect();
        rt.block_on(log.append(topic, 0, &records)).expect("append");
    }
}

fn replay(rows: &[Row]) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut m = BTreeMap::new();
    for (_, _, k, v) in rows {
        let k = k.clone().unwrap_or_default();
        match v {
            Some(v) => m.insert(k, v.clone()),
            None => m.remove(&k),
        };
    }
    m
}

fn open_compacted(dir: &Path, delete_retention_ms: i64) -> Arc<Log> {
    let log = Log::open(dir).expect("open");
    let cfg =
        TopicConfig { cleanup_policy: CleanupPolicy::Compact, delete_retention_ms, segment_bytes: 1024, ..small(1) };
    log.create_topic("c", cfg).expect("create");
    log
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    /// After compaction: closed segments hold exactly the newest record per key (tombstones
    /// dropped when their horizon passed), the active segment is untouched, offsets unchanged,
    /// and replaying the log gives the same table as before.
    #[test]
    fn compaction_matches_the_newest_value_model(
        ops in prop::collection::vec((0u8..6, prop::option::weighted(0.8, 0u16..1000)), 1..150),
        batch in 1usize..4,
        keep_tombstones in any::<bool>(),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = open_compacted(dir.path(), if keep_tombstones { 1_000_000 } else { 0 });
        append_ops(&log, "c", &ops, batch);
        let before = read_all(&log, "c", 0);
        let active_base = log.partition("c", 0).expect("p").state.read().segments.last().map(|s| s.base()).unwrap_or(0);
        log.compact(5_000).expect("compact");
        let after = read_all(&log, "c", 0);
        let mut newest: BTreeMap<Vec<u8>, u64> = BTreeMap::new();
        for r in before.iter().filter(|r| r.0 < active_base) {
            newest.insert(r.2.clone().unwrap_or_default(), r.0);
        }
        let expected: Vec<Row> = before.iter().filter(|r| {
            if r.0 >= active_base { return true; }
            let is_newest = newest.get(&r.2.clone().unwrap_or_default()) == Some(&r.0);
            is_newest && (r.3.is_some() || keep_tombstones)
        }).cloned().collect();
        prop_assert_eq!(&after, &expected);
        prop_assert_eq!(replay(&after), replay(&before));
        // Idempotent, and it survives a reopen.
        log.compact(5_000).expect("compact again");
        prop_assert_eq!(&read_all(&log, "c", 0), &expected);
        drop(log);
        let log = Log::open(dir.path()).expect("reopen");
        prop_assert_eq!(&read_all(&log, "c", 0), &expected);
    }

    /// `offset_for_timestamp` equals "first offset whose timestamp >= t" over the whole log.
    #[test]
    fn offset_for_timestamp_matches_a_scan(
        timestamps in prop::collection::vec(0i64..500, 1..200),
        batch in 1usize..5,
        probes in prop::collection::vec(-5i64..520, 10),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = Log::open(dir.path()).expect("open");
        log.create_topic("t", TopicConfig { segment_bytes: 1024, ..small(1) }).expect("create");
        let rt = rt();
        let pad = "y".repeat(30);
        for chunk in timestamps.chunks(batch) {
            let records: Vec<Record> = chunk.iter().map(|&t| rec(t, Some("k"), Some(&pad))).collect();
            rt.block_on(log.append("t", 0, &records)).expect("append");
        }
        for &ts in &probes {
            let expect = timestamps.iter().position(|&t| t >= ts).map(|i| i as u64);
            prop_assert_eq!(log.offset_for_timestamp("t", 0, ts).expect("lookup"), expect, "ts {}", ts);
        }
    }
}
