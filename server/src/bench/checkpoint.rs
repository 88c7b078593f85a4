//! `rill bench exactly-once`: what exactly-once costs against at-least-once, and how long
//! recovery takes.
//!
//! For each workload (a stateless filter/projection and a tumbling-window aggregation) and each
//! `processing.guarantee`, a fresh log is loaded with the same bids (JSON, 4 partitions) and the
//! query runs from the beginning until it has processed and committed everything; the figure is
//! input events per second of that run. Recovery: after the exactly-once aggregation has run,
//! the engine is stopped, a tenth more events are appended, and the engine is reopened; the
//! time to open (command replay, checkpoint restore) and to catch up is reported next to the
//! length of the history, which recovery must not depend on.

use std::time::Instant;

use rill_connectors::store::Record;
use serde::Serialize;

use super::pipeline::{dir_bytes, load, Pipeline};

/// Options.
pub struct Options {
    /// Input events per run.
    pub events: u64,
    /// `commit.interval.ms` of the queries.
    pub interval_ms: u64,
    /// Repetitions per workload and guarantee (the median is reported; the two guarantees
    /// alternate so that neither always runs on a warmer machine).
    pub reps: usize,
}

/// One workload under both guarantees.
#[derive(Serialize)]
pub struct WorkloadResult {
    /// Workload name.
    pub workload: String,
    /// Events per run.
    pub events: u64,
    /// At-least-once throughput.
    pub at_least_once_events_per_s: f64,
    /// Exactly-once throughput.
    pub exactly_once_events_per_s: f64,
    /// 1 - exactly_once / at_least_once.
    pub exactly_once_cost: f64,
    /// Output records (equal under both guarantees, checked).
    pub output_records: u64,
}

/// The whole report.
#[derive(Serialize)]
pub struct Report {
    /// Per workload.
    pub workloads: Vec<WorkloadResult>,
    /// Events in the log before recovery.
    pub recovery_history_events: u64,
    /// Events appended after the checkpoint, replayed by recovery.
    pub recovery_new_events: u64,
    /// Reopening the engine: command replay, transactions resolved, state restored (ms).
    pub recovery_open_ms: f64,
    /// From reopening to having processed and committed the new events (ms).
    pub recovery_total_ms: f64,
    /// Size of the checkpoint files (bytes).
    pub checkpoint_bytes: u64,
    /// `commit.interval.ms` used.
    pub commit_interval_ms: u64,
}

const BIDS: &str = "CREATE STREAM BIDS (AUCTION VARCHAR KEY, BIDDER VARCHAR, PRICE BIGINT, TS BIGINT) \
     WITH (KAFKA_TOPIC='bids', VALUE_FORMAT='JSON', PARTITIONS=4, TIMESTAMP='TS');";

const WORKLOADS: &[(&str, &str, &str)] = &[
    (
        "filter-project",
        "CREATE STREAM EXPENSIVE AS SELECT AUCTION, BIDDER, PRICE * 100 AS CENTS FROM BIDS WHERE PRICE > 500;",
        "EXPENSIVE",
    ),
    (
        "tumbling-aggregation",
        "CREATE TABLE BID_STATS AS SELECT AUCTION, COUNT(*) AS BIDS, SUM(PRICE) AS TOTAL, MAX(PRICE) AS TOP \
         FROM BIDS WINDOW TUMBLING (SIZE 10 SECONDS, GRACE PERIOD 0 SECONDS) GROUP BY AUCTION EMIT FINAL;",
        "BID_STATS",
    ),
];

/// Bids `from..to`: 1,000 auctions, one bid every millisecond of event time.
fn bids(from: u64, to: u64) -> impl Iterator<Item = Record> {
    (from..to).map(|i| {
        let auction = format!("a{}", (i * 7919) % 1000);
        let value = format!(r#"{{"BIDDER":"u{}","PRICE":{},"TS":{}}}"#, i % 977, (i * 31) % 1000, i);
        Record { timestamp: i as i64, key: Some(auction.into()), value: Some(value.into()), headers: vec![] }
    })
}

/// Runs one workload under one guarantee in a fresh directory; returns events/s, the output
/// size and the pipeline (still open).
async fn run_once(
    dir: &std::path::Path,
    events: u64,
    statement: &str,
    output: &str,
    guarantee: &str,
    interval_ms: u64,
) -> anyhow::Result<(f64, u64, Pipeline)> {
    let (p, _) = Pipeline::open(dir).await?;
    load(&p.store, "bids", 4, bids(0, events)).await?;
    let props = [
        ("auto.offset.reset".to_string(), "earliest".to_string()),
        ("processing.guarantee".to_string(), guarantee.to_string()),
        ("commit.interval.ms".to_string(), interval_ms.to_string()),
    ]
    .into_iter()
    .collect();
    p.execute(BIDS, &props).await?;
    let started = Instant::now();
    p.execute(statement, &props).await?;
    p.wait_until_idle().await;
    let secs = started.elapsed().as_secs_f64();
    let out = p.topic_len(output)?;
    Ok((events as f64 / secs, out, p))
}

/// Runs the benchmark.
pub async fn run(opts: &Options) -> anyhow::Result<Report> {
    let mut workloads = Vec::new();
    let mut recovery = None;
    for (name, statement, output) in WORKLOADS {
        let (mut alo_runs, mut eo_runs) = (Vec::new(), Vec::new());
        let (mut alo_out, mut eo_out) = (0, 0);
        for rep in 0..opts.reps.max(1) {
            for guarantee in
                if rep % 2 == 0 { ["at_least_once", "exactly_once"] } else { ["exactly_once", "at_least_once"] }
            {
                let dir = tempfile::tempdir()?;
                let (rate, out, p) =
                    run_once(dir.path(), opts.events, statement, output, guarantee, opts.interval_ms).await?;
                p.shutdown().await;
                if guarantee == "at_least_once" {
                    alo_runs.push(rate);
                    alo_out = out;
                } else {
                    eo_runs.push(rate);
                    eo_out = out;
                }
            }
        }
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (alo, eo) = (median(alo_runs), median(eo_runs));
        let eo_dir = tempfile::tempdir()?;
        let (_, _, p) =
            run_once(eo_dir.path(), opts.events, statement, output, "exactly_once", opts.interval_ms).await?;
        if alo_out != eo_out || eo_out == 0 {
            anyhow::bail!("{name}: {alo_out} output records at least once, {eo_out} exactly once");
        }
        workloads.push(WorkloadResult {
            workload: name.to_string(),
            events: opts.events,
            at_least_once_events_per_s: alo,
            exactly_once_events_per_s: eo,
            exactly_once_cost: 1.0 - eo / alo,
            output_records: eo_out,
        });
        if *name == "tumbling-aggregation" {
            // Recovery: stop, append a tenth more, reopen and catch up.
            p.shutdown().await;
            let checkpoint_bytes = dir_bytes(&eo_dir.path().join("checkpoints"));
            let extra = (opts.events / 10).max(1);
            {
                let store: std::sync::Arc<dyn rill_connectors::TopicStore> =
                    std::sync::Arc::new(rill_connectors::EmbeddedStore::open(eo_dir.path())?);
                load(&store, "bids", 4, bids(opts.events, opts.events + extra)).await?;
            }
            let started = Instant::now();
            let (p, open) = Pipeline::open(eo_dir.path()).await?;
            p.wait_until_idle().await;
            let total = started.elapsed();
            p.shutdown().await;
            recovery =
                Some((opts.events, extra, open.as_secs_f64() * 1e3, total.as_secs_f64() * 1e3, checkpoint_bytes));
        } else {
            p.shutdown().await;
        }
    }
    let (history, extra, open_ms, total_ms, checkpoint_bytes) = recovery.unwrap_or_default();
    Ok(Report {
        workloads,
        recovery_history_events: history,
        recovery_new_events: extra,
        recovery_open_ms: open_ms,
        recovery_total_ms: total_ms,
        checkpoint_bytes,
        commit_interval_ms: opts.interval_ms,
    })
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "| workload | events | at-least-once ev/s | exactly-once ev/s | cost |")?;
        writeln!(f, "|---|---:|---:|---:|---:|")?;
        for w in &self.workloads {
            writeln!(
                f,
                "| {} | {} | {:.0} | {:.0} | {:.1}% |",
                w.workload,
                w.events,
                w.at_least_once_events_per_s,
                w.exactly_once_events_per_s,
                w.exactly_once_cost * 100.0
            )?;
        }
        write!(
            f,
            "recovery after {} events of history with {} new: open {:.1} ms, caught up {:.1} ms; checkpoint {} bytes; commit.interval.ms {}",
            self.recovery_history_events,
            self.recovery_new_events,
            self.recovery_open_ms,
            self.recovery_total_ms,
            self.checkpoint_bytes,
            self.commit_interval_ms
        )
    }
}
