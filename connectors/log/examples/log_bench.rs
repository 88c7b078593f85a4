//! `cargo run -p rill-log --release --example log_bench [-- --json]`: the same benchmark as
//! `rill bench log`, without building the whole server.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let json = std::env::args().any(|a| a == "--json");
    let dir = std::env::temp_dir().join(format!("rill-log-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let report = rill_log::bench::run(&dir, &rill_log::bench::BenchOptions::default());
    let _ = std::fs::remove_dir_all(&dir);
    let report = report?;
    if json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("{report}");
    }
    Ok(())
}
