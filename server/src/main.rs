//! `rill`: the Rill server and its commands.

mod bench;
mod qtt;
mod rest;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use clap::{Parser, Subcommand};
use rill_connectors::{EmbeddedStore, TopicStore};
use rill_sql::KsqlEngine;

#[derive(Parser)]
#[command(name = "rill", version, about = "Rill: streaming SQL on an embedded log")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Runs the server (REST API) on the embedded log.
    Server {
        /// Where topics, the catalog and offsets live.
        #[arg(long, default_value = "./rill-data")]
        data_dir: PathBuf,
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8088")]
        listen: SocketAddr,
    },
    /// Runs ksqlDB's query-validation tests (files or folders) against Rill.
    Qtt(qtt::Args),
    /// Benchmarks.
    Bench {
        #[command(subcommand)]
        what: Bench,
    },
}

#[derive(Subcommand)]
enum Bench {
    /// The embedded log: append and tail-read throughput, ack latency, vs a plain file.
    Log {
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        /// Scratch directory (default: a temporary directory).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Exactly-once against at-least-once (throughput), and recovery time.
    ExactlyOnce {
        /// Input events per run.
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// commit.interval.ms of the queries.
        #[arg(long, default_value_t = 2000)]
        interval_ms: u64,
        /// Repetitions (median reported).
        #[arg(long, default_value_t = 3)]
        reps: usize,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// A saved query over JSON-lines files (the peer workloads of bench/peers.sh).
    File {
        /// The query file (queries/bench/w1.sql ...).
        #[arg(long)]
        query: PathBuf,
        /// The sources' DDL (default: ddl.sql beside the query).
        #[arg(long)]
        ddl: Option<PathBuf>,
        /// Bids, JSON lines.
        #[arg(long)]
        input: PathBuf,
        /// Auctions, JSON lines (W4).
        #[arg(long)]
        auctions: Option<PathBuf>,
        /// Partitions of the input topics.
        #[arg(long, default_value_t = 1)]
        partitions: u32,
        /// Key shards of the query's stateful stage (`num.stream.threads`; default one per core).
        #[arg(long)]
        threads: Option<usize>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Pull-query key-lookup latency on a table a running query keeps updating.
    Pull {
        /// Keys in the table.
        #[arg(long, default_value_t = 100_000)]
        keys: u64,
        /// Lookups timed.
        #[arg(long, default_value_t = 200)]
        lookups: u64,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Nexmark on Rill, checked against DataFusion batch on the same data.
    Nexmark {
        /// Query: q0, q1, q2, q3, q5, q7, q8, q11.
        #[arg(long)]
        query: String,
        /// Events to generate (all kinds).
        #[arg(long, default_value_t = 1_000_000)]
        events: u64,
        /// Partitions per topic.
        #[arg(long, default_value_t = 2)]
        partitions: u32,
        /// Folder with ddl.sql and the queries.
        #[arg(long, default_value = "queries/nexmark")]
        queries: PathBuf,
        /// Skip the latency run.
        #[arg(long)]
        no_latency: bool,
        /// The latency run's rate as a fraction of the measured throughput (the producer and
        /// the reader of the latency run share the machine with the query).
        #[arg(long, default_value_t = 0.5)]
        latency_at: f64,
        /// Key shards of the query's stateful stage (`num.stream.threads`; default one per core).
        #[arg(long)]
        threads: Option<usize>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

/// mimalloc: the engine allocates and frees many short-lived batch buffers per second; glibc's
/// allocator returned large ones to the kernel and faulted fresh zeroed pages back in.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Server { data_dir, listen } => runtime()?.block_on(serve(data_dir, listen)),
        Command::Qtt(args) => qtt::run(args.into()),
        Command::Bench { what: Bench::Pull { keys, lookups, json } } => {
            let report = runtime()?.block_on(bench::pull::run(keys, lookups))?;
            print_report(&report, json, serde_json::to_string_pretty(&report)?)
        }
        Command::Bench { what: Bench::File { query, ddl, input, auctions, partitions, threads, json } } => {
            let opts = bench::file::Options { query, ddl, input, auctions, partitions, threads };
            let report = runtime()?.block_on(bench::file::run(&opts))?;
            print_report(&report, json, serde_json::to_string_pretty(&report)?)
        }
        Command::Bench {
            what: Bench::Nexmark { query, events, partitions, queries, no_latency, latency_at, threads, json },
        } => {
            let opts = bench::nexmark::Options {
                query,
                events,
                partitions,
                queries_dir: queries,
                no_latency,
                latency_at,
                threads,
            };
            let report = runtime()?.block_on(bench::nexmark::run(&opts))?;
            print_report(&report, json, serde_json::to_string_pretty(&report)?)
        }
        Command::Bench { what: Bench::ExactlyOnce { events, interval_ms, reps, json } } => {
            let opts = bench::checkpoint::Options { events, interval_ms, reps };
            let report = runtime()?.block_on(bench::checkpoint::run(&opts))?;
            print_report(&report, json, report.to_string())
        }
        Command::Bench { what: Bench::Log { json, dir } } => {
            let tmp;
            let dir = match dir {
                Some(d) => d,
                None => {
                    tmp = tempfile::tempdir()?;
                    tmp.path().to_path_buf()
                }
            };
            let report = rill_log::bench::run(&dir, &rill_log::bench::BenchOptions::default())?;
            print_report(&report, json, report.to_string())
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().enable_all().build()?)
}

/// Prints a bench report: one JSON object with `--json`, else `text`.
fn print_report(report: &impl serde::Serialize, json: bool, text: String) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        println!("{text}");
    }
    Ok(())
}

async fn serve(data_dir: PathBuf, listen: SocketAddr) -> anyhow::Result<()> {
    std::fs::create_dir_all(&data_dir).with_context(|| format!("creating data dir {}", data_dir.display()))?;
    let store = EmbeddedStore::open(&data_dir).with_context(|| format!("opening the log in {}", data_dir.display()))?;
    store.spawn_maintenance(std::time::Duration::from_secs(60));
    let store: Arc<dyn TopicStore> = Arc::new(store);
    let engine = KsqlEngine::open(store, data_dir.clone()).await.context("replaying the command topic")?;
    let listener = tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    // Tests and scripts read the bound address (useful with port 0) from this line.
    println!("rill listening on http://{}", listener.local_addr()?);
    let app = rest::router(rest::AppState::new(engine.clone()));
    axum::serve(listener, app).with_graceful_shutdown(shutdown_signal()).await?;
    tracing::info!("shutting down: stopping queries and committing offsets");
    engine.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
