//! `rill qtt`: runs ksqlDB's query-validation tests (QTT) against Rill, in process.
//!
//! ```text
//!  *.json ──load (// comments, format × config variants, names)──► runs
//!     run ──skip? (schema-registry formats, test-only UDFs)──► SKIP
//!         ──fresh log + engine, statements, inputs one by one (run.rs)──► output records
//!         ──compare (compare.rs) + post-conditions (post.rs)──► PASS / FAIL <first difference>
//! ```
//!
//! Each run gets its own temporary directory, store, engine and tokio runtime, so a panic or a
//! hang stays in its run: a panic is that run's failure, a run over the time limit fails with
//! "timed out", and the next run starts clean. Output: one line per run, then
//! `N passed, M failed, K skipped`. The test files are read in place (see
//! `../shared/ksql-qtt/SOURCE.md`); `tests/qtt/passing.txt` is the CI ratchet.

mod codec;
mod compare;
mod load;
mod post;
mod run;
mod skip;

use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;

/// `rill qtt [--filter TEXT] [--json FILE] [--summary] [--timeout SECS] [--rest] PATH...`
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Test files, or folders of them (their `.json` files, not sub-folders).
    #[arg(required = true)]
    paths: Vec<PathBuf>,
    /// Only runs whose full name contains TEXT (case-insensitive).
    #[arg(long, value_name = "TEXT")]
    filter: Option<String>,
    /// Also write every result to FILE as JSON.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Print the counts per category as a markdown table before the closing line.
    #[arg(long)]
    summary: bool,
    /// Time limit of one run, in seconds.
    #[arg(long, default_value_t = 10.0, value_name = "SECS")]
    timeout: f64,
    /// Run the REST cases (`rest-query-validation-tests/`) against a server on loopback.
    #[arg(long)]
    rest: bool,
}

impl From<Args> for Options {
    fn from(a: Args) -> Self {
        Options {
            paths: a.paths,
            filter: a.filter,
            json: a.json,
            summary: a.summary,
            timeout: Duration::from_secs_f64(a.timeout.max(0.001)),
            rest: a.rest,
        }
    }
}

/// What `rill qtt` was asked to do.
#[derive(Debug, Clone)]
pub struct Options {
    /// Test files, or folders of them.
    pub paths: Vec<PathBuf>,
    /// Only runs whose full name contains this (case-insensitive).
    pub filter: Option<String>,
    /// Also write every result to this file, as JSON.
    pub json: Option<PathBuf>,
    /// Print a markdown table of the counts per category before the closing line.
    pub summary: bool,
    /// The time limit of one run.
    pub timeout: Duration,
    /// Run the REST cases (`rest-query-validation-tests/`) instead.
    pub rest: bool,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    /// As expected.
    Pass,
    /// Not as expected.
    Fail,
    /// Not run: needs something Rill does not have.
    Skip,
}

/// One run's result.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    /// Full run name.
    pub name: String,
    /// The file stem.
    pub category: String,
    /// PASS, FAIL or SKIP.
    pub status: Status,
    /// The first difference, or why the run was skipped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// How long it took.
    pub millis: u64,
}

impl Outcome {
    /// The output line: `PASS name`, `FAIL name: difference`, `SKIP name: reason`.
    pub fn line(&self) -> String {
        let status = match self.status {
            Status::Pass => "PASS",
            Status::Fail => "FAIL",
            Status::Skip => "SKIP",
        };
        match &self.message {
            Some(m) => format!("{status} {}: {}", self.name, one_line(m)),
            None => format!("{status} {}", self.name),
        }
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

type PanicHook = dyn Fn(&std::panic::PanicHookInfo<'_>) + Send + Sync + 'static;

/// Panics seen while a run was going on (the hook is process-wide; runs are sequential).
static PANICS: Mutex<Vec<String>> = Mutex::new(Vec::new());

fn panics() -> std::sync::MutexGuard<'static, Vec<String>> {
    PANICS.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn payload_text(payload: &(dyn std::any::Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// Runs `opts` and prints the results. Exits with status 1 when a run failed.
pub fn run(opts: Options) -> anyhow::Result<()> {
    if opts.rest {
        anyhow::bail!("`rill qtt --rest` is not implemented yet");
    }
    let loaded = load::load(&opts.paths)?;
    let filter = opts.filter.as_ref().map(|f| f.to_lowercase());
    let selected = |name: &str| filter.as_ref().is_none_or(|f| name.to_lowercase().contains(f));

    // Panics on a run's threads become that run's failure (reported on its line); a panic of
    // the runner itself (the main thread) is printed the usual way.
    let previous_hook: Arc<PanicHook> = Arc::from(std::panic::take_hook());
    let chained = previous_hook.clone();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().name() == Some("main") {
            chained(info);
            return;
        }
        let location = info.location().map(|l| format!(" at {l}")).unwrap_or_default();
        panics().push(format!("{}{location}", payload_text(info.payload())));
    }));

    let started = Instant::now();
    let mut outcomes = Vec::new();
    let stdout = std::io::stdout();
    let mut emit = |o: Outcome| {
        let mut out = stdout.lock();
        let _ = writeln!(out, "{}", o.line());
        let _ = out.flush();
        outcomes.push(o);
    };
    for r in loaded.runs.iter().filter(|r| selected(&r.name)) {
        let t0 = Instant::now();
        let (status, message) = match skip::reason(r) {
            Some(why) => (Status::Skip, Some(why)),
            None => match execute(r, opts.timeout) {
                Ok(()) => (Status::Pass, None),
                Err(e) => (Status::Fail, Some(e)),
            },
        };
        emit(Outcome { name: r.name.clone(), category: r.stem.clone(), status, message, millis: t0.elapsed().as_millis() as u64 });
    }
    for b in loaded.bad.iter().filter(|b| selected(&b.name)) {
        emit(Outcome { name: b.name.clone(), category: b.stem.clone(), status: Status::Fail, message: Some(b.error.clone()), millis: 0 });
    }
    std::panic::set_hook(Box::new(move |info| previous_hook(info)));

    let count = |s: Status| outcomes.iter().filter(|o| o.status == s).count();
    let (passed, failed, skipped) = (count(Status::Pass), count(Status::Fail), count(Status::Skip));
    if opts.summary {
        print!("{}", summary(&outcomes));
    }
    if let Some(path) = &opts.json {
        let report = serde_json::json!({
            "passed": passed,
            "failed": failed,
            "skipped": skipped,
            "seconds": started.elapsed().as_secs_f64(),
            "runs": outcomes,
        });
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    println!("{passed} passed, {failed} failed, {skipped} skipped");
    let _ = std::io::stdout().flush();
    if failed > 0 {
        std::process::exit(1);
    }
    Ok(())
}

/// Runs one case on its own runtime, with a time limit; a panic becomes its failure.
fn execute(r: &load::Run, timeout: Duration) -> Result<(), String> {
    panics().clear();
    let dir = tempfile::tempdir().map_err(|e| format!("runner: temporary directory: {e}"))?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("runner: tokio runtime: {e}"))?;
    let owned = r.clone();
    let path = dir.path().to_path_buf();
    let handle = rt.spawn(async move { run::run_case(&owned, &path).await });
    let result = match rt.block_on(async move { tokio::time::timeout(timeout, handle).await }) {
        Err(_) => Err(format!("timed out after {} s", timeout.as_secs_f64())),
        Ok(Err(e)) if e.is_panic() => {
            let seen = panics().first().cloned();
            Err(format!("panicked: {}", seen.unwrap_or_else(|| payload_text(&*e.into_panic()))))
        }
        Ok(Err(e)) => Err(format!("runner: the run was cancelled: {e}")),
        Ok(Ok(result)) => result,
    };
    rt.shutdown_timeout(Duration::from_millis(500));
    drop(dir);
    // A panic in one of the engine's own tasks fails the run too (and often is why it hung).
    let background = panics().first().cloned();
    match (result, background) {
        (Ok(()), Some(p)) => Err(format!("a task panicked: {p}")),
        (Err(e), Some(p)) if e.starts_with("timed out") => Err(format!("a task panicked: {p} (then the run {e})")),
        (result, _) => result,
    }
}

/// Counts per category as a markdown table, for the README.
pub fn summary(outcomes: &[Outcome]) -> String {
    let mut categories: Vec<(&str, [usize; 3])> = Vec::new();
    for o in outcomes {
        let i = match categories.iter().position(|(c, _)| *c == o.category) {
            Some(i) => i,
            None => {
                categories.push((&o.category, [0; 3]));
                categories.len() - 1
            }
        };
        let slot = match o.status {
            Status::Pass => 0,
            Status::Fail => 1,
            Status::Skip => 2,
        };
        categories[i].1[slot] += 1;
    }
    let mut out = String::from("| Category | Passed | Failed | Skipped | Runs |\n|---|---:|---:|---:|---:|\n");
    let mut total = [0usize; 3];
    for (c, n) in &categories {
        out.push_str(&format!("| {c} | {} | {} | {} | {} |\n", n[0], n[1], n[2], n.iter().sum::<usize>()));
        for k in 0..3 {
            total[k] += n[k];
        }
    }
    out.push_str(&format!(
        "| **all** | **{}** | **{}** | **{}** | **{}** |\n",
        total[0],
        total[1],
        total[2],
        total.iter().sum::<usize>()
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(category: &str, status: Status) -> Outcome {
        Outcome { name: format!("{category} - x"), category: category.into(), status, message: None, millis: 0 }
    }

    #[test]
    fn lines_are_single_lines() {
        let o = Outcome { message: Some("a\n  b".into()), ..outcome("c", Status::Fail) };
        assert_eq!(o.line(), "FAIL c - x: a b");
        assert_eq!(outcome("c", Status::Pass).line(), "PASS c - x");
    }

    #[test]
    fn summary_counts_per_category() {
        let table = summary(&[outcome("a", Status::Pass), outcome("a", Status::Fail), outcome("b", Status::Skip)]);
        assert!(table.contains("| a | 1 | 1 | 0 | 2 |"), "{table}");
        assert!(table.contains("| b | 0 | 0 | 1 | 1 |"), "{table}");
        assert!(table.contains("| **all** | **1** | **1** | **1** | **3** |"), "{table}");
    }
}
