//! The frame socket over real Unix and TCP sockets, with a test frame client speaking the
//! wire format by hand (SPEC §7).

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use colo_control::codec::FrameMessage;
use colo_control::frame_server::{Endpoint, FrameServer, ServerEvent, SocketPermissions};

fn sock_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("colo-ctl-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir.join("frame.sock")
}

/// Polls at least once, until `want` events arrived or two seconds passed.
fn poll_events(server: &mut FrameServer, want: usize) -> Vec<ServerEvent> {
    let mut events = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        server.poll(&mut events);
        if events.len() >= want || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    events
}

fn msg(text: &str) -> Vec<u8> {
    let mut v = (text.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(text.as_bytes());
    v
}

fn read_msg(s: &mut UnixStream) -> String {
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut len = [0u8; 4];
    s.read_exact(&mut len).unwrap();
    let mut body = vec![0u8; u32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).unwrap();
    String::from_utf8(body).unwrap()
}

#[test]
fn unix_socket_is_private_and_speaks_the_protocol() {
    let path = sock_path("proto");
    let mut server = FrameServer::bind(&Endpoint::Unix(path.clone()), SocketPermissions::default()).unwrap();
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    let mut frame = UnixStream::connect(&path).unwrap();
    frame.write_all(&msg("COLO_USERSPACE_PROXY_INIT")).unwrap();
    let events = poll_events(&mut server, 2);
    assert_eq!(events, vec![ServerEvent::Connected, ServerEvent::Message(FrameMessage::ProxyInit)]);

    server.send("COLO_COMPARE_GET_XEN_INIT");
    server.send("DO_CHECKPOINT");
    poll_events(&mut server, 0);
    assert_eq!(read_msg(&mut frame), "COLO_COMPARE_GET_XEN_INIT");
    assert_eq!(read_msg(&mut frame), "DO_CHECKPOINT");

    frame.write_all(&msg("COLO_CHECKPOINT")).unwrap();
    assert_eq!(poll_events(&mut server, 1), vec![ServerEvent::Message(FrameMessage::CheckpointDone)]);
}

#[test]
fn a_four_gib_length_closes_the_connection_and_the_server_accepts_the_next_frame() {
    let path = sock_path("oversize");
    let mut server = FrameServer::bind(&Endpoint::Unix(path.clone()), SocketPermissions::default()).unwrap();
    let mut bad = UnixStream::connect(&path).unwrap();
    bad.write_all(&[0xff, 0xff, 0xff, 0xff, b'x', b'y']).unwrap();
    let events = poll_events(&mut server, 2);
    assert_eq!(events[0], ServerEvent::Connected);
    assert!(matches!(&events[1], ServerEvent::Disconnected { reason } if reason.contains("limit")), "{events:?}");
    // The closed connection reads EOF.
    bad.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut b = [0u8; 1];
    assert_eq!(bad.read(&mut b).unwrap_or(0), 0);

    let mut good = UnixStream::connect(&path).unwrap();
    good.write_all(&msg("COLO_CHECKPOINT")).unwrap();
    let events = poll_events(&mut server, 2);
    assert_eq!(events, vec![ServerEvent::Connected, ServerEvent::Message(FrameMessage::CheckpointDone)]);
}

#[test]
fn a_half_message_then_disconnect_and_a_reconnect_lose_nothing_after() {
    let path = sock_path("half");
    let mut server = FrameServer::bind(&Endpoint::Unix(path.clone()), SocketPermissions::default()).unwrap();
    {
        let mut frame = UnixStream::connect(&path).unwrap();
        frame.write_all(&msg("COLO_CHECKPOINT")[..6]).unwrap();
        assert_eq!(poll_events(&mut server, 1), vec![ServerEvent::Connected]);
    }
    let events = poll_events(&mut server, 1);
    assert!(matches!(&events[0], ServerEvent::Disconnected { .. }), "{events:?}");
    assert!(!server.is_connected());

    let mut frame = UnixStream::connect(&path).unwrap();
    frame.write_all(&msg("COLO_CHECKPOINT")).unwrap();
    frame.write_all(&msg("GARBAGE\x01\x02")).unwrap();
    let events = poll_events(&mut server, 3);
    assert_eq!(events[..2], [ServerEvent::Connected, ServerEvent::Message(FrameMessage::CheckpointDone)]);
    assert!(matches!(&events[2], ServerEvent::Message(FrameMessage::Unknown(_))));
    assert!(server.is_connected(), "unknown messages do not disconnect");
}

#[test]
fn tcp_endpoint_works_on_loopback() {
    let ep: Endpoint = "tcp:127.0.0.1:0".parse().unwrap();
    let mut server = FrameServer::bind(&ep, SocketPermissions::default()).unwrap();
    let addr = server.local_tcp_addr().unwrap();
    let mut frame = std::net::TcpStream::connect(addr).unwrap();
    frame.write_all(&msg("COLO_USERSPACE_PROXY_INIT")).unwrap();
    assert_eq!(
        poll_events(&mut server, 2),
        vec![ServerEvent::Connected, ServerEvent::Message(FrameMessage::ProxyInit)]
    );
}

#[test]
fn endpoint_parsing_gives_clear_errors() {
    assert_eq!("unix:/run/x.sock".parse::<Endpoint>().unwrap(), Endpoint::Unix("/run/x.sock".into()));
    assert!("unix:".parse::<Endpoint>().unwrap_err().contains("needs a path"));
    assert!("tcp:nonsense".parse::<Endpoint>().unwrap_err().contains("tcp:127.0.0.1:PORT"));
    assert_eq!("tcp:9000".parse::<Endpoint>().unwrap(), Endpoint::Tcp("127.0.0.1:9000".parse().unwrap()));
}

#[test]
fn a_regular_file_at_the_socket_path_is_not_replaced() {
    let path = sock_path("file");
    std::fs::write(&path, b"important").unwrap();
    let err = FrameServer::bind(&Endpoint::Unix(path.clone()), SocketPermissions::default()).err().unwrap();
    assert!(err.to_string().contains("not a socket"), "{err}");
    assert_eq!(std::fs::read(&path).unwrap(), b"important");
}

/// Whether the server closed `s`: EOF, or a reset (it closed with our bytes unread).
fn closed_by_server(s: &mut impl Read) -> bool {
    let mut b = [0u8; 16];
    match s.read(&mut b) {
        Ok(0) => true,
        Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        Ok(_) => false,
    }
}

#[test]
fn a_frame_that_has_spoken_is_never_replaced_and_a_silent_one_is() {
    let ep: Endpoint = "tcp:127.0.0.1:0".parse().unwrap();
    let mut server = FrameServer::bind(&ep, SocketPermissions::default()).unwrap();
    let addr = server.local_tcp_addr().unwrap();
    // A silent connection is replaced by the next (a restarted frame may come back before
    // its old connection is seen closed).
    let _silent = std::net::TcpStream::connect(addr).unwrap();
    assert_eq!(poll_events(&mut server, 1), vec![ServerEvent::Connected]);
    let mut frame = std::net::TcpStream::connect(addr).unwrap();
    frame.write_all(&msg("COLO_USERSPACE_PROXY_INIT")).unwrap();
    let events = poll_events(&mut server, 3);
    assert!(matches!(events[0], ServerEvent::Disconnected { .. }), "{events:?}");
    assert_eq!(events[1..], [ServerEvent::Connected, ServerEvent::Message(FrameMessage::ProxyInit)]);
    // The frame has spoken: another local peer cannot take the link over, and its
    // COLO_CHECKPOINT (which would release held output) never arrives.
    let mut intruder = std::net::TcpStream::connect(addr).unwrap();
    intruder.write_all(&msg("COLO_USERSPACE_PROXY_INIT")).unwrap();
    intruder.write_all(&msg("COLO_CHECKPOINT")).unwrap();
    let events = poll_events(&mut server, 1);
    assert!(events.is_empty(), "{events:?}");
    intruder.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    assert!(closed_by_server(&mut intruder), "the intruder is disconnected");
    assert_eq!(server.refused(), 1);
    // The frame's own unsolicited COLO_CHECKPOINT (a periodic checkpoint) still counts.
    frame.write_all(&msg("COLO_CHECKPOINT")).unwrap();
    assert_eq!(poll_events(&mut server, 1), vec![ServerEvent::Message(FrameMessage::CheckpointDone)]);
}

#[test]
fn peers_can_be_restricted_to_a_uid_or_an_address() {
    use colo_control::frame_server::PeerFilter;
    // Unix: SO_PEERCRED uid. This process's uid is let in; any other is not.
    let me = std::fs::metadata("/proc/self").map(|m| std::os::unix::fs::MetadataExt::uid(&m)).unwrap();
    let path = sock_path("peer-uid");
    let mut server = FrameServer::bind(&Endpoint::Unix(path.clone()), SocketPermissions::default()).unwrap();
    server.restrict(PeerFilter { uid: Some(me.wrapping_add(1)), addr: None });
    let mut other = UnixStream::connect(&path).unwrap();
    other.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    assert!(poll_events(&mut server, 1).is_empty());
    assert!(closed_by_server(&mut other));
    server.restrict(PeerFilter { uid: Some(me), addr: None });
    let _ok = UnixStream::connect(&path).unwrap();
    assert_eq!(poll_events(&mut server, 1), vec![ServerEvent::Connected]);
    // TCP: the peer's address.
    let ep: Endpoint = "tcp:127.0.0.1:0".parse().unwrap();
    let mut server = FrameServer::bind(&ep, SocketPermissions::default()).unwrap();
    server.restrict(PeerFilter { uid: None, addr: Some("127.0.0.2".parse().unwrap()) });
    let addr = server.local_tcp_addr().unwrap();
    let mut other = std::net::TcpStream::connect(addr).unwrap();
    other.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    assert!(poll_events(&mut server, 1).is_empty());
    assert!(closed_by_server(&mut other));
    assert_eq!(server.refused(), 1);
}
