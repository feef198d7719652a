//! A real etcd server (Debian's `etcd-server`, which `.ci/install` installs) on free loopback
//! ports with its data in a directory the caller gives, for the collector's tests and
//! benchmark (feature `test-harness`). It is stopped (SIGKILL) when dropped. Panics when etcd
//! cannot be started: it is test support.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A loopback port nothing listens on right now (not reserved: another process may take it
/// before etcd binds it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("bind a free loopback port")
        .port()
}

/// A running etcd; stopped (killed) when dropped.
pub struct Etcd {
    /// The client port.
    pub client_port: u16,
    peer_port: u16,
    dir: PathBuf,
    child: Option<Child>,
    extra: Vec<String>,
}

impl Etcd {
    /// Starts etcd on `client_port` with its data in `dir`/data; returns once it answers.
    pub fn start_on(dir: &Path, client_port: u16) -> Etcd {
        let mut etcd = Etcd {
            client_port,
            peer_port: free_port(),
            dir: dir.to_path_buf(),
            child: None,
            extra: Vec::new(),
        };
        etcd.launch();
        etcd
    }

    /// Starts etcd on a free port with its data in `dir`/data.
    pub fn start(dir: &Path) -> Etcd {
        Etcd::start_on(dir, free_port())
    }

    /// The client URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    /// Starts etcd with `extra` arguments too (e.g. its data directory on tmpfs).
    pub fn start_with(dir: &Path, extra: &[String]) -> Etcd {
        let mut etcd = Etcd {
            client_port: free_port(),
            peer_port: free_port(),
            dir: dir.to_path_buf(),
            child: None,
            extra: extra.to_vec(),
        };
        etcd.launch();
        etcd
    }

    /// The process id of the running server.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn launch(&mut self) {
        let client = self.url();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("etcd.log"))
            .expect("open the etcd log");
        let child = Command::new("etcd")
            .args([
                "--name=tapio-test".to_string(),
                format!("--data-dir={}", self.dir.join("data").display()),
                format!("--listen-client-urls={client}"),
                format!("--advertise-client-urls={client}"),
                format!("--listen-peer-urls={peer}"),
                format!("--initial-advertise-peer-urls={peer}"),
                format!("--initial-cluster=tapio-test={peer}"),
                "--log-level=warn".to_string(),
                "--logger=zap".to_string(),
            ])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone the log"))
            .stderr(log)
            .spawn()
            .expect("start etcd (Debian's etcd-server; .ci/install installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", self.client_port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "etcd did not listen within 30s; its log: {}",
                std::fs::read_to_string(self.dir.join("etcd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops etcd (SIGKILL, as a crash would).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops etcd and starts it again on the same ports and data.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.stop();
    }
}
