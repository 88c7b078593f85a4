//! Child process of the crash test (`tests/crash.rs`).
//!
//! Usage: `rill-log-crash-child <dir> <run id>`. Opens the log at `<dir>`, then four producers
//! append records with known payload ids (`run * 10^9 + producer * 10^8 + n`) to topic
//! `crash` (3 partitions, fsync, small segments) and print one line per acknowledged record:
//! `ack <partition> <offset> <payload id>`. Producer 0 also commits offsets for group `crash` and
//! prints `commit <partition> <offset>` once the commit returned. Runs until killed.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use rill_log::{Durability, Log, Record, TopicConfig};

const PRODUCERS: u64 = 4;
const PARTITIONS: u32 = 3;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let (Some(dir), Some(run)) = (args.get(1), args.get(2).and_then(|r| r.parse::<u64>().ok())) else {
        eprintln!("usage: rill-log-crash-child <dir> <run id>");
        return ExitCode::from(2);
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run_producers(PathBuf::from(dir), run)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("crash child failed: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The value written for a payload id (its length varies so that segments roll at odd places).
pub fn payload(id: u64) -> String {
    format!("id={id};{}", "x".repeat((id % 300) as usize))
}

fn say(line: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(line.as_bytes())?;
    out.flush()
}

async fn run_producers(dir: PathBuf, run: u64) -> rill_log::Result<()> {
    let log = Log::open(&dir)?;
    let cfg = TopicConfig {
        partitions: PARTITIONS,
        segment_bytes: 16 * 1024,
        retention_ms: None,
        durability: Durability::Fsync,
        ..TopicConfig::default()
    };
    log.create_topic_if_not_exists("crash", cfg)?;
    let mut tasks = Vec::new();
    for producer in 0..PRODUCERS {
        let log: Arc<Log> = log.clone();
        tasks.push(tokio::spawn(async move {
            for seq in 0..1_000_000u64 {
                let partition = ((producer + seq) % u64::from(PARTITIONS)) as u32;
                let n = 1 + seq % 3;
                let ids: Vec<u64> =
                    (0..n).map(|j| run * 1_000_000_000 + producer * 100_000_000 + seq * 3 + j).collect();
                let records: Vec<Record> = ids
                    .iter()
                    .map(|&id| Record::new(id as i64, Some(format!("p{producer}")), Some(payload(id))))
                    .collect();
                let ack = log.append("crash", partition, &records).await?;
                let mut lines = String::new();
                for (j, id) in ids.iter().enumerate() {
                    lines.push_str(&format!("ack {partition} {} {id}\n", ack.base_offset + j as u64));
                }
                if producer == 0 && seq % 5 == 4 {
                    let log = log.clone();
                    let next = ack.last_offset + 1;
                    tokio::task::spawn_blocking(move || {
                        log.commit_offsets("crash", &[("crash".into(), partition, next)])
                    })
                    .await
                    .map_err(|e| rill_log::LogError::Internal(e.to_string()))??;
                    lines.push_str(&format!("commit {partition} {next}\n"));
                }
                say(&lines).map_err(|e| rill_log::LogError::Internal(format!("stdout: {e}")))?;
            }
            Ok::<(), rill_log::LogError>(())
        }));
    }
    for t in tasks {
        t.await.map_err(|e| rill_log::LogError::Internal(e.to_string()))??;
    }
    Ok(())
}
