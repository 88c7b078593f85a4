//! Tests of the whole log through its public API (plus a few looks inside): appends, reads,
//! errors, group commit, wake-ups, failure injection. Retention and compaction are in
//! [`maintenance`].

use std::collections::HashSet;

use bytes::Bytes;

use crate::batch::{self, ProducerMeta};
use crate::writer::Fault;
use crate::{CleanupPolicy, Durability, Log, LogError, Record, TopicConfig};

type Row = (u64, i64, Option<Vec<u8>>, Option<Vec<u8>>);

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

fn small(partitions: u32) -> TopicConfig {
    TopicConfig {
        partitions,
        segment_bytes: 4096,
        retention_ms: None,
        durability: Durability::None,
        ..TopicConfig::default()
    }
}

fn rec(ts: i64, key: Option<&str>, value: Option<&str>) -> Record {
    Record::new(ts, key.map(|k| k.as_bytes().to_vec()), value.map(|v| v.as_bytes().to_vec()))
}

fn read_all(log: &Log, topic: &str, p: u32) -> Vec<Row> {
    let mut out = Vec::new();
    let mut offset = log.start_offset(topic, p).expect("start");
    let end = log.end_offset(topic, p).expect("end");
    while offset < end {
        let f = log.read(topic, p, offset, 3000).expect("read");
        assert!(f.next_offset() > offset, "read at {offset} made no progress");
        for r in f.records() {
            assert!(r.offset >= offset);
            out.push((r.offset, r.timestamp, r.key.map(<[u8]>::to_vec), r.value.map(<[u8]>::to_vec)));
        }
        offset = f.next_offset();
    }
    out
}

#[test]
fn append_and_read_roundtrip_with_headers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path()).expect("open");
    log.create_topic("t", small(2)).expect("create");
    let mut r = rec(5, Some("k"), None);
    r.headers = vec![("trace".into(), Some(Bytes::from_static(b"abc"))), ("empty".into(), None)];
    let records = vec![rec(1, Some("a"), Some("1")), rec(2, None, Some("2")), r.clone()];
    let ack = rt().block_on(log.append("t", 1, &records)).expect("append");
    assert_eq!((ack.partition, ack.base_offset, ack.last_offset), (1, 0, 2));
    let ack = rt().block_on(log.append("t", 1, &records[..1])).expect("append");
    assert_eq!(ack.base_offset, 3);
    assert_eq!(log.end_offset("t", 1).expect("end"), 4);
    assert_eq!(log.end_offset("t", 0).expect("end"), 0);
    let f = log.read("t", 1, 1, 1 << 20).expect("read");
    let got: Vec<Record> = f.records().map(|r| r.to_record()).collect();
    assert_eq!(got, vec![records[1].clone(), r, records[0].clone()]);
    assert_eq!(f.next_offset(), 4);
    assert_eq!(f.high_watermark(), 4);
    // At the end: empty, not an error.
    let f = log.read("t", 1, 4, 1 << 20).expect("read at end");
    assert!(f.is_empty());
    assert_eq!(f.next_offset(), 4);
}

/// Reads served from the buffers the writer keeps (small appends gathered, large ones as
/// they were written) give exactly what reads from the file give after a reopen, at every
/// offset and fetch size.
#[test]
fn reads_at_the_tail_agree_with_reads_from_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = TopicConfig { segment_bytes: 64 << 20, ..small(1) };
    let sizes = [1usize, 3, 700, 2, 1, 1500, 40, 1, 2600, 5];
    let mut expected = Vec::new();
    let read = |log: &Log| {
        let mut reads = Vec::new();
        for max in [1usize, 5000, 300 << 10, 4 << 20] {
            for from in [0u64, 1, 703, 2000, 4800] {
                let mut offset = from;
                let mut rows = Vec::new();
                while offset < log.end_offset("t", 0).expect("end") {
                    let f = log.read("t", 0, offset, max).expect("read");
                    assert!(f.next_offset() > offset, "read at {offset} made no progress");
                    rows.extend(f.records().map(|r| (r.offset, r.value.map(<[u8]>::to_vec))));
                    offset = f.next_offset();
                }
                reads.push(rows);
            }
        }
        reads
    };
    let tail = {
        let log = Log::open(dir.path()).expect("open");
        log.create_topic("t", config).expect("create");
        let mut offset = 0u64;
        for n in sizes {
            let records: Vec<Record> = (0..n)
                .map(|i| {
                    let v = format!("{:0>100}", offset + i as u64);
                    expected.push((offset + i as u64, Some(v.clone().into_bytes())));
                    Record::new(0, None::<Vec<u8>>, Some(v.into_bytes()))
                })
                .collect();
            rt().block_on(log.append("t", 0, &records)).expect("append");
            offset += n as u64;
        }
        read(&log)
    };
    let log = Log::open(dir.path()).expect("reopen");
    let file = read(&log);
    assert_eq!(tail.len(), file.len());
    for (i, (t, f)) in tail.iter().zip(&file).enumerate() {
        assert!(t == f, "read {i} differs between the tail buffers and the file");
    }
    assert!(tail[0] == expected, "everything read from offset 0");
    assert!(tail.iter().all(|r| !r.is_empty()));
}

#[test]
fn typed_errors_leave_the_log_usable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path()).expect("open");
    let rt = rt();
    assert!(matches!(log.create_topic("bad/name", small(1)), Err(LogError::InvalidTopicName { .. })));
    assert!(matches!(log.create_topic("..", small(1)), Err(LogError::InvalidTopicName { .. })));
    assert!(matches!(
        log.create_topic("t", TopicConfig { partitions: 0, ..small(1) }),
        Err(LogError::InvalidConfig { .. })
    ));
    log.create_topic("t", small(2)).expect("create");
    assert!(matches!(log.create_topic("t", small(2)), Err(LogError::TopicExists(_))));
    assert!(!log.create_topic_if_not_exists("t", small(5)).expect("exists"));
    assert_eq!(log.topic_config("t").expect("config").partitions, 2);
    assert!(matches!(log.read("nope", 0, 0, 10), Err(LogError::UnknownTopic(_))));
    let err = log.read("t", 2, 0, 10).expect_err("partition 2");
    assert!(matches!(err, LogError::UnknownPartition { partition: 2, partitions: 2, .. }), "{err}");
    rt.block_on(log.append("t", 0, &[rec(1, Some("a"), Some("x"))])).expect("append");
    let err = log.read("t", 0, 5, 10).expect_err("past the end");
    assert!(matches!(err, LogError::OffsetOutOfRange { offset: 5, start: 0, end: 1, .. }), "{err}");
    let err = rt.block_on(log.append("t", 0, &[])).expect_err("empty append");
    assert!(matches!(err, LogError::InvalidRecord { .. }), "{err}");
    assert!(matches!(rt.block_on(log.append("t", 7, &[rec(1, None, None)])), Err(LogError::UnknownPartition { .. })));
    log.create_topic("c", TopicConfig { cleanup_policy: CleanupPolicy::Compact, ..small(1) }).expect("create");
    let err = rt.block_on(log.append("c", 0, &[rec(1, None, Some("v"))])).expect_err("null key");
    assert!(err.to_string().contains("every record needs a key"), "{err}");
    // Still consistent and usable.
    let ack = rt.block_on(log.append("t", 0, &[rec(2, Some("b"), Some("y"))])).expect("append");
    assert_eq!(ack.base_offset, 1);
    assert_eq!(read_all(&log, "t", 0).len(), 2);
    assert_eq!(log.topic_names(), vec!["c".to_string(), "t".to_string()]);
}

#[test]
fn partitioner_is_kafkas_and_null_keys_round_robin() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path()).expect("open");
    log.create_topic("t", small(50)).expect("create");
    assert_eq!(log.partition_for_key("t", Some(b"foobar")).expect("p"), 16);
    let spread: HashSet<u32> = (0..50).map(|_| log.partition_for_key("t", None).expect("p")).collect();
    assert_eq!(spread.len(), 50);
}

#[test]
fn segments_roll_and_everything_survives_reopen() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = rt();
    let mut expected = Vec::new();
    {
        let log = Log::open(dir.path()).expect("open");
        log.create_topic("t", small(1)).expect("create");
        for i in 0..300i64 {
            let v = format!("value-{i:04}-{}", "x".repeat((i % 50) as usize));
            let k = format!("k{}", i % 7);
            rt.block_on(log.append("t", 0, &[rec(i * 10, Some(&k), Some(&v))])).expect("append");
            expected.push((i as u64, i * 10, Some(k.into_bytes()), Some(v.into_bytes())));
        }
        let p = log.partition("t", 0).expect("partition");
        assert!(p.segment_count() > 5, "rolled into {} segments", p.segment_count());
        assert_eq!(read_all(&log, "t", 0), expected);
    }
    let pdir = dir.path().join("topics/t/0");
    let names: Vec<String> = std::fs::read_dir(&pdir)
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    let logs = names.iter().filter(|n| n.ends_with(".log")).count();
    let indexes = names.iter().filter(|n| n.ends_with(".index")).count();
    assert_eq!(indexes, logs - 1, "every closed segment has an index file: {names:?}");
    let log = Log::open(dir.path()).expect("reopen");
    assert_eq!(read_all(&log, "t", 0), expected);
    assert_eq!(log.offset_for_timestamp("t", 0, 1234).expect("ts"), Some(124));
    assert_eq!(log.offset_for_timestamp("t", 0, 0).expect("ts"), Some(0));
    assert_eq!(log.offset_for_timestamp("t", 0, 2991).expect("ts"), None);
    let ack = rt.block_on(log.append("t", 0, &[rec(1, Some("k"), Some("after"))])).expect("append");
    assert_eq!(ack.base_offset, 300);
}

#[test]
fn segments_roll_by_age() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path()).expect("open");
    let cfg = TopicConfig { segment_ms: Some(60_000), segment_bytes: 1 << 20, ..small(1) };
    log.create_topic("t", cfg).expect("create");
    let rt = rt();
    rt.block_on(log.append("t", 0, &[rec(1, Some("a"), Some("1"))])).expect("append");
    rt.block_on(log.append("t", 0, &[rec(2, Some("a"), Some("2"))])).expect("append");
    let p = log.partition("t", 0).expect("p");
    assert_eq!(p.segment_count(), 1, "young segment is not rolled");
    p.writer.lock().backdate_first_append(0);
    rt.block_on(log.append("t", 0, &[rec(3, Some("a"), Some("3"))])).expect("append");
    assert_eq!(p.segment_count(), 2, "old segment rolled on the next append");
    assert_eq!(read_all(&log, "t", 0).len(), 3);
}

#[test]
fn concurrent_producers_share_fsyncs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path()).expect("open");
    log.create_topic("t", TopicConfig { durability: Durability::Fsync, ..small(1) }).expect("create");
    let p = log.partition("t", 0).expect("partition");
    *p.trace.lock() = Some(Vec::new());
    // Hold the writer so that every append below is queued before it runs.
    let rxs = {
        let _held = p.writer.lock();
        (0..10)
            .map(|i| {
                let enc = batch::encode(&[rec(i, Some("k"), Some("v"))], &ProducerMeta::default()).expect("enc");
                p.submit(enc).expect("submit")
            })
            .collect::<Vec<_>>()
    };
    let rt = rt();
    let mut bases: Vec<u64> =
        rxs.into_iter().map(|rx| rt.block_on(rx).expect("ack").expect("ok").base_offset).collect();
    bases.sort_unstable();
    assert_eq!(bases, (0..10).collect::<Vec<_>>());
    assert_eq!(p.trace.lock().as_ref().map(Vec::len), Some(1), "ten appends, one write + fsync");
}

#[test]
fn many_tasks_append_concurrently() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path()).expect("open");
    log.create_topic("t", TopicConfig { durability: Durability::Fsync, ..small(1) }).expect("create");
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
    let acked = rt.block_on(async {
        let mut tasks = Vec::new();
        for producer in 0..8 {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                let mut acks = Vec::new();
                for i in 0..25 {
                    let v = format!("{producer}:{i}");
                    let ack = log.append("t", 0, &[rec(i, Some("k"), Some(&v))]).await.expect("append");
                    acks.push((ack.base_offset, v));
                }
                acks
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.expect("task"));
        }
        all
    });
    let rows = read_all(&log, "t", 0);
    assert_eq!(rows.len(), 200);
    for (offset, v) in acked {
        assert_eq!(rows[offset as usize].3.as_deref(), Some(v.as_bytes()));
    }
}

#[test]
fn waiters_wake_on_append_and_on_delete() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path()).expect("open");
    log.create_topic("t", small(1)).expect("create");
    let rt = rt();
    rt.block_on(async {
        // Cancel safety: a dropped wait leaves nothing behind.
        tokio::select! {
            biased;
            _ = log.wait_for("t", 0, 0) => panic!("nothing was appended yet"),
            _ = std::future::ready(()) => {}
        }
        let waiter = {
            let log = log.clone();
            tokio::spawn(async move { log.wait_for("t", 0, 0).await })
        };
        tokio::task::yield_now().await;
        log.append("t", 0, &[rec(1, Some("k"), Some("v"))]).await.expect("append");
        waiter.await.expect("join").expect("woken by the append");
        log.wait_for("t", 0, 0).await.expect("already there");

        let waiter = {
            let log = log.clone();
            tokio::spawn(async move { log.wait_for("t", 0, 1).await })
        };
        tokio::task::yield_now().await;
        log.delete_topic("t").expect("delete");
        let err = waiter.await.expect("join").expect_err("deleted");
        assert!(matches!(err, LogError::TopicDeleted(_)), "{err}");
    });
    assert!(matches!(log.end_offset("t", 0), Err(LogError::UnknownTopic(_))));
    // A new topic of the same name starts empty.
    log.create_topic("t", small(1)).expect("recreate");
    assert_eq!(log.end_offset("t", 0).expect("end"), 0);
}

#[test]
fn disk_full_rolls_back_and_appends_continue() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = rt();
    {
        let log = Log::open(dir.path()).expect("open");
        log.create_topic("t", TopicConfig { durability: Durability::Fsync, ..small(1) }).expect("create");
        rt.block_on(log.append("t", 0, &[rec(1, Some("a"), Some("first"))])).expect("append");
        let p = log.partition("t", 0).expect("p");
        let size = p.size_bytes();
        *p.fault.lock() = Some(Fault::DiskFullMidWrite);
        let err = rt.block_on(log.append("t", 0, &[rec(2, Some("b"), Some("lost"))])).expect_err("disk full");
        assert!(err.is_disk_full(), "{err}");
        assert!(err.to_string().contains("disk full"), "{err}");
        assert_eq!(p.size_bytes(), size);
        let file = dir.path().join("topics/t/0/00000000000000000000.log");
        assert_eq!(std::fs::metadata(&file).expect("meta").len(), size, "partial write cut off");
        assert_eq!(log.end_offset("t", 0).expect("end"), 1);
        let ack = rt.block_on(log.append("t", 0, &[rec(3, Some("c"), Some("third"))])).expect("append");
        assert_eq!(ack.base_offset, 1);
    }
    let log = Log::open(dir.path()).expect("reopen");
    let values: Vec<_> = read_all(&log, "t", 0).into_iter().map(|r| r.3).collect();
    assert_eq!(values, vec![Some(b"first".to_vec()), Some(b"third".to_vec())]);
}

#[test]
fn failed_fsync_takes_the_partition_offline() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = rt();
    let log = Log::open(dir.path()).expect("open");
    log.create_topic("t", TopicConfig { durability: Durability::Fsync, ..small(1) }).expect("create");
    let p = log.partition("t", 0).expect("p");
    *p.fault.lock() = Some(Fault::FsyncFails);
    let err = rt.block_on(log.append("t", 0, &[rec(2, Some("b"), Some("x"))])).expect_err("fsync failed");
    assert!(matches!(err, LogError::Io { .. }), "{err}");
    let err = rt.block_on(log.append("t", 0, &[rec(2, Some("b"), Some("x"))])).expect_err("offline");
    assert!(matches!(err, LogError::PartitionOffline { .. }), "{err}");
    assert_eq!(log.end_offset("t", 0).expect("end"), 0);
    drop(log);
    let log = Log::open(dir.path()).expect("restart recovers");
    rt.block_on(log.append("t", 0, &[rec(2, Some("b"), Some("x"))])).expect("writable again");
    // No space reported by fsync: cut back, stay online.
    let p = log.partition("t", 0).expect("p");
    *p.fault.lock() = Some(Fault::FsyncNoSpace);
    let err = rt.block_on(log.append("t", 0, &[rec(3, Some("c"), Some("y"))])).expect_err("no space");
    assert!(err.is_disk_full(), "{err}");
    let ack = rt.block_on(log.append("t", 0, &[rec(4, Some("d"), Some("z"))])).expect("still online");
    assert_eq!(ack.base_offset, 1);
    assert_eq!(read_all(&log, "t", 0).len(), 2);
}

#[test]
fn committed_offsets_are_durable() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let log = Log::open(dir.path()).expect("open");
        log.create_topic("t", small(2)).expect("create");
        log.commit_offsets("q", &[("t".into(), 0, 5), ("t".into(), 1, 7)]).expect("commit");
        assert!(matches!(log.commit_offsets("q", &[("nope".into(), 0, 1)]), Err(LogError::UnknownTopic(_))));
        assert!(matches!(log.commit_offsets("", &[("t".into(), 0, 1)]), Err(LogError::InvalidGroup { .. })));
    }
    let log = Log::open(dir.path()).expect("reopen");
    assert_eq!(log.committed_offset("q", "t", 0).expect("ok"), Some(5));
    assert_eq!(log.committed_offset("q", "t", 1).expect("ok"), Some(7));
    assert_eq!(log.committed_offset("other", "t", 1).expect("ok"), None);
    log.delete_topic("t").expect("delete");
    log.create_topic("t", small(2)).expect("recreate");
    assert_eq!(log.committed_offset("q", "t", 0).expect("ok"), None);
}

#[test]
fn directory_is_locked_while_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Log::open(dir.path()).expect("open");
    let err = Log::open(dir.path()).expect_err("second open");
    assert!(matches!(err, LogError::DirectoryLocked { .. }), "{err}");
    drop(log);
    Log::open(dir.path()).expect("open after drop");
}

#[test]
fn unfinished_topic_creation_is_removed_at_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    drop(Log::open(dir.path()).expect("open"));
    std::fs::create_dir_all(dir.path().join("topics/half/0")).expect("mkdir");
    let log = Log::open(dir.path()).expect("open");
    assert!(log.topic_names().is_empty());
    log.create_topic("half", small(1)).expect("create");
}

#[test]
fn transactions_are_read_committed_and_survive_reopen() {
    use crate::TxnEnd;
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = rt();
    let values = |log: &Log| -> Vec<String> {
        read_all(log, "t", 0).into_iter().map(|r| String::from_utf8(r.3.unwrap_or_default()).expect("utf8")).collect()
    };
    {
        let log = Log::open(dir.path()).expect("open");
        log.create_topic("t", small(1)).expect("create");
        rt.block_on(log.append("t", 0, &[rec(1, None, Some("plain-1"))])).expect("append");
        rt.block_on(log.append_transactional("t", 0, &[rec(2, None, Some("txn-a"))], 7, 1)).expect("txn append");
        // A non-transactional append after an open transaction waits behind it.
        rt.block_on(log.append("t", 0, &[rec(3, None, Some("plain-2"))])).expect("append");
        assert_eq!(values(&log), vec!["plain-1"], "open transaction and what follows are hidden");
        assert_eq!(log.end_offset("t", 0).expect("end"), 1);
        assert_eq!(log.high_watermark("t", 0).expect("hw"), 3);
        // A reader waiting past the stable offset is not woken by uncommitted data.
        let waiter = log.clone();
        let woke = rt.block_on(async move {
            tokio::time::timeout(std::time::Duration::from_millis(50), waiter.wait_for("t", 0, 1)).await.is_ok()
        });
        assert!(!woke, "uncommitted records must not wake readers");
        assert!(log.end_transaction("t", 0, 7, 1, TxnEnd::Commit).expect("commit"));
        assert!(!log.end_transaction("t", 0, 7, 1, TxnEnd::Commit).expect("again"), "ending twice is a no-op");
        assert_eq!(values(&log), vec!["plain-1", "txn-a", "plain-2"]);
        // Epoch 2 is aborted: never served; a later epoch continues.
        rt.block_on(log.append_transactional("t", 0, &[rec(4, None, Some("txn-b"))], 7, 2)).expect("txn append");
        assert!(log.end_transaction("t", 0, 7, 2, TxnEnd::Abort).expect("abort"));
        rt.block_on(log.append_transactional("t", 0, &[rec(5, None, Some("txn-c"))], 7, 3)).expect("txn append");
        assert_eq!(log.open_transactions("t", 0).expect("open").len(), 1);
        assert_eq!(values(&log), vec!["plain-1", "txn-a", "plain-2"]);
    }
    // After a restart the open transaction is still open and hidden until its producer decides.
    let log = Log::open(dir.path()).expect("reopen");
    let open = log.open_transactions("t", 0).expect("open");
    assert_eq!((open.len(), open[0].producer, open[0].epoch), (1, 7, 3));
    assert_eq!(values(&log), vec!["plain-1", "txn-a", "plain-2"]);
    assert!(!log.end_transaction("t", 0, 7, 2, TxnEnd::Commit).expect("older epoch"), "epoch 2 cannot end epoch 3");
    assert!(log.end_transaction("t", 0, 7, 3, TxnEnd::Commit).expect("commit"));
    assert_eq!(values(&log), vec!["plain-1", "txn-a", "plain-2", "txn-c"]);
    assert_eq!(log.end_offset("t", 0).expect("end"), 5);
}

mod maintenance;
