//! `colo-ctl`: command-line client of the admin socket (SPEC §9.3).
//!
//! `colo-ctl [--socket PATH] stats [--json|--prometheus] | flows | failover primary|secondary |
//! checkpoint-done | set KEY=VALUE | shutdown`. Prints the answer; exits non-zero with one line
//! when the dataplane is unreachable or refuses the request.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

/// Default admin socket of colo-dataplane.
const DEFAULT_SOCKET: &str = "/run/colo-dataplane/admin.sock";

#[derive(Parser)]
#[command(name = "colo-ctl", about = "Control a running colo-dataplane through its admin socket.")]
struct Cli {
    /// The admin socket (colo-dataplane --admin).
    #[arg(long, default_value = DEFAULT_SOCKET)]
    socket: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Counters, summed and per shard.
    Stats {
        /// Print the raw JSON answer.
        #[arg(long, conflicts_with = "prometheus")]
        json: bool,
        /// Print Prometheus text exposition.
        #[arg(long)]
        prometheus: bool,
    },
    /// Flows with the largest queues first.
    Flows,
    /// Switch forwarding to one guest (stops comparing).
    Failover {
        /// primary or secondary.
        #[arg(value_parser = ["primary", "secondary"])]
        to: String,
    },
    /// Complete the pending checkpoint as if the COLO frame said so.
    CheckpointDone,
    /// Change a runtime setting, e.g. compare_timeout_ms=500.
    Set {
        /// KEY=VALUE.
        assignment: String,
    },
    /// Stop the dataplane as on SIGTERM.
    Shutdown,
}

fn main() {
    let cli = Cli::parse();
    let (request, mode) = match &cli.cmd {
        Cmd::Stats { json, prometheus } => (
            serde_json::json!({"cmd": "stats"}),
            if *prometheus {
                Print::Prometheus
            } else if *json {
                Print::Json
            } else {
                Print::Pretty
            },
        ),
        Cmd::Flows => (serde_json::json!({"cmd": "flows"}), Print::Pretty),
        Cmd::Failover { to } => (serde_json::json!({"cmd": "failover", "to": to}), Print::Pretty),
        Cmd::CheckpointDone => (serde_json::json!({"cmd": "checkpoint-done"}), Print::Pretty),
        Cmd::Set { assignment } => {
            let Some((k, v)) = assignment.split_once('=') else {
                eprintln!("colo-ctl: set needs KEY=VALUE, e.g. compare_timeout_ms=500");
                std::process::exit(2);
            };
            (serde_json::json!({"cmd": "set", "key": k, "value": v}), Print::Pretty)
        }
        Cmd::Shutdown => (serde_json::json!({"cmd": "shutdown"}), Print::Pretty),
    };
    match ask(&cli.socket, &request) {
        Ok(answer) => {
            if answer["ok"] != serde_json::Value::Bool(true) {
                eprintln!("colo-ctl: {}", answer["error"].as_str().unwrap_or("request refused"));
                std::process::exit(1);
            }
            let text = match mode {
                Print::Json => format!("{answer}\n"),
                Print::Pretty => serde_json::to_string_pretty(&answer).unwrap_or_default() + "\n",
                Print::Prometheus => colo_control::admin::prometheus_text(&answer),
            };
            // A closed stdout (`| head`) is not worth a panic.
            let _ = std::io::stdout().write_all(text.as_bytes());
        }
        Err(e) => {
            eprintln!("colo-ctl: {e}");
            std::process::exit(1);
        }
    }
}

enum Print {
    Pretty,
    Json,
    Prometheus,
}

fn ask(socket: &PathBuf, request: &serde_json::Value) -> Result<serde_json::Value, String> {
    let mut s = UnixStream::connect(socket).map_err(|e| {
        format!("cannot reach colo-dataplane at {} ({e}); is it running with --admin?", socket.display())
    })?;
    s.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| e.to_string())?;
    writeln!(s, "{request}").map_err(|e| format!("cannot send the request: {e}"))?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).map_err(|e| format!("no answer: {e}"))?;
    serde_json::from_str(&line).map_err(|e| format!("unreadable answer ({e})"))
}
