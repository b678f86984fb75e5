//! The admin socket over a real Unix socket: JSON lines in and out, bad lines answered, and a
//! client that half-closes after its request still gets the answer.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use colo_control::admin::{AdminRequest, AdminServer};
use colo_control::frame_server::SocketPermissions;

fn server(name: &str) -> (AdminServer, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("colo-admin-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("admin.sock");
    (AdminServer::bind(&path, SocketPermissions::default()).unwrap(), path)
}

fn poll_until(s: &mut AdminServer, n: usize) -> Vec<(u64, AdminRequest)> {
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut got = Vec::new();
    while got.len() < n && Instant::now() < deadline {
        got.extend(s.poll());
        std::thread::sleep(Duration::from_millis(1));
    }
    got
}

#[test]
fn a_half_closed_client_still_gets_its_answer() {
    let (mut s, path) = server("half-close");
    let mut c = UnixStream::connect(&path).unwrap();
    c.write_all(b"{\"cmd\":\"stats\"}\n").unwrap();
    c.shutdown(std::net::Shutdown::Write).unwrap();
    let got = poll_until(&mut s, 1);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].1, AdminRequest::Stats);
    // The EOF has been seen by now; answering must still reach the client.
    for _ in 0..5 {
        s.poll();
    }
    s.answer(got[0].0, &serde_json::json!({"ok": true, "n": 1}));
    let mut text = String::new();
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    c.read_to_string(&mut text).unwrap();
    assert_eq!(text, "{\"n\":1,\"ok\":true}\n");
}

#[test]
fn a_bad_line_gets_an_error_answer_and_the_connection_stays() {
    let (mut s, path) = server("bad-line");
    let mut c = UnixStream::connect(&path).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    c.write_all(b"nonsense\n{\"cmd\":\"flows\"}\n").unwrap();
    let got = poll_until(&mut s, 1);
    assert_eq!(got[0].1, AdminRequest::Flows);
    let mut buf = [0u8; 256];
    let n = c.read(&mut buf).unwrap();
    let line = String::from_utf8_lossy(&buf[..n]);
    assert!(line.contains("\"ok\":false") && line.contains("bad request"), "{line}");
}
