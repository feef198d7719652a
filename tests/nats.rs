//! A real `nats-server` with JetStream for tests and benchmarks: a free loopback port, a fresh
//! store directory, stopped (and its directory removed) on drop.
//!
//! The binary is `$TAPIO_NATS_SERVER` when set, else Debian's `/usr/sbin/nats-server` (the
//! package `nats-server`, which `.ci/install` installs), else `nats-server` on `PATH`.

use std::io::{BufRead, BufReader};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running (or stopped) `nats-server`.
pub struct NatsServer {
    binary: PathBuf,
    /// The client port on 127.0.0.1.
    pub port: u16,
    dir: PathBuf,
    child: Option<Child>,
    /// More of the server's configuration (e.g. an `authorization` block).
    extra: String,
    /// JetStream's file storage limit, in nats-server's notation.
    max_file_store: String,
}

/// The `nats-server` binary to run.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("TAPIO_NATS_SERVER") {
        return PathBuf::from(path);
    }
    let debian = PathBuf::from("/usr/sbin/nats-server");
    if debian.exists() {
        debian
    } else {
        PathBuf::from("nats-server")
    }
}

impl NatsServer {
    /// Starts a server on a free port with a fresh store directory named after `name`.
    pub fn start(name: &str) -> NatsServer {
        let mut server = NatsServer::stopped(name);
        server.restart();
        server
    }

    /// Starts a server like [`NatsServer::start`] whose configuration also holds `extra`, e.g.
    /// `authorization { token: "t" }`.
    pub fn start_with(name: &str, extra: &str) -> NatsServer {
        let mut server = NatsServer::stopped(name);
        server.extra = extra.to_owned();
        server.restart();
        server
    }

    /// A server that is not running yet (its port is chosen): start it with
    /// [`NatsServer::restart`].
    pub fn stopped(name: &str) -> NatsServer {
        let dir = std::env::temp_dir().join(format!("tapio-nats-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("js")).expect("create the store directory");
        NatsServer {
            binary: binary(),
            port: crate::free_port(),
            dir,
            child: None,
            extra: String::new(),
            max_file_store: "1TB".into(),
        }
    }

    /// Starts a server whose JetStream file storage is limited to `max_file_store` (e.g.
    /// `"1MB"`): a stream that asks to reserve more is refused.
    pub fn start_with_storage(name: &str, max_file_store: &str) -> NatsServer {
        let mut server = NatsServer::stopped(name);
        server.max_file_store = max_file_store.to_owned();
        server.restart();
        server
    }

    /// The server's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) on the same port and store directory, and waits until it
    /// accepts clients with JetStream enabled.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the server is already running");
        let log = std::fs::File::create(self.dir.join("log")).expect("create the server log");
        // JetStream reserves each stream's `max_bytes` (10 GiB by Tapio's default) against its
        // storage limit, which by default follows the free disk space: on a machine whose disk
        // is filling with build output the second stream would be refused. A test server's
        // limit is set far above what any test writes instead.
        let config = self.dir.join("nats-server.conf");
        std::fs::write(
            &config,
            format!(
                "listen: \"127.0.0.1:{}\"\njetstream {{\n  store_dir: {:?}\n  max_file_store: {}\n}}\n{}\n",
                self.port,
                self.dir.join("js").display().to_string(),
                self.max_file_store,
                self.extra
            ),
        )
        .expect("write the server configuration");
        let child = Command::new(&self.binary)
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| {
                panic!(
                    "cannot start {} ({error}); install the Debian package nats-server or set \
                     TAPIO_NATS_SERVER",
                    self.binary.display()
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(stream) = TcpStream::connect(("127.0.0.1", self.port)) {
                let mut info = String::new();
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                if BufReader::new(stream).read_line(&mut info).is_ok()
                    && info.contains("\"jetstream\":true")
                {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not start; its log:\n{}",
                std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (SIGKILL: what it has not read from its sockets is lost) and waits for
    /// it to exit.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the server gracefully (SIGTERM) and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
