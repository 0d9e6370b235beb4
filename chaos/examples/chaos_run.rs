//! Runs `carillon chaos run` logic against a built node binary:
//!   cargo run -p carillon-chaos --example chaos_run -- /path/to/carillon leader-kill [calls]
//! The node crate's `carillon chaos run` is the supported entry point; this example lets
//! the chaos crate be tried on its own.

use std::path::PathBuf;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut argv = std::env::args().skip(1);
    let exe = PathBuf::from(
        argv.next()
            .unwrap_or_else(|| "target/debug/carillon".into()),
    );
    let scenario = argv.next().unwrap_or_else(|| "leader-kill".into());
    let calls = argv.next().and_then(|c| c.parse().ok()).unwrap_or(30);
    let args = carillon_chaos::ChaosArgs {
        scenario,
        calls,
        keep_dirs: std::env::var_os("CHAOS_KEEP").is_some(),
        keep_going: true,
        report: Some(PathBuf::from("/tmp/chaos-report.json")),
        ..carillon_chaos::ChaosArgs::default()
    };
    carillon_chaos::run(args, exe).await.map(|_| ())
}
