//! `rill bench file`: a saved query over JSON-lines files, timed from reading the input to the
//! last committed output, for side-by-side runs with Flink and DataFusion on the same files
//! (`bench/peers.sh`).
//!
//! The clock starts, the files are read line by line and appended to the embedded log in file
//! order (one partition by default, which is arrival order, as the peers read a single file)
//! while the query already runs from the beginning of the topic; the clock stops once it has
//! processed and committed everything. The input topics are written without fsync (like the
//! peers' input file, they live in the page cache; the file is the durable copy), the output
//! with Rill's defaults: fsynced, exactly-once. With two inputs (W4) the whole input is
//! appended before the query starts: a query that catches up with the loader on one input sees
//! that input idle, and the other input, already complete, would carry the watermark past the
//! bids still to come.
//! After the last line every partition gets a flush bid far in the future (auction -1, excluded
//! from the counts), which closes the last windows, as the end of a bounded input does in Flink.

use std::io::Read;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{anyhow, Context};
use bytes::Bytes;
use rill_connectors::store::Record;
use serde::Serialize;
use serde_json::Value;

use super::pipeline::{cpu_seconds, peak_rss_mb, read_values, Pipeline};

/// Options.
pub struct Options {
    /// The workload's query file (one CREATE ... AS SELECT).
    pub query: PathBuf,
    /// The sources' DDL (default: `ddl.sql` beside the query).
    pub ddl: Option<PathBuf>,
    /// Bids, JSON lines.
    pub input: PathBuf,
    /// Auctions, JSON lines (joins).
    pub auctions: Option<PathBuf>,
    /// Partitions of the input topics.
    pub partitions: u32,
    /// Key shards of the stateful stage (`num.stream.threads`), if not the default.
    pub threads: Option<usize>,
}

/// The report.
#[derive(Serialize)]
pub struct Report {
    /// Workload (the query file's stem).
    pub workload: String,
    /// Input events (bids + auctions).
    pub events: u64,
    /// Seconds from reading the first line to the last output committed.
    pub wall_s: f64,
    /// events / wall_s.
    pub events_per_s: f64,
    /// Seconds from reading the first line to the last one appended to the log.
    pub load_s: f64,
    /// CPU cores used on average.
    pub cores_used: f64,
    /// Output rows (committed).
    pub out_rows: u64,
    /// Sum of the CNT column over the output, if it has one.
    pub sum_cnt: Option<u64>,
    /// Rows routed to the late-data topic.
    pub late_rows: u64,
    /// Peak resident memory, MiB.
    pub peak_rss_mb: f64,
}

/// Appends a JSON-lines file to `topic`, round-robin over partitions in runs of up to 4,096
/// lines; returns the lines appended. The file is read in large chunks and each record's value
/// is a slice of its chunk (no copy per line); a chunk's lines are appended before the next
/// chunk is read into the same buffer (fresh buffers would cost page faults).
async fn append_file(p: &Pipeline, topic: &str, path: &PathBuf, partitions: u32) -> anyhow::Result<u64> {
    const CHUNK: usize = 4 << 20;
    const RUN: usize = 4096;
    let mut file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut batch: Vec<Record> = Vec::with_capacity(RUN);
    let mut n = 0u64;
    let mut part = 0u32;
    let mut pending: Vec<u8> = Vec::with_capacity(CHUNK);
    let mut spare: Vec<u8> = Vec::with_capacity(CHUNK);
    let mut eof = false;
    while !eof {
        // read_to_end fills the spare capacity without zeroing it first.
        let read = (&mut file).take((CHUNK - pending.len().min(CHUNK / 2)) as u64).read_to_end(&mut pending)?;
        eof = read == 0;
        // Whole lines go now; a partial last line waits for the next chunk (or the end).
        let cut = match memchr::memrchr(b'\n', &pending) {
            Some(i) if !eof => i + 1,
            _ if eof => pending.len(),
            _ => continue,
        };
        spare.clear();
        spare.extend_from_slice(&pending[cut..]);
        pending.truncate(cut);
        let chunk = Bytes::from(std::mem::replace(&mut pending, std::mem::take(&mut spare)));
        let mut start = 0;
        while start < chunk.len() {
            let end = memchr::memchr(b'\n', &chunk[start..]).map_or(chunk.len(), |i| start + i);
            if end > start {
                batch.push(Record { timestamp: 0, key: None, value: Some(chunk.slice(start..end)), headers: vec![] });
            }
            start = end + 1;
            if batch.len() == RUN || (start >= chunk.len() && !batch.is_empty()) {
                p.store.append(topic, part, &batch).await?;
                n += batch.len() as u64;
                batch.clear();
                part = (part + 1) % partitions;
            }
        }
        // Every slice is gone: the buffer is ours again.
        spare = chunk
            .try_into_mut()
            .map(|mut b| {
                b.clear();
                Vec::from(b)
            })
            .unwrap_or_else(|_| Vec::with_capacity(CHUNK));
    }
    Ok(n)
}

/// Runs the workload.
pub async fn run(opts: &Options) -> anyhow::Result<Report> {
    let workload = opts.query.file_stem().and_then(|s| s.to_str()).unwrap_or("query").to_string();
    let ddl_path = opts.ddl.clone().unwrap_or_else(|| opts.query.with_file_name("ddl.sql"));
    let ddl = std::fs::read_to_string(&ddl_path).with_context(|| format!("reading {}", ddl_path.display()))?;
    let query = std::fs::read_to_string(&opts.query).with_context(|| format!("reading {}", opts.query.display()))?;
    let dir = tempfile::tempdir()?;
    let (p, _) = Pipeline::open(dir.path()).await?;
    for topic in ["bid", "auction"] {
        let cfg = rill_log::TopicConfig {
            partitions: opts.partitions,
            durability: rill_log::Durability::None,
            ..Default::default()
        };
        p.store.create_topic(topic, cfg)?;
    }
    let mut props: rill_sql::engine::Properties =
        [("auto.offset.reset".to_string(), "earliest".to_string())].into_iter().collect();
    if let Some(t) = opts.threads {
        props.insert("num.stream.threads".into(), t.to_string());
    }
    p.execute(&ddl, &props).await?;
    let output = {
        let before: Vec<String> = p.engine.sources().await.into_iter().map(|s| s.name).collect();
        let cpu0 = cpu_seconds();
        let started = Instant::now();
        let preload = opts.auctions.is_some();
        if !preload {
            p.execute(&query, &props).await?;
        }
        let mut events = 0;
        if let Some(a) = &opts.auctions {
            events += append_file(&p, "auction", a, opts.partitions).await?;
        }
        events += append_file(&p, "bid", &opts.input, opts.partitions).await?;
        let flush = r#"{"auction":-1,"bidder":-1,"price":-1,"date_time":"2999-01-01 00:00:00.000"}"#;
        let flush_auction = r#"{"id":-2,"seller":-1,"category":-1,"date_time":"2999-01-01 00:00:00.000","expires":"2999-01-01 00:00:00.000"}"#;
        for part in 0..opts.partitions {
            let r = |v: &str| Record { timestamp: 0, key: None, value: Some(v.to_string().into()), headers: vec![] };
            p.store.append("bid", part, &[r(flush)]).await?;
            p.store.append("auction", part, &[r(flush_auction)]).await?;
        }
        let load = started.elapsed().as_secs_f64();
        if preload {
            p.execute(&query, &props).await?;
        }
        p.wait_until_idle().await;
        let wall = started.elapsed().as_secs_f64();
        let cpu = cpu_seconds() - cpu0;
        let name = p
            .engine
            .sources()
            .await
            .into_iter()
            .find(|s| !before.contains(&s.name))
            .ok_or_else(|| anyhow!("the query file created no stream or table"))?;
        (name, events, wall, cpu, load)
    };
    let (sink, events, wall, cpu, load_s) = output;
    let peak = peak_rss_mb();
    let mut out_rows = 0u64;
    let mut sum_cnt: Option<u64> = None;
    for v in read_values(&p.store, &sink.topic)? {
        let v: Value = serde_json::from_slice(&v)?;
        let auction = v.get("AUCTION").or_else(|| v.get("AUCTION_ID")).and_then(Value::as_i64);
        if auction.is_some_and(|a| a < 0) {
            continue;
        }
        out_rows += 1;
        if let Some(c) = v.get("CNT").and_then(Value::as_u64) {
            *sum_cnt.get_or_insert(0) += c;
        }
    }
    let late_rows = p.topic_len(rill_engine::runtime::LATE_TOPIC).unwrap_or(0);
    p.shutdown().await;
    Ok(Report {
        workload,
        events,
        wall_s: wall,
        events_per_s: events as f64 / wall,
        load_s,
        cores_used: cpu / wall,
        out_rows,
        sum_cnt,
        late_rows,
        peak_rss_mb: peak,
    })
}
