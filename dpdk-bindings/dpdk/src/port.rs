//! Ethernet ports: configuration (queues, RSS), start/stop/close, statistics, and per-queue
//! handles for the packet path.
//!
//! A queue handle ([`RxQueue`], [`TxQueue`]) is claimed once and is `Send` but not `Sync`,
//! because DPDK's burst functions are not safe to call on one queue from two threads. The port
//! is stopped and closed when the [`Port`] and every queue handle are gone.

use std::cell::Cell;
use std::ffi::{CStr, CString};
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

use crate::burst::{RxBurst, TxBatch};
use crate::eal::Eal;
use crate::error::{Error, Result};
use crate::mempool::Mempool;
use crate::ring::Ring;

/// A DPDK port id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortId(pub u16);

impl std::fmt::Display for PortId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "port {}", self.0)
    }
}

/// A 40-byte Toeplitz key of repeated `0x6d 0x5a`: with it the hash of a flow and of its
/// reverse direction are equal, so both directions (and both guests' copies) land in one queue.
pub const SYMMETRIC_RSS_KEY: [u8; 40] = {
    let mut k = [0u8; 40];
    let mut i = 0;
    while i < 40 {
        k[i] = if i % 2 == 0 { 0x6d } else { 0x5a };
        i += 1;
    }
    k
};

/// Receive-side scaling with the symmetric key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RssConfig {
    /// `RTE_ETH_RSS_*` hash types wanted; the device's supported subset is used.
    pub hash_types: u64,
}

impl RssConfig {
    /// Hash on IP addresses only (keeps fragments with their flow).
    pub fn ip_only() -> Self {
        RssConfig { hash_types: dpdk_sys::RTE_ETH_RSS_IP }
    }
}

/// How to set up a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortConfig {
    /// Receive queues.
    pub rx_queues: u16,
    /// Transmit queues.
    pub tx_queues: u16,
    /// Descriptors per receive queue.
    pub rx_desc: u16,
    /// Descriptors per transmit queue.
    pub tx_desc: u16,
    /// RSS across the receive queues; `None` for a single queue or software dispatch.
    pub rss: Option<RssConfig>,
    /// Receive frames for every MAC address (a comparator port sees the guests' MACs).
    pub promiscuous: bool,
}

impl Default for PortConfig {
    fn default() -> Self {
        PortConfig { rx_queues: 1, tx_queues: 1, rx_desc: 1024, tx_desc: 1024, rss: None, promiscuous: true }
    }
}

/// What a device says about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortInfo {
    /// Driver name (`net_pcap`, `net_ring`, …).
    pub driver: String,
    /// Device name as given to EAL (`net_pcap0`, PCI address, …).
    pub name: String,
    /// Maximum receive queues.
    pub max_rx_queues: u16,
    /// Maximum transmit queues.
    pub max_tx_queues: u16,
    /// RSS hash types the device can compute (0: no RSS).
    pub rss_offloads: u64,
    /// Size of the RSS redirection table.
    pub reta_size: u16,
    /// RSS key length the device wants.
    pub hash_key_size: u8,
}

/// Basic counters of a port (`rte_eth_stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Frames received.
    pub ipackets: u64,
    /// Frames sent.
    pub opackets: u64,
    /// Bytes received.
    pub ibytes: u64,
    /// Bytes sent.
    pub obytes: u64,
    /// Frames the device dropped because RX queues were full.
    pub imissed: u64,
    /// Erroneous received frames.
    pub ierrors: u64,
    /// Failed transmissions.
    pub oerrors: u64,
    /// RX mbuf allocation failures.
    pub rx_nombuf: u64,
}

/// Link state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkStatus {
    /// Whether the link is up.
    pub up: bool,
    /// Speed in Mbps (0 when unknown).
    pub speed_mbps: u32,
    /// Full duplex.
    pub full_duplex: bool,
}

struct PortInner {
    id: PortId,
    rx_claimed: Mutex<Vec<bool>>,
    tx_claimed: Mutex<Vec<bool>>,
    started: Mutex<bool>,
    _rss_key: Box<[u8]>,
    // Keep the RX pool and the EAL alive while the device may still hand out their mbufs.
    _pool: Mempool,
    _eal: Eal,
}

impl Drop for PortInner {
    fn drop(&mut self) {
        // SAFETY: no queue handle exists any more (each holds this Arc), so no burst call can
        // race with stop/close; errors are ignored as there is nobody left to tell.
        unsafe {
            if *self.started.get_mut().unwrap_or_else(|e| e.into_inner()) {
                dpdk_sys::rte_eth_dev_stop(self.id.0);
            }
            dpdk_sys::rte_eth_dev_close(self.id.0);
        }
    }
}

/// A configured port. Control operations go through it; packets through its queue handles.
pub struct Port {
    inner: Arc<PortInner>,
}

fn check(op: &'static str, ret: i32) -> Result<()> {
    if ret < 0 {
        Err(Error::from_code(op, ret))
    } else {
        Ok(())
    }
}

fn c_name(op: &str, name: &str) -> Result<CString> {
    CString::new(name).map_err(|_| Error::Invalid(format!("{op}: name contains NUL: {name:?}")))
}

impl Port {
    /// Finds a port by DPDK device name (`net_pcap0`, `0000:3b:00.0`) or by numeric port id.
    pub fn lookup(eal: &Eal, name_or_id: &str) -> Result<PortId> {
        let _ = eal;
        let cname = c_name("port lookup", name_or_id)?;
        let mut id = 0u16;
        // SAFETY: cname is valid and id is a valid out-pointer for the call.
        let ret = unsafe { dpdk_sys::rte_eth_dev_get_port_by_name(cname.as_ptr(), &mut id) };
        if ret == 0 {
            return Ok(PortId(id));
        }
        if let Ok(n) = name_or_id.parse::<u16>() {
            // SAFETY: a plain validity query on the port table.
            if unsafe { dpdk_sys::rte_eth_dev_is_valid_port(n) } == 1 {
                return Ok(PortId(n));
            }
        }
        Err(Error::Invalid(format!(
            "unknown port {name_or_id:?} (give a DPDK device name like net_pcap0 or a port id)"
        )))
    }

    /// Creates a `net_ring` port whose receive queue *i* reads `rx[i]` and transmit queue *i*
    /// writes `tx[i]`. Rings given to a port live for the rest of the process.
    pub fn from_rings(eal: &Eal, name: &str, rx: &[Ring], tx: &[Ring]) -> Result<PortId> {
        let _ = eal;
        let cname = c_name("ring port", name)?;
        let n_rx = u32::try_from(rx.len()).map_err(|_| Error::Invalid("too many rings".into()))?;
        let n_tx = u32::try_from(tx.len()).map_err(|_| Error::Invalid("too many rings".into()))?;
        let mut rx: Vec<_> = rx.iter().map(Ring::keep_forever).collect();
        let mut tx: Vec<_> = tx.iter().map(Ring::keep_forever).collect();
        // SAFETY: the ring arrays are valid for the call and the rings are kept for the rest of
        // the process, so they outlive the port; numa node 0 exists on every machine.
        let ret =
            unsafe { dpdk_sys::rte_eth_from_rings(cname.as_ptr(), rx.as_mut_ptr(), n_rx, tx.as_mut_ptr(), n_tx, 0) };
        if ret < 0 {
            return Err(Error::from_errno("rte_eth_from_rings"));
        }
        Ok(PortId(ret as u16))
    }

    /// What the device reports about itself.
    pub fn info(eal: &Eal, id: PortId) -> Result<PortInfo> {
        let _ = eal;
        let mut raw = dpdk_sys::rte_eth_dev_info::default();
        // SAFETY: raw is a valid out-pointer; the call fills it.
        check("rte_eth_dev_info_get", unsafe { dpdk_sys::rte_eth_dev_info_get(id.0, &mut raw) })?;
        let driver = if raw.driver_name.is_null() {
            String::new()
        } else {
            // SAFETY: a non-null driver_name is a static NUL-terminated string of the driver.
            unsafe { CStr::from_ptr(raw.driver_name) }.to_string_lossy().into_owned()
        };
        Ok(PortInfo {
            driver,
            name: port_name(id)?,
            max_rx_queues: raw.max_rx_queues,
            max_tx_queues: raw.max_tx_queues,
            rss_offloads: raw.flow_type_rss_offloads,
            reta_size: raw.reta_size,
            hash_key_size: raw.hash_key_size,
        })
    }

    /// Configures and starts port `id`: queues, optional symmetric RSS and RETA, promiscuous
    /// mode. Receive queues take their mbufs from `pool`.
    pub fn configure(eal: &Eal, id: PortId, cfg: &PortConfig, pool: &Mempool) -> Result<Port> {
        let info = Port::info(eal, id)?;
        let rss_hf = match cfg.rss {
            Some(rss) => Some(Self::usable_rss(&info, rss)?),
            None => None,
        };
        Self::configure_with(eal, id, cfg, pool, &info, rss_hf)
    }

    /// Configures two ports identically (same queue count, symmetric key, hash types and
    /// redirection table), so that queue *i* of both carries the same flows (SPEC §8).
    pub fn configure_pair(eal: &Eal, ids: [PortId; 2], cfg: &PortConfig, pool: &Mempool) -> Result<[Port; 2]> {
        if ids[0] == ids[1] {
            return Err(Error::Invalid(format!("the same port ({}) was given twice", ids[0].0)));
        }
        let infos = [Port::info(eal, ids[0])?, Port::info(eal, ids[1])?];
        let rss_hf = match cfg.rss {
            Some(rss) => {
                let a = Self::usable_rss(&infos[0], rss)?;
                let b = Self::usable_rss(&infos[1], rss)?;
                if infos[0].reta_size != infos[1].reta_size {
                    // queue = RETA[hash % reta_size]: different sizes would send the two
                    // copies of a flow to different queues.
                    return Err(Error::Invalid(format!(
                        "{} and {} have different RSS redirection tables ({} vs {} entries): use software dispatch",
                        infos[0].name, infos[1].name, infos[0].reta_size, infos[1].reta_size
                    )));
                }
                let both = a & b;
                if both == 0 {
                    return Err(Error::Invalid(format!(
                        "{} and {} share no RSS hash type: use software dispatch",
                        infos[0].name, infos[1].name
                    )));
                }
                Some(both)
            }
            None => None,
        };
        let a = Self::configure_with(eal, ids[0], cfg, pool, &infos[0], rss_hf)?;
        let b = Self::configure_with(eal, ids[1], cfg, pool, &infos[1], rss_hf)?;
        Ok([a, b])
    }

    fn usable_rss(info: &PortInfo, rss: RssConfig) -> Result<u64> {
        let hf = rss.hash_types & info.rss_offloads;
        if hf == 0 {
            return Err(Error::Invalid(format!(
                "{} ({}) has no RSS for the requested hash types: use software dispatch",
                info.name, info.driver
            )));
        }
        Ok(hf)
    }

    fn configure_with(
        eal: &Eal,
        id: PortId,
        cfg: &PortConfig,
        pool: &Mempool,
        info: &PortInfo,
        rss_hf: Option<u64>,
    ) -> Result<Port> {
        if cfg.rx_queues == 0 || cfg.tx_queues == 0 {
            return Err(Error::Invalid("a port needs at least one RX and one TX queue".into()));
        }
        if cfg.rx_queues > info.max_rx_queues || cfg.tx_queues > info.max_tx_queues {
            return Err(Error::Invalid(format!(
                "{} supports {} RX / {} TX queues, {} / {} requested",
                info.name, info.max_rx_queues, info.max_tx_queues, cfg.rx_queues, cfg.tx_queues
            )));
        }
        // ethdev keeps the key pointer in its copy of the configuration and some PMDs read it
        // again at start: the key lives as long as the port (`PortInner::_rss_key`).
        let key_len = if info.hash_key_size == 0 { 40 } else { usize::from(info.hash_key_size) };
        let mut key: Box<[u8]> = (0..key_len).map(|i| SYMMETRIC_RSS_KEY[i % 2]).collect();
        let mut conf = dpdk_sys::rte_eth_conf::default();
        if let Some(hf) = rss_hf {
            conf.rxmode.mq_mode = dpdk_sys::RTE_ETH_MQ_RX_RSS;
            conf.rx_adv_conf.rss_conf.rss_key = key.as_mut_ptr();
            conf.rx_adv_conf.rss_conf.rss_key_len = key_len as u8;
            conf.rx_adv_conf.rss_conf.rss_hf = hf;
        }
        // SAFETY: conf is a fully initialised rte_eth_conf; the key is kept with the port.
        check("rte_eth_dev_configure", unsafe {
            dpdk_sys::rte_eth_dev_configure(id.0, cfg.rx_queues, cfg.tx_queues, &conf)
        })?;
        let (mut nb_rx, mut nb_tx) = (cfg.rx_desc, cfg.tx_desc);
        // SAFETY: valid out-pointers for the descriptor counts.
        check("rte_eth_dev_adjust_nb_rx_tx_desc", unsafe {
            dpdk_sys::rte_eth_dev_adjust_nb_rx_tx_desc(id.0, &mut nb_rx, &mut nb_tx)
        })?;
        // SAFETY: plain query of a valid port.
        let socket = unsafe { dpdk_sys::rte_eth_dev_socket_id(id.0) };
        let socket = if socket < 0 { dpdk_sys::SOCKET_ID_ANY as u32 } else { socket as u32 };
        for q in 0..cfg.rx_queues {
            // SAFETY: NULL rx_conf selects the driver defaults; pool is alive and the port
            // keeps a handle on it for as long as the device may use it.
            check("rte_eth_rx_queue_setup", unsafe {
                dpdk_sys::rte_eth_rx_queue_setup(id.0, q, nb_rx, socket, std::ptr::null(), pool.as_ptr())
            })?;
        }
        for q in 0..cfg.tx_queues {
            // SAFETY: NULL tx_conf selects the driver defaults.
            check("rte_eth_tx_queue_setup", unsafe {
                dpdk_sys::rte_eth_tx_queue_setup(id.0, q, nb_tx, socket, std::ptr::null())
            })?;
        }
        if rss_hf.is_some() && info.reta_size > 0 {
            Self::program_reta(id, info.reta_size, cfg.rx_queues)?;
        }
        if cfg.promiscuous {
            // SAFETY: plain control call on a configured port. Virtual devices may not support
            // it, which is harmless, so the result is ignored.
            unsafe { dpdk_sys::rte_eth_promiscuous_enable(id.0) };
        }
        // SAFETY: the port is configured with all its queues set up.
        check("rte_eth_dev_start", unsafe { dpdk_sys::rte_eth_dev_start(id.0) })?;
        Ok(Port {
            inner: Arc::new(PortInner {
                id,
                rx_claimed: Mutex::new(vec![false; usize::from(cfg.rx_queues)]),
                tx_claimed: Mutex::new(vec![false; usize::from(cfg.tx_queues)]),
                started: Mutex::new(true),
                _rss_key: key,
                _pool: pool.clone(),
                _eal: eal.clone(),
            }),
        })
    }

    /// Round-robin redirection table, the same for every port so queue *i* means the same
    /// flows everywhere.
    fn program_reta(id: PortId, reta_size: u16, queues: u16) -> Result<()> {
        let groups = usize::from(reta_size).div_ceil(64);
        let mut reta = vec![dpdk_sys::rte_eth_rss_reta_entry64::default(); groups];
        for i in 0..usize::from(reta_size) {
            let g = &mut reta[i / 64];
            g.mask |= 1u64 << (i % 64);
            g.reta[i % 64] = (i % usize::from(queues)) as u16;
        }
        // SAFETY: reta holds reta_size entries in 64-entry groups, as the call expects.
        check("rte_eth_dev_rss_reta_update", unsafe {
            dpdk_sys::rte_eth_dev_rss_reta_update(id.0, reta.as_mut_ptr(), reta_size)
        })
    }

    /// The port id.
    pub fn id(&self) -> PortId {
        self.inner.id
    }

    /// Claims receive queue `queue` (once; again after the previous handle dropped).
    pub fn rx_queue(&self, queue: u16) -> Result<RxQueue> {
        claim(&self.inner.rx_claimed, queue, "RX")?;
        Ok(RxQueue { port: self.inner.clone(), queue, _not_sync: PhantomData })
    }

    /// Claims transmit queue `queue`.
    pub fn tx_queue(&self, queue: u16) -> Result<TxQueue> {
        claim(&self.inner.tx_claimed, queue, "TX")?;
        Ok(TxQueue { port: self.inner.clone(), queue, _not_sync: PhantomData })
    }

    /// Device counters.
    pub fn stats(&self) -> Result<PortStats> {
        let mut s = dpdk_sys::rte_eth_stats::default();
        // SAFETY: s is a valid out-pointer; reading stats concurrently with bursts is allowed.
        check("rte_eth_stats_get", unsafe { dpdk_sys::rte_eth_stats_get(self.inner.id.0, &mut s) })?;
        Ok(PortStats {
            ipackets: s.ipackets,
            opackets: s.opackets,
            ibytes: s.ibytes,
            obytes: s.obytes,
            imissed: s.imissed,
            ierrors: s.ierrors,
            oerrors: s.oerrors,
            rx_nombuf: s.rx_nombuf,
        })
    }

    /// Link state without waiting.
    pub fn link(&self) -> Result<LinkStatus> {
        let mut l = dpdk_sys::rte_eth_link::default();
        // SAFETY: l is a valid out-pointer.
        check("rte_eth_link_get_nowait", unsafe { dpdk_sys::rte_eth_link_get_nowait(self.inner.id.0, &mut l) })?;
        Ok(LinkStatus { up: l.link_status() != 0, speed_mbps: l.link_speed, full_duplex: l.link_duplex() != 0 })
    }

    /// The device's MTU: the largest IP packet it sends (a frame is that plus its Ethernet
    /// header).
    pub fn mtu(&self) -> Result<u16> {
        let mut mtu = 0u16;
        // SAFETY: mtu is a valid out-pointer for the call.
        check("rte_eth_dev_get_mtu", unsafe { dpdk_sys::rte_eth_dev_get_mtu(self.inner.id.0, &mut mtu) })?;
        Ok(mtu)
    }

    /// Device name.
    pub fn name(&self) -> String {
        port_name(self.inner.id).unwrap_or_else(|_| self.inner.id.to_string())
    }

    /// Stops the device (it can be dropped afterwards to close it). Refused while queue handles
    /// are alive, since a burst call racing with stop is undefined in DPDK.
    pub fn stop(&mut self) -> Result<()> {
        if Arc::strong_count(&self.inner) > 1 {
            return Err(Error::Invalid("cannot stop a port while its queues are in use".into()));
        }
        let mut started = self.inner.started.lock().unwrap_or_else(|e| e.into_inner());
        if *started {
            // SAFETY: no queue handle exists, so nothing polls the port.
            check("rte_eth_dev_stop", unsafe { dpdk_sys::rte_eth_dev_stop(self.inner.id.0) })?;
            *started = false;
        }
        Ok(())
    }
}

impl std::fmt::Debug for Port {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Port").field("id", &self.inner.id.0).field("name", &self.name()).finish()
    }
}

fn port_name(id: PortId) -> Result<String> {
    let mut buf = [0 as std::os::raw::c_char; 64];
    // SAFETY: buf is large enough (RTE_ETH_NAME_MAX_LEN is 64) and NUL-terminated by the call.
    check("rte_eth_dev_get_name_by_port", unsafe { dpdk_sys::rte_eth_dev_get_name_by_port(id.0, buf.as_mut_ptr()) })?;
    // SAFETY: the call wrote a NUL-terminated string into buf.
    Ok(unsafe { CStr::from_ptr(buf.as_ptr()) }.to_string_lossy().into_owned())
}

fn claim(table: &Mutex<Vec<bool>>, queue: u16, what: &str) -> Result<()> {
    let mut t = table.lock().unwrap_or_else(|e| e.into_inner());
    match t.get_mut(usize::from(queue)) {
        None => Err(Error::Invalid(format!("{what} queue {queue} does not exist"))),
        Some(true) => Err(Error::Invalid(format!("{what} queue {queue} is already in use"))),
        Some(slot) => {
            *slot = true;
            Ok(())
        }
    }
}

fn release(table: &Mutex<Vec<bool>>, queue: u16) {
    let mut t = table.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(slot) = t.get_mut(usize::from(queue)) {
        *slot = false;
    }
}

/// Exclusive handle on one receive queue.
pub struct RxQueue {
    port: Arc<PortInner>,
    queue: u16,
    _not_sync: PhantomData<Cell<()>>,
}

// SAFETY: a queue may be polled from any one thread at a time; the handle is unique (claimed)
// and not Sync, so it is never polled from two threads at once.
unsafe impl Send for RxQueue {}

impl RxQueue {
    /// Receives up to `BURST_SIZE` frames into `burst` (freeing what it still held first).
    pub fn rx_burst(&mut self, burst: &mut RxBurst) -> usize {
        let (port, queue) = (self.port.id.0, self.queue);
        burst.refill(|pkts, n| {
            // SAFETY: pkts has room for n pointers; this thread exclusively polls the queue.
            unsafe { dpdk_sys::rte_eth_rx_burst(port, queue, pkts, n) }
        })
    }

    /// The port this queue belongs to.
    pub fn port_id(&self) -> PortId {
        self.port.id
    }
}

impl Drop for RxQueue {
    fn drop(&mut self) {
        release(&self.port.rx_claimed, self.queue);
    }
}

/// Exclusive handle on one transmit queue.
pub struct TxQueue {
    port: Arc<PortInner>,
    queue: u16,
    _not_sync: PhantomData<Cell<()>>,
}

// SAFETY: as for RxQueue.
unsafe impl Send for TxQueue {}

impl TxQueue {
    /// Transmits from the front of `batch`; what the device accepted leaves the batch, the rest
    /// stays in order for a retry. Returns how many were sent.
    pub fn tx_burst(&mut self, batch: &mut TxBatch) -> usize {
        let (port, queue) = (self.port.id.0, self.queue);
        batch.transmit(|pkts, n| {
            // SAFETY: pkts holds n owned mbufs; the driver takes ownership of those it reports
            // sent; this thread exclusively uses the queue.
            unsafe { dpdk_sys::rte_eth_tx_burst(port, queue, pkts, n) }
        })
    }

    /// The port this queue belongs to.
    pub fn port_id(&self) -> PortId {
        self.port.id
    }
}

impl Drop for TxQueue {
    fn drop(&mut self) {
        release(&self.port.tx_claimed, self.queue);
    }
}
