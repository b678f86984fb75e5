//! Start-up, the control loop on the main lcore, and shutdown.
//!
//! Start-up checks everything it can before touching a device and fails with one line. The
//! control loop gathers shard events into the checkpoint [`Coordinator`], speaks to the COLO
//! frame, and watches signals and idleness. Shutdown (SIGINT/SIGTERM or idle): stop RX, let
//! every shard handle what is queued and flush as on a checkpoint completion, drain TX, close
//! the ports (pcap output complete), print the final statistics.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use colo_control::admin::{AdminRequest, AdminServer, ClientId, FailoverSide};
use colo_control::coordinator::{
    CheckpointMode, CheckpointRequest, Coordinator, CoordinatorConfig, FailoverTarget, FrameLossPolicy, Output,
};
use colo_control::frame_server::{Endpoint, FrameServer, ServerEvent};
use colo_core::{Config as ShardConfig, Counters, Mode, Shard, Side};
use crossbeam_queue::ArrayQueue;
use dpdk::{Eal, Mempool, Port, PortConfig, RssConfig, RxBurst, TxBatch};

use crate::clock::TscClock;
use crate::config::{CheckpointModeArg, FrameLossArg, NonIpPolicyArg, RunConfig};
use crate::io_lcore::{IoContext, RxGate, Source, TxDrain};
use crate::messages::{FlowRow, ShardCommand, ShardEvent, COMMAND_QUEUE, EVENT_QUEUE};
use crate::shard_lcore::{Outlets, ShardContext, ShardInput};
use crate::tx::{Transmitter, TxPath};
use crate::Shared;

/// Slots of each dispatch and TX ring.
const RING_SLOTS: usize = 1024;
/// Frames a shard may hold before its mbufs would run short; sizes the pool (SPEC §8). Proxy
/// mode lets a side run up to a client window ahead: 16,384 frames of 1448 bytes is a 23 MB
/// window, or several connections with Linux's usual few-MB windows.
const HELD_PER_SHARD: u32 = 16_384;
/// Data room of each mbuf: a whole standard frame plus DPDK's headroom.
const MBUF_DATA_ROOM: u16 = 2048 + 128;
/// RX and TX descriptors per queue.
const DESCRIPTORS: u16 = 1024;

/// Final figures of a run.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    /// Sum of every shard's counters.
    pub total: Counters,
    /// Each shard's counters.
    pub shards: Vec<Counters>,
    /// `DO_CHECKPOINT` messages sent / checkpoints completed / collapsed requests.
    pub coordinator: colo_control::coordinator::CoordinatorStats,
    /// Device counters: (role, name, stats).
    pub ports: Vec<(String, String, dpdk::PortStats)>,
    /// Released frames freed at shutdown because the output device would not take them.
    pub tx_abandoned_at_shutdown: u64,
    /// Proxy mode's mirroring counters.
    pub proxy: Option<serde_json::Value>,
    /// Each polling lcore's busy share and cycles per frame.
    pub lcores: Option<serde_json::Value>,
}

/// Mbufs needed: descriptors of every queue, the dispatch and TX rings, and the comparison
/// window of every shard (held frames stay in their mbufs).
pub fn pool_size(shards: usize) -> u32 {
    let shards = shards as u32;
    let descriptors = u32::from(DESCRIPTORS) * (2 + 1 + shards);
    let rings = RING_SLOTS as u32 * shards * 3;
    // Not rounded to 2^n - 1 (DPDK's most memory-efficient size): that could double it.
    descriptors + rings + HELD_PER_SHARD * shards
}

/// Checks that hugepages exist unless the EAL options say `--no-huge` (SPEC §11).
pub fn check_hugepages(eal_args: &[String]) -> Result<(), String> {
    if eal_args.iter().any(|a| a == "--no-huge") {
        return Ok(());
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let total: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("HugePages_Total:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    if total == 0 {
        return Err("no hugepages are reserved: add --no-huge to the EAL options (before --) to run without \
                    them, or reserve hugepages (dpdk-hugepages.py --setup 1G)"
            .into());
    }
    Ok(())
}

/// Runs the dataplane until a signal or idleness stops it.
pub fn run(eal: &Eal, cfg: &RunConfig) -> Result<RunSummary, String> {
    let lookup = |name: &str, role: &str| {
        Port::lookup(eal, name).map_err(|e| format!("--{role}: {e}; the EAL knows {} port(s)", eal.port_count()))
    };
    let primary_id = lookup(&cfg.primary, "primary")?;
    let secondary_id = lookup(&cfg.secondary, "secondary")?;
    let output_id = lookup(&cfg.output, "output")?;
    let proxy = cfg.mode == crate::config::ModeArg::Proxy;
    let client_id = match &cfg.client {
        Some(c) => Some(lookup(c, "client")?),
        None => None,
    };
    let mut ids = vec![("primary", primary_id), ("secondary", secondary_id), ("output", output_id)];
    // The clients' port may also be the output port (frames go back where clients are).
    if let Some(c) = client_id.filter(|c| *c != output_id) {
        ids.push(("client", c));
    }
    for (i, (ra, a)) in ids.iter().enumerate() {
        for (rb, b) in &ids[i + 1..] {
            if a == b {
                return Err(format!("--{ra} and --{rb} name the same port ({}); each role needs its own port", a.0));
            }
        }
    }

    let endpoints = ControlEndpoints::open(cfg)?;

    let workers = dpdk::worker_lcores();
    if workers.len() < cfg.shards {
        return Err(format!(
            "{} shard(s) need at least {} worker lcores besides the main lcore (one more for a separate I/O \
             lcore), the EAL has {}: pass e.g. --lcores '(0-{})@(0,1)' before --",
            cfg.shards,
            cfg.shards,
            workers.len(),
            cfg.shards + 1
        ));
    }

    let mbufs = cfg.mbufs.unwrap_or_else(|| pool_size(cfg.shards));
    // DPDK wants the per-lcore cache well below the pool size.
    let cache = (mbufs / 16).min(256);
    let pool = Mempool::new_pktmbuf(eal, "colo_pool", mbufs, cache, MBUF_DATA_ROOM).map_err(|e| {
        format!("cannot create a pool of {mbufs} mbufs ({e}): give EAL more memory (-m) or use --mbufs")
    })?;

    // Hardware RSS when both guest ports can spread IP flows over one queue per shard (the
    // same symmetric key, hash types and RETA on both); software dispatch otherwise (every
    // virtual device but net_null/net_tap lacks RSS). Chosen once, here (SPEC §8).
    let guest_infos = [
        Port::info(eal, primary_id).map_err(|e| format!("--primary: {e}"))?,
        Port::info(eal, secondary_id).map_err(|e| format!("--secondary: {e}"))?,
    ];
    // Proxy mode dispatches client frames in software, so the guests' frames go that way too.
    let hw_rss = cfg.shards > 1
        && !proxy
        && guest_infos[0].reta_size == guest_infos[1].reta_size
        && guest_infos
            .iter()
            .all(|i| i.rss_offloads & dpdk::sys::RTE_ETH_RSS_IP != 0 && usize::from(i.max_rx_queues) >= cfg.shards);
    let input_cfg = PortConfig {
        rx_queues: if hw_rss { cfg.shards as u16 } else { 1 },
        tx_queues: 1,
        rx_desc: DESCRIPTORS,
        tx_desc: DESCRIPTORS,
        rss: hw_rss.then(RssConfig::ip_only),
        ..Default::default()
    };
    let [primary, secondary] = Port::configure_pair(eal, [primary_id, secondary_id], &input_cfg, &pool)
        .map_err(|e| format!("cannot start the guest ports: {e}"))?;
    let out_info = Port::info(eal, output_id).map_err(|e| format!("--output: {e}"))?;
    let per_shard_tx = usize::from(out_info.max_tx_queues) >= cfg.shards && cfg.shards > 1;
    let out_cfg = PortConfig {
        rx_queues: 1,
        tx_queues: if per_shard_tx { cfg.shards as u16 } else { 1 },
        rss: None,
        ..input_cfg.clone()
    };
    let output = Port::configure(eal, output_id, &out_cfg, &pool).map_err(|e| format!("cannot start --output: {e}"))?;
    let client = match client_id.filter(|c| *c != output_id) {
        Some(id) => Some(Port::configure(eal, id, &out_cfg, &pool).map_err(|e| format!("cannot start --client: {e}"))?),
        None => None,
    };

    let shared = Arc::new(Shared::default());
    let clock = TscClock::start();
    let events = Arc::new(ArrayQueue::new(EVENT_QUEUE));
    let mut commands = Vec::new();
    let mut published = Vec::new();
    let mut to_shards: [Vec<rtrb::Producer<dpdk::Mbuf>>; 3] = [Vec::new(), Vec::new(), Vec::new()];
    let mut tx_rings = Vec::new();
    let mut mirror_rings: [Vec<rtrb::Consumer<dpdk::Mbuf>>; 2] = [Vec::new(), Vec::new()];
    let mut mirror_stats = Vec::new();
    let mut contexts = Vec::new();
    let shard_cfg = ShardConfig {
        max_queue_size: cfg.max_queue_size,
        // Held frames stay in their mbufs: the pool is the memory budget. The RX gate pauses
        // intake before the pool runs dry (frames then wait in the device, SPEC §6 "drop at
        // RX"), so a shard drops a primary frame only if the pool is truly exhausted.
        held_frames_budget: mbufs as usize,
        held_bytes_budget: u64::from(mbufs) * u64::from(MBUF_DATA_ROOM),
        mode: if proxy { Mode::Proxy } else { Mode::Compare },
        non_ip_policy: match cfg.non_ip_policy {
            NonIpPolicyArg::Passthrough => colo_core::NonIpPolicy::Passthrough,
            NonIpPolicyArg::Compare => colo_core::NonIpPolicy::Compare,
        },
        new_flows_per_sec: cfg.new_flows.0,
        new_flow_burst: cfg.new_flows.1,
        ..ShardConfig::default()
    }
    .with_compare_timeout(cfg.compare_timeout);
    for id in 0..cfg.shards {
        let input = if hw_rss {
            ShardInput::Queues {
                primary: Some(primary.rx_queue(id as u16).map_err(|e| e.to_string())?),
                secondary: Some(secondary.rx_queue(id as u16).map_err(|e| e.to_string())?),
                burst: Box::new(RxBurst::new()),
                gate: RxGate::new(pool.clone(), crate::shard_lcore::POOL_RX_RESERVE_DIVISOR, shared.rx_stamp()),
            }
        } else {
            let (pp, pc) = rtrb::RingBuffer::new(RING_SLOTS);
            let (sp, sc) = rtrb::RingBuffer::new(RING_SLOTS);
            to_shards[0].push(pp);
            to_shards[1].push(sp);
            let client = proxy.then(|| {
                let (cp, cc) = rtrb::RingBuffer::new(RING_SLOTS);
                to_shards[2].push(cp);
                cc
            });
            ShardInput::Rings { primary: pc, secondary: sc, client }
        };
        let mirror = proxy.then(|| {
            let (pp, pc) = rtrb::RingBuffer::new(RING_SLOTS);
            let (sp, sc) = rtrb::RingBuffer::new(RING_SLOTS);
            mirror_rings[0].push(pc);
            mirror_rings[1].push(sc);
            let stats = Arc::new(crate::shard_lcore::MirrorStats::default());
            mirror_stats.push(stats.clone());
            crate::shard_lcore::Mirror {
                to_primary: Transmitter::new(TxPath::Ring(pp)),
                to_secondary: Transmitter::new(TxPath::Ring(sp)),
                pending: Default::default(),
                waiting: Default::default(),
                blocked: Default::default(),
                seen_epoch: 0,
                next_retry: colo_core::Timestamp::default(),
                stats,
            }
        });
        let path = if per_shard_tx {
            TxPath::Queue {
                queue: output.tx_queue(id as u16).map_err(|e| e.to_string())?,
                batch: Box::new(TxBatch::new()),
            }
        } else {
            let (tp, tc) = rtrb::RingBuffer::new(RING_SLOTS);
            tx_rings.push(tc);
            TxPath::Ring(tp)
        };
        let cmd = Arc::new(ArrayQueue::new(COMMAND_QUEUE));
        commands.push(cmd.clone());
        let publ = Arc::new(ArrayQueue::new(1));
        published.push(publ.clone());
        contexts.push(ShardContext {
            id,
            shard: Shard::new(shard_cfg.clone()),
            input,
            out: Outlets { tx: Transmitter::new(path), events: events.clone(), unsent_events: Default::default() },
            commands: cmd,
            clock,
            shared: shared.clone(),
            published: publ,
            pool: pool.clone(),
            shards: cfg.shards,
            mirror,
            backoff: crate::IdleBackoff::new(cfg.idle_sleep),
            load: shared.load_meter(format!("shard {id}")),
        });
    }
    let drain = |queue: dpdk::TxQueue, rings| TxDrain { queue, batch: TxBatch::new(), rings, next: 0 };
    let mut txs = Vec::new();
    if !per_shard_tx {
        txs.push(drain(output.tx_queue(0).map_err(|e| e.to_string())?, tx_rings));
    }
    if proxy {
        // Mirrored client frames toward each guest's port.
        let [to_primary, to_secondary] = mirror_rings;
        txs.push(drain(primary.tx_queue(0).map_err(|e| e.to_string())?, to_primary));
        txs.push(drain(secondary.tx_queue(0).map_err(|e| e.to_string())?, to_secondary));
    }
    // The I/O work: software dispatch, and/or draining TX rings (none with hardware RSS and one
    // output queue per shard). With two workers to spare each guest port gets its own RX lcore
    // (SPEC §8); with one, a single I/O lcore serves both ports; with none, the main lcore
    // does the I/O between control rounds (e.g. one shard on a 2-CPU machine).
    let spare = workers.len() - cfg.shards;
    let mut ios: Vec<IoContext> = Vec::new();
    let io_context = |inputs: Vec<(Source, dpdk::RxQueue)>, to_shards, txs| IoContext {
        inputs,
        to_shards,
        txs,
        shared: shared.clone(),
        shards: cfg.shards,
        gate: RxGate::new(pool.clone(), crate::shard_lcore::POOL_RX_RESERVE_DIVISOR, shared.rx_stamp()),
        backoff: crate::IdleBackoff::new(cfg.idle_sleep),
        load: shared.load_meter("io".to_string()),
    };
    let rxq = |port: &Port| port.rx_queue(0).map_err(|e| e.to_string());
    let client_rx = match (proxy, &client) {
        (false, _) => None,
        (true, Some(port)) => Some((Source::Client, rxq(port)?)),
        (true, None) => Some((Source::Client, rxq(&output)?)),
    };
    if hw_rss {
        if !txs.is_empty() {
            ios.push(io_context(Vec::new(), [Vec::new(), Vec::new(), Vec::new()], txs));
        }
    } else if spare >= 2 {
        let [to_primary, to_secondary, to_client] = to_shards;
        ios.push(io_context(vec![(Source::Primary, rxq(&primary)?)], [to_primary, Vec::new(), Vec::new()], txs));
        let mut inputs = vec![(Source::Secondary, rxq(&secondary)?)];
        inputs.extend(client_rx);
        ios.push(io_context(inputs, [Vec::new(), to_secondary, to_client], Vec::new()));
    } else {
        let mut inputs = vec![(Source::Primary, rxq(&primary)?), (Source::Secondary, rxq(&secondary)?)];
        inputs.extend(client_rx);
        ios.push(io_context(inputs, to_shards, txs));
    }
    shared.rx_running.store(ios.iter().filter(|io| !io.inputs.is_empty()).count(), Ordering::Release);

    tracing::info!(
        shards = cfg.shards,
        dispatch = if hw_rss { "hardware RSS (symmetric key)" } else { "software (symmetric Toeplitz)" },
        io_lcores = if spare > 0 { ios.len() } else { 0 },
        tx = if per_shard_tx { "one queue per shard" } else { "ring to the I/O lcore" },
        mbufs,
        "colo-dataplane starting"
    );
    let mut io_handles = Vec::new();
    let mut local_io = None;
    let mut next_worker = 0;
    for io in ios {
        if spare > 0 {
            let lcore = workers[next_worker];
            next_worker += 1;
            io_handles
                .push(dpdk::launch(lcore, move || io.run()).map_err(|e| format!("cannot launch an I/O lcore: {e}"))?);
        } else {
            local_io = Some(io);
        }
    }
    let shard_lcores = &workers[next_worker..];
    let mut shard_handles = Vec::new();
    for (ctx, lcore) in contexts.into_iter().zip(shard_lcores) {
        shard_handles.push(dpdk::launch(*lcore, move || ctx.run()).map_err(|e| format!("cannot launch a shard: {e}"))?);
    }

    let links = ShardLinks { commands, published, events };
    let control = ControlLoop::new(cfg, links, shared.clone(), clock, local_io, endpoints)?;
    let mut summary = control.run(cfg, &LcoreWatch { io: &io_handles, shards: &shard_handles })?;

    for h in io_handles {
        if let Err(p) = h.join() {
            return Err(format!("an I/O lcore panicked: {}", panic_text(&p)));
        }
    }
    for h in shard_handles {
        if let Err(p) = h.join() {
            return Err(format!("a shard lcore panicked: {}", panic_text(&p)));
        }
    }
    summary.tx_abandoned_at_shutdown = shared.tx_abandoned_at_shutdown.load(Ordering::Relaxed);
    summary.lcores = Some(shared.load_report());
    if proxy {
        let sum = |f: fn(&crate::shard_lcore::MirrorStats) -> &std::sync::atomic::AtomicU64| {
            mirror_stats.iter().map(|m| f(m).load(Ordering::Relaxed)).sum::<u64>()
        };
        summary.proxy = Some(serde_json::json!({
            "client_in": sum(|m| &m.client_in),
            "to_primary": sum(|m| &m.to_primary),
            "to_secondary": sum(|m| &m.to_secondary),
            "rewritten": sum(|m| &m.rewritten),
            "secondary_dropped": sum(|m| &m.secondary_dropped),
        }));
    }
    if let Some(port) = &client {
        if let Ok(stats) = port.stats() {
            summary.ports.push(("client".to_string(), port.name(), stats));
        }
    }
    for (role, port) in [("primary", &primary), ("secondary", &secondary), ("output", &output)] {
        if let Ok(stats) = port.stats() {
            summary.ports.push((role.to_string(), port.name(), stats));
        }
    }
    // Ports close when dropped here: net_pcap output files are complete after this.
    drop((primary, secondary, output, client));
    Ok(summary)
}

fn panic_text(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}

/// The main lcore's loop: coordinator, frame socket, signals, idleness.
struct ControlLoop {
    coordinator: Coordinator,
    server: Option<FrameServer>,
    commands: Vec<Arc<ArrayQueue<ShardCommand>>>,
    /// Commands not yet accepted by a full shard queue, per shard, in order.
    backlog: Vec<std::collections::VecDeque<ShardCommand>>,
    events: Arc<ArrayQueue<ShardEvent>>,
    shared: Arc<Shared>,
    clock: TscClock,
    start: Instant,
    terminate: Arc<AtomicBool>,
    admin: Option<AdminServer>,
    /// Each shard's latest published counters, and the last one read.
    published: Vec<Arc<ArrayQueue<Counters>>>,
    live: Vec<Counters>,
    /// What DPDK telemetry's `/colo/stats` answers (read on the telemetry thread).
    telemetry: Arc<std::sync::Mutex<Vec<(String, u64)>>>,
    next_refresh: Instant,
    /// The I/O work, when no worker lcore was left for it: run between control rounds.
    local_io: Option<(IoContext, RxBurst)>,
    /// `flows` requests waiting for every shard's answer.
    pending_flows: Vec<PendingFlows>,
    next_request: u64,
    /// Whether a completion means the secondary guest became a copy of the primary (a COLO
    /// frame's checkpoint) or nothing changed in the guests (standalone mode).
    resync_on_completion: bool,
}

/// A `flows` admin request being gathered from the shards.
struct PendingFlows {
    request: u64,
    /// Every client waiting: requests arriving while one round is out join it, so a
    /// polling script cannot queue report after report on the shards.
    clients: Vec<ClientId>,
    replies: Vec<Option<Vec<FlowRow>>>,
}

/// Flows listed by `flows` (largest queues first).
const FLOWS_LIMIT: usize = 100;

/// How often the control loop refreshes its view of the shards' counters.
const REFRESH_EVERY: Duration = Duration::from_millis(100);

/// The summed counters as flat telemetry entries.
fn telemetry_entries(total: &Counters, coord: &colo_control::coordinator::CoordinatorStats) -> Vec<(String, u64)> {
    use colo_core::{CheckpointReason, Via};
    let mut v = vec![
        ("primary_in".to_string(), total.primary_in),
        ("secondary_in".to_string(), total.secondary_in),
        ("released_total".to_string(), total.released_total()),
        ("secondary_consumed".to_string(), total.secondary_consumed),
        ("secondary_flushed".to_string(), total.secondary_flushed),
        ("held_primary_frames".to_string(), total.held_primary_frames),
        ("held_primary_bytes".to_string(), total.held_primary_bytes),
        ("held_secondary_frames".to_string(), total.held_secondary_frames),
        ("flows".to_string(), total.flows),
        ("do_checkpoint_sent".to_string(), coord.do_checkpoint_sent),
        ("checkpoints_completed".to_string(), coord.checkpoints_completed),
    ];
    for via in Via::ALL {
        v.push((format!("released_{}", via.as_str()), total.released_via(via)));
    }
    for r in CheckpointReason::ALL {
        v.push((format!("requests_{}", r.as_str().replace('-', "_")), total.requests(r)));
    }
    v
}

/// The control thread's ends of the shards' lock-free queues.
struct ShardLinks {
    commands: Vec<Arc<ArrayQueue<ShardCommand>>>,
    published: Vec<Arc<ArrayQueue<Counters>>>,
    events: Arc<ArrayQueue<ShardEvent>>,
}

/// The control plane's sockets and the signal flag, opened before any port starts so that a
/// start-up failure (socket path in use, port taken) or an early SIGTERM never strands frames
/// already taken from a device.
struct ControlEndpoints {
    admin: Option<AdminServer>,
    server: Option<FrameServer>,
    terminate: Arc<AtomicBool>,
    mode: CheckpointMode,
}

impl ControlEndpoints {
    fn open(cfg: &RunConfig) -> Result<Self, String> {
        let admin = match &cfg.admin {
            Some(path) => Some(
                AdminServer::bind(path, cfg.socket_permissions())
                    .map_err(|e| format!("cannot listen on --admin {}: {e}", path.display()))?,
            ),
            None => None,
        };
        let mode = match cfg.checkpoint_mode {
            CheckpointModeArg::Frame => CheckpointMode::Frame,
            CheckpointModeArg::Standalone => CheckpointMode::Standalone,
        };
        let server = match mode {
            CheckpointMode::Standalone => {
                eprintln!(
                    "colo-dataplane: standalone checkpoint mode: checkpoints complete at once, NO fault tolerance"
                );
                None
            }
            CheckpointMode::Frame => {
                let ep: Endpoint = cfg.frame_endpoint().parse().map_err(|e| format!("--frame: {e}"))?;
                if let Endpoint::Unix(path) = &ep {
                    if let Some(dir) = path.parent() {
                        let _ = std::fs::create_dir_all(dir);
                    }
                }
                let mut server = FrameServer::bind(&ep, cfg.socket_permissions())
                    .map_err(|e| format!("cannot listen on --frame {}: {e}", cfg.frame_endpoint()))?;
                server.restrict(cfg.frame_peer);
                Some(server)
            }
        };
        let terminate = Arc::new(AtomicBool::new(false));
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(sig, terminate.clone())
                .map_err(|e| format!("cannot install signal handler: {e}"))?;
        }
        Ok(ControlEndpoints { admin, server, terminate, mode })
    }
}

impl ControlLoop {
    fn new(
        cfg: &RunConfig,
        links: ShardLinks,
        shared: Arc<Shared>,
        clock: TscClock,
        local_io: Option<IoContext>,
        endpoints: ControlEndpoints,
    ) -> Result<Self, String> {
        let ControlEndpoints { admin, server, terminate, mode } = endpoints;
        let ShardLinks { commands, published, events } = links;
        let coordinator = Coordinator::new(
            CoordinatorConfig {
                shards: commands.len(),
                mode,
                frame_timeout: cfg.frame_timeout,
                on_frame_loss: match cfg.on_frame_loss {
                    FrameLossArg::FailoverPrimary => FrameLossPolicy::FailoverPrimary,
                    FrameLossArg::Hold => FrameLossPolicy::Hold,
                },
            },
            Duration::ZERO,
        );
        let backlog = vec![Default::default(); commands.len()];
        let telemetry: Arc<std::sync::Mutex<Vec<(String, u64)>>> = Arc::default();
        let snapshot = telemetry.clone();
        // Without --no-telemetry, `dpdk-telemetry.py` shows the shard counters under /colo/.
        if let Err(e) = dpdk::telemetry::register_counters(
            "/colo/stats",
            "colo-dataplane counters, summed over shards",
            move || snapshot.lock().map(|v| v.clone()).unwrap_or_default(),
        ) {
            tracing::warn!(error = %e, "DPDK telemetry registration failed");
        }
        Ok(ControlLoop {
            coordinator,
            server,
            commands,
            backlog,
            events,
            shared,
            clock,
            start: Instant::now(),
            terminate,
            admin,
            live: vec![Counters::default(); published.len()],
            published,
            telemetry,
            next_refresh: Instant::now(),
            local_io: local_io.map(|io| (io, RxBurst::new())),
            pending_flows: Vec::new(),
            next_request: 1,
            resync_on_completion: mode == CheckpointMode::Frame,
        })
    }

    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// Waits `d` between control rounds: sleeps, or runs the local I/O work meanwhile.
    fn idle(&mut self, d: Duration) {
        match &mut self.local_io {
            None => std::thread::sleep(d),
            Some((io, burst)) => {
                let until = Instant::now() + d;
                while Instant::now() < until {
                    let start = dpdk::tsc();
                    let moved = if io.shared.stop_rx.load(Ordering::Relaxed) {
                        // RX is closed: only TX is left to drain.
                        io.drain_tx()
                    } else {
                        io.poll(burst)
                    };
                    io.backoff.round(moved > 0);
                    io.load.round(dpdk::tsc().saturating_sub(start), moved as u64);
                }
            }
        }
    }

    fn run(mut self, cfg: &RunConfig, watch: &LcoreWatch<'_>) -> Result<RunSummary, String> {
        let mut server_events = Vec::new();
        let mut final_counters: Vec<Option<Counters>> = vec![None; self.commands.len()];
        loop {
            // Lcores leave their loops only when told to: one that has finished died.
            if watch.io.iter().chain(watch.shards).any(|h| h.is_finished()) {
                lcore_died("while running");
            }
            self.pump_events(&mut final_counters);
            if let Some(server) = &mut self.server {
                server_events.clear();
                server.poll(&mut server_events);
                let now = self.start.elapsed();
                for ev in server_events.drain(..) {
                    match ev {
                        ServerEvent::Connected => self.coordinator.on_frame_connected(now),
                        ServerEvent::Disconnected { reason } => self.coordinator.on_frame_disconnected(now, &reason),
                        ServerEvent::Message(m) => self.coordinator.on_frame_message(m, now),
                    }
                }
            }
            self.coordinator.handle_timeout(self.now());
            self.apply_outputs();
            self.push_backlog();

            if self.serve_admin() {
                tracing::info!("shutdown requested on the admin socket");
                break;
            }
            if self.terminate.load(Ordering::Relaxed) {
                tracing::info!("signal received: shutting down");
                break;
            }
            if let Some(idle) = cfg.exit_when_idle {
                let last = self.shared.last_rx_tsc();
                let idle_for = Duration::from_nanos(self.clock.ticks_to_nanos(dpdk::tsc().saturating_sub(last)));
                if idle_for >= idle && !self.coordinator.checkpoint_pending() {
                    tracing::info!(idle_ms = idle.as_millis() as u64, "all RX ports idle: shutting down");
                    break;
                }
            }
            self.idle(Duration::from_micros(200));
        }

        // Shutdown: stop RX, wait until the I/O lcore has dispatched its last frames, then
        // let every shard drain its input and flush.
        self.shared.stop_rx.store(true, Ordering::Release);
        if let Some((io, _)) = &mut self.local_io {
            io.stop_rx();
        }
        while !self.shared.rx_stopped() {
            self.pump_events(&mut final_counters);
            std::thread::sleep(Duration::from_micros(100));
        }
        for i in 0..self.commands.len() {
            self.backlog[i].push_back(ShardCommand::Stop);
        }
        while final_counters.iter().any(Option::is_none) {
            // A shard reports `Stopped` before it returns: one found finished (looked at
            // before the events are read) without that report died.
            let finished: Vec<bool> = watch.shards.iter().map(|h| h.is_finished()).collect();
            self.push_backlog();
            self.pump_events(&mut final_counters);
            if finished.iter().zip(&final_counters).any(|(done, report)| *done && report.is_none()) {
                lcore_died("during shutdown");
            }
            self.apply_outputs();
            self.idle(Duration::from_micros(100));
        }
        if let Some((io, _)) = &mut self.local_io {
            io.finish_tx();
        }
        let abandoned = self.shared.tx_abandoned_at_shutdown.load(Ordering::Relaxed);
        if abandoned > 0 {
            tracing::error!(frames = abandoned, "the output device did not take the last released frames; freed them");
        }
        let shards: Vec<Counters> = final_counters.into_iter().map(Option::unwrap_or_default).collect();
        let mut total = Counters::default();
        for c in &shards {
            total.merge(c);
        }
        Ok(RunSummary { total, shards, coordinator: self.coordinator.stats().clone(), ..RunSummary::default() })
    }

    /// Reads the shards' latest published counters and updates the telemetry snapshot.
    fn refresh_live(&mut self) {
        for (q, live) in self.published.iter().zip(&mut self.live) {
            if let Some(c) = q.pop() {
                *live = c;
            }
        }
        let mut total = Counters::default();
        for c in &self.live {
            total.merge(c);
        }
        let entries = telemetry_entries(&total, self.coordinator.stats());
        if let Ok(mut t) = self.telemetry.lock() {
            *t = entries;
        }
        self.next_refresh = Instant::now() + REFRESH_EVERY;
    }

    /// Answers admin requests; returns whether a shutdown was requested.
    fn serve_admin(&mut self) -> bool {
        if Instant::now() >= self.next_refresh {
            self.refresh_live();
        }
        let Some(admin) = &mut self.admin else { return false };
        let requests = admin.poll();
        if requests.is_empty() {
            return false;
        }
        self.refresh_live();
        let now = self.start.elapsed();
        let mut shutdown = false;
        let mut answers = Vec::new();
        for (client, req) in requests {
            let answer = match req {
                AdminRequest::Stats => {
                    let mut total = Counters::default();
                    for c in &self.live {
                        total.merge(c);
                    }
                    let summary = RunSummary {
                        total,
                        shards: self.live.clone(),
                        coordinator: self.coordinator.stats().clone(),
                        ..RunSummary::default()
                    };
                    let mut v = summary_json(&summary);
                    v["ok"] = true.into();
                    v["epoch"] = self.coordinator.epoch().into();
                    v["checkpoint_pending"] = self.coordinator.checkpoint_pending().into();
                    v["lcores"] = self.shared.load_report();
                    v
                }
                AdminRequest::CheckpointDone => {
                    self.coordinator.on_checkpoint_done(now);
                    serde_json::json!({"ok": true})
                }
                AdminRequest::Failover(side) => {
                    let target = match side {
                        FailoverSide::Primary => FailoverTarget::Primary,
                        FailoverSide::Secondary => FailoverTarget::Secondary,
                    };
                    self.coordinator.on_failover(target, now);
                    serde_json::json!({"ok": true})
                }
                AdminRequest::Shutdown => {
                    shutdown = true;
                    serde_json::json!({"ok": true})
                }
                AdminRequest::Flows => {
                    // Answered once every shard has reported (see pump_events).
                    if let Some(p) = self.pending_flows.first_mut() {
                        p.clients.push(client);
                        continue;
                    }
                    let request = self.next_request;
                    self.next_request += 1;
                    for q in &mut self.backlog {
                        q.push_back(ShardCommand::ReportFlows { request, limit: FLOWS_LIMIT });
                    }
                    self.pending_flows.push(PendingFlows {
                        request,
                        clients: vec![client],
                        replies: vec![None; self.commands.len()],
                    });
                    continue;
                }
                AdminRequest::Set { key, value } => self.apply_setting(&key, &value),
            };
            answers.push((client, answer));
        }
        if let Some(admin) = &mut self.admin {
            for (client, answer) in answers {
                admin.answer(client, &answer);
            }
        }
        self.apply_outputs();
        shutdown
    }

    /// `set KEY=VALUE` on the admin socket: the same ranges as the command line.
    fn apply_setting(&mut self, key: &str, value: &str) -> serde_json::Value {
        use crate::config::Setting;
        let Some(setting) = Setting::from_key(key) else {
            let keys: Vec<&str> = Setting::ALL.iter().map(|s| s.key()).collect();
            return serde_json::json!({"ok": false, "error": format!(
                "unknown setting {key:?}; settable: {}", keys.join(", ")
            )});
        };
        let n = match setting.parse(value) {
            Ok(n) => n,
            Err(e) => return serde_json::json!({"ok": false, "error": e}),
        };
        let command = match setting {
            Setting::CompareTimeoutMs => Some(ShardCommand::SetCompareTimeout(Duration::from_millis(n))),
            Setting::MaxQueueSize => Some(ShardCommand::SetMaxQueueSize(n as usize)),
            Setting::FrameTimeoutMs => {
                self.coordinator.set_frame_timeout(Duration::from_millis(n));
                None
            }
        };
        if let Some(cmd) = command {
            for q in &mut self.backlog {
                q.push_back(cmd);
            }
        }
        tracing::info!(key, value, "setting changed on the admin socket");
        serde_json::json!({"ok": true, "key": key, "value": n})
    }

    fn pump_events(&mut self, final_counters: &mut [Option<Counters>]) {
        let now = self.now();
        while let Some(ev) = self.events.pop() {
            match ev {
                ShardEvent::Request { shard, request } => self.coordinator.on_request(
                    CheckpointRequest {
                        shard,
                        reason: request.reason.as_str(),
                        flow: request.flow,
                        detail: request.detail,
                    },
                    now,
                ),
                ShardEvent::Flushed { shard, epoch } => self.coordinator.on_shard_flushed(shard, epoch, now),
                ShardEvent::Flows { shard, request, flows } => {
                    let Some(i) = self.pending_flows.iter().position(|p| p.request == request) else { continue };
                    if let Some(slot) = self.pending_flows[i].replies.get_mut(shard) {
                        *slot = Some(flows);
                    }
                    if self.pending_flows[i].replies.iter().all(Option::is_some) {
                        let done = self.pending_flows.swap_remove(i);
                        let mut all: Vec<FlowRow> = done.replies.into_iter().flatten().flatten().collect();
                        all.sort_by_key(|f| std::cmp::Reverse(f.held_primary + f.held_secondary));
                        all.truncate(FLOWS_LIMIT);
                        if let Some(admin) = &mut self.admin {
                            let answer = serde_json::json!({"ok": true, "flows": all});
                            for client in done.clients {
                                admin.answer(client, &answer);
                            }
                        }
                    }
                }
                ShardEvent::Stopped { shard, counters } => {
                    if let Some(slot) = final_counters.get_mut(shard) {
                        *slot = Some(*counters);
                    }
                }
            }
        }
    }

    fn apply_outputs(&mut self) {
        while let Some(out) = self.coordinator.poll_output() {
            match out {
                Output::SendToFrame(msg) => {
                    if let Some(server) = &mut self.server {
                        server.send(msg);
                    }
                }
                Output::FlushShards { epoch } => {
                    for q in &mut self.backlog {
                        q.push_back(ShardCommand::Flush { epoch, resync: self.resync_on_completion });
                    }
                }
                Output::Failover(target) => {
                    let side = match target {
                        FailoverTarget::Primary => Side::Primary,
                        FailoverTarget::Secondary => Side::Secondary,
                    };
                    for q in &mut self.backlog {
                        q.push_back(ShardCommand::Failover(side));
                    }
                }
            }
        }
        self.push_backlog();
    }

    fn push_backlog(&mut self) {
        for (q, backlog) in self.commands.iter().zip(&mut self.backlog) {
            while let Some(cmd) = backlog.pop_front() {
                if let Err(cmd) = q.push(cmd) {
                    backlog.push_front(cmd);
                    break;
                }
            }
        }
    }
}

/// The launched lcores, watched by the control loop.
struct LcoreWatch<'a> {
    io: &'a [dpdk::JoinHandle<()>],
    shards: &'a [dpdk::JoinHandle<()>],
}

/// A dead lcore (a panic, already printed by the panic hook) would leave frames stuck in its
/// rings and the shutdown waiting forever: say so and leave at once, so the COLO frame sees
/// its socket close. Destructors are skipped on purpose: other lcores still poll the ports.
fn lcore_died(stage: &str) -> ! {
    eprintln!("colo-dataplane: an lcore stopped unexpectedly {stage} (see the panic above); exiting");
    std::process::exit(70);
}

/// The final statistics as JSON (`--stats-json`), with the accounting check.
pub fn summary_json(s: &RunSummary) -> serde_json::Value {
    use colo_core::{CheckpointReason, DropReason, Via};
    let counters = |c: &Counters| {
        let released: serde_json::Map<_, _> =
            Via::ALL.iter().map(|v| (v.as_str().to_string(), c.released_via(*v).into())).collect();
        let dropped = |side: Side| -> serde_json::Map<String, serde_json::Value> {
            DropReason::ALL
                .iter()
                .filter(|r| !matches!(r, DropReason::Consumed | DropReason::Flushed))
                .filter(|r| c.dropped(side, **r) > 0)
                .map(|r| (r.as_str().to_string(), c.dropped(side, *r).into()))
                .collect()
        };
        let requests: serde_json::Map<_, _> = CheckpointReason::ALL
            .iter()
            .filter(|r| c.requests(**r) > 0)
            .map(|r| (r.as_str().to_string(), c.requests(*r).into()))
            .collect();
        serde_json::json!({
            "primary_in": c.primary_in,
            "secondary_in": c.secondary_in,
            "released": released,
            "released_total": c.released_total(),
            "secondary_consumed": c.secondary_consumed,
            "secondary_flushed": c.secondary_flushed,
            "secondary_forwarded": c.secondary_forwarded,
            "failover_rewritten": c.failover_rewritten,
            "primary_dropped": dropped(Side::Primary),
            "secondary_dropped": dropped(Side::Secondary),
            "held_primary_frames": c.held_primary_frames,
            "held_secondary_frames": c.held_secondary_frames,
            "flows": c.flows,
            "checkpoint_requests": requests,
            "checkpoints_completed": c.checkpoints_completed,
            "hold_time_us": {
                "p50": c.hold_time.quantile(0.5).as_micros() as u64,
                "p99": c.hold_time.quantile(0.99).as_micros() as u64,
                "max": c.hold_time.quantile(1.0).as_micros() as u64,
            },
            "accounting": match c.check_accounting() { Ok(()) => "ok".to_string(), Err(e) => e },
        })
    };
    serde_json::json!({
        "total": counters(&s.total),
        "shards": s.shards.iter().map(counters).collect::<Vec<_>>(),
        "coordinator": {
            "do_checkpoint_sent": s.coordinator.do_checkpoint_sent,
            "checkpoints_completed": s.coordinator.checkpoints_completed,
            "requests_collapsed": s.coordinator.requests_collapsed,
            "requests_by_reason": s.coordinator.requests_by_reason,
            "frame_connects": s.coordinator.frame_connects,
            "failovers": s.coordinator.failovers,
        },
        "tx_abandoned_at_shutdown": s.tx_abandoned_at_shutdown,
        "proxy": s.proxy,
        "lcores": s.lcores,
        "ports": s.ports.iter().map(|(role, name, st)| serde_json::json!({
            "role": role, "name": name, "ipackets": st.ipackets, "opackets": st.opackets,
            "imissed": st.imissed, "ierrors": st.ierrors, "oerrors": st.oerrors, "rx_nombuf": st.rx_nombuf,
        })).collect::<Vec<_>>(),
    })
}
