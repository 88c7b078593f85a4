//! `rill bench pull`: key-lookup latency of pull queries on a materialised table while a
//! running query keeps updating it (issue goal: p99 under 1 ms in process).
//!
//! A table of `keys` keys is built by a persistent aggregation (`LATEST_BY_OFFSET` per key) from
//! a stream; then `lookups` pull queries `SELECT * FROM T WHERE K = '...'` run one after another
//! in process while a producer appends updates for random keys, and the latency of each lookup
//! (statement text in, rows out) is recorded.

use std::time::{Duration, Instant};

use rill_connectors::store::Record;
use serde::Serialize;

use super::pipeline::{load, percentile, Pipeline};

/// The report.
#[derive(Serialize)]
pub struct Report {
    /// Keys in the table.
    pub keys: u64,
    /// Lookups timed.
    pub lookups: u64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
    /// The same lookups through `POST /query` on a server on loopback (HTTP/1.1, keep-alive).
    pub http_p50_ms: f64,
    /// 99th percentile over HTTP.
    pub http_p99_ms: f64,
    /// Updates appended while the lookups ran.
    pub concurrent_updates: u64,
}

fn record(key: u64, version: u64) -> Record {
    Record {
        timestamp: version as i64,
        key: Some(format!("k{key}").into()),
        value: Some(format!(r#"{{"V":{version}}}"#).into()),
        headers: vec![],
    }
}

/// Runs the benchmark.
pub async fn run(keys: u64, lookups: u64) -> anyhow::Result<Report> {
    let dir = tempfile::tempdir()?;
    let (p, _) = Pipeline::open(dir.path()).await?;
    let props = [("auto.offset.reset".to_string(), "earliest".to_string())].into_iter().collect();
    load(&p.store, "updates", 2, (0..keys).map(|k| record(k, 0))).await?;
    p.execute(
        "CREATE STREAM UPDATES (K VARCHAR KEY, V BIGINT) WITH (KAFKA_TOPIC='updates', VALUE_FORMAT='JSON');",
        &props,
    )
    .await?;
    p.execute("CREATE TABLE LATEST AS SELECT K, LATEST_BY_OFFSET(V) AS V FROM UPDATES GROUP BY K;", &props).await?;
    p.wait_until_idle().await;
    // Updates keep coming while the lookups run.
    let store = p.store.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let producer = tokio::spawn(async move {
        let mut n = 0u64;
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            let batch: Vec<Record> = (0..100).map(|i| record((n * 7919 + i) % keys, n + 1)).collect();
            let part = store.partition_for_key("updates", batch[0].key.as_deref())?;
            store.append("updates", part, &batch).await?;
            n += 1;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        anyhow::Ok(n * 100)
    });
    let mut samples = Vec::with_capacity(lookups as usize);
    for i in 0..lookups {
        let sql = format!("SELECT * FROM LATEST WHERE K = 'k{}';", (i * 104_729) % keys);
        let started = Instant::now();
        p.execute(&sql, &props).await?;
        samples.push(started.elapsed().as_secs_f64() * 1e3);
    }
    // The same over HTTP: the REST API on loopback, one keep-alive client.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = crate::rest::router(crate::rest::AppState::new(p.engine.clone()));
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let client = reqwest::Client::new();
    let mut http = Vec::with_capacity(lookups as usize);
    for i in 0..lookups {
        let sql = format!("SELECT * FROM LATEST WHERE K = 'k{}';", (i * 7_919) % keys);
        let started = Instant::now();
        let body = client
            .post(format!("http://{addr}/query"))
            .json(&serde_json::json!({"ksql": sql, "streamsProperties": {}}))
            .send()
            .await?
            .text()
            .await?;
        http.push(started.elapsed().as_secs_f64() * 1e3);
        if !body.contains("\"row\"") {
            anyhow::bail!("pull query over HTTP returned no row: {body}");
        }
    }
    server.abort();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let updates = producer.await??;
    p.shutdown().await;
    Ok(Report {
        keys,
        lookups,
        p50_ms: percentile(&mut samples, 0.5),
        p99_ms: percentile(&mut samples, 0.99),
        http_p50_ms: percentile(&mut http, 0.5),
        http_p99_ms: percentile(&mut http, 0.99),
        concurrent_updates: updates,
    })
}
