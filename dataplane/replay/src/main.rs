//! `colo-replay` command line (SPEC §9.2). Errors are one line on stderr and exit code 2.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use colo_core::{Mode, NonIpPolicy};
use colo_replay::{read_pcap, replay, summary, write_pcap, Options};

#[derive(Clone, Copy, Debug, ValueEnum)]
enum ModeArg {
    /// The secondary's sequence numbers are already in the primary's space.
    Compare,
    /// Learn each connection's ISN offset from its SYN pair.
    Proxy,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum NonIpArg {
    /// Release the primary's non-IP/malformed frames at once, drop the secondary's.
    Passthrough,
    /// Whole-frame FIFO match (mismatch: other-mismatch on flow "non-ip").
    Compare,
}

/// Replays a primary and a secondary capture through the COLO comparator with a virtual
/// clock taken from the capture timestamps, and reports what would have been released.
#[derive(Parser, Debug)]
#[command(name = "colo-replay", version)]
struct Args {
    /// Capture of the primary guest's output (pcap, µs or ns).
    #[arg(long)]
    primary: PathBuf,
    /// Capture of the secondary guest's output.
    #[arg(long)]
    secondary: PathBuf,
    /// Write released frames here (pcap, µs), stamped with their virtual release time.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Write the JSON report here.
    #[arg(long)]
    report: Option<PathBuf>,
    /// Number of shards (flows are spread by the symmetric Toeplitz hash).
    #[arg(long, default_value_t = 1)]
    shards: usize,
    /// A packet unmatched this long is a checkpoint.
    #[arg(long, default_value_t = 3000)]
    compare_timeout_ms: u64,
    /// Sequence-space mode.
    #[arg(long, value_enum, default_value_t = ModeArg::Compare)]
    mode: ModeArg,
    /// Virtual time between a checkpoint request and its completion.
    #[arg(long, default_value_t = 0)]
    checkpoint_latency_ms: u64,
    /// Print step by step why each packet of this flow was held, released or flagged,
    /// e.g. "tcp 10.0.0.2:80 > 10.0.0.1:40000" (either direction).
    #[arg(long)]
    explain: Option<String>,
    /// Non-IP (ARP, LLDP, …) and malformed frames.
    #[arg(long, value_enum, default_value_t = NonIpArg::Passthrough)]
    non_ip_policy: NonIpArg,
}

/// Writes to stdout; a closed stdout (`| head`) ends the output quietly instead of panicking.
fn say(text: &str) {
    use std::io::Write;
    let _ = std::io::stdout().write_all(text.as_bytes());
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("colo-replay: error: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: &Args) -> Result<(), Box<dyn std::error::Error>> {
    if args.shards == 0 {
        return Err("--shards must be at least 1".into());
    }
    let primary = read_pcap(&args.primary)?;
    let secondary = read_pcap(&args.secondary)?;
    for w in primary.warnings.iter().chain(&secondary.warnings) {
        eprintln!("colo-replay: warning: {w}");
    }
    let opts = Options {
        shards: args.shards,
        compare_timeout: Duration::from_millis(args.compare_timeout_ms),
        mode: match args.mode {
            ModeArg::Compare => Mode::Compare,
            ModeArg::Proxy => Mode::Proxy,
        },
        checkpoint_latency: Duration::from_millis(args.checkpoint_latency_ms),
        explain: args.explain.clone(),
        non_ip_policy: match args.non_ip_policy {
            NonIpArg::Passthrough => NonIpPolicy::Passthrough,
            NonIpArg::Compare => NonIpPolicy::Compare,
        },
    };
    let outcome = replay(&primary, &secondary, &opts);
    if let Some(path) = &args.out {
        write_pcap(path, &outcome.output, pcap_file::TsResolution::MicroSecond)?;
    }
    if let Some(path) = &args.report {
        let json = serde_json::to_string_pretty(&outcome.report)?;
        std::fs::write(path, json + "\n").map_err(|e| format!("{}: {e}", path.display()))?;
    }
    if args.explain.is_some() {
        if outcome.explain.is_empty() {
            say("explain: no packet of that flow in either capture\n");
        }
        for line in &outcome.explain {
            say(&format!("{line}\n"));
        }
    }
    say(&summary(&outcome));
    Ok(())
}
