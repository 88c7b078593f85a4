//! Running SQL pipelines in process for benchmarks: load topics, run persistent queries until
//! they have processed (and committed) everything, time it.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context};
use rill_connectors::store::Record;
use rill_connectors::{EmbeddedStore, TopicStore};
use rill_log::TopicConfig;
use rill_sql::engine::Properties;
use rill_sql::KsqlEngine;

/// An engine over an embedded log in a directory.
pub struct Pipeline {
    /// The log.
    pub store: Arc<dyn TopicStore>,
    /// The SQL engine.
    pub engine: Arc<KsqlEngine>,
}

impl Pipeline {
    /// Opens (or reopens) the engine on `dir`; returns it and how long opening took (command
    /// replay and query recovery from checkpoints included).
    pub async fn open(dir: &Path) -> anyhow::Result<(Pipeline, Duration)> {
        let started = Instant::now();
        let store: Arc<dyn TopicStore> = Arc::new(EmbeddedStore::open(dir).context("opening the log")?);
        let engine = KsqlEngine::open(store.clone(), dir.to_path_buf()).await.map_err(|e| anyhow!("{e}"))?;
        Ok((Pipeline { store, engine }, started.elapsed()))
    }

    /// Executes statements; fails on the first error.
    pub async fn execute(&self, sql: &str, props: &Properties) -> anyhow::Result<()> {
        self.engine.execute(sql, props).await.map_err(|(_, e)| anyhow!("{}: {}", e.statement, e.error))?;
        Ok(())
    }

    /// Waits until every persistent query has processed and committed all its input.
    pub async fn wait_until_idle(&self) {
        self.engine.wait_until_idle().await;
    }

    /// Stops every query (each takes a final checkpoint).
    pub async fn shutdown(self) {
        self.engine.shutdown().await;
    }

    /// Records appended to every partition of `topic` (committed ones).
    pub fn topic_len(&self, topic: &str) -> anyhow::Result<u64> {
        let cfg = self.store.topic_config(topic)?;
        let mut n = 0;
        for p in 0..cfg.partitions {
            n += self.store.end_offset(topic, p)? - self.store.start_offset(topic, p)?;
        }
        Ok(n)
    }
}

/// Appends keyed records to `topic` (created with `partitions` if missing), placed by key as
/// Kafka would, in appends of up to 2,000 records per partition, with `writers` concurrent
/// appenders.
pub async fn load(
    store: &Arc<dyn TopicStore>,
    topic: &str,
    partitions: u32,
    records: impl IntoIterator<Item = Record>,
) -> anyhow::Result<u64> {
    store.create_topic(topic, TopicConfig { partitions, ..TopicConfig::default() })?;
    let mut per: Vec<Vec<Record>> = (0..partitions).map(|_| Vec::new()).collect();
    let mut n = 0u64;
    for r in records {
        let p = store.partition_for_key(topic, r.key.as_deref())?;
        per[p as usize].push(r);
        n += 1;
    }
    let mut tasks = Vec::new();
    for (p, records) in per.into_iter().enumerate() {
        let store = store.clone();
        let topic = topic.to_string();
        tasks.push(tokio::spawn(async move {
            for chunk in records.chunks(2000) {
                store.append(&topic, p as u32, chunk).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(n)
}

/// Every committed record value of a topic.
pub fn read_values(store: &Arc<dyn TopicStore>, topic: &str) -> anyhow::Result<Vec<bytes::Bytes>> {
    let cfg = store.topic_config(topic)?;
    let mut out = Vec::new();
    for p in 0..cfg.partitions {
        let mut offset = store.start_offset(topic, p)?;
        let end = store.end_offset(topic, p)?;
        while offset < end {
            let f = store.read(topic, p, offset, 4 << 20)?;
            for r in f.records() {
                if let Some(v) = r.value {
                    out.push(f.bytes().slice_ref(v));
                }
            }
            if f.next_offset() <= offset {
                break;
            }
            offset = f.next_offset();
        }
    }
    Ok(out)
}

/// CPU seconds (user + system) of this process so far.
pub fn cpu_seconds() -> f64 {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct we own.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// The `q` quantile (0..=1) of `samples` (sorted in place; not empty).
pub fn percentile(samples: &mut [f64], q: f64) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[((samples.len() - 1) as f64 * q) as usize]
}

/// Bytes under `dir`, recursively.
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Peak resident set size of this process, in MiB (Linux `VmHWM`).
pub fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `query` (creating `output`) over generated bids and asks with the stateful stage in
    /// `threads` key shards; returns the output values sorted, and the number of late rows.
    async fn run(query: &str, output: &str, threads: usize) -> (Vec<String>, u64) {
        let dir = tempfile::tempdir().unwrap();
        let (p, _) = Pipeline::open(dir.path()).await.unwrap();
        // 40 auctions; times mostly increasing, some a little out of order, a few far behind,
        // and every 50th 5 s ahead: the rows right after it are late only if judged against
        // the watermark as it stood at their arrival in the whole batch (the row ahead has
        // another key, so it may be in another shard).
        let row = |i: i64| {
            let ahead = if i % 50 == 1 { 5_000 } else { 0 };
            let behind = if i % 97 == 0 {
                30_000
            } else if i % 5 == 0 {
                400
            } else {
                0
            };
            let t = i * 10 + ahead - behind;
            let value = format!(r#"{{"AUCTION":{},"PRICE":{i},"T":{t}}}"#, (i * 7919) % 40);
            Record { timestamp: t, key: Some(i.to_string().into()), value: Some(value.into()), headers: vec![] }
        };
        // One partition per topic: the order of input rows (which sums and late rows depend
        // on) is then the same in every run.
        load(&p.store, "bids", 1, (0..6000).map(row)).await.unwrap();
        load(&p.store, "asks", 1, (0..6000).filter(|i| i % 3 == 0).map(row)).await.unwrap();
        let threads = threads.to_string();
        let props: Properties = [("auto.offset.reset", "earliest"), ("num.stream.threads", threads.as_str())]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        for source in ["BIDS", "ASKS"] {
            let ddl = format!(
                "CREATE STREAM {source} (AUCTION BIGINT, PRICE BIGINT, T BIGINT) \
                 WITH (KAFKA_TOPIC='{}', VALUE_FORMAT='JSON', TIMESTAMP='T');",
                source.to_lowercase()
            );
            p.execute(&ddl, &props).await.unwrap();
        }
        p.execute(query, &props).await.unwrap();
        p.wait_until_idle().await;
        let topic = p.engine.source(output).await.unwrap().topic;
        let mut values: Vec<String> =
            read_values(&p.store, &topic).unwrap().iter().map(|v| String::from_utf8_lossy(v).to_string()).collect();
        values.sort();
        let late = p.topic_len(rill_engine::runtime::LATE_TOPIC).unwrap_or(0);
        p.shutdown().await;
        (values, late)
    }

    /// A keyed stage split into key shards gives the same results as one chain: every update
    /// of every key (EMIT CHANGES counts are distinct per update, so equal multisets mean
    /// equal sequences per key), the same closed windows and the same late rows, the same
    /// join matches and null-padded outer rows.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn key_shards_give_the_results_of_one_chain() {
        let cases = [
            (
                "W",
                "CREATE TABLE W AS SELECT AUCTION, AS_VALUE(AUCTION) AS A, WINDOWSTART AS WS, COUNT(*) AS CNT, \
                 MAX(PRICE) AS MX FROM BIDS WINDOW TUMBLING (SIZE 1 SECOND, GRACE PERIOD 200 MILLISECONDS) \
                 GROUP BY AUCTION EMIT FINAL;",
                true,
            ),
            (
                "C",
                "CREATE TABLE C AS SELECT AUCTION, AS_VALUE(AUCTION) AS A, COUNT(*) AS CNT, SUM(PRICE) AS S \
                 FROM BIDS GROUP BY AUCTION EMIT CHANGES;",
                false,
            ),
            (
                "J",
                "CREATE STREAM J AS SELECT B.AUCTION AS AUCTION, B.PRICE AS BP, A.PRICE AS AP FROM BIDS B \
                 LEFT JOIN ASKS A WITHIN 300 MILLISECONDS GRACE PERIOD 100 MILLISECONDS ON B.AUCTION = A.AUCTION;",
                false,
            ),
        ];
        for (output, query, expect_late) in cases {
            let (one, late_one) = run(query, output, 1).await;
            let (sharded, late_sharded) = run(query, output, 3).await;
            assert!(one.len() > 100, "{output}: {} rows", one.len());
            assert_eq!(sharded.len(), one.len(), "{output}: rows with 3 shards vs 1");
            assert!(sharded == one, "{output}: 3 shards give other rows than one chain");
            assert_eq!(late_sharded, late_one, "{output}: late rows");
            assert_eq!(late_one > 0, expect_late, "{output}: {late_one} late rows");
            if output == "J" {
                assert!(one.iter().any(|v| v.contains(r#""AP":null"#)), "no null-padded LEFT rows");
            }
        }
    }
}
