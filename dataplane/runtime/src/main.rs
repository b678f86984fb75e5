//! `colo-dataplane [EAL options] -- --primary P --secondary S --output O [OPTIONS]` (SPEC §9.1).
//!
//! Parses and checks the options, starts the EAL, runs the dataplane and prints the final
//! statistics. Every failure is one line on stderr and a non-zero exit.

use std::io::{IsTerminal, Write};

use clap::Parser;
use colo_dataplane::app;
use colo_dataplane::config::{split_args, Args, RunConfig};

/// Flow tables (allocations of 4 MiB and up) on the hugepage pool when the EAL runs on
/// hugepages; everything else, and everything under `--no-huge`, on the system allocator.
#[global_allocator]
static ALLOC: huge_tables::HugeTables = huge_tables::HugeTables;

fn main() {
    std::process::exit(real_main());
}

fn real_main() -> i32 {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "colo_dataplane=info,colo_control=info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let argv: Vec<String> = std::env::args().collect();
    let (eal_args, app_args) = split_args(&argv);
    let args = match Args::try_parse_from(&app_args) {
        Ok(a) => a,
        Err(e) if matches!(e.kind(), clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion) => {
            // A closed stdout (`| head`) is not worth a panic.
            let _ = write!(std::io::stdout(), "{e}");
            return 0;
        }
        Err(e) => {
            let first =
                e.to_string().lines().next().unwrap_or("bad arguments").trim_start_matches("error: ").to_string();
            eprintln!("colo-dataplane: {first} (see colo-dataplane -- --help)");
            return 2;
        }
    };
    let cfg = match RunConfig::resolve(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("colo-dataplane: {e}");
            return 2;
        }
    };
    // Fail fast (before the EAL takes ports): an unusable output path found only at exit would
    // cost the whole run's statistics.
    if let Some(path) = &cfg.stats_json {
        if let Err(e) = std::fs::OpenOptions::new().write(true).create(true).truncate(false).open(path) {
            eprintln!("colo-dataplane: cannot write --stats-json {}: {e}", path.display());
            return 2;
        }
    }
    if let Err(e) = app::check_hugepages(&eal_args) {
        eprintln!("colo-dataplane: {e}");
        return 1;
    }
    if !eal_args.iter().any(|a| a == "--no-huge") {
        huge_tables::enable();
    }
    let eal = match dpdk::Eal::init(&eal_args) {
        Ok(eal) => eal,
        Err(e) => {
            eprintln!("colo-dataplane: DPDK EAL failed to start ({e}); check the EAL options before --");
            return 1;
        }
    };
    let mut summary = match app::run(&eal, &cfg) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("colo-dataplane: {e}");
            return 1;
        }
    };
    let tables = huge_tables::stats();
    summary.tables = Some(serde_json::json!({
        "hugepages_allowed": huge_tables::enabled(),
        "peak_hugepage_bytes": tables.peak_hugepage_bytes,
        "pool_refused": tables.fallbacks,
    }));
    let json = app::summary_json(&summary);
    if let Some(path) = &cfg.stats_json {
        let text = serde_json::to_string_pretty(&json).unwrap_or_default();
        if let Err(e) = std::fs::write(path, text + "\n") {
            eprintln!("colo-dataplane: cannot write --stats-json {}: {e}", path.display());
            return 1;
        }
    }
    let t = &summary.total;
    let _ = writeln!(
        std::io::stdout(),
        "colo-dataplane: primary in {} | released {} (match {}, retransmission {}, flush {}, passthrough {}) | \
         secondary in {} | checkpoint requests {} -> DO_CHECKPOINT {} | checkpoints completed {} | accounting {}",
        t.primary_in,
        t.released_total(),
        t.released[0],
        t.released[1],
        t.released[2],
        t.released[3],
        t.secondary_in,
        summary.coordinator.requests_by_reason.values().sum::<u64>(),
        summary.coordinator.do_checkpoint_sent,
        summary.coordinator.checkpoints_completed,
        match t.check_accounting() {
            Ok(()) => "ok".to_string(),
            Err(e) => e,
        }
    );
    0
}
