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
use dpdk::{Eal, Mempool, PoolOrder, Port, PortConfig, RssConfig, RxBurst, TxBatch};

use crate::clock::TscClock;
use crate::config::{CheckpointModeArg, FrameLossArg, NonIpPolicyArg, RunConfig};
use crate::egress::Egress;
use crate::io_lcore::{Dispatched, IoContext, RxGate, Source, TxDrain};
use crate::messages::{FlowRow, ShardCommand, ShardEvent, COMMAND_QUEUE, EVENT_QUEUE};
use crate::plan::{IoWork, Plan, DESCRIPTORS, RING_SLOTS};
use crate::shard_lcore::{Outlets, ShardContext, ShardInput};
use crate::tx::{Transmitter, TxPath};
use crate::Shared;

/// Data room of each mbuf: a whole standard frame plus DPDK's headroom.
const MBUF_DATA_ROOM: u16 = 2048 + 128;
/// The longest frame one mbuf holds (its data room less DPDK's default headroom).
const MBUF_BUFFER: usize = 2048;

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
    /// Released frames cut to the output port's MTU, or dropped as too long to cut.
    pub egress: Option<serde_json::Value>,
    /// Proxy mode's mirroring counters.
    pub proxy: Option<serde_json::Value>,
    /// Each polling lcore's busy share and cycles per frame.
    pub lcores: Option<serde_json::Value>,
    /// The packet pool: driver, size, mbufs in use ([`pool_report`]).
    pub mbufs: Option<serde_json::Value>,
    /// Where the flow tables were: hugepages at the peak, allocations the pool could not take
    /// (filled by the binary, which owns the allocator).
    pub tables: Option<serde_json::Value>,
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

/// The ports of the four roles, looked up by name or id.
struct PortIds {
    primary: dpdk::PortId,
    secondary: dpdk::PortId,
    output: dpdk::PortId,
    /// Proxy mode's client port, unless it is the output port (frames go back where the
    /// clients are).
    client: Option<dpdk::PortId>,
}

impl PortIds {
    /// Looks every role up and checks that no port serves two roles.
    fn resolve(eal: &Eal, cfg: &RunConfig) -> Result<PortIds, String> {
        let lookup = |name: &str, role: &str| {
            Port::lookup(eal, name).map_err(|e| format!("--{role}: {e}; the EAL knows {} port(s)", eal.port_count()))
        };
        let (primary, secondary) = (lookup(&cfg.primary, "primary")?, lookup(&cfg.secondary, "secondary")?);
        let output = lookup(&cfg.output, "output")?;
        let ids = PortIds {
            primary,
            secondary,
            output,
            client: match &cfg.client {
                Some(c) => Some(lookup(c, "client")?).filter(|c| *c != output),
                None => None,
            },
        };
        let mut roles = vec![("primary", ids.primary), ("secondary", ids.secondary), ("output", ids.output)];
        roles.extend(ids.client.map(|c| ("client", c)));
        for (i, (ra, a)) in roles.iter().enumerate() {
            for (rb, b) in &roles[i + 1..] {
                if a == b {
                    return Err(format!(
                        "--{ra} and --{rb} name the same port ({}); each role needs its own port",
                        a.0
                    ));
                }
            }
        }
        Ok(ids)
    }
}

/// The started ports.
struct Ports {
    primary: Port,
    secondary: Port,
    output: Port,
    client: Option<Port>,
}

impl Ports {
    /// Configures and starts every port as `plan` says.
    fn start(eal: &Eal, ids: &PortIds, plan: &Plan, pool: &Mempool) -> Result<Ports, String> {
        let input_cfg = PortConfig {
            rx_queues: if plan.hw_rss { plan.shards as u16 } else { 1 },
            tx_queues: 1,
            rx_desc: DESCRIPTORS,
            tx_desc: DESCRIPTORS,
            rss: plan.hw_rss.then(RssConfig::ip_only),
            ..Default::default()
        };
        let [primary, secondary] = Port::configure_pair(eal, [ids.primary, ids.secondary], &input_cfg, pool)
            .map_err(|e| format!("cannot start the guest ports: {e}"))?;
        let out_cfg = PortConfig {
            rx_queues: 1,
            tx_queues: if plan.per_shard_tx { plan.shards as u16 } else { 1 },
            rss: None,
            ..input_cfg
        };
        let output =
            Port::configure(eal, ids.output, &out_cfg, pool).map_err(|e| format!("cannot start --output: {e}"))?;
        let client = match ids.client {
            Some(id) => {
                Some(Port::configure(eal, id, &out_cfg, pool).map_err(|e| format!("cannot start --client: {e}"))?)
            }
            None => None,
        };
        Ok(Ports { primary, secondary, output, client })
    }

    /// Each port's device counters, by role.
    fn stats(&self) -> Vec<(String, String, dpdk::PortStats)> {
        let mut v = Vec::new();
        let roles = [("client", self.client.as_ref()), ("primary", Some(&self.primary))];
        let roles = roles.into_iter().chain([("secondary", Some(&self.secondary)), ("output", Some(&self.output))]);
        for (role, port) in roles {
            if let Some(stats) = port.and_then(|p| p.stats().ok()) {
                v.push((role.to_string(), port.map(Port::name).unwrap_or_default(), stats));
            }
        }
        v
    }
}

/// The shards' contexts and the other ends of their rings, before anything is launched.
struct Wiring {
    contexts: Vec<ShardContext>,
    /// Dispatch rings into the shards, per source (primary, secondary, client).
    to_shards: [Vec<rtrb::Producer<Dispatched>>; 3],
    /// TX rings out of the shards (no TX queue per shard).
    tx_rings: Vec<rtrb::Consumer<dpdk::Mbuf>>,
    /// Proxy mode: mirrored client frames toward the primary's and the secondary's port.
    mirror_rings: [Vec<rtrb::Consumer<dpdk::Mbuf>>; 2],
    mirror_stats: Vec<Arc<crate::shard_lcore::MirrorStats>>,
    links: ShardLinks,
}

/// The shards' configuration: the pool is their memory budget (held frames stay in their
/// mbufs; the RX gate pauses intake before it runs dry, so frames then wait in the device,
/// SPEC §6 "drop at RX", and a shard drops a primary frame only if the pool is exhausted).
fn shard_config(cfg: &RunConfig, plan: &Plan, proxy: bool) -> ShardConfig {
    ShardConfig {
        max_queue_size: cfg.max_queue_size,
        held_frames_budget: plan.mbufs as usize,
        held_bytes_budget: u64::from(plan.mbufs) * u64::from(MBUF_DATA_ROOM),
        mode: if proxy { Mode::Proxy } else { Mode::Compare },
        non_ip_policy: match cfg.non_ip_policy {
            NonIpPolicyArg::Passthrough => colo_core::NonIpPolicy::Passthrough,
            NonIpPolicyArg::Compare => colo_core::NonIpPolicy::Compare,
        },
        new_flows_per_sec: cfg.new_flows.0,
        new_flow_burst: cfg.new_flows.1,
        ..ShardConfig::default()
    }
    .with_compare_timeout(cfg.compare_timeout)
}

/// Proxy mode's mirror of one shard: client frames toward both guests, through rings the I/O
/// work drains into the guests' ports.
fn mirror(w: &mut Wiring) -> crate::shard_lcore::Mirror {
    let (pp, pc) = rtrb::RingBuffer::new(RING_SLOTS);
    let (sp, sc) = rtrb::RingBuffer::new(RING_SLOTS);
    w.mirror_rings[0].push(pc);
    w.mirror_rings[1].push(sc);
    let stats = Arc::new(crate::shard_lcore::MirrorStats::default());
    w.mirror_stats.push(stats.clone());
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
}

/// Builds every shard's context: its input (RSS queues or dispatch rings), its output (a TX
/// queue or a ring), proxy mode's mirror, and its links to the control loop.
fn wire_shards(
    cfg: &RunConfig,
    plan: &Plan,
    ports: &Ports,
    pool: &Mempool,
    shared: &Arc<Shared>,
    clock: TscClock,
) -> Result<Wiring, String> {
    let proxy = cfg.mode == crate::config::ModeArg::Proxy;
    let events = Arc::new(ArrayQueue::new(EVENT_QUEUE));
    let mut w = Wiring {
        contexts: Vec::new(),
        to_shards: [Vec::new(), Vec::new(), Vec::new()],
        tx_rings: Vec::new(),
        mirror_rings: [Vec::new(), Vec::new()],
        mirror_stats: Vec::new(),
        links: ShardLinks { commands: Vec::new(), published: Vec::new(), events: events.clone() },
    };
    let shard_cfg = shard_config(cfg, plan, proxy);
    let output_mtu = ports.output.mtu().map_err(|e| e.to_string())?;
    for id in 0..plan.shards {
        let input = if plan.shard_polls {
            ShardInput::Queues {
                primary: Some(ports.primary.rx_queue(id as u16).map_err(|e| e.to_string())?),
                secondary: Some(ports.secondary.rx_queue(id as u16).map_err(|e| e.to_string())?),
                burst: Box::new(RxBurst::new()),
                gate: RxGate::new(pool.clone(), crate::shard_lcore::POOL_RX_RESERVE_DIVISOR, shared.rx_stamp()),
            }
        } else {
            let mut ring = |source: usize| {
                let (p, c) = rtrb::RingBuffer::new(RING_SLOTS);
                w.to_shards[source].push(p);
                c
            };
            let (primary, secondary) = (ring(0), ring(1));
            let client = proxy.then(|| ring(2));
            ShardInput::Rings { primary, secondary, client }
        };
        let mirror = proxy.then(|| mirror(&mut w));
        let path = if plan.per_shard_tx {
            TxPath::Queue {
                queue: ports.output.tx_queue(id as u16).map_err(|e| e.to_string())?,
                batch: Box::new(TxBatch::new()),
            }
        } else {
            let (tp, tc) = rtrb::RingBuffer::new(RING_SLOTS);
            w.tx_rings.push(tc);
            TxPath::Ring(tp)
        };
        let commands = Arc::new(ArrayQueue::new(COMMAND_QUEUE));
        w.links.commands.push(commands.clone());
        let published = Arc::new(ArrayQueue::new(1));
        w.links.published.push(published.clone());
        w.contexts.push(ShardContext {
            id,
            shard: Shard::new(shard_cfg.clone()),
            input,
            out: Outlets {
                tx: Transmitter::new(path),
                egress: Egress::new(pool.clone(), output_mtu, MBUF_BUFFER, shared.clone()),
                events: events.clone(),
                unsent_events: Default::default(),
                frees: dpdk::FreeBatch::new(),
            },
            commands,
            clock,
            shared: shared.clone(),
            published,
            pool: pool.clone(),
            shards: plan.shards,
            mirror,
            backoff: crate::IdleBackoff::new(cfg.idle_sleep),
            load: shared.load_meter(format!("shard {id}")),
            staged: crate::shard_lcore::Staged::new(),
        });
    }
    Ok(w)
}

/// The I/O work's contexts as `plan` lays it out: software dispatch from the input ports into
/// the shards' rings, and draining the TX rings (released frames; proxy mode's mirrored
/// client frames toward each guest's port).
fn io_contexts(
    cfg: &RunConfig,
    plan: &Plan,
    ports: &Ports,
    pool: &Mempool,
    shared: &Arc<Shared>,
    w: &mut Wiring,
) -> Result<Vec<IoContext>, String> {
    let proxy = cfg.mode == crate::config::ModeArg::Proxy;
    let drain = |queue: dpdk::TxQueue, rings| TxDrain { queue, batch: TxBatch::new(), rings, next: 0 };
    let mut txs = Vec::new();
    if !plan.per_shard_tx {
        txs.push(drain(ports.output.tx_queue(0).map_err(|e| e.to_string())?, std::mem::take(&mut w.tx_rings)));
    }
    if proxy {
        let [to_primary, to_secondary] = std::mem::take(&mut w.mirror_rings);
        txs.push(drain(ports.primary.tx_queue(0).map_err(|e| e.to_string())?, to_primary));
        txs.push(drain(ports.secondary.tx_queue(0).map_err(|e| e.to_string())?, to_secondary));
    }
    let io_context = |inputs: Vec<(Source, dpdk::RxQueue)>, to_shards, txs| IoContext {
        inputs,
        to_shards,
        txs,
        shared: shared.clone(),
        shards: plan.shards,
        gate: RxGate::new(pool.clone(), crate::shard_lcore::POOL_RX_RESERVE_DIVISOR, shared.rx_stamp()),
        backoff: crate::IdleBackoff::new(cfg.idle_sleep),
        load: shared.load_meter("io".to_string()),
    };
    let rxq = |port: &Port| port.rx_queue(0).map_err(|e| e.to_string());
    let client_rx = match (proxy, &ports.client) {
        (false, _) => None,
        (true, Some(port)) => Some((Source::Client, rxq(port)?)),
        (true, None) => Some((Source::Client, rxq(&ports.output)?)),
    };
    let none = || [Vec::new(), Vec::new(), Vec::new()];
    let [to_primary, to_secondary, to_client] = std::mem::take(&mut w.to_shards);
    Ok(match plan.io {
        IoWork::None => Vec::new(),
        IoWork::DrainOnly => vec![io_context(Vec::new(), none(), txs)],
        IoWork::PerPort => {
            let mut inputs = vec![(Source::Secondary, rxq(&ports.secondary)?)];
            inputs.extend(client_rx);
            vec![
                io_context(vec![(Source::Primary, rxq(&ports.primary)?)], [to_primary, Vec::new(), Vec::new()], txs),
                io_context(inputs, [Vec::new(), to_secondary, to_client], Vec::new()),
            ]
        }
        IoWork::Shared => {
            let mut inputs = vec![(Source::Primary, rxq(&ports.primary)?), (Source::Secondary, rxq(&ports.secondary)?)];
            inputs.extend(client_rx);
            vec![io_context(inputs, [to_primary, to_secondary, to_client], txs)]
        }
    })
}

/// Proxy mode's mirroring counters, summed over the shards.
fn proxy_summary(stats: &[Arc<crate::shard_lcore::MirrorStats>]) -> serde_json::Value {
    let sum = |f: fn(&crate::shard_lcore::MirrorStats) -> &std::sync::atomic::AtomicU64| {
        stats.iter().map(|m| f(m).load(Ordering::Relaxed)).sum::<u64>()
    };
    serde_json::json!({
        "client_in": sum(|m| &m.client_in),
        "to_primary": sum(|m| &m.to_primary),
        "to_secondary": sum(|m| &m.to_secondary),
        "rewritten": sum(|m| &m.rewritten),
        "secondary_dropped": sum(|m| &m.secondary_dropped),
    })
}

/// An mbuf pool that hands out the mbuf freed last (DPDK's `stack` mempool driver), or the
/// EAL's default ring if that driver is missing. With thousands of frames held the number of
/// free mbufs swings by more than an lcore cache, so allocations often come from the pool
/// itself: a ring gives the mbuf freed longest ago, long out of the caches, where the stack
/// gives one freed moments before (see ARCHITECTURE).
fn lifo_pool(eal: &Eal, name: &str, count: u32, cache: u32, data_room: u16) -> dpdk::Result<Mempool> {
    Mempool::new_pktmbuf_in_order(eal, name, count, cache, data_room, PoolOrder::Lifo).or_else(|e| {
        tracing::warn!("cannot make {name} with the `stack` mempool driver ({e}): trying the EAL's default ring");
        Mempool::new_pktmbuf(eal, name, count, cache, data_room)
    })
}

/// The packet pool for the statistics: its driver (`stack` unless it had to fall back), its
/// size (`--mbufs`) and the mbufs taken from it (held frames, device rings, TX backlogs).
fn pool_report(pool: &Mempool) -> serde_json::Value {
    serde_json::json!({ "driver": pool.driver(), "size": pool.capacity(), "in_use": pool.in_use() })
}

/// Runs the dataplane until a signal or idleness stops it.
pub fn run(eal: &Eal, cfg: &RunConfig) -> Result<RunSummary, String> {
    let ids = PortIds::resolve(eal, cfg)?;
    let endpoints = ControlEndpoints::open(cfg)?;
    let proxy = cfg.mode == crate::config::ModeArg::Proxy;
    let info = |id, role: &str| Port::info(eal, id).map_err(|e| format!("--{role}: {e}"));
    let guests = [info(ids.primary, "primary")?, info(ids.secondary, "secondary")?];
    let out_info = info(ids.output, "output")?;
    let workers = dpdk::worker_lcores();
    let plan = Plan::decide(cfg.shards, proxy, [&guests[0], &guests[1]], &out_info, workers.len(), cfg.mbufs)?;
    // DPDK wants the per-lcore cache well below the pool size.
    let (mbufs, cache) = (plan.mbufs, (plan.mbufs / 16).min(256));
    let pool = lifo_pool(eal, "colo_pool", mbufs, cache, MBUF_DATA_ROOM).map_err(|e| {
        format!("cannot create a pool of {mbufs} mbufs ({e}): give EAL more memory (-m) or use --mbufs")
    })?;
    let ports = Ports::start(eal, &ids, &plan, &pool)?;
    let shared = Arc::new(Shared::default());
    let clock = TscClock::start();
    let mut wiring = wire_shards(cfg, &plan, &ports, &pool, &shared, clock)?;
    let ios = io_contexts(cfg, &plan, &ports, &pool, &shared, &mut wiring)?;
    shared.rx_running.store(ios.iter().filter(|io| !io.inputs.is_empty()).count(), Ordering::Release);
    tracing::info!(
        shards = cfg.shards,
        dispatch = plan.dispatch(),
        io_lcores = if plan.io_on_main { 0 } else { ios.len() },
        tx = if plan.per_shard_tx { "one queue per shard" } else { "ring to the I/O lcore" },
        mbufs,
        pool = pool.driver(),
        "colo-dataplane starting"
    );
    let mut io_handles = Vec::new();
    let mut local_io = None;
    let mut workers = workers.into_iter();
    for io in ios {
        // The plan gives every I/O context a worker of its own unless none is spare.
        if plan.io_on_main {
            local_io = Some(io);
            continue;
        }
        let lcore = workers.next().ok_or("no worker lcore left for the I/O work")?;
        io_handles.push(dpdk::launch(lcore, move || io.run()).map_err(|e| format!("cannot launch an I/O lcore: {e}"))?);
    }
    let mut shard_handles = Vec::new();
    let mut contexts = wiring.contexts.into_iter();
    let local_shard = if plan.shard_on_main { contexts.next() } else { None };
    for (ctx, lcore) in contexts.zip(workers) {
        shard_handles.push(dpdk::launch(lcore, move || ctx.run()).map_err(|e| format!("cannot launch a shard: {e}"))?);
    }
    let io_here = local_io.is_some();
    let mut control = ControlLoop::new(cfg, wiring.links, shared.clone(), clock, local_io, endpoints, pool.clone())?;
    control.local_shard = local_shard.map(|mut ctx| {
        // Where the I/O work shares this lcore, its back-off already waits here: the shard's
        // must not add to it. A shard that polls its ports itself keeps its own (and with it
        // `--idle-sleep-us`).
        if io_here {
            ctx.backoff = crate::IdleBackoff::new(None);
        }
        LocalShard { ctx, state: Default::default(), finished: false }
    });
    let mut summary = control.run(cfg, &LcoreWatch { io: &io_handles, shards: &shard_handles })?;
    for (what, handles) in [("an I/O", io_handles), ("a shard", shard_handles)] {
        for h in handles {
            h.join().map_err(|p| format!("{what} lcore panicked: {}", panic_text(&p)))?;
        }
    }
    summary.tx_abandoned_at_shutdown = shared.tx_abandoned_at_shutdown.load(Ordering::Relaxed);
    summary.egress = Some(shared.egress.report());
    summary.lcores = Some(shared.load_report());
    summary.mbufs = Some(pool_report(&pool));
    summary.proxy = proxy.then(|| proxy_summary(&wiring.mirror_stats));
    summary.ports = ports.stats();
    // Ports close when dropped here: net_pcap output files are complete after this.
    drop(ports);
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
    /// The shard, when it runs on the main lcore too (no worker lcore at all).
    local_shard: Option<LocalShard>,
    /// `flows` requests waiting for every shard's answer.
    pending_flows: Vec<PendingFlows>,
    /// The packet pool, for `stats`.
    pool: Mempool,
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

/// A shard on the main lcore (single-lcore mode): polled between the control rounds (and the
/// I/O work, where there is any: proxy mode; one shard in compare mode polls its ports itself).
struct LocalShard {
    ctx: ShardContext,
    state: crate::shard_lcore::RoundState,
    finished: bool,
}

impl LocalShard {
    /// One round; at the end, its shutdown, draining TX through the local I/O work if TX goes
    /// through it (otherwise the shard's own TX queue drains itself).
    fn round(&mut self, io: &mut Option<(IoContext, RxBurst)>) {
        if self.finished {
            // Its `Stopped` report may still wait for room in the event queue.
            return self.ctx.retry_events();
        }
        // One shard round per I/O poll: the I/O work pushes at most a burst per ring, the round
        // takes up to a burst per ring, so the I/O work never waits on a full ring here.
        self.state.start_round();
        if self.ctx.round(&mut self.state) {
            let mut pump = || {
                if let Some((io, _)) = io.as_mut() {
                    io.drain_tx();
                }
            };
            self.ctx.shut_down(&mut pump, false);
            self.finished = true;
        }
    }
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
        pool: Mempool,
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
            local_shard: None,
            pending_flows: Vec::new(),
            pool,
            next_request: 1,
            resync_on_completion: mode == CheckpointMode::Frame,
        })
    }

    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// Waits `d` between control rounds: sleeps, or runs the local I/O work (and the local
    /// shard) meanwhile.
    fn idle(&mut self, d: Duration) {
        if self.local_io.is_none() && self.local_shard.is_none() {
            return std::thread::sleep(d);
        }
        // The deadline in TSC ticks: each round reads the TSC anyway, where the system clock
        // was a call (vDSO) per round.
        let until = dpdk::tsc()
            .saturating_add(d.as_nanos().saturating_mul(u128::from(dpdk::tsc_hz())).div_ceil(1_000_000_000) as u64);
        while dpdk::tsc() < until {
            if let Some((io, burst)) = &mut self.local_io {
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
            if let Some(shard) = &mut self.local_shard {
                shard.round(&mut self.local_io);
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
                    v["egress"] = self.shared.egress.report();
                    v["mbufs"] = pool_report(&self.pool);
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
    let counters = Counters::to_json;
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
        "egress": s.egress,
        "proxy": s.proxy,
        "lcores": s.lcores,
        "mbufs": s.mbufs,
        "tables": s.tables,
        "ports": s.ports.iter().map(|(role, name, st)| serde_json::json!({
            "role": role, "name": name, "ipackets": st.ipackets, "opackets": st.opackets,
            "imissed": st.imissed, "ierrors": st.ierrors, "oerrors": st.oerrors, "rx_nombuf": st.rx_nombuf,
        })).collect::<Vec<_>>(),
    })
}
