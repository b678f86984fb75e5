//! The server both guests run in the virtual-machine tests: the same protocol and the same
//! download bytes as `tests/support/workload.py serve`, so the client side of that script
//! checks what the guests send. It has no dependencies, so it links statically into a guest
//! initramfs that holds nothing but busybox.
//!
//! `guest-workload serve PORT [--flip K]`: a line `GET N` is answered with the first N bytes of
//! the download stream (byte K changed when `--flip K` is given), `ECHO` echoes until the client
//! closes, `HELLO` answers `OK` and waits for the client to close first.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};

/// The download stream's period, as in `workload.py`: not a power of two, so a misplaced
/// segment never looks right.
const PERIOD: usize = 251 * 256;

/// Byte `i` of one period of the download stream.
fn base(i: usize) -> u8 {
    ((i * 7 + i / 251) & 0xFF) as u8
}

fn serve_one(conn: TcpStream, flip: Option<u64>) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut words = line.split_whitespace();
    let mut out = conn;
    match words.next() {
        Some("GET") => {
            let size: u64 = words.next().and_then(|w| w.parse().ok()).unwrap_or(0);
            let period: Vec<u8> = (0..PERIOD).map(base).collect();
            // Two periods back to back: any window of up to one period is one slice.
            let twice = [period.as_slice(), period.as_slice()].concat();
            let mut done = 0u64;
            while done < size {
                let n = (size - done).min(PERIOD as u64) as usize;
                let pos = (done % PERIOD as u64) as usize;
                let mut chunk = twice[pos..pos + n].to_vec();
                if let Some(k) = flip.filter(|k| (done..done + n as u64).contains(k)) {
                    chunk[(k - done) as usize] ^= 0xFF;
                }
                out.write_all(&chunk)?;
                done += n as u64;
            }
        }
        Some("ECHO") => {
            // Bytes the line reader already took belong to the echo stream too.
            let mut pending = reader.buffer().to_vec();
            let mut buf = vec![0u8; 4096];
            loop {
                if !pending.is_empty() {
                    out.write_all(&pending)?;
                    pending.clear();
                }
                let n = reader.get_mut().read(&mut buf)?;
                if n == 0 {
                    break;
                }
                pending.extend_from_slice(&buf[..n]);
            }
        }
        Some("HELLO") => {
            out.write_all(b"OK\n")?;
            let mut rest = [0u8; 16];
            let _ = reader.read(&mut rest);
        }
        _ => {}
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 || args[1] != "serve" {
        eprintln!("usage: guest-workload serve PORT [--flip K]");
        std::process::exit(2);
    }
    let port: u16 = args[2].parse().unwrap_or_else(|_| {
        eprintln!("guest-workload: bad port {}", args[2]);
        std::process::exit(2)
    });
    let flip = match args.get(3).map(String::as_str) {
        Some("--flip") => args.get(4).and_then(|k| k.parse().ok()),
        _ => None,
    };
    let listener = TcpListener::bind(("0.0.0.0", port)).unwrap_or_else(|e| {
        eprintln!("guest-workload: cannot listen on port {port}: {e}");
        std::process::exit(1)
    });
    for conn in listener.incoming().flatten() {
        std::thread::spawn(move || {
            let _ = serve_one(conn, flip);
        });
    }
}
