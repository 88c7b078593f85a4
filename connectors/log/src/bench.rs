//! `rill bench log`: append, ack-latency and tail-read throughput of the embedded log.
//!
//! What is measured (MB = 10^6 bytes of log data, i.e. encoded Kafka v2 batches as written):
//!
//! * **Append cases**: for value sizes × producer counts × {fsync, page cache}, producers append
//!   batches of about [`BenchOptions::batch_bytes`] each, closed loop (each producer waits for
//!   its ack), for [`BenchOptions::case_duration`] or [`BenchOptions::max_case_bytes`].
//! * **Plain file**: for every durable case, the exact sequence of write sizes the partition
//!   writer made durable (its fsync cadence) is replayed with `write` + `fdatasync` on a plain
//!   file; `durable_vs_plain` is log MB/s over plain-file MB/s for the headline case (largest
//!   values, most producers).
//! * **Ack latency**: single-record appends issued open-loop at [`BenchOptions::latency_rate`]
//!   records/s; latency runs from each append's *scheduled* time to its ack (so a stall is
//!   charged to every append it delays).
//! * **Tail reads**: the headline case's partition is read back from the page cache with 1 MiB
//!   fetches, iterating every record.

use std::fmt;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;

use crate::error::{IoContext, LogError, Result};
use crate::{Durability, Log, Record, TopicConfig};

/// Knobs of a benchmark run.
#[derive(Clone, Debug)]
pub struct BenchOptions {
    /// Longest time one append case runs.
    pub case_duration: Duration,
    /// A case stops after writing this many bytes.
    pub max_case_bytes: u64,
    /// Value sizes to measure.
    pub value_sizes: Vec<usize>,
    /// Producer counts to measure.
    pub producers: Vec<usize>,
    /// Approximate bytes per append call (records per append = this / record size).
    pub batch_bytes: usize,
    /// Records per second offered in the latency run.
    pub latency_rate: u64,
    /// Duration of the latency run.
    pub latency_duration: Duration,
    /// Value size in the latency run.
    pub latency_value_size: usize,
}

impl Default for BenchOptions {
    /// About 30 s in a release build.
    fn default() -> Self {
        BenchOptions {
            case_duration: Duration::from_secs(2),
            max_case_bytes: 512 << 20,
            value_sizes: vec![100, 1024],
            producers: vec![1, 8],
            batch_bytes: 16 * 1024,
            latency_rate: 50_000,
            latency_duration: Duration::from_secs(3),
            latency_value_size: 100,
        }
    }
}

impl BenchOptions {
    /// A run of well under a second, for smoke tests.
    pub fn tiny() -> Self {
        BenchOptions {
            case_duration: Duration::from_millis(100),
            max_case_bytes: 2 << 20,
            latency_rate: 2_000,
            latency_duration: Duration::from_millis(200),
            ..BenchOptions::default()
        }
    }
}

/// One append case.
#[derive(Clone, Debug, Serialize)]
pub struct BenchCase {
    /// Value size in bytes.
    pub value_bytes: usize,
    /// Concurrent producers.
    pub producers: usize,
    /// Fsync durability (else page cache only).
    pub durable: bool,
    /// Records appended.
    pub records: u64,
    /// Wall time.
    pub seconds: f64,
    /// Records per second.
    pub records_s: f64,
    /// Log MB per second.
    pub mb_s: f64,
    /// Writes made durable (fsyncs for durable cases).
    pub writes: u64,
    /// Median append latency (closed loop).
    pub p50_ack_ms: f64,
    /// 99th percentile append latency (closed loop).
    pub p99_ack_ms: f64,
    /// Same bytes, same fsync cadence, plain file (durable cases).
    pub plain_file_mb_s: Option<f64>,
}

/// Result of [`run`].
#[derive(Clone, Debug, Serialize)]
pub struct LogBenchReport {
    /// Durable append MB/s of the headline case (largest value, most producers).
    pub durable_append_mb_s: f64,
    /// Durable append records/s of the headline case.
    pub durable_append_records_s: f64,
    /// Plain-file MB/s with the headline case's bytes and fsync cadence.
    pub plain_file_mb_s: f64,
    /// `durable_append_mb_s / plain_file_mb_s` (goal: at least 0.7).
    pub durable_vs_plain: f64,
    /// Tail-read MB/s from the page cache (goal: at least 1000).
    pub tail_read_mb_s: f64,
    /// Tail-read records/s.
    pub tail_read_records_s: f64,
    /// Median ack latency at the offered rate.
    pub p50_ack_ms: f64,
    /// 99th percentile ack latency at the offered rate (goal: under 5 ms at 50,000 records/s).
    pub p99_ack_ms: f64,
    /// Records/s offered in the latency run.
    pub latency_offered_records_s: u64,
    /// Records/s acknowledged in the latency run.
    pub latency_achieved_records_s: f64,
    /// Every append case.
    pub cases: Vec<BenchCase>,
}

/// Runs the benchmark in a scratch directory under `dir` (removed afterwards). Blocks; safe to
/// call from any thread (it runs its own Tokio runtime on a dedicated thread).
pub fn run(dir: &Path, opts: &BenchOptions) -> Result<LogBenchReport> {
    let scratch = dir.join(format!("rill-log-bench-{}", std::process::id()));
    let opts = opts.clone();
    let scratch2 = scratch.clone();
    let result = std::thread::Builder::new()
        .name("rill-log-bench".into())
        .spawn(move || -> Result<LogBenchReport> {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .ctx(|| "starting the benchmark runtime".to_string())?;
            run_all(&rt, &scratch2, &opts)
        })
        .ctx(|| "starting the benchmark thread".to_string())?
        .join()
        .unwrap_or_else(|_| Err(LogError::Internal("the benchmark thread panicked".into())));
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

fn run_all(rt: &tokio::runtime::Runtime, scratch: &Path, opts: &BenchOptions) -> Result<LogBenchReport> {
    crate::fsutil::create_dir_all(scratch)?;
    let mut cases = Vec::new();
    let headline_size = opts.value_sizes.iter().copied().max().unwrap_or(1024);
    let headline_producers = opts.producers.iter().copied().max().unwrap_or(1);
    let mut tail = (0.0, 0.0);
    for &durable in &[true, false] {
        for &value_bytes in &opts.value_sizes {
            for &producers in &opts.producers {
                let case_dir = scratch.join(format!("case-{value_bytes}-{producers}-{durable}"));
                let headline = durable && value_bytes == headline_size && producers == headline_producers;
                let (case, t) = run_case(rt, &case_dir, value_bytes, producers, durable, headline, opts)?;
                if let Some(t) = t {
                    tail = t;
                }
                cases.push(case);
                let _ = std::fs::remove_dir_all(&case_dir);
            }
        }
    }
    let (p50, p99, achieved) = latency_run(rt, &scratch.join("latency"), opts)?;
    let head = cases
        .iter()
        .find(|c| c.durable && c.value_bytes == headline_size && c.producers == headline_producers)
        .cloned()
        .ok_or_else(|| LogError::Internal("no headline case ran".into()))?;
    let plain = head.plain_file_mb_s.unwrap_or(0.0);
    Ok(LogBenchReport {
        durable_append_mb_s: head.mb_s,
        durable_append_records_s: head.records_s,
        plain_file_mb_s: plain,
        durable_vs_plain: if plain > 0.0 { head.mb_s / plain } else { 0.0 },
        tail_read_mb_s: tail.0,
        tail_read_records_s: tail.1,
        p50_ack_ms: p50,
        p99_ack_ms: p99,
        latency_offered_records_s: opts.latency_rate,
        latency_achieved_records_s: achieved,
        cases,
    })
}

fn topic_config(durable: bool) -> TopicConfig {
    TopicConfig {
        partitions: 1,
        retention_ms: None,
        durability: if durable { Durability::Fsync } else { Durability::None },
        ..TopicConfig::default()
    }
}

fn percentile(sorted_us: &[u64], p: f64) -> f64 {
    if sorted_us.is_empty() {
        return 0.0;
    }
    let i = ((sorted_us.len() as f64 - 1.0) * p).round() as usize;
    sorted_us[i.min(sorted_us.len() - 1)] as f64 / 1000.0
}

/// One append case; with `read_back`, also measures tail reads: `(MB/s, records/s)`.
fn run_case(
    rt: &tokio::runtime::Runtime,
    dir: &Path,
    value_bytes: usize,
    producers: usize,
    durable: bool,
    read_back: bool,
    opts: &BenchOptions,
) -> Result<(BenchCase, Option<(f64, f64)>)> {
    let log = Log::open(dir)?;
    log.create_topic("bench", topic_config(durable))?;
    let partition = log.partition("bench", 0)?;
    *partition.trace.lock() = Some(Vec::new());
    let per_append = (opts.batch_bytes / (value_bytes + 24)).max(1);
    let value = Bytes::from(vec![b'v'; value_bytes]);
    let written = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + opts.case_duration;
    let results = rt.block_on(async {
        let mut tasks = Vec::new();
        for p in 0..producers {
            let (log, value, written) = (log.clone(), value.clone(), written.clone());
            let max = opts.max_case_bytes;
            tasks.push(tokio::spawn(async move {
                let key = Bytes::from(format!("producer-{p}"));
                let mut records: Vec<Record> = (0..per_append)
                    .map(|i| Record {
                        timestamp: i as i64,
                        key: Some(key.clone()),
                        value: Some(value.clone()),
                        headers: vec![],
                    })
                    .collect();
                let mut lat_us = Vec::new();
                let mut n = 0u64;
                while Instant::now() < deadline && written.load(Ordering::Relaxed) < max {
                    for r in &mut records {
                        r.timestamp += per_append as i64;
                    }
                    let t0 = Instant::now();
                    log.append("bench", 0, &records).await?;
                    lat_us.push(t0.elapsed().as_micros() as u64);
                    n += per_append as u64;
                    written.fetch_add((per_append * (value_bytes + 24)) as u64, Ordering::Relaxed);
                }
                Ok::<_, LogError>((n, lat_us))
            }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await.map_err(|e| LogError::Internal(format!("bench producer: {e}")))??);
        }
        Ok::<_, LogError>(out)
    })?;
    let seconds = start.elapsed().as_secs_f64().max(1e-9);
    let records: u64 = results.iter().map(|r| r.0).sum();
    let mut lat: Vec<u64> = results.into_iter().flat_map(|r| r.1).collect();
    lat.sort_unstable();
    let bytes = log.size_bytes("bench", 0)?;
    let trace = partition.trace.lock().take().unwrap_or_default();
    drop(partition);
    let tail = if read_back { Some(tail_read(&log)?) } else { None };
    drop(log);
    let plain_file_mb_s = if durable { Some(plain_file(&dir.join("plain.bin"), &trace)?) } else { None };
    let case = BenchCase {
        value_bytes,
        producers,
        durable,
        records,
        seconds,
        records_s: records as f64 / seconds,
        mb_s: bytes as f64 / seconds / 1e6,
        writes: trace.len() as u64,
        p50_ack_ms: percentile(&lat, 0.50),
        p99_ack_ms: percentile(&lat, 0.99),
        plain_file_mb_s,
    };
    Ok((case, tail))
}

/// Writes the same sizes with `fdatasync` after each, as the partition writer did.
fn plain_file(path: &PathBuf, writes: &[u64]) -> Result<f64> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .ctx(|| format!("creating {}", path.display()))?;
    let largest = writes.iter().copied().max().unwrap_or(0) as usize;
    let buf = vec![b'p'; largest];
    let start = Instant::now();
    let mut pos = 0u64;
    for &w in writes {
        file.write_all_at(&buf[..w as usize], pos).ctx(|| format!("writing {}", path.display()))?;
        file.sync_data().ctx(|| format!("fsyncing {}", path.display()))?;
        pos += w;
    }
    let seconds = start.elapsed().as_secs_f64().max(1e-9);
    drop(file);
    let _ = std::fs::remove_file(path);
    Ok(pos as f64 / seconds / 1e6)
}

/// Reads the whole partition with 1 MiB fetches: (MB/s, records/s).
fn tail_read(log: &Log) -> Result<(f64, f64)> {
    let end = log.end_offset("bench", 0)?;
    let start = Instant::now();
    let mut offset = log.start_offset("bench", 0)?;
    let (mut bytes, mut records, mut value_bytes) = (0u64, 0u64, 0u64);
    while offset < end {
        let fetch = log.read("bench", 0, offset, 1 << 20)?;
        bytes += fetch.bytes().len() as u64;
        for r in fetch.records() {
            records += 1;
            value_bytes += r.value.map_or(0, |v| v.len() as u64);
        }
        if fetch.next_offset() <= offset {
            break;
        }
        offset = fetch.next_offset();
    }
    let seconds = start.elapsed().as_secs_f64().max(1e-9);
    std::hint::black_box(value_bytes);
    Ok((bytes as f64 / seconds / 1e6, records as f64 / seconds))
}

/// Open-loop single-record appends at the offered rate: (p50 ms, p99 ms, achieved records/s).
fn latency_run(rt: &tokio::runtime::Runtime, dir: &Path, opts: &BenchOptions) -> Result<(f64, f64, f64)> {
    let log = Log::open(dir)?;
    log.create_topic("latency", topic_config(true))?;
    let value = Bytes::from(vec![b'l'; opts.latency_value_size]);
    let rate = opts.latency_rate.max(1);
    let total = (rate as f64 * opts.latency_duration.as_secs_f64()) as u64;
    let result = rt.block_on(async {
        let start = tokio::time::Instant::now();
        let mut ticker = tokio::time::interval(Duration::from_millis(1));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let mut handles = Vec::with_capacity(total as usize);
        let mut sent = 0u64;
        while sent < total {
            ticker.tick().await;
            let elapsed = start.elapsed();
            let due = ((elapsed.as_secs_f64() * rate as f64) as u64 + 1).min(total);
            while sent < due {
                // The scheduled time of this append.
                let scheduled = start + Duration::from_secs_f64(sent as f64 / rate as f64);
                let (log, value) = (log.clone(), value.clone());
                let i = sent;
                handles.push(tokio::spawn(async move {
                    let r = Record { timestamp: i as i64, key: None, value: Some(value), headers: vec![] };
                    log.append("latency", 0, std::slice::from_ref(&r)).await?;
                    Ok::<u64, LogError>(scheduled.elapsed().as_micros() as u64)
                }));
                sent += 1;
            }
        }
        let mut lat = Vec::with_capacity(handles.len());
        for h in handles {
            lat.push(h.await.map_err(|e| LogError::Internal(format!("latency task: {e}")))??);
        }
        let seconds = start.elapsed().as_secs_f64().max(1e-9);
        Ok::<_, LogError>((lat, seconds))
    });
    drop(log);
    let _ = std::fs::remove_dir_all(dir);
    let (mut lat, seconds) = result?;
    lat.sort_unstable();
    Ok((percentile(&lat, 0.50), percentile(&lat, 0.99), lat.len() as f64 / seconds))
}

impl fmt::Display for LogBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "rill bench log (MB = 10^6 bytes of log data; fsync = group-committed fdatasync)")?;
        writeln!(f)?;
        writeln!(
            f,
            "{:>7} {:>9} {:>10} {:>12} {:>9} {:>8} {:>9} {:>9} {:>11}",
            "value", "producers", "durability", "records/s", "MB/s", "fsyncs", "p50 ack", "p99 ack", "plain MB/s"
        )?;
        for c in &self.cases {
            writeln!(
                f,
                "{:>5} B {:>9} {:>10} {:>12.0} {:>9.1} {:>8} {:>6.2} ms {:>6.2} ms {:>11}",
                c.value_bytes,
                c.producers,
                if c.durable { "fsync" } else { "none" },
                c.records_s,
                c.mb_s,
                if c.durable { c.writes.to_string() } else { "-".into() },
                c.p50_ack_ms,
                c.p99_ack_ms,
                c.plain_file_mb_s.map_or("-".into(), |p| format!("{p:.1}")),
            )?;
        }
        writeln!(f)?;
        let verdict = |ok: bool| if ok { "ok" } else { "BELOW GOAL" };
        writeln!(
            f,
            "durable append:  {:.1} MB/s vs plain file {:.1} MB/s (same bytes, same fsyncs): ratio {:.2} (goal >= 0.70: {})",
            self.durable_append_mb_s,
            self.plain_file_mb_s,
            self.durable_vs_plain,
            verdict(self.durable_vs_plain >= 0.7)
        )?;
        writeln!(
            f,
            "tail read:       {:.0} MB/s, {:.0} records/s (goal >= 1000 MB/s: {})",
            self.tail_read_mb_s,
            self.tail_read_records_s,
            verdict(self.tail_read_mb_s >= 1000.0)
        )?;
        write!(
            f,
            "ack latency:     p50 {:.2} ms, p99 {:.2} ms at {} records/s offered, {:.0} achieved (goal p99 < 5 ms: {})",
            self.p50_ack_ms,
            self.p99_ack_ms,
            self.latency_offered_records_s,
            self.latency_achieved_records_s,
            verdict(self.p99_ack_ms < 5.0)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<u64> = (1..=100).map(|i| i * 1000).collect();
        assert_eq!(percentile(&v, 0.5), 51.0);
        assert_eq!(percentile(&v, 0.99), 99.0);
        assert_eq!(percentile(&[], 0.99), 0.0);
    }

    /// The benchmark runs end to end with tiny sizes and reports every key `--json` promises
    /// (the real figures come from `rill bench log` on a release build; no speed is asserted).
    #[test]
    fn bench_reports_every_figure() {
        let dir = tempfile::tempdir().expect("tempdir");
        let report = run(dir.path(), &BenchOptions::tiny()).expect("bench runs");
        println!("{report}");
        let json = serde_json::to_value(&report).expect("json");
        for key in ["durable_append_mb_s", "plain_file_mb_s", "durable_vs_plain", "tail_read_mb_s", "p99_ack_ms"] {
            assert!(json.get(key).is_some_and(|v| v.is_number()), "missing {key}");
        }
        assert_eq!(report.cases.len(), 8);
        assert!(report.durable_append_mb_s > 0.0 && report.tail_read_mb_s > 0.0);
        assert!(std::fs::read_dir(dir.path()).expect("ls").next().is_none(), "scratch removed");
    }
}
