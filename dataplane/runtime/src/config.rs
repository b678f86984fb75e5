//! The command line and the TOML file of `colo-dataplane` (SPEC §9.1), merged and checked into
//! one [`RunConfig`] before anything starts.
//!
//! Command-line values win over the file; every option has a TOML key of the same name with
//! `_` for `-`. Errors are one line saying what to do, never a panic.

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use serde::Deserialize;

/// How checkpoints complete.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CheckpointModeArg {
    /// A COLO frame on `--frame` completes them.
    Frame,
    /// Every request completes at once: no fault tolerance (demos and tests).
    Standalone,
}

/// Where the secondary's sequence numbers live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ModeArg {
    /// The secondary is already in the primary's sequence space (QEMU-equivalent).
    Compare,
    /// The dataplane is the whole proxy (mirrors clients, rewrites sequence numbers).
    Proxy,
}

/// What happens to non-IP (ARP, LLDP, …) and malformed frames (SPEC §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NonIpPolicyArg {
    /// Release the primary's at once, drop the secondary's (QEMU's behaviour).
    Passthrough,
    /// Match them whole-frame, in order, like datagrams.
    Compare,
}

/// What to do when a checkpoint is needed and no frame answers for `frame_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FrameLossArg {
    /// Stop comparing and forward the primary's output.
    FailoverPrimary,
    /// Keep holding until a frame connects.
    Hold,
}

/// Application options (after EAL's `--`), from the command line and, the same struct, from
/// the TOML file `--config` names (keys are the long options' names with `_` for `-`).
#[derive(Debug, Clone, Parser, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[command(
    name = "colo-dataplane",
    about = "COLO network comparator on DPDK: compares primary and secondary guest output, releases \
             the primary's while they agree, asks the COLO frame for a checkpoint when they diverge.",
    override_usage = "colo-dataplane [EAL options] -- --primary P --secondary S --output O [OPTIONS]",
    after_help = "EAL options come before `--` (e.g. `--no-huge --no-pci -m 256 --vdev net_pcap0,rx_pcap=p.pcap`); \
                  without hugepages add --no-huge. Every option is also a key of --config FILE.toml \
                  (same name, `_` for `-`)."
)]
pub struct Args {
    /// Port receiving the primary guest's frames (DPDK device name like net_pcap0, or port id).
    #[arg(long)]
    pub primary: Option<String>,
    /// Port receiving the secondary guest's frames.
    #[arg(long)]
    pub secondary: Option<String>,
    /// Port where released primary frames leave toward the clients.
    #[arg(long)]
    pub output: Option<String>,
    /// Port receiving client frames (proxy mode).
    #[arg(long)]
    pub client: Option<String>,
    /// compare: the secondary is already seq-rewritten (QEMU-equivalent); proxy: full proxy.
    #[arg(long, value_enum)]
    pub mode: Option<ModeArg>,
    /// Number of comparator shards (one lcore each).
    #[arg(long)]
    pub shards: Option<usize>,
    /// COLO frame socket to listen on: unix:PATH or tcp:HOST:PORT.
    #[arg(long)]
    pub frame: Option<String>,
    /// Admin socket path (JSON lines; see colo-ctl).
    #[arg(long)]
    pub admin: Option<PathBuf>,
    /// How long a held packet may wait for its counterpart before a checkpoint is requested.
    #[arg(long)]
    pub compare_timeout_ms: Option<u64>,
    /// Per-connection, per-side queue length (frames) past which a TCP queue may overflow.
    /// In proxy mode a side may also hold up to the client's advertised receive window (plus a
    /// quarter and 64 KiB) before `queue-overflow`: one guest legitimately runs a window ahead
    /// of the other. In compare mode the client is not seen, so this alone is the bound
    /// (default 1024).
    #[arg(long)]
    pub max_queue_size: Option<usize>,
    /// frame: a COLO frame completes checkpoints; standalone: they complete at once (no fault tolerance).
    #[arg(long, value_enum)]
    pub checkpoint_mode: Option<CheckpointModeArg>,
    /// How long to wait for a frame when a checkpoint is needed and none is connected.
    #[arg(long)]
    pub frame_timeout_ms: Option<u64>,
    /// What to do after --frame-timeout-ms without a frame.
    #[arg(long, value_enum)]
    pub on_frame_loss: Option<FrameLossArg>,
    /// Exit as on SIGTERM once every RX port has been idle this long (batch runs over pcaps).
    #[arg(long)]
    pub exit_when_idle_ms: Option<u64>,
    /// Write the final statistics as JSON here at exit.
    #[arg(long)]
    pub stats_json: Option<PathBuf>,
    /// Idle back-off (off by default: lcores busy-poll, as DPDK applications do): a polling
    /// lcore that found nothing for 64 rounds sleeps this many microseconds between polls,
    /// so guests sharing its CPUs get them. Costs up to that much latency after a quiet spell
    /// (plus the kernel's timer slack); 20–100 suits machines with fewer CPUs than lcores.
    #[arg(long, value_name = "MICROSECONDS")]
    pub idle_sleep_us: Option<u64>,
    /// Mbufs in the packet pool. Held frames stay in their mbufs, so the pool must cover the
    /// descriptors and rings plus what the shards hold: in proxy mode up to one client
    /// receive window per busy connection (a 6 MB window of 1448-byte segments is about
    /// 4,300 frames; Linux autotunes windows up to tcp_rmem's maximum). The default covers
    /// 16,384 held frames per shard; below 1/8 free a shard requests `resource-pressure`.
    #[arg(long)]
    pub mbufs: Option<u32>,
    /// Non-IP and malformed frames: passthrough (release the primary's at once) or compare.
    #[arg(long, value_enum)]
    pub non_ip_policy: Option<NonIpPolicyArg>,
    /// New flows each shard creates per second at most, on average (0 = no limit; default
    /// 100000). Creating a flow costs several matched pairs' worth of work, so a flood of new
    /// flows (a SYN flood, a scan) is held to a share of the shard and established flows keep
    /// the rest. Frames of refused flows are dropped and counted (`new-flow-budget`), both
    /// guests' alike; a client retries its SYN.
    #[arg(long, value_name = "FLOWS")]
    pub new_flows_per_sec: Option<u32>,
    /// New flows each shard may create at once above that rate (default 10000).
    #[arg(long, value_name = "FLOWS")]
    pub new_flow_burst: Option<u32>,
    /// File mode of the Unix frame and admin sockets, octal.
    #[arg(long, value_name = "OCTAL")]
    pub socket_mode: Option<String>,
    /// Owner (uid) given to the Unix frame and admin sockets.
    #[arg(long, value_name = "UID")]
    pub socket_owner: Option<u32>,
    /// Group (gid) given to the Unix frame and admin sockets.
    #[arg(long, value_name = "GID")]
    pub socket_group: Option<u32>,
    /// Only a process of this uid may be the frame on a Unix --frame socket (SO_PEERCRED).
    #[arg(long, value_name = "UID")]
    pub frame_peer_uid: Option<u32>,
    /// Only this address may be the frame on a TCP --frame socket. TCP belongs on a dedicated
    /// link: anyone who reaches the port could otherwise connect before the real frame.
    #[arg(long, value_name = "IP")]
    pub frame_peer_addr: Option<std::net::IpAddr>,
    /// TOML file with any of these options.
    #[arg(long)]
    #[serde(skip)]
    pub config: Option<PathBuf>,
}

/// Command-line values over the file's, field by field (a field left out of the list does not
/// compile: the struct literal names every one).
macro_rules! over {
    ($cli:ident, $file:ident; $($field:ident),* $(,)?) => {
        Args { $($field: $cli.$field.or($file.$field),)* config: $cli.config }
    };
}

impl Args {
    /// These options over `file`'s.
    fn over(self, file: Args) -> Args {
        over!(self, file; primary, secondary, output, client, mode, shards, frame, admin, compare_timeout_ms,
            max_queue_size, checkpoint_mode, frame_timeout_ms, on_frame_loss, exit_when_idle_ms, stats_json,
            idle_sleep_us, mbufs, non_ip_policy, new_flows_per_sec, new_flow_burst, socket_mode, socket_owner,
            socket_group, frame_peer_uid, frame_peer_addr)
    }
}

/// Everything the runtime needs, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct RunConfig {
    /// Primary input port.
    pub primary: String,
    /// Secondary input port.
    pub secondary: String,
    /// Output port.
    pub output: String,
    /// Client port (proxy mode).
    pub client: Option<String>,
    /// Compare or proxy.
    pub mode: ModeArg,
    /// Shard count.
    pub shards: usize,
    /// Frame socket endpoint.
    pub frame: Option<String>,
    /// Admin socket.
    pub admin: Option<PathBuf>,
    /// compare_timeout.
    pub compare_timeout: Duration,
    /// max_queue_size.
    pub max_queue_size: usize,
    /// Frame or standalone.
    pub checkpoint_mode: CheckpointModeArg,
    /// frame_timeout.
    pub frame_timeout: Duration,
    /// on_frame_loss.
    pub on_frame_loss: FrameLossArg,
    /// exit_when_idle.
    pub exit_when_idle: Option<Duration>,
    /// stats_json.
    pub stats_json: Option<PathBuf>,
    /// Idle back-off of the polling lcores (`None`: busy-poll).
    pub idle_sleep: Option<Duration>,
    /// Pool size override.
    pub mbufs: Option<u32>,
    /// Non-IP and malformed frames.
    pub non_ip_policy: NonIpPolicyArg,
    /// Each shard's new-flow budget: (flows per second, burst).
    pub new_flows: (u32, u32),
    /// Unix socket permissions (frame and admin sockets).
    pub socket_mode: u32,
    /// Unix socket owner.
    pub socket_owner: Option<u32>,
    /// Unix socket group.
    pub socket_group: Option<u32>,
    /// Who may be the frame.
    pub frame_peer: colo_control::frame_server::PeerFilter,
}

/// Default frame socket when `--frame` is not given in frame mode.
pub const DEFAULT_FRAME: &str = "unix:/run/colo-dataplane/frame.sock";

impl RunConfig {
    /// Merges `args` over the TOML file it names (if any) and checks the result.
    pub fn resolve(args: Args) -> Result<RunConfig, String> {
        let file = match &args.config {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| format!("cannot read config file {}: {e}", path.display()))?;
                toml::from_str::<Args>(&text).map_err(|e| {
                    // One line: where, then what (the parser's message may span lines).
                    let line = e.span().map_or(0, |s| text.get(..s.start).unwrap_or(&text).matches('\n').count() + 1);
                    let what = e.message().split_whitespace().collect::<Vec<_>>().join(" ");
                    format!("bad config file {} line {line}: {what}", path.display())
                })?
            }
            None => Args::default(),
        };
        let a = args.over(file);
        let need = |v: Option<String>, name: &str| {
            v.ok_or_else(|| format!("missing --{name} (a DPDK port name such as net_pcap0, or a port id)"))
        };
        // The comparator's defaults are the core's own (SPEC §5, §6, §11).
        let core = colo_core::Config::default();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let cfg = RunConfig {
            primary: need(a.primary, "primary")?,
            secondary: need(a.secondary, "secondary")?,
            output: need(a.output, "output")?,
            client: a.client,
            mode: a.mode.unwrap_or(ModeArg::Compare),
            shards: a.shards.unwrap_or(1),
            frame: a.frame,
            admin: a.admin,
            compare_timeout: Duration::from_millis(a.compare_timeout_ms.unwrap_or(ms(core.compare_timeout))),
            max_queue_size: a.max_queue_size.unwrap_or(core.max_queue_size),
            checkpoint_mode: a.checkpoint_mode.unwrap_or(CheckpointModeArg::Frame),
            frame_timeout: Duration::from_millis(a.frame_timeout_ms.unwrap_or(5000)),
            on_frame_loss: a.on_frame_loss.unwrap_or(FrameLossArg::FailoverPrimary),
            exit_when_idle: a.exit_when_idle_ms.map(Duration::from_millis),
            stats_json: a.stats_json,
            idle_sleep: a.idle_sleep_us.filter(|&us| us > 0).map(Duration::from_micros),
            mbufs: a.mbufs,
            non_ip_policy: a.non_ip_policy.unwrap_or(NonIpPolicyArg::Passthrough),
            new_flows: (
                a.new_flows_per_sec.unwrap_or(core.new_flows_per_sec),
                a.new_flow_burst.unwrap_or(core.new_flow_burst),
            ),
            socket_mode: match a.socket_mode {
                None => 0o600,
                Some(m) => u32::from_str_radix(m.trim_start_matches("0o"), 8)
                    .ok()
                    .filter(|m| *m <= 0o777)
                    .ok_or_else(|| format!("--socket-mode must be an octal mode such as 0600, not {m:?}"))?,
            },
            socket_owner: a.socket_owner,
            socket_group: a.socket_group,
            frame_peer: colo_control::frame_server::PeerFilter { uid: a.frame_peer_uid, addr: a.frame_peer_addr },
        };
        cfg.check()?;
        Ok(cfg)
    }

    fn check(&self) -> Result<(), String> {
        if self.shards == 0 || self.shards > 64 {
            return Err(format!("--shards must be between 1 and 64, not {}", self.shards));
        }
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Setting::CompareTimeoutMs.check(ms(self.compare_timeout))?;
        Setting::MaxQueueSize.check(self.max_queue_size as u64)?;
        Setting::FrameTimeoutMs.check(ms(self.frame_timeout))?;
        if self.idle_sleep.is_some_and(|d| d > Duration::from_millis(10)) {
            return Err("--idle-sleep-us must be at most 10000 (a longer sleep would hold frames for longer)".into());
        }
        if self.exit_when_idle.is_some_and(|d| d.is_zero()) {
            return Err("--exit-when-idle-ms must be above 0".into());
        }
        if self.mbufs.is_some_and(|n| n < 512) {
            return Err("--mbufs must be at least 512".into());
        }
        let mut named = vec![("primary", &self.primary), ("secondary", &self.secondary), ("output", &self.output)];
        if let Some(c) = &self.client {
            named.push(("client", c));
        }
        for (i, (a, pa)) in named.iter().enumerate() {
            for (b, pb) in &named[i + 1..] {
                // In proxy mode the output may be the client port (frames go back to clients).
                let allowed = (*a == "output" && *b == "client") || (*a == "client" && *b == "output");
                if pa == pb && !allowed {
                    return Err(format!(
                        "the same port {pa:?} is given as --{a} and --{b}; each role needs its own port"
                    ));
                }
            }
        }
        if self.mode == ModeArg::Proxy && self.client.is_none() {
            return Err("--mode proxy needs --client (the port the clients' frames arrive on)".into());
        }
        if self.mode == ModeArg::Compare && self.client.is_some() {
            return Err("--client is only used with --mode proxy".into());
        }
        Ok(())
    }

    /// Permissions for the Unix sockets.
    pub fn socket_permissions(&self) -> colo_control::frame_server::SocketPermissions {
        colo_control::frame_server::SocketPermissions {
            mode: self.socket_mode,
            owner: self.socket_owner,
            group: self.socket_group,
        }
    }

    /// The frame endpoint to listen on, in frame mode.
    pub fn frame_endpoint(&self) -> &str {
        self.frame.as_deref().unwrap_or(DEFAULT_FRAME)
    }
}

/// Splits argv at the first `--`: EAL options before (with argv\[0\]), application options after.
/// Without `--`, everything is EAL's except `-h`/`--help`, which asks for our help.
pub fn split_args(argv: &[String]) -> (Vec<String>, Vec<String>) {
    let prog = argv.first().cloned().unwrap_or_else(|| "colo-dataplane".into());
    match argv.iter().position(|a| a == "--") {
        Some(i) => {
            let mut app = vec![prog];
            app.extend_from_slice(&argv[i + 1..]);
            (argv[..i].to_vec(), app)
        }
        None if argv.iter().skip(1).any(|a| a == "--help" || a == "-h") => {
            (vec![prog.clone()], vec![prog, "--help".into()])
        }
        None => (argv.to_vec(), vec![prog]),
    }
}

/// The options that can also change while running (`colo-ctl set KEY=VALUE`), with the one
/// range both the command line and the admin socket accept: a hostile or careless value is
/// refused with a clear error, never turned into an overflow later.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Setting {
    /// `compare_timeout_ms`: 1 ms to 1 hour.
    CompareTimeoutMs,
    /// `max_queue_size`: 1 to 2^24 frames.
    MaxQueueSize,
    /// `frame_timeout_ms`: 100 ms to 1 hour (shorter would log a held checkpoint every few
    /// milliseconds and fail over on any scheduling hiccup).
    FrameTimeoutMs,
}

impl Setting {
    /// Every setting, in the order `set` lists them.
    pub const ALL: [Setting; 3] = [Setting::CompareTimeoutMs, Setting::MaxQueueSize, Setting::FrameTimeoutMs];

    /// The key (`set KEY=VALUE`, TOML) of the setting.
    pub fn key(self) -> &'static str {
        match self {
            Setting::CompareTimeoutMs => "compare_timeout_ms",
            Setting::MaxQueueSize => "max_queue_size",
            Setting::FrameTimeoutMs => "frame_timeout_ms",
        }
    }

    /// The accepted values.
    pub fn range(self) -> std::ops::RangeInclusive<u64> {
        match self {
            Setting::CompareTimeoutMs => 1..=3_600_000,
            Setting::MaxQueueSize => 1..=1 << 24,
            Setting::FrameTimeoutMs => 100..=3_600_000,
        }
    }

    /// The setting named `key`.
    pub fn from_key(key: &str) -> Option<Setting> {
        Setting::ALL.into_iter().find(|s| s.key() == key)
    }

    /// `value` if it is in range, else a one-line error naming the option and its range.
    pub fn check(self, value: u64) -> Result<u64, String> {
        let range = self.range();
        if range.contains(&value) {
            return Ok(value);
        }
        Err(format!(
            "--{} (set {}) must be between {} and {}, not {value}",
            self.key().replace('_', "-"),
            self.key(),
            range.start(),
            range.end()
        ))
    }

    /// Parses and checks a `set` value.
    pub fn parse(self, value: &str) -> Result<u64, String> {
        let n = value.trim().parse::<u64>().map_err(|_| {
            let r = self.range();
            format!("{} needs a whole number between {} and {}, not {value:?}", self.key(), r.start(), r.end())
        })?;
        self.check(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<RunConfig, String> {
        let mut v = vec!["colo-dataplane"];
        v.extend_from_slice(args);
        RunConfig::resolve(Args::try_parse_from(v).map_err(|e| e.to_string())?)
    }

    #[test]
    fn defaults_follow_the_spec() {
        let c = parse(&["--primary", "p", "--secondary", "s", "--output", "o"]).unwrap();
        assert_eq!(c.compare_timeout, Duration::from_millis(3000));
        assert_eq!(c.max_queue_size, 1024);
        assert_eq!(c.frame_timeout, Duration::from_secs(5));
        assert_eq!(c.on_frame_loss, FrameLossArg::FailoverPrimary);
        assert_eq!(c.checkpoint_mode, CheckpointModeArg::Frame);
        assert_eq!(c.shards, 1);
        assert_eq!(c.frame_endpoint(), DEFAULT_FRAME);
        assert_eq!(c.new_flows, (100_000, 10_000));
        let c = parse(&["--primary", "p", "--secondary", "s", "--output", "o", "--new-flows-per-sec", "0"]).unwrap();
        assert_eq!(c.new_flows, (0, 10_000), "0 switches the budget off");
    }

    #[test]
    fn missing_and_duplicate_ports_are_one_line_errors() {
        let e = parse(&["--primary", "p", "--secondary", "s"]).unwrap_err();
        assert!(e.contains("missing --output"), "{e}");
        let e = parse(&["--primary", "p", "--secondary", "p", "--output", "o"]).unwrap_err();
        assert!(e.contains("--primary and --secondary"), "{e}");
        assert!(!e.contains('\n'));
        let e = parse(&["--primary", "p", "--secondary", "s", "--output", "o", "--shards", "0"]).unwrap_err();
        assert!(e.contains("--shards"), "{e}");
    }

    #[test]
    fn toml_keys_mirror_the_options_and_the_command_line_wins() {
        let dir = std::env::temp_dir().join(format!("colo-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(
            &path,
            "primary = \"net_pcap0\"\nsecondary = \"net_pcap1\"\noutput = \"net_pcap2\"\nshards = 4\n\
             compare_timeout_ms = 100\ncheckpoint_mode = \"standalone\"\non_frame_loss = \"hold\"\n",
        )
        .unwrap();
        let c = parse(&["--config", path.to_str().unwrap(), "--shards", "2"]).unwrap();
        assert_eq!(c.primary, "net_pcap0");
        assert_eq!(c.shards, 2, "command line wins");
        assert_eq!(c.compare_timeout, Duration::from_millis(100));
        assert_eq!(c.checkpoint_mode, CheckpointModeArg::Standalone);
        assert_eq!(c.on_frame_loss, FrameLossArg::Hold);
        std::fs::write(&path, "primray = \"x\"\n").unwrap();
        let e = parse(&["--config", path.to_str().unwrap()]).unwrap_err();
        assert!(e.contains("unknown field"), "{e}");
        let c = parse(&["--primary", "p", "--secondary", "s", "--output", "o", "--socket-mode", "0660"]).unwrap();
        assert_eq!(c.socket_mode, 0o660);
        let e = parse(&["--primary", "p", "--secondary", "s", "--output", "o", "--socket-mode", "rw"]).unwrap_err();
        assert!(e.contains("octal"), "{e}");
    }

    #[test]
    fn settings_have_one_range_for_the_command_line_and_the_admin_socket() {
        let base = ["--primary", "p", "--secondary", "s", "--output", "o"];
        let with = |k: &str, v: &str| parse(&[&base[..], &[k, v]].concat());
        for (flag, bad) in [
            ("--compare-timeout-ms", "0"),
            ("--compare-timeout-ms", "18446744073709551615"),
            ("--frame-timeout-ms", "1"),
            ("--frame-timeout-ms", "18446744073709551615"),
            ("--max-queue-size", "16777217"),
        ] {
            let e = with(flag, bad).unwrap_err();
            assert!(e.contains(flag) && e.contains("between"), "{flag} {bad}: {e}");
        }
        assert!(with("--frame-timeout-ms", "100").is_ok());
        assert_eq!(Setting::FrameTimeoutMs.parse("18446744073709551615").unwrap_err().lines().count(), 1);
        assert!(Setting::FrameTimeoutMs.parse("-1").unwrap_err().contains("whole number"));
        assert_eq!(Setting::CompareTimeoutMs.parse(" 250 "), Ok(250));
        assert_eq!(Setting::from_key("max_queue_size"), Some(Setting::MaxQueueSize));
    }

    #[test]
    fn idle_sleep_is_off_by_default_and_bounded() {
        let base = ["--primary", "p", "--secondary", "s", "--output", "o"];
        assert_eq!(parse(&base).unwrap().idle_sleep, None);
        let with = |us: &str| parse(&[&base[..], &["--idle-sleep-us", us]].concat());
        assert_eq!(with("50").unwrap().idle_sleep, Some(Duration::from_micros(50)));
        assert_eq!(with("0").unwrap().idle_sleep, None, "0 means busy-poll");
        assert!(with("20000").unwrap_err().contains("--idle-sleep-us"));
    }

    #[test]
    fn argv_splits_at_the_double_dash() {
        let argv: Vec<String> = ["app", "--no-huge", "--", "--primary", "p"].iter().map(|s| s.to_string()).collect();
        let (eal, app) = split_args(&argv);
        assert_eq!(eal, ["app", "--no-huge"]);
        assert_eq!(app, ["app", "--primary", "p"]);
        let argv: Vec<String> = ["app", "--help"].iter().map(|s| s.to_string()).collect();
        assert_eq!(split_args(&argv).1, ["app", "--help"]);
    }
}
