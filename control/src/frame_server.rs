//! The frame socket (SPEC §7): we listen on `unix:PATH` (mode 0600 by default) or
//! `tcp:HOST:PORT`; one frame is served at a time and a reconnecting frame is accepted. A
//! live frame that has spoken (`COLO_USERSPACE_PROXY_INIT` or `COLO_CHECKPOINT`) is never
//! replaced by another connection — its `COLO_CHECKPOINT` releases held output, so a second
//! peer must not take it over — and peers can be restricted to a uid (Unix, `SO_PEERCRED`)
//! or an address (TCP).
//!
//! Non-blocking and polled by the control thread; it turns bytes into [`ServerEvent`]s and
//! never decides anything itself (the coordinator does). Oversized messages close the
//! connection cleanly; the listener keeps running.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::codec::{encode, Decoder, FrameMessage};

/// Where the frame socket listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A Unix stream socket at this path.
    Unix(PathBuf),
    /// A TCP listener (configure loopback unless the frame is remote).
    Tcp(SocketAddr),
}

impl FromStr for Endpoint {
    type Err = String;

    /// `unix:PATH`, `tcp:HOST:PORT`, `tcp:PORT` (loopback), or a bare path (Unix).
    fn from_str(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err("unix: needs a path, e.g. unix:/run/colo/frame.sock".into());
            }
            return Ok(Endpoint::Unix(path.into()));
        }
        if let Some(port) = s.strip_prefix("tcp:").and_then(|p| p.parse::<u16>().ok()) {
            // `tcp:PORT` listens on loopback only (SPEC §11: TCP only where configured).
            return Ok(Endpoint::Tcp(SocketAddr::from(([127, 0, 0, 1], port))));
        }
        if let Some(addr) = s.strip_prefix("tcp:") {
            let mut addrs = std::net::ToSocketAddrs::to_socket_addrs(addr)
                .map_err(|e| format!("bad tcp endpoint {addr:?} ({e}); use tcp:127.0.0.1:PORT"))?;
            return addrs.next().map(Endpoint::Tcp).ok_or_else(|| format!("tcp endpoint {addr:?} resolves to nothing"));
        }
        if s.is_empty() {
            return Err("empty endpoint; use unix:PATH or tcp:HOST:PORT".into());
        }
        Ok(Endpoint::Unix(s.into()))
    }
}

/// Permissions of a Unix socket (SPEC §11).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketPermissions {
    /// File mode (default 0o600).
    pub mode: u32,
    /// Owner uid to set, if any.
    pub owner: Option<u32>,
    /// Group gid to set, if any.
    pub group: Option<u32>,
}

impl Default for SocketPermissions {
    fn default() -> Self {
        SocketPermissions { mode: 0o600, owner: None, group: None }
    }
}

/// Who may be the frame (SPEC §11); `None` fields allow anyone the socket lets in (a Unix
/// socket's mode already limits who can connect).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PeerFilter {
    /// Unix sockets: the peer process's uid (`SO_PEERCRED`).
    pub uid: Option<u32>,
    /// TCP: the peer's address.
    pub addr: Option<IpAddr>,
}

/// What happened on the frame socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent {
    /// A frame connected.
    Connected,
    /// The frame went away or was disconnected; `reason` says why.
    Disconnected {
        /// Why the connection ended.
        reason: String,
    },
    /// A decoded message.
    Message(FrameMessage),
}

enum Listener {
    Unix(UnixListener, PathBuf),
    Tcp(TcpListener),
}

enum Conn {
    Unix(UnixStream),
    Tcp(TcpStream),
}

impl Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => s.read(buf),
            Conn::Tcp(s) => s.read(buf),
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Unix(s) => s.write(buf),
            Conn::Tcp(s) => s.write(buf),
        }
    }
}

/// The listening frame socket and its current connection.
pub struct FrameServer {
    listener: Listener,
    /// Held while a Unix socket path is ours (a second instance is refused).
    _lock: Option<SocketLock>,
    conn: Option<Conn>,
    /// The current connection has sent a frame message: it is the frame.
    spoken: bool,
    decoder: Decoder,
    outbox: Vec<u8>,
    filter: PeerFilter,
    /// Connections refused (peer not allowed, or a live frame already connected).
    refused: u64,
    last_accept_warning: Option<std::time::Instant>,
    last_refusal_warning: Option<std::time::Instant>,
}

/// Whether a rate-limited warning may be logged now (once a second), updating `last`.
fn warn_now(last: &mut Option<std::time::Instant>) -> bool {
    let now = std::time::Instant::now();
    if last.is_none_or(|t| now.duration_since(t) >= std::time::Duration::from_secs(1)) {
        *last = Some(now);
        return true;
    }
    false
}

/// Largest amount of unsent output kept for a slow frame before it is disconnected.
const MAX_OUTBOX: usize = 64 * 1024;

/// Binds a Unix socket with `perms` applied before it becomes visible at `path`: it is bound
/// inside a private (0700) directory next to `path`, given its mode and owner there — where
/// nobody else can reach it — then renamed into place. A regular file at `path` is refused; a
/// stale socket is replaced.
pub(crate) fn bind_unix(path: &Path, perms: SocketPermissions) -> io::Result<(UnixListener, SocketLock)> {
    use std::os::unix::fs::DirBuilderExt;
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    // Who owns a socket path is told by a lock next to it, held for the process's life: a
    // second instance started with the same paths is refused without touching the first.
    let lock = SocketLock::take(path)?;
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        use std::os::unix::fs::FileTypeExt;
        if !meta.file_type().is_socket() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} exists and is not a socket; refusing to replace it", path.display()),
            ));
        }
        // A socket someone still answers on belongs to a running process (a second instance
        // started with the same paths): never take it over. One nobody answers is stale.
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{} is in use by a running process (another colo-dataplane?)", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let private = parent.join(format!(".colo-sock-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed)));
    std::fs::DirBuilder::new().mode(0o700).create(&private)?;
    let tmp = private.join("socket");
    let result = (|| {
        let listener = UnixListener::bind(&tmp)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(perms.mode))?;
        if perms.owner.is_some() || perms.group.is_some() {
            std::os::unix::fs::lchown(&tmp, perms.owner, perms.group)?;
        }
        std::fs::rename(&tmp, path)?;
        Ok(listener)
    })();
    let _ = std::fs::remove_file(&tmp);
    let _ = std::fs::remove_dir(&private);
    result.map(|l| (l, lock))
}

/// An exclusive `flock` on `PATH.lock`, held while a Unix socket at PATH is ours.
#[derive(Debug)]
pub(crate) struct SocketLock {
    _file: std::fs::File,
    path: PathBuf,
}

impl Drop for SocketLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl SocketLock {
    fn take(socket: &Path) -> io::Result<SocketLock> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut name = socket.as_os_str().to_owned();
        name.push(".lock");
        let file = std::fs::OpenOptions::new().write(true).create(true).truncate(false).mode(0o600).open(&name)?;
        match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => Ok(SocketLock { _file: file, path: PathBuf::from(name) }),
            Err(e) if e == rustix::io::Errno::WOULDBLOCK => Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{} is in use by a running process (another colo-dataplane?)", socket.display()),
            )),
            Err(e) => Err(e.into()),
        }
    }
}

impl FrameServer {
    /// Starts listening.
    pub fn bind(endpoint: &Endpoint, perms: SocketPermissions) -> io::Result<FrameServer> {
        let mut unix_lock = None;
        let listener = match endpoint {
            Endpoint::Unix(path) => {
                let (l, lock) = bind_unix(path, perms)?;
                l.set_nonblocking(true)?;
                unix_lock = Some(lock);
                Listener::Unix(l, path.clone())
            }
            Endpoint::Tcp(addr) => {
                let l = TcpListener::bind(addr)?;
                l.set_nonblocking(true)?;
                Listener::Tcp(l)
            }
        };
        Ok(FrameServer {
            listener,
            _lock: unix_lock,
            conn: None,
            spoken: false,
            decoder: Decoder::new(),
            outbox: Vec::new(),
            filter: PeerFilter::default(),
            refused: 0,
            last_accept_warning: None,
            last_refusal_warning: None,
        })
    }

    /// Admits only peers `filter` allows from now on.
    pub fn restrict(&mut self, filter: PeerFilter) {
        self.filter = filter;
    }

    /// Connections refused so far (peer not allowed, or a live frame already connected).
    pub fn refused(&self) -> u64 {
        self.refused
    }

    /// Why `conn` may not be the frame, if it may not.
    fn admit(&self, conn: &Conn) -> Option<String> {
        match conn {
            Conn::Unix(s) => {
                let want = self.filter.uid?;
                match rustix::net::sockopt::socket_peercred(s) {
                    Ok(cred) if cred.uid.as_raw() == want => None,
                    Ok(cred) => Some(format!("peer uid {} is not the allowed uid {want}", cred.uid.as_raw())),
                    Err(e) => Some(format!("peer credentials unavailable ({e})")),
                }
            }
            Conn::Tcp(s) => {
                let want = self.filter.addr?;
                match s.peer_addr() {
                    Ok(a) if a.ip() == want => None,
                    Ok(a) => Some(format!("peer {} is not the allowed address {want}", a.ip())),
                    Err(e) => Some(format!("peer address unavailable ({e})")),
                }
            }
        }
    }

    /// The bound TCP address (useful with port 0), if TCP.
    pub fn local_tcp_addr(&self) -> Option<SocketAddr> {
        match &self.listener {
            Listener::Tcp(l) => l.local_addr().ok(),
            Listener::Unix(..) => None,
        }
    }

    /// Whether a frame is connected.
    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    /// Queues `msg` for the frame (dropped with a warning when none is connected; the
    /// coordinator resends what matters on reconnect).
    pub fn send(&mut self, msg: &str) {
        if self.conn.is_none() {
            tracing::warn!(message = msg, "no COLO frame connected; message not sent");
            return;
        }
        encode(msg, &mut self.outbox);
    }

    fn disconnect(&mut self, reason: String, events: &mut Vec<ServerEvent>) {
        self.spoken = false;
        if self.conn.take().is_some() {
            // Logged once, with the reason, by whoever handles the event (rate-limited there).
            let reason = match self.decoder.pending() {
                0 => reason,
                n => format!("{reason}; it left a truncated message ({n} bytes)"),
            };
            self.decoder = Decoder::new();
            self.outbox.clear();
            events.push(ServerEvent::Disconnected { reason });
        }
    }

    fn accept(&mut self) -> io::Result<Option<Conn>> {
        let conn = match &self.listener {
            Listener::Unix(l, _) => match l.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(true)?;
                    Conn::Unix(s)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(e),
            },
            Listener::Tcp(l) => match l.accept() {
                Ok((s, _)) => {
                    s.set_nonblocking(true)?;
                    s.set_nodelay(true)?;
                    // A frame whose host died sends no FIN: keepalives and a user timeout find
                    // it within seconds, so the link it holds (never taken over while it has
                    // spoken) is freed for the restarted frame.
                    use rustix::net::sockopt;
                    sockopt::set_socket_keepalive(&s, true)?;
                    sockopt::set_tcp_keepidle(&s, std::time::Duration::from_secs(5))?;
                    sockopt::set_tcp_keepintvl(&s, std::time::Duration::from_secs(1))?;
                    sockopt::set_tcp_keepcnt(&s, 3)?;
                    sockopt::set_tcp_user_timeout(&s, 10_000)?;
                    Conn::Tcp(s)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) => return Err(e),
            },
        };
        Ok(Some(conn))
    }

    /// Accepts, reads, decodes and writes what is ready, without blocking; appends what
    /// happened to `events`.
    pub fn poll(&mut self, events: &mut Vec<ServerEvent>) {
        // What the current connection already sent counts (a COLO_CHECKPOINT must not be lost
        // to a reconnect), so it is read first.
        self.read_ready(events);
        // A new connection replaces one that has not spoken yet (a frame that restarted may
        // reconnect before its old, silent connection is seen closed); a frame that has
        // spoken keeps the link until it closes it. Refused connections are closed at once.
        match self.accept() {
            Ok(Some(conn)) => {
                let refusal = self.admit(&conn).or_else(|| {
                    (self.conn.is_some() && self.spoken)
                        .then(|| "a COLO frame is connected and has not closed its connection".to_string())
                });
                if let Some(why) = refusal {
                    self.refused += 1;
                    if warn_now(&mut self.last_refusal_warning) {
                        tracing::warn!(why, refused = self.refused, "frame connection refused");
                    }
                    drop(conn);
                } else {
                    self.disconnect("replaced by a new frame connection".into(), events);
                    self.conn = Some(conn);
                    events.push(ServerEvent::Connected);
                    self.read_ready(events);
                }
            }
            Ok(None) => {}
            Err(e) => {
                // A persistent failure (EMFILE) would repeat every poll: once a second is enough.
                if warn_now(&mut self.last_accept_warning) {
                    tracing::warn!(error = %e, "accept on the frame socket failed");
                }
            }
        }
        self.write_ready(events);
    }

    fn read_ready(&mut self, events: &mut Vec<ServerEvent>) {
        let mut buf = [0u8; 1024];
        loop {
            let Some(conn) = self.conn.as_mut() else { return };
            match conn.read(&mut buf) {
                Ok(0) => return self.disconnect("frame closed the connection".into(), events),
                Ok(n) => {
                    self.decoder.push(&buf[..n]);
                    loop {
                        match self.decoder.next_message() {
                            Ok(Some(m)) => {
                                if matches!(m, FrameMessage::ProxyInit | FrameMessage::CheckpointDone) {
                                    self.spoken = true;
                                }
                                events.push(ServerEvent::Message(m));
                            }
                            Ok(None) => break,
                            Err(e) => return self.disconnect(format!("bad input from the COLO frame: {e}"), events),
                        }
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.disconnect(format!("read error: {e}"), events),
            }
        }
    }

    fn write_ready(&mut self, events: &mut Vec<ServerEvent>) {
        while !self.outbox.is_empty() {
            let Some(conn) = self.conn.as_mut() else {
                self.outbox.clear();
                return;
            };
            match conn.write(&self.outbox) {
                Ok(0) => return self.disconnect("frame stopped reading".into(), events),
                Ok(n) => {
                    self.outbox.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return self.disconnect(format!("write error: {e}"), events),
            }
        }
        if self.outbox.len() > MAX_OUTBOX {
            self.disconnect("frame is not reading its messages".into(), events);
        }
    }
}

impl Drop for FrameServer {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = &self.listener {
            let _ = std::fs::remove_file(path);
        }
    }
}
