//! A TCP proxy under the test's control, for fault injection between a device and the cloud:
//! forward normally, delay every chunk, drop all connections (and refuse new ones), or stall
//! (accept and swallow bytes without forwarding). Loopback only.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward everything.
    Pass,
    /// Forward, but hold every chunk for the configured delay.
    Delay,
    /// Close every open connection and close new ones at once.
    Drop,
    /// Accept and read, never forward (a stalled peer).
    Stall,
}

/// A running proxy; stops accepting when dropped.
pub struct Proxy {
    /// Address devices connect to.
    pub addr: std::net::SocketAddr,
    mode: Arc<AtomicU8>,
    delay_ms: Arc<AtomicU64>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

fn mode_of(v: u8) -> Mode {
    match v {
        1 => Mode::Delay,
        2 => Mode::Drop,
        3 => Mode::Stall,
        _ => Mode::Pass,
    }
}

impl Proxy {
    /// Starts a proxy on an ephemeral loopback port forwarding to `target`.
    pub fn start(target: std::net::SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mode = Arc::new(AtomicU8::new(0));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let (m, d, c) = (mode.clone(), delay_ms.clone(), conns.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let mode = mode_of(m.load(Ordering::SeqCst));
                if mode == Mode::Drop {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let _ = client.set_nodelay(true);
                let Ok(upstream) = TcpStream::connect(target) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let _ = upstream.set_nodelay(true);
                {
                    let mut all = c.lock().unwrap();
                    all.push(client.try_clone().unwrap());
                    all.push(upstream.try_clone().unwrap());
                }
                for (from, to) in [
                    (client.try_clone().unwrap(), upstream.try_clone().unwrap()),
                    (upstream, client),
                ] {
                    let (m, d) = (m.clone(), d.clone());
                    std::thread::spawn(move || pump(from, to, &m, &d));
                }
            }
        });
        Self {
            addr,
            mode,
            delay_ms,
            conns,
        }
    }

    /// Switches the mode; `Drop` also closes every open connection.
    pub fn set(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
        if mode == Mode::Drop {
            for c in self.conns.lock().unwrap().drain(..) {
                let _ = c.shutdown(Shutdown::Both);
            }
        }
    }

    /// Sets the per-chunk delay used in `Delay` mode.
    pub fn set_delay(&self, d: Duration) {
        self.delay_ms.store(d.as_millis() as u64, Ordering::SeqCst);
    }

    /// The URL of the proxy for a gRPC client.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, mode: &AtomicU8, delay_ms: &AtomicU64) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        match mode_of(mode.load(Ordering::SeqCst)) {
            Mode::Stall => continue,
            Mode::Delay => {
                std::thread::sleep(Duration::from_millis(delay_ms.load(Ordering::SeqCst)))
            }
            Mode::Drop => break,
            Mode::Pass => {}
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Both);
    let _ = from.shutdown(Shutdown::Both);
}
