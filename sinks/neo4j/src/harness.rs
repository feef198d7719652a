//! A real Neo4j for tests and benchmarks: the Neo4j 5.26 LTS test harness
//! (`org.neo4j.test:neo4j-harness`), started by the small Java launcher in
//! `tests/neo4j-harness/` of the Tapio repository.
//!
//! `.ci/install` builds the launcher with Maven
//! (`mvn -B -q -f tests/neo4j-harness/pom.xml package`), which leaves the compiled class in
//! `target/classes` and the harness's class path in `target/classpath.txt`. [`Neo4jServer::start`]
//! runs `java` on them; the launcher binds Bolt to a free loopback port, sets the password of
//! the user `neo4j`, prints the Bolt URI and runs until its standard input closes, so the server
//! also goes away when the test process dies.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The password the launcher gives the user `neo4j`.
pub const PASSWORD: &str = "tapio-test-password";

/// The user name.
pub const USERNAME: &str = "neo4j";

/// Why the test server could not start.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// The launcher is not built.
    #[error(
        "the Neo4j test launcher is not built ({missing} is missing); run .ci/install, or \
         `mvn -B -q -f {pom} package`"
    )]
    NotBuilt {
        /// The missing file.
        missing: String,
        /// The launcher's pom.xml.
        pom: String,
    },
    /// `java` could not be started or failed.
    #[error("cannot start the Neo4j test server: {0}")]
    Start(String),
}

/// A running Neo4j test server; stopped when dropped.
pub struct Neo4jServer {
    child: Child,
    stdin: Option<ChildStdin>,
    uri: String,
}

impl Neo4jServer {
    /// Starts the server built under `launcher_dir` (the repository's `tests/neo4j-harness`)
    /// and waits until it accepts Bolt connections, at most `timeout`.
    ///
    /// # Errors
    /// When the launcher is not built, `java` is missing, or the server does not come up.
    pub fn start(launcher_dir: &Path, timeout: Duration) -> Result<Neo4jServer, HarnessError> {
        let classes = launcher_dir.join("target/classes");
        let classpath_file = launcher_dir.join("target/classpath.txt");
        for needed in [&classes, &classpath_file] {
            if !needed.exists() {
                return Err(HarnessError::NotBuilt {
                    missing: needed.display().to_string(),
                    pom: launcher_dir.join("pom.xml").display().to_string(),
                });
            }
        }
        let classpath = std::fs::read_to_string(&classpath_file).map_err(|error| {
            HarnessError::Start(format!("{}: {error}", classpath_file.display()))
        })?;
        let java = std::env::var_os("JAVA_HOME")
            .map(|home| PathBuf::from(home).join("bin/java"))
            .filter(|java| java.exists())
            .unwrap_or_else(|| PathBuf::from("java"));
        let mut child = Command::new(java)
            // G1 (the default) rather than a stop-the-world collector: the benchmark measures
            // commit delays, and full collections showed up as second-long stalls.
            .arg("-Xms512m")
            .arg("-Xmx2g")
            .arg("-cp")
            .arg(format!("{}:{}", classes.display(), classpath.trim()))
            .arg("tapio.Neo4jHarness")
            .arg(PASSWORD)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|error| HarnessError::Start(format!("cannot run java: {error}")))?;
        let stdin = child.stdin.take();
        let Some(stdout) = child.stdout.take() else {
            return Err(HarnessError::Start("no standard output".into()));
        };
        let (found, uri) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(uri) = line.strip_prefix("TAPIO_NEO4J_BOLT=") {
                    let _ = found.send(uri.trim_end_matches('/').to_string());
                }
            }
        });
        let mut server = Neo4jServer {
            child,
            stdin,
            uri: String::new(),
        };
        match uri.recv_timeout(timeout) {
            Ok(uri) => {
                server.uri = uri;
                Ok(server)
            }
            Err(_) => Err(HarnessError::Start(format!(
                "no Bolt URI within {timeout:?} (exit status: {:?})",
                server.child.try_wait().ok().flatten()
            ))),
        }
    }

    /// The Bolt URI, e.g. `bolt://127.0.0.1:41071`.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The process id of the server's JVM, e.g. to read its CPU time from `/proc`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Neo4jServer {
    fn drop(&mut self) {
        // Closing standard input asks the launcher to stop the database and exit.
        drop(self.stdin.take());
        for _ in 0..100 {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
