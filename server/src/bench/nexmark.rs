//! `rill bench nexmark`: Nexmark on Rill, checked against DataFusion batch on the same data.
//!
//! 1. Events come from the `nexmark` crate with a fixed base time, generated on every core in
//!    contiguous ranges (so per-topic order is the generator's), as JSON values into the
//!    embedded log: topics `person`, `auction`, `bid` with `--partitions` partitions each. After
//!    the data, every partition gets one *flush* event an hour past the last one (ids -1, -2),
//!    which closes every window: the end of the bounded input. Flush rows are left out of every
//!    comparison.
//! 2. The saved query `queries/nexmark/<q>.sql` runs as a persistent query (exactly-once, the
//!    default) from the beginning until it has processed and committed everything. Figures:
//!    input events of the topics it reads per second of wall time, and per second of CPU time
//!    (getrusage: every core the process used), peak RSS, state size.
//! 3. Oracle: the same JSON values are read back from the log, decoded with arrow-json into
//!    DataFusion tables and the equivalent batch query runs (timed: decode + query). Its rows
//!    must equal the streaming output's as a multiset (`matches_batch`).
//! 4. Latency (stateless queries): a fresh run where a producer appends bids at half the
//!    measured rate with the wall clock as event time; a reader tails the output (committed
//!    records only) and records visible-time minus event-time per record.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use datafusion::prelude::SessionContext;
use nexmark::config::NexmarkConfig;
use nexmark::event::Event;
use nexmark::EventGenerator;
use rill_connectors::store::Record;
use rill_connectors::TopicStore;
use serde::Serialize;
use serde_json::Value;

use super::pipeline::{cpu_seconds, load, peak_rss_mb, read_values, Pipeline};

/// Options.
pub struct Options {
    /// Query name (q0, q1, ...).
    pub query: String,
    /// Events to generate (all kinds).
    pub events: u64,
    /// Partitions per topic.
    pub partitions: u32,
    /// Where `ddl.sql` and `<q>.sql` are.
    pub queries_dir: PathBuf,
    /// Skip the latency run.
    pub no_latency: bool,
    /// The latency run's rate as a fraction of the measured throughput.
    pub latency_at: f64,
    /// Key shards of stateful stages (`num.stream.threads`), if not the default.
    pub threads: Option<usize>,
}

/// The report, one JSON object with `--json`.
#[derive(Serialize)]
pub struct Report {
    /// Query.
    pub query: String,
    /// Input events of the topics the query reads (flush events excluded).
    pub events: u64,
    /// Events generated (all kinds).
    pub generated_events: u64,
    /// Streaming throughput: events / wall seconds from query start to all committed.
    pub events_per_s: f64,
    /// Events per CPU-second of the process during the run.
    pub events_per_s_per_core: f64,
    /// CPU cores used on average during the run.
    pub cores_used: f64,
    /// DataFusion batch: events / seconds to decode the same JSON and run the batch query.
    pub batch_events_per_s: f64,
    /// events_per_s / batch_events_per_s.
    pub vs_batch: f64,
    /// Whether the streaming output equals the batch result.
    pub matches_batch: bool,
    /// Output rows (streaming, flush rows excluded).
    pub output_rows: u64,
    /// Batch result rows.
    pub batch_rows: u64,
    /// The latency run's rate (`--latency-at` times the measured rate; half by default), events/s.
    pub latency_events_per_s: Option<f64>,
    /// Latency percentiles at that rate (stateless queries), ms, with
    /// `processing.guarantee = at_least_once` (output visible once appended): from a bid's
    /// append (its event time, the wall clock when sent) to its result's, over ten seconds after
    /// one of warm-up; the producer and the reader are a thread and a task of this process.
    pub p50_latency_ms: Option<f64>,
    /// p99 of the same.
    pub p99_latency_ms: Option<f64>,
    /// p99 with exactly-once (output visible when its checkpoint commits, at most every 100 ms
    /// when the query keeps up).
    pub p99_latency_ms_exactly_once: Option<f64>,
    /// Peak resident memory of the process before the oracle ran, MiB.
    pub peak_rss_mb: f64,
    /// Operator state at the end (bytes, approximate).
    pub state_bytes: u64,
    /// Partitions per topic.
    pub partitions: u32,
}

/// What a query reads, how to compare its output, and its batch equivalent.
struct QuerySpec {
    /// Topics the query reads.
    inputs: &'static [&'static str],
    /// Output topic (the sink of the last statement).
    output: &'static str,
    /// Output value columns compared (upper case).
    columns: &'static [&'static str],
    /// DataFusion SQL over tables person, auction, bid (lower-case columns as generated).
    batch: &'static str,
    /// A latency run makes sense (stateless, one output per bid).
    latency: bool,
}

fn spec(query: &str) -> anyhow::Result<QuerySpec> {
    Ok(match query {
        "q0" => QuerySpec {
            inputs: &["bid"],
            output: "NEXMARK_Q0",
            columns: &["AUCTION", "BIDDER", "PRICE", "DATETIME", "EXTRA"],
            batch: "SELECT auction, bidder, price, \"dateTime\", extra FROM bid",
            latency: true,
        },
        "q1" => QuerySpec {
            inputs: &["bid"],
            output: "NEXMARK_Q1",
            columns: &["AUCTION", "BIDDER", "PRICE", "DATETIME", "EXTRA"],
            batch: "SELECT auction, bidder, price * 0.908 AS price, \"dateTime\", extra FROM bid",
            latency: true,
        },
        "q2" => QuerySpec {
            inputs: &["bid"],
            output: "NEXMARK_Q2",
            columns: &["AUCTION", "PRICE"],
            batch: "SELECT auction, price FROM bid WHERE auction % 123 = 0",
            latency: true,
        },
        "q3" => QuerySpec {
            inputs: &["person", "auction"],
            output: "NEXMARK_Q3",
            columns: &["AUCTION_ID", "NAME", "CITY", "STATE"],
            // The bench builds the people table completely before the auctions are read (see
            // q3.sql), so every auction meets its seller, even one registered after it.
            batch: "SELECT a.id AS auction_id, p.name, p.city, p.state FROM auction a JOIN person p \
                    ON a.seller = p.id WHERE a.category = 10 AND p.state IN ('or', 'id', 'ca')",
            latency: false,
        },
        "q5" => QuerySpec {
            inputs: &["bid"],
            output: "NEXMARK_Q5",
            columns: &["AUCTION_ID", "WSTART", "NUM"],
            batch: "SELECT auction AS auction_id, s AS wstart, COUNT(*) AS num FROM (SELECT auction, \
                    (\"dateTime\" - \"dateTime\" % 2000) - k * 2000 AS s, \"dateTime\" AS t FROM bid \
                    CROSS JOIN (VALUES (0), (1), (2), (3), (4)) AS ks(k)) WHERE s > t - 10000 GROUP BY auction, s",
            latency: false,
        },
        "q7" => QuerySpec {
            inputs: &["bid"],
            output: "NEXMARK_Q7",
            columns: &["ALL_BIDS", "WSTART", "MAXPRICE"],
            batch: "SELECT 1 AS all_bids, \"dateTime\" - \"dateTime\" % 10000 AS wstart, MAX(price) AS maxprice \
                    FROM bid GROUP BY 2",
            latency: false,
        },
        "q8" => QuerySpec {
            inputs: &["person", "auction"],
            output: "NEXMARK_Q8",
            columns: &["PERSON_ID", "NAME", "WSTART"],
            batch: "SELECT p.id AS person_id, p.name, (p.\"dateTime\" / 10000) * 10000 AS wstart FROM person p JOIN auction a \
                    ON p.id = a.seller AND p.\"dateTime\" / 10000 = a.\"dateTime\" / 10000",
            latency: false,
        },
        "q11" => QuerySpec {
            inputs: &["bid"],
            output: "NEXMARK_Q11",
            columns: &["BIDDER_ID", "WSTART", "WEND", "BID_COUNT"],
            batch: "WITH g AS (SELECT bidder, \"dateTime\" AS t, CASE WHEN \"dateTime\" - LAG(\"dateTime\") \
                    OVER (PARTITION BY bidder ORDER BY \"dateTime\") <= 10000 THEN 0 ELSE 1 END AS new_session \
                    FROM bid), s AS (SELECT bidder, t, SUM(new_session) OVER (PARTITION BY bidder ORDER BY t \
                    ROWS UNBOUNDED PRECEDING) AS sid FROM g) \
                    SELECT bidder AS bidder_id, MIN(t) AS wstart, MAX(t) AS wend, COUNT(*) AS bid_count \
                    FROM s GROUP BY bidder, sid",
            latency: false,
        },
        "q4" => bail!("q4 is not expressible in Rill yet: see queries/nexmark/q4.sql"),
        other => bail!("unknown Nexmark query {other}: q0, q1, q2, q3, q5, q7, q8, q11"),
    })
}

/// A generated event as (topic, JSON value, event time).
fn encode(event: &Event) -> (&'static str, String, i64) {
    match event {
        Event::Person(p) => (
            "person",
            serde_json::json!({"id": p.id, "name": p.name, "emailAddress": p.email_address,
                "creditCard": p.credit_card, "city": p.city, "state": p.state, "dateTime": p.date_time,
                "extra": p.extra})
            .to_string(),
            p.date_time as i64,
        ),
        Event::Auction(a) => (
            "auction",
            serde_json::json!({"id": a.id, "itemName": a.item_name, "description": a.description,
                "initialBid": a.initial_bid, "reserve": a.reserve, "dateTime": a.date_time, "expires": a.expires,
                "seller": a.seller, "category": a.category, "extra": a.extra})
            .to_string(),
            a.date_time as i64,
        ),
        Event::Bid(b) => (
            "bid",
            serde_json::json!({"auction": b.auction, "bidder": b.bidder, "price": b.price, "channel": b.channel,
                "url": b.url, "dateTime": b.date_time, "extra": b.extra})
            .to_string(),
            b.date_time as i64,
        ),
    }
}

/// Base time of every run: 2024-01-01T00:00:00Z.
const BASE_TIME: u64 = 1_704_067_200_000;

/// Generates `n` events on every core and appends them; returns events per topic and the
/// largest event time.
async fn generate(
    store: &Arc<dyn TopicStore>,
    n: u64,
    partitions: u32,
) -> anyhow::Result<(BTreeMap<String, u64>, i64)> {
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2) as u64;
    let chunk = 200_000u64;
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut max_time = 0i64;
    let mut start = 0u64;
    while start < n {
        // Each round: `threads` contiguous ranges generated in parallel, then appended in order.
        let ranges: Vec<(u64, u64)> = (0..threads)
            .map(|t| (start + t * chunk, (start + (t + 1) * chunk).min(n)))
            .filter(|(a, b)| a < b)
            .collect();
        start = ranges.last().map_or(n, |r| r.1);
        let handles: Vec<_> = ranges
            .into_iter()
            .map(|(a, b)| {
                std::thread::spawn(move || {
                    let cfg = NexmarkConfig { base_time: BASE_TIME, ..NexmarkConfig::default() };
                    let mut by_topic: BTreeMap<&'static str, Vec<Record>> = BTreeMap::new();
                    for e in EventGenerator::new(cfg).with_offset(a).take((b - a) as usize) {
                        let (topic, value, ts) = encode(&e);
                        by_topic.entry(topic).or_default().push(Record {
                            timestamp: ts,
                            key: None,
                            value: Some(value.into()),
                            headers: vec![],
                        });
                    }
                    by_topic
                })
            })
            .collect();
        for h in handles {
            let by_topic = h.join().map_err(|_| anyhow!("generator thread panicked"))?;
            for (topic, records) in by_topic {
                max_time = max_time.max(records.iter().map(|r| r.timestamp).max().unwrap_or(0));
                *counts.entry(topic.to_string()).or_default() += load(store, topic, partitions, records).await?;
            }
        }
    }
    Ok((counts, max_time))
}

/// Appends one flush event per partition of each topic, an hour after `max_time`.
async fn flush(store: &Arc<dyn TopicStore>, partitions: u32, max_time: i64) -> anyhow::Result<()> {
    let t = max_time + 3_600_000;
    let values = [
        ("person", format!(r#"{{"id":-1,"name":"flush","state":"flush","dateTime":{t}}}"#)),
        ("auction", format!(r#"{{"id":-1,"seller":-2,"category":-1,"dateTime":{t},"expires":{t}}}"#)),
        ("bid", format!(r#"{{"auction":-1,"bidder":-1,"price":-1,"dateTime":{t}}}"#)),
    ];
    for (topic, v) in values {
        for p in 0..partitions {
            let r = Record { timestamp: t, key: None, value: Some(v.clone().into()), headers: vec![] };
            store.append(topic, p, &[r]).await?;
        }
    }
    Ok(())
}

/// A row as comparable text: the chosen columns of a JSON object, numbers normalised.
fn row_key(v: &Value, columns: &[&str]) -> String {
    let upper: BTreeMap<String, &Value> =
        v.as_object().map(|o| o.iter().map(|(k, x)| (k.to_uppercase(), x)).collect()).unwrap_or_default();
    let cells: Vec<String> = columns
        .iter()
        .map(|c| {
            let cell = upper.get(*c).copied().unwrap_or(&Value::Null);
            match cell {
                Value::Number(n) if n.is_f64() => format!("{:.6}", n.as_f64().unwrap_or(f64::NAN)),
                Value::Number(n) => n.to_string(),
                other => other.to_string(),
            }
        })
        .collect();
    cells.join("|")
}

fn is_flush(v: &Value) -> bool {
    v.as_object().is_some_and(|o| {
        o.iter().any(|(k, x)| {
            let k = k.to_uppercase();
            (k.contains("AUCTION") || k.contains("BIDDER") || k == "ID" || k == "NAME" || k.contains("PRICE"))
                && (x.as_i64().is_some_and(|i| i < 0) || x.as_str() == Some("flush"))
        })
    })
}

/// Runs the batch oracle: decode the JSON of each input topic, run `sql`; returns rows and seconds.
async fn batch(store: &Arc<dyn TopicStore>, spec: &QuerySpec) -> anyhow::Result<(Vec<String>, f64)> {
    let ddl: BTreeMap<&str, Vec<(&str, arrow::datatypes::DataType)>> = {
        use arrow::datatypes::DataType::{Int64, Utf8};
        [
            ("person", vec![("id", Int64), ("name", Utf8), ("city", Utf8), ("state", Utf8), ("dateTime", Int64)]),
            (
                "auction",
                vec![("id", Int64), ("seller", Int64), ("category", Int64), ("dateTime", Int64), ("expires", Int64)],
            ),
            (
                "bid",
                vec![
                    ("auction", Int64),
                    ("bidder", Int64),
                    ("price", Int64),
                    ("channel", Utf8),
                    ("dateTime", Int64),
                    ("extra", Utf8),
                ],
            ),
        ]
        .into_iter()
        .collect()
    };
    // Read the bytes first (not timed: the streaming run reads them from the log too, but the
    // batch engine is handed them in memory).
    let mut inputs = Vec::new();
    for topic in spec.inputs {
        inputs.push((*topic, read_values(store, topic)?));
    }
    let started = Instant::now();
    let ctx = SessionContext::new();
    for (topic, values) in &inputs {
        let fields: Vec<arrow::datatypes::Field> =
            ddl[topic].iter().map(|(n, t)| arrow::datatypes::Field::new(*n, t.clone(), true)).collect();
        let schema = Arc::new(arrow::datatypes::Schema::new(fields));
        let mut decoder = arrow_json::ReaderBuilder::new(schema.clone()).with_batch_size(8192).build_decoder()?;
        let mut batches = Vec::new();
        for v in values {
            decoder.decode(v)?;
            if decoder.len() >= 8192 {
                if let Some(b) = decoder.flush()? {
                    batches.push(b);
                }
            }
        }
        if let Some(b) = decoder.flush()? {
            batches.push(b);
        }
        let table = datafusion::datasource::MemTable::try_new(schema, vec![batches])?;
        ctx.register_table(*topic, Arc::new(table))?;
    }
    let df = ctx.sql(spec.batch).await?;
    let results = df.collect().await?;
    let secs = started.elapsed().as_secs_f64();
    let mut rows = Vec::new();
    let mut buf = Vec::new();
    {
        let mut w = arrow_json::LineDelimitedWriter::new(&mut buf);
        for b in &results {
            w.write(b)?;
        }
        w.finish()?;
    }
    for line in buf.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
        let v: Value = serde_json::from_slice(line)?;
        if !is_flush(&v) {
            rows.push(row_key(&v, spec.columns));
        }
    }
    rows.sort();
    Ok((rows, secs))
}

/// The statements of a query file (`;`-terminated, `--` comments dropped).
fn split_statements(sql: &str) -> Vec<String> {
    let text: String = sql.lines().filter(|l| !l.trim_start().starts_with("--")).collect::<Vec<_>>().join("\n");
    text.split(';').map(str::trim).filter(|s| !s.is_empty()).map(|s| format!("{s};")).collect()
}

fn read_sql(dir: &Path, name: &str) -> anyhow::Result<String> {
    let path = dir.join(format!("{name}.sql"));
    std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
}

fn props(pairs: &[(&str, &str)]) -> rill_sql::engine::Properties {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Runs the benchmark.
pub async fn run(opts: &Options) -> anyhow::Result<Report> {
    let spec = spec(&opts.query)?;
    let ddl = read_sql(&opts.queries_dir, "ddl")?;
    let query = read_sql(&opts.queries_dir, &opts.query)?;
    let dir = tempfile::tempdir()?;
    let (p, _) = Pipeline::open(dir.path()).await?;
    let mut earliest = props(&[("auto.offset.reset", "earliest")]);
    if let Some(t) = opts.threads {
        earliest.insert("num.stream.threads".into(), t.to_string());
    }
    for topic in ["person", "auction", "bid"] {
        p.store.create_topic(topic, rill_log::TopicConfig { partitions: opts.partitions, ..Default::default() })?;
    }
    p.execute(&ddl, &earliest).await?;
    let (counts, max_time) = generate(&p.store, opts.events, opts.partitions).await?;
    flush(&p.store, opts.partitions, max_time).await?;
    let events: u64 = spec.inputs.iter().map(|t| counts.get(*t).copied().unwrap_or(0)).sum();

    let cpu0 = cpu_seconds();
    let started = Instant::now();
    // One statement at a time, each run to the end of its input: a later statement may join the
    // table an earlier one builds, and Rill does not align a stream with a table by event time
    // yet, so the table is complete before the stream is read.
    for statement in split_statements(&query) {
        p.execute(&statement, &earliest).await?;
        p.wait_until_idle().await;
        if std::env::var_os("RILL_BENCH_TRACE").is_some() {
            eprintln!("{:.3} s: {}", started.elapsed().as_secs_f64(), statement.lines().next().unwrap_or_default());
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let peak = peak_rss_mb();
    let state_bytes = p.engine.state_bytes().await;
    let output_topic = p
        .engine
        .source(spec.output)
        .await
        .map(|s| s.topic)
        .ok_or_else(|| anyhow!("the query did not create {}", spec.output))?;
    let mut stream_rows: Vec<String> = read_values(&p.store, &output_topic)?
        .iter()
        .filter_map(|v| serde_json::from_slice::<Value>(v).ok())
        .filter(|v| !is_flush(v))
        .map(|v| row_key(&v, spec.columns))
        .collect();
    stream_rows.sort();
    let (batch_rows, batch_secs) = batch(&p.store, &spec).await?;
    p.shutdown().await;
    if stream_rows != batch_rows {
        let first = stream_rows.iter().zip(&batch_rows).position(|(a, b)| a != b);
        if let Some(i) = first {
            eprintln!("first difference: streaming {:?}, batch {:?}", stream_rows[i], batch_rows[i]);
        }
    }

    let latency_rate = (spec.latency && !opts.no_latency).then(|| events as f64 / wall * opts.latency_at);
    let (p50, p99, p99_eo) = if let Some(rate) = latency_rate {
        // Both runs' data stays until both are done: deleting a run's gigabytes stalls the
        // file system's fsyncs (ext4 discards them) for as long as half a second.
        let dirs = (tempfile::tempdir()?, tempfile::tempdir()?);
        let (p50, p99) =
            latency(dirs.0.path(), &ddl, &query, spec.output, rate, opts.partitions, "at_least_once").await?;
        let (_, p99_eo) =
            latency(dirs.1.path(), &ddl, &query, spec.output, rate, opts.partitions, "exactly_once").await?;
        (Some(p50), Some(p99), Some(p99_eo))
    } else {
        (None, None, None)
    };
    let events_per_s = events as f64 / wall;
    let batch_events_per_s = events as f64 / batch_secs;
    Ok(Report {
        query: opts.query.clone(),
        events,
        generated_events: opts.events,
        events_per_s,
        events_per_s_per_core: events as f64 / cpu.max(1e-9),
        cores_used: cpu / wall,
        batch_events_per_s,
        vs_batch: events_per_s / batch_events_per_s,
        matches_batch: stream_rows == batch_rows,
        output_rows: stream_rows.len() as u64,
        batch_rows: batch_rows.len() as u64,
        latency_events_per_s: latency_rate,
        p50_latency_ms: p50,
        p99_latency_ms: p99,
        p99_latency_ms_exactly_once: p99_eo,
        peak_rss_mb: peak,
        state_bytes,
        partitions: opts.partitions,
    })
}

/// Latency at `rate` events/s, on a fresh log in `dir`: bids appended with the wall clock as
/// event time, the output tailed (with `RILL_BENCH_TRACE`, `/tmp/rill-latency-<guarantee>.tsv`
/// gets, per 100 ms of the run, the records read, their largest latency and the producer's
/// slowest append); returns (p50, p99) of visible time minus event time, in ms.
async fn latency(
    dir: &Path,
    ddl: &str,
    query: &str,
    output: &str,
    rate: f64,
    partitions: u32,
    guarantee: &str,
) -> anyhow::Result<(f64, f64)> {
    let (p, _) = Pipeline::open(dir).await?;
    for topic in ["person", "auction", "bid"] {
        p.store.create_topic(topic, rill_log::TopicConfig { partitions, ..Default::default() })?;
    }
    let latest = props(&[("auto.offset.reset", "earliest"), ("processing.guarantee", guarantee)]);
    p.execute(ddl, &latest).await?;
    p.execute(query, &latest).await?;
    let topic = p.engine.source(output).await.map(|s| s.topic).ok_or_else(|| anyhow!("no output {output}"))?;
    let now_ms =
        || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_millis() as i64;
    // Ten seconds measured after one of warm-up (the query's first fetches fault in fresh
    // memory and take several times as long as the steady state's).
    let (warm_up, run_for) = (Duration::from_secs(1), Duration::from_secs(11));
    let measured_from = now_ms() + warm_up.as_millis() as i64;
    // Producer: every millisecond, the bids due by then, to each partition in turn. The bids
    // are formatted beforehand with a 13-digit time field that is filled in when sent, so that
    // the producer costs little next to the query it measures. It runs on a thread and runtime
    // of its own, as a client would in a process of its own: on the query's runtime its ticks
    // would wait for the query's tasks, and come late and large.
    let store = p.store.clone();
    const TIME: &str = "0000000000000";
    let templates: Vec<(Vec<u8>, usize)> = (0..10_000u64)
        .map(|i| {
            let v = format!(
                r#"{{"auction":{},"bidder":{},"price":{},"channel":"c","url":"u","dateTime":{TIME},"extra":""}}"#,
                1000 + i,
                i % 777,
                i % 5000
            );
            let at = v.find(TIME).unwrap_or(0);
            (v.into_bytes(), at)
        })
        .collect();
    let producer = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let started = Instant::now();
        let (mut sent, mut tick) = (0u64, 0u64);
        // Per 100 ms: the slowest append, µs (RILL_BENCH_TRACE).
        let mut slowest_append = vec![0u64; (run_for.as_millis() / 100 + 1) as usize];
        while started.elapsed() < run_for {
            let due = (started.elapsed().as_secs_f64() * rate) as u64;
            let n = due.saturating_sub(sent);
            if n > 0 {
                let t = now_ms();
                let digits = format!("{t:013}");
                let records: Vec<Record> = (sent..sent + n)
                    .map(|i| {
                        let (template, at) = &templates[(i % templates.len() as u64) as usize];
                        let mut v = template.clone();
                        v[*at..*at + TIME.len()].copy_from_slice(&digits.as_bytes()[..TIME.len()]);
                        Record { timestamp: t, key: None, value: Some(v.into()), headers: vec![] }
                    })
                    .collect();
                let part = (tick % u64::from(partitions)) as u32;
                let appending = Instant::now();
                rt.block_on(store.append("bid", part, &records))?;
                if let Some(slot) = slowest_append.get_mut((started.elapsed().as_millis() / 100) as usize) {
                    *slot = (*slot).max(appending.elapsed().as_micros() as u64);
                }
                sent += n;
                tick += 1;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        anyhow::Ok((sent, slowest_append))
    });
    // Reader: tails every output partition; latency = now - record time (the bid's event time).
    let cfg = p.store.topic_config(&topic)?;
    let mut offsets: Vec<u64> = vec![0; cfg.partitions as usize];
    // Latencies in whole milliseconds (the record time's unit) are counted in a histogram, so
    // that the reader never stops to grow a vector (a stall that would show as latency).
    let mut histogram = LatencyHistogram::default();
    // Per 100 ms of the run: the records read and their largest latency (RILL_BENCH_TRACE).
    let mut timeline: Vec<(u64, i64)> = vec![(0, 0); (run_for.as_millis() / 100 + 60) as usize];
    let started = Instant::now();
    let deadline = Instant::now() + run_for + Duration::from_secs(5);
    loop {
        let mut any = false;
        for part in 0..cfg.partitions {
            let f = p.store.read(&topic, part, offsets[part as usize], 1 << 20)?;
            let now = now_ms();
            for r in f.records() {
                let latency = now - r.timestamp;
                if r.timestamp >= measured_from {
                    histogram.add(latency);
                }
                if let Some(slot) = timeline.get_mut((started.elapsed().as_millis() / 100) as usize) {
                    *slot = (slot.0 + 1, slot.1.max(latency));
                }
                any = true;
            }
            offsets[part as usize] = f.next_offset().max(offsets[part as usize]);
        }
        if producer.is_finished() && !any {
            break;
        }
        if Instant::now() > deadline {
            break;
        }
        if !any {
            // Long-poll, as a consumer does: woken by the next append to any output partition.
            let waits = (0..cfg.partitions).map(|part| {
                let (store, topic, offset) = (p.store.clone(), topic.clone(), offsets[part as usize]);
                Box::pin(async move { store.wait_for(&topic, part, offset).await })
            });
            let _ = tokio::time::timeout(Duration::from_millis(50), futures::future::select_all(waits)).await;
        }
    }
    let (sent, slowest_append) = producer.join().map_err(|_| anyhow!("the latency run's producer panicked"))??;
    p.shutdown().await;
    if std::env::var_os("RILL_BENCH_TRACE").is_some() {
        let mut out = String::new();
        for (i, (records, max)) in timeline.iter().enumerate().filter(|(_, t)| t.0 > 0) {
            let append_us = slowest_append.get(i).copied().unwrap_or_default();
            out.push_str(&format!("{}\t{records}\t{max}\t{append_us}\n", i * 100));
        }
        std::fs::write(format!("/tmp/rill-latency-{guarantee}.tsv"), out)?;
    }
    match (histogram.percentile(0.50), histogram.percentile(0.99)) {
        (Some(p50), Some(p99)) => Ok((p50, p99)),
        _ => bail!("no output records in the latency run ({sent} sent)"),
    }
}

/// Counts of latencies by whole millisecond, up to a minute (longer ones count as a minute).
struct LatencyHistogram {
    counts: Vec<u64>,
    total: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        Self { counts: vec![0; 60_001], total: 0 }
    }
}

impl LatencyHistogram {
    fn add(&mut self, ms: i64) {
        let slot = ms.clamp(0, self.counts.len() as i64 - 1) as usize;
        self.counts[slot] += 1;
        self.total += 1;
    }

    /// The latency that a fraction `q` of the samples do not exceed (as `percentile` picks it).
    fn percentile(&self, q: f64) -> Option<f64> {
        let rank = ((self.total.checked_sub(1)?) as f64 * q) as u64;
        let mut seen = 0;
        for (ms, n) in self.counts.iter().enumerate() {
            seen += n;
            if seen > rank {
                return Some(ms as f64);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::super::pipeline::percentile;
    use super::*;

    /// The histogram's percentiles are those of the samples, sorted, as `percentile` picks them.
    #[test]
    fn latency_histogram_percentiles_match_sorted_samples() {
        let mut h = LatencyHistogram::default();
        assert_eq!(h.percentile(0.5), None);
        let mut samples: Vec<f64> = Vec::new();
        for i in 0..1000i64 {
            let ms = (i * 7919) % 97 + if i % 100 == 0 { 400 } else { 0 };
            h.add(ms);
            samples.push(ms as f64);
        }
        h.add(-3);
        samples.push(0.0);
        for q in [0.0, 0.5, 0.9, 0.99, 1.0] {
            assert_eq!(h.percentile(q), Some(percentile(&mut samples, q)), "q = {q}");
        }
        h.add(90_000);
        assert_eq!(h.percentile(1.0), Some(60_000.0), "longer than a minute counts as a minute");
    }

    /// Every saved benchmark query is accepted over its sources' DDL (no data needed): a change
    /// to the SQL rules that refuses one shows here, not in the next benchmark run.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn saved_queries_are_accepted() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../queries");
        let earliest = props(&[("auto.offset.reset", "earliest")]);
        let mut sets: Vec<(PathBuf, Vec<&str>)> =
            vec![(root.join("nexmark"), vec!["q0", "q1", "q2", "q3", "q5", "q7", "q8", "q11"])];
        sets.push((root.join("bench"), vec!["w1", "w2", "w3", "w4"]));
        for (dir, queries) in sets {
            for q in queries {
                let tmp = tempfile::tempdir().unwrap();
                let (p, _) = Pipeline::open(tmp.path()).await.unwrap();
                for topic in ["person", "auction", "bid", "bids", "auctions"] {
                    p.store.create_topic(topic, rill_log::TopicConfig::default()).unwrap();
                }
                p.execute(&read_sql(&dir, "ddl").unwrap(), &earliest).await.unwrap();
                for statement in split_statements(&read_sql(&dir, q).unwrap()) {
                    if let Err(e) = p.execute(&statement, &earliest).await {
                        panic!("{}/{q}.sql is refused: {e:#}\n{statement}", dir.display());
                    }
                }
                p.shutdown().await;
            }
        }
    }
}
