//! Exactly-once across SIGKILL: a pipeline with a windowed aggregation and a stream-stream join
//! runs while the server is killed at random moments; afterwards its output topics must equal,
//! record for record, those of a run that was never killed.
//!
//! The producer is the test itself: between server runs it appends the next chunk of bids and
//! auctions straight into the embedded log (durably, so input is never lost nor doubled). The
//! input is in event-time order per partition, so nothing is late in either run and both runs
//! must compute the same result; a last "flush" bid far in the future in every partition
//! closes every real window. The aggregation (`EMIT FINAL`) is compared record for record per
//! partition; the join's output order depends on how the two inputs interleave, so it is
//! compared as a sorted multiset: a lost or doubled record fails either way.
//!
//! `RILL_CRASH_KILLS` sets the number of kills (default 14; the soak script uses more).

mod common;

use std::collections::BTreeMap;
use std::path::Path;

use common::Server;
use rill_log::{Log, Record};

const CHUNKS: u64 = 12;
const AUCTIONS_PER_CHUNK: u64 = 600;
const BIDS_PER_CHUNK: u64 = 6000;
const CHUNK_MS: i64 = 60_000;

const STATEMENTS: &[&str] = &[
    "CREATE STREAM BIDS (AUCTION VARCHAR KEY, BIDDER VARCHAR, PRICE BIGINT, TS BIGINT) \
     WITH (KAFKA_TOPIC='bids', VALUE_FORMAT='JSON', PARTITIONS=4, TIMESTAMP='TS');",
    "CREATE STREAM AUCTIONS (ID VARCHAR KEY, SELLER VARCHAR, TS BIGINT) \
     WITH (KAFKA_TOPIC='auctions', VALUE_FORMAT='JSON', PARTITIONS=4, TIMESTAMP='TS');",
    "CREATE TABLE BID_STATS WITH (KAFKA_TOPIC='bid_stats') AS SELECT AUCTION, COUNT(*) AS BIDS, \
     SUM(PRICE) AS TOTAL, MAX(PRICE) AS TOP FROM BIDS \
     WINDOW TUMBLING (SIZE 10 SECONDS, GRACE PERIOD 0 SECONDS) GROUP BY AUCTION EMIT FINAL;",
    // Grouped by a value column: the rows go through a repartition topic.
    "CREATE TABLE BIDDER_STATS WITH (KAFKA_TOPIC='bidder_stats') AS SELECT BIDDER, COUNT(*) AS BIDS, \
     SUM(PRICE) AS TOTAL FROM BIDS WINDOW TUMBLING (SIZE 10 SECONDS, GRACE PERIOD 0 SECONDS) GROUP BY BIDDER \
     EMIT FINAL;",
    "CREATE STREAM MATCHED WITH (KAFKA_TOPIC='matched') AS SELECT B.AUCTION AS AUCTION, B.BIDDER, B.PRICE, \
     A.SELLER FROM BIDS B INNER JOIN AUCTIONS A WITHIN 30 SECONDS ON B.AUCTION = A.ID;",
];

fn rec(key: &str, ts: i64, value: serde_json::Value) -> Record {
    Record::new(ts, Some(key.as_bytes().to_vec()), Some(value.to_string().into_bytes()))
}

/// Appends chunk `c` of the input (and, after the last chunk, the flush bids) to the log in
/// `dir`, while no server runs there.
fn produce(dir: &Path, rt: &tokio::runtime::Runtime, c: u64) {
    let log = Log::open(dir).expect("open the log");
    let base = c as i64 * CHUNK_MS;
    let mut by: BTreeMap<(&str, u32), Vec<Record>> = BTreeMap::new();
    let mut push = |topic: &'static str, r: Record| {
        let p = log.partition_for_key(topic, r.key.as_deref()).expect("partition");
        by.entry((topic, p)).or_default().push(r);
    };
    for j in 0..AUCTIONS_PER_CHUNK {
        let n = c * AUCTIONS_PER_CHUNK + j;
        let ts = base + j as i64 * 100;
        push("auctions", rec(&format!("a{n}"), ts, serde_json::json!({"SELLER": format!("s{}", n % 7), "TS": ts})));
    }
    for k in 0..BIDS_PER_CHUNK {
        let ts = base + k as i64 * 10;
        let auction = c * AUCTIONS_PER_CHUNK + k / 10;
        let v = serde_json::json!({"BIDDER": format!("u{}", k % 13), "PRICE": (k * 37 + c) % 1000, "TS": ts});
        push("bids", rec(&format!("a{auction}"), ts, v));
    }
    if c + 1 == CHUNKS {
        // One bid far in the future per partition: every real window closes.
        let mut covered = std::collections::BTreeSet::new();
        let mut n = 0;
        while covered.len() < 4 {
            let key = format!("flush{n}");
            let p = log.partition_for_key("bids", Some(key.as_bytes())).expect("partition");
            if covered.insert(p) {
                let ts = 10_000_000_000i64;
                push("bids", rec(&key, ts, serde_json::json!({"BIDDER": "none", "PRICE": 0, "TS": ts})));
            }
            n += 1;
        }
    }
    for ((topic, p), records) in by {
        for chunk in records.chunks(500) {
            rt.block_on(log.append(topic, p, chunk)).expect("append input");
        }
    }
}

/// Committed records of `topic`, per partition: (timestamp, key, value).
type Output = Vec<Vec<(i64, Vec<u8>, Vec<u8>)>>;

fn output(dir: &Path, topic: &str) -> Output {
    let log = Log::open(dir).expect("open the log");
    let partitions = log.topic_config(topic).expect("output topic").partitions;
    (0..partitions)
        .map(|p| {
            let mut rows = Vec::new();
            let mut offset = log.start_offset(topic, p).expect("start");
            let end = log.end_offset(topic, p).expect("end");
            while offset < end {
                let f = log.read(topic, p, offset, 1 << 20).expect("read");
                for r in f.records() {
                    rows.push((r.timestamp, r.key.unwrap_or_default().to_vec(), r.value.unwrap_or_default().to_vec()));
                }
                offset = f.next_offset();
            }
            rows
        })
        .collect()
}

fn topic_len(dir: &Path, topic: &str) -> usize {
    let log = Log::open(dir).expect("open the log");
    match log.topic_config(topic) {
        Ok(cfg) => (0..cfg.partitions).map(|p| log.end_offset(topic, p).expect("end") as usize).sum(),
        Err(_) => 0,
    }
}

/// Creates the pipeline in a fresh data dir.
fn create(dir: &Path, rt: &tokio::runtime::Runtime) {
    let server = Server::start(dir);
    for s in STATEMENTS {
        rt.block_on(server.ok(s));
    }
    server.stop();
}

/// Starts the server, waits until its queries have processed and committed all input, stops it.
fn finish(dir: &Path, rt: &tokio::runtime::Runtime) {
    let server = Server::start(dir);
    rt.block_on(async {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            let body = server.ok("DESCRIBE BIDS EXTENDED;").await;
            let stats = body[0]["sourceDescription"]["statistics"].as_str().unwrap_or_default().to_string();
            if stats.contains("consumer-lag: 0,") {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "queries did not catch up: {stats}");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    });
    server.stop();
}

/// Fails with the first difference between two outputs (not the whole outputs).
fn assert_same<T: std::fmt::Debug + PartialEq>(actual: &[T], expected: &[T], what: &str) {
    if actual == expected {
        return;
    }
    let first = actual.iter().zip(expected).position(|(a, e)| a != e).unwrap_or(actual.len().min(expected.len()));
    panic!(
        "{what}: {} records, expected {}; first difference at {first}: got {:?}, expected {:?}",
        actual.len(),
        expected.len(),
        actual.get(first),
        expected.get(first)
    );
}

/// A small deterministic generator for kill delays.
fn next(seed: &mut u64) -> u64 {
    *seed ^= *seed << 13;
    *seed ^= *seed >> 7;
    *seed ^= *seed << 17;
    *seed
}

#[test]
fn output_is_exactly_once_across_sigkill() {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let kills: u64 = std::env::var("RILL_CRASH_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(14);

    // The reference: all input, one run, never killed.
    let reference = tempfile::tempdir().expect("tmp");
    create(reference.path(), &rt);
    for c in 0..CHUNKS {
        produce(reference.path(), &rt, c);
    }
    finish(reference.path(), &rt);

    // The same input, chunk by chunk, with a SIGKILL at a random moment of every run.
    let crashed = tempfile::tempdir().expect("tmp");
    create(crashed.path(), &rt);
    let mut seed = 0x9E37_79B9_7F4A_7C15u64 ^ std::process::id() as u64;
    for i in 0..kills {
        // The first runs each get a new chunk; later ones are killed while recovering.
        if i < CHUNKS {
            produce(crashed.path(), &rt, i);
        }
        let server = Server::start(crashed.path());
        let delay = 10 + next(&mut seed) % 300;
        std::thread::sleep(std::time::Duration::from_millis(delay));
        server.kill();
        // How far the killed run got: open transactions left behind mean it died mid-epoch.
        let log = Log::open(crashed.path()).expect("open");
        let open: usize = ["bid_stats", "bidder_stats", "matched"]
            .iter()
            .filter_map(|t| log.topic_config(t).ok().map(|c| (t, c.partitions)))
            .map(|(t, n)| (0..n).map(|p| log.open_transactions(t, p).map(|o| o.len()).unwrap_or(0)).sum::<usize>())
            .sum();
        eprintln!("kill {i} after {delay} ms: {open} open transactions left behind");
    }
    for c in kills..CHUNKS {
        produce(crashed.path(), &rt, c);
    }
    finish(crashed.path(), &rt);

    // Nothing was late or unreadable in either run.
    for (run, dir) in [("reference", reference.path()), ("crashed", crashed.path())] {
        if topic_len(dir, "rill_late_records") > 0 {
            let late = output(dir, "rill_late_records");
            let first = late.iter().flatten().next().map(|r| String::from_utf8_lossy(&r.2).to_string());
            panic!("{} late records in the {run} run, the first: {first:?}", late.iter().map(Vec::len).sum::<usize>());
        }
        assert_eq!(topic_len(dir, "rill_dead_letters"), 0);
    }

    // Aggregation: record for record, per partition and key (a stage split into key shards
    // orders the output of different keys by which shard emits first; per key, order holds).
    let keyed = |mut o: Output| {
        for records in &mut o {
            records.sort_by(|a, b| a.1.cmp(&b.1));
        }
        o
    };
    let expected = keyed(output(reference.path(), "bid_stats"));
    let total: usize = expected.iter().map(Vec::len).sum();
    assert_eq!(total as u64, CHUNKS * AUCTIONS_PER_CHUNK, "one final row per auction window");
    let counted: u64 = expected
        .iter()
        .flatten()
        .map(|(_, _, v)| serde_json::from_slice::<serde_json::Value>(v).expect("json")["BIDS"].as_u64().expect("BIDS"))
        .sum();
    assert_eq!(counted, CHUNKS * BIDS_PER_CHUNK, "every bid counted once in the reference");
    for (p, (actual, expected)) in keyed(output(crashed.path(), "bid_stats")).iter().zip(&expected).enumerate() {
        assert_same(actual, expected, &format!("aggregation output, partition {p}, after {kills} kills"));
    }

    // Through a repartition topic: every bidder's windows, record for record, per key.
    let expected = keyed(output(reference.path(), "bidder_stats"));
    let total: usize = expected.iter().map(Vec::len).sum();
    let windows = CHUNKS as usize * (CHUNK_MS / 10_000) as usize;
    assert_eq!(total, windows * 13, "one final row per bidder and window");
    for (p, (actual, expected)) in keyed(output(crashed.path(), "bidder_stats")).iter().zip(&expected).enumerate() {
        assert_same(actual, expected, &format!("repartitioned aggregation, partition {p}, after {kills} kills"));
    }
    let log = Log::open(crashed.path()).expect("open");
    let repartition: Vec<String> = log.topic_names().into_iter().filter(|t| t.ends_with("-repartition")).collect();
    assert_eq!(repartition.len(), 1, "one repartition topic (GROUP BY BIDDER): {repartition:?}");
    drop(log);

    // Join: the same records, as a multiset.
    let sorted = |o: Output| {
        let mut all: Vec<_> = o.into_iter().flatten().collect();
        all.sort();
        all
    };
    let expected = sorted(output(reference.path(), "matched"));
    assert_eq!(expected.len() as u64, CHUNKS * BIDS_PER_CHUNK, "every bid matches its auction once");
    assert_same(&sorted(output(crashed.path(), "matched")), &expected, &format!("join output after {kills} kills"));
}
