//! A TCP proxy a test controls: it forwards loopback connections to a target port, and can cut
//! every open connection (as a broken network path or a load balancer restart would) and refuse
//! new ones for a while. It sees only bytes, so it works for TLS connections too.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A running proxy; dropping it cuts every connection and stops it.
pub struct TcpProxy {
    /// The port it listens on, 127.0.0.1.
    pub port: u16,
    shared: Arc<Shared>,
}

struct Shared {
    target: u16,
    held: AtomicBool,
    stopped: AtomicBool,
    open: Mutex<Vec<TcpStream>>,
    cut: AtomicU64,
}

impl TcpProxy {
    /// Starts a proxy to `127.0.0.1:target` on a free port.
    ///
    /// # Errors
    /// When no port can be bound.
    pub fn start(target: u16) -> std::io::Result<TcpProxy> {
        let listener = TcpListener::bind(("127.0.0.1", 0))?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            target,
            held: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            open: Mutex::new(Vec::new()),
            cut: AtomicU64::new(0),
        });
        let accepting = Arc::clone(&shared);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if accepting.stopped.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(client) = client else { continue };
                if accepting.held.load(Ordering::SeqCst) {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                }
                let Ok(server) = TcpStream::connect(("127.0.0.1", accepting.target)) else {
                    let _ = client.shutdown(Shutdown::Both);
                    continue;
                };
                let (Ok(client_copy), Ok(server_copy)) = (client.try_clone(), server.try_clone())
                else {
                    continue;
                };
                if let Ok(mut open) = accepting.open.lock() {
                    open.extend(client.try_clone().ok());
                    open.extend(server.try_clone().ok());
                }
                std::thread::spawn(move || pump(client, server_copy));
                std::thread::spawn(move || pump(server, client_copy));
            }
        });
        Ok(TcpProxy { port, shared })
    }

    /// Cuts every open connection (both directions, at once).
    pub fn cut(&self) {
        if let Ok(mut open) = self.shared.open.lock() {
            for stream in open.drain(..) {
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
        self.shared.cut.fetch_add(1, Ordering::SeqCst);
    }

    /// While `held`, new connections are closed at once, as an unreachable server's would be.
    pub fn hold(&self, held: bool) {
        self.shared.held.store(held, Ordering::SeqCst);
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.shared.open.lock().map_or(0, |open| open.len() / 2)
    }
}

/// Copies `from` to `to` until either side ends, then closes both.
fn pump(mut from: TcpStream, mut to: TcpStream) {
    let mut buffer = [0u8; 16 * 1024];
    loop {
        match from.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buffer[..n]).is_err() {
                    break;
                }
            }
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

impl Drop for TcpProxy {
    fn drop(&mut self) {
        self.shared.stopped.store(true, Ordering::SeqCst);
        // Wakes the accepting thread, which then sees `stopped`.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        self.cut();
    }
}
