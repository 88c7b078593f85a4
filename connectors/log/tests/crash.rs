//! Crash test: a child process appends through 4 concurrent producers (fsync durability) and
//! prints every acknowledged record; we SIGKILL it after a random number of acks, reopen the log
//! and check that every acknowledged record is there exactly once, in order. Repeated over the
//! same directory so each run also recovers what the previous kill left behind.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};

use rand::{Rng, SeedableRng};
use rill_log::Log;

const RUNS: u64 = 24;
const ID_RUN: u64 = 1_000_000_000;
const ID_PRODUCER: u64 = 100_000_000;

/// Acknowledged: (partition, offset) -> payload id.
type Acked = BTreeMap<(u32, u64), u64>;

fn parse_id(value: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(value).ok()?;
    let rest = s.strip_prefix("id=")?;
    let (id, pad) = rest.split_once(';')?;
    let id: u64 = id.parse().ok()?;
    // The payload is fully determined by the id: any damage shows.
    (pad.len() as u64 == id % 300 && pad.bytes().all(|b| b == b'x')).then_some(id)
}

/// Runs the child until it has printed `kill_after` acks, then SIGKILLs it.
fn run_child(dir: &Path, run: u64, kill_after: usize, acked: &mut Acked, commits: &mut HashMap<u32, u64>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rill-log-crash-child"))
        .arg(dir)
        .arg(run.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("stdout");
    let mut reader = BufReader::new(stdout);
    let mut seen = 0usize;
    let mut line = String::new();
    while seen < kill_after {
        line.clear();
        let n = reader.read_line(&mut line).expect("read child output");
        if n == 0 {
            break; // the child exited: its stderr says why
        }
        if !line.ends_with('\n') {
            continue; // cut off by the kill
        }
        let parts: Vec<&str> = line.split_whitespace().collect();
        match parts.as_slice() {
            ["ack", p, o, id] => {
                let key = (p.parse().expect("partition"), o.parse().expect("offset"));
                let id: u64 = id.parse().expect("id");
                assert!(acked.insert(key, id).is_none(), "offset {key:?} acknowledged twice");
                seen += 1;
            }
            ["commit", p, o] => {
                let e = commits.entry(p.parse().expect("partition")).or_default();
                *e = (*e).max(o.parse().expect("offset"));
            }
            other => panic!("unexpected child output: {other:?}"),
        }
    }
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("wait");
    let mut err = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    assert!(seen == kill_after, "child stopped after {seen} of {kill_after} acks ({status}): {err}");
}

/// Reopens the log and checks every acknowledged record and every commit.
fn verify(dir: &Path, acked: &Acked, commits: &HashMap<u32, u64>) -> usize {
    let log = Log::open(dir).expect("reopening after SIGKILL must never fail");
    let mut stored: BTreeMap<(u32, u64), u64> = BTreeMap::new();
    let mut ids_seen: HashMap<u64, (u32, u64)> = HashMap::new();
    let partitions = log.topic_config("crash").map(|c| c.partitions).unwrap_or(0);
    for p in 0..partitions {
        let mut offset = log.start_offset("crash", p).expect("start");
        let end = log.end_offset("crash", p).expect("end");
        // Per producer, ids must increase along the partition.
        let mut last_by_producer: HashMap<u64, u64> = HashMap::new();
        while offset < end {
            let fetch = log.read("crash", p, offset, 64 * 1024).expect("read");
            assert!(fetch.next_offset() > offset, "no progress at {offset}");
            for r in fetch.records() {
                let id =
                    parse_id(r.value.expect("value")).unwrap_or_else(|| panic!("damaged record at {p}/{}", r.offset));
                if let Some(prev) = ids_seen.insert(id, (p, r.offset)) {
                    panic!("payload {id} stored twice: at {prev:?} and {:?}", (p, r.offset));
                }
                let producer = (id % ID_RUN) / ID_PRODUCER;
                let order = (id / ID_RUN, id % ID_PRODUCER);
                let packed = order.0 * ID_PRODUCER + order.1;
                if let Some(&prev) = last_by_producer.get(&producer) {
                    assert!(packed > prev, "producer {producer} out of order in partition {p} at {}", r.offset);
                }
                last_by_producer.insert(producer, packed);
                stored.insert((p, r.offset), id);
            }
            offset = fetch.next_offset();
        }
    }
    for (key, id) in acked {
        assert_eq!(stored.get(key), Some(id), "acknowledged record {id} at {key:?} is missing");
    }
    for (&p, &o) in commits {
        let c = log.committed_offset("crash", "crash", p).expect("committed");
        assert!(c.is_some_and(|c| c >= o), "partition {p}: commit of {o} lost (have {c:?})");
    }
    stored.len()
}

#[test]
fn acknowledged_records_survive_sigkill() {
    let seed: u64 = std::env::var("RILL_CRASH_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("crash test seed {seed} (set RILL_CRASH_SEED to replay)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut acked = Acked::new();
    let mut commits = HashMap::new();
    for run in 1..=RUNS {
        // Sometimes kill at the first ack (or during recovery-heavy startup), mostly later.
        let kill_after = if rng.random_bool(0.15) { 1 } else { rng.random_range(2..=250) };
        run_child(dir.path(), run, kill_after, &mut acked, &mut commits);
        let stored = verify(dir.path(), &acked, &commits);
        assert!(stored >= acked.len());
    }
    let segments = std::fs::read_dir(dir.path().join("topics/crash/0"))
        .map(|d| d.filter(|e| e.as_ref().is_ok_and(|e| e.path().extension().is_some_and(|x| x == "log"))).count())
        .unwrap_or(0);
    eprintln!("{RUNS} kills, {} acknowledged records checked, {segments} segments in partition 0", acked.len());
    assert!(acked.len() > 500, "the test exercised only {} acks", acked.len());
    assert!(segments > 1, "segments should have rolled");
}
