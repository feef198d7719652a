//! A real Kubernetes control plane on loopback, for the collectors' live tests.
//!
//! The binary is built from the `k8s.io/kubernetes` Go module by `tests/controlplane/`
//! (`.ci/install` builds it into `target/controlplane/controlplane`, cached under
//! `~/.cache/tapio/controlplane/<go.sum hash>/`). It holds the upstream etcd server,
//! kube-apiserver, kube-controller-manager and kube-scheduler; [`ControlPlane::start`] runs each
//! as its own process on free loopback ports, with certificates and static tokens the binary's
//! `pki` sub-command generates, and stops them by PID when dropped.
//!
//! Security setup: the API server serves TLS with a certificate for 127.0.0.1 signed by a fresh
//! CA, authenticates two static bearer tokens (`admin` in `system:masters`, and `tapio` with no
//! groups, which only the RBAC in `sources/kubernetes/rbac.yaml` grants anything), and
//! authorizes with RBAC.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::containerd::{Containerd, unmount_under};
use crate::try_free_port;

/// The control-plane binary: `$TAPIO_CONTROLPLANE_BIN`, or `target/controlplane/controlplane`.
pub fn binary() -> PathBuf {
    if let Some(path) = std::env::var_os("TAPIO_CONTROLPLANE_BIN") {
        return PathBuf::from(path);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::repo_root().join("target"));
    target.join("controlplane").join("controlplane")
}

fn wait_for_port(port: u16, within: Duration, what: &str, log: &Path) -> Result<()> {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let tail = std::fs::read_to_string(log).unwrap_or_default();
    let tail: Vec<&str> = tail.lines().rev().take(30).collect();
    bail!(
        "{what} did not listen on 127.0.0.1:{port} within {within:?}; last log lines:\n{}",
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    )
}

/// A running control plane. Dropping it stops every process it started.
pub struct ControlPlane {
    dir: PathBuf,
    binary: PathBuf,
    etcd: Option<Child>,
    apiserver: Option<Child>,
    controller_manager: Option<Child>,
    scheduler: Option<Child>,
    etcd_port: u16,
    /// Whether the ServiceAccount admission plugin runs (pods get their account's token).
    service_accounts: bool,
    /// More API server flags.
    apiserver_args: Vec<String>,
    /// The API server's secure port on 127.0.0.1.
    pub port: u16,
}

impl ControlPlane {
    /// Starts etcd, the API server, and (when `controllers`) the controller manager and the
    /// scheduler, in a fresh directory under the system temp dir. Waits until the API server
    /// listens; callers wait for readiness with their client.
    ///
    /// # Errors
    /// When the binary is missing (build it with `.ci/install`) or a component does not start.
    pub fn start(name: &str, controllers: bool) -> Result<ControlPlane> {
        ControlPlane::start_inner(name, controllers, false, &[])
    }

    /// Starts the control plane with its controllers and more API server flags, e.g.
    /// `--watch-cache=false`.
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub fn start_with_apiserver_args(name: &str, args: &[&str]) -> Result<ControlPlane> {
        ControlPlane::start_inner(name, true, false, args)
    }

    /// Starts the control plane with its controllers and the ServiceAccount admission plugin,
    /// as a real cluster runs: every pod gets its service account's token, the cluster CA and
    /// the API server's address, the way in-cluster clients expect (the controller manager
    /// creates each namespace's `default` account and `kube-root-ca.crt`).
    ///
    /// # Errors
    /// As [`start`](Self::start).
    pub fn start_with_service_accounts(name: &str) -> Result<ControlPlane> {
        ControlPlane::start_inner(name, true, true, &[])
    }

    fn start_inner(
        name: &str,
        controllers: bool,
        service_accounts: bool,
        apiserver_args: &[&str],
    ) -> Result<ControlPlane> {
        let binary = binary();
        if !binary.exists() {
            bail!(
                "the control-plane binary {} is missing: build it with `.ci/install` \
                 (or `cd tests/controlplane && go build -o {} .`)",
                binary.display(),
                binary.display()
            );
        }
        let dir =
            std::env::temp_dir().join(format!("tapio-controlplane-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let status = Command::new(&binary)
            .arg("pki")
            .arg(dir.join("pki"))
            .status()
            .context("run controlplane pki")?;
        if !status.success() {
            bail!("controlplane pki failed: {status}");
        }
        let mut plane = ControlPlane {
            dir,
            binary,
            etcd: None,
            apiserver: None,
            controller_manager: None,
            scheduler: None,
            etcd_port: try_free_port()?,
            service_accounts,
            apiserver_args: apiserver_args.iter().map(|arg| (*arg).to_owned()).collect(),
            port: try_free_port()?,
        };
        plane.start_etcd()?;
        plane.start_apiserver()?;
        plane.write_kubeconfig("admin")?;
        plane.write_kubeconfig("tapio")?;
        if controllers {
            plane.start_controllers()?;
        }
        Ok(plane)
    }

    fn spawn(&self, log: &str, args: &[String]) -> Result<Child> {
        let log = std::fs::File::create(self.dir.join(log))?;
        Command::new(&self.binary)
            .args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("start {}", args[0]))
    }

    fn start_etcd(&mut self) -> Result<()> {
        let peer = try_free_port()?;
        let client = format!("http://127.0.0.1:{}", self.etcd_port);
        let peer = format!("http://127.0.0.1:{peer}");
        let args: Vec<String> = [
            "etcd",
            "--name=tapio",
            &format!("--data-dir={}", self.dir.join("etcd").display()),
            &format!("--listen-client-urls={client}"),
            &format!("--advertise-client-urls={client}"),
            &format!("--listen-peer-urls={peer}"),
            &format!("--initial-advertise-peer-urls={peer}"),
            &format!("--initial-cluster=tapio={peer}"),
            "--logger=zap",
            "--log-level=warn",
        ]
        .map(String::from)
        .to_vec();
        self.etcd = Some(self.spawn("etcd.log", &args)?);
        wait_for_port(
            self.etcd_port,
            Duration::from_secs(60),
            "etcd",
            &self.dir.join("etcd.log"),
        )
    }

    /// Starts (or restarts) the API server on the same port and etcd.
    fn start_apiserver(&mut self) -> Result<()> {
        let pki = self.dir.join("pki");
        let file = |name: &str| pki.join(name).display().to_string();
        let mut args: Vec<String> = vec![
            "kube-apiserver".into(),
            format!("--etcd-servers=http://127.0.0.1:{}", self.etcd_port),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={}", self.port),
            format!("--tls-cert-file={}", file("apiserver.crt")),
            format!("--tls-private-key-file={}", file("apiserver.key")),
            format!("--client-ca-file={}", file("ca.crt")),
            format!("--token-auth-file={}", file("tokens.csv")),
            "--authorization-mode=RBAC".into(),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            format!("--service-account-key-file={}", file("sa.pub")),
            format!("--service-account-signing-key-file={}", file("sa.key")),
            "--service-cluster-ip-range=10.0.0.0/24".into(),
            "--enable-priority-and-fairness=false".into(),
            "--profiling=false".into(),
            format!("--cert-dir={}", self.dir.join("certs").display()),
        ];
        if !self.service_accounts {
            // Without the controller manager no namespace has a `default` account, which the
            // plugin would require of every pod.
            args.push("--disable-admission-plugins=ServiceAccount".into());
        }
        args.extend(self.apiserver_args.iter().cloned());
        let log = self.dir.join("apiserver.log");
        self.apiserver = Some(self.spawn("apiserver.log", &args)?);
        wait_for_port(self.port, Duration::from_secs(180), "kube-apiserver", &log)
    }

    fn start_controllers(&mut self) -> Result<()> {
        let kubeconfig = self.kubeconfig("admin").display().to_string();
        let pki = self.dir.join("pki");
        self.controller_manager = Some(self.spawn(
            "controller-manager.log",
            &[
                "kube-controller-manager".into(),
                format!("--kubeconfig={kubeconfig}"),
                "--leader-elect=false".into(),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={}", try_free_port()?),
                format!(
                    "--service-account-private-key-file={}",
                    pki.join("sa.key").display()
                ),
                format!("--root-ca-file={}", pki.join("ca.crt").display()),
                // The test's node has no kubelet heartbeat; keep the node lifecycle controller
                // from tainting it unreachable during a test.
                "--node-monitor-grace-period=1h".into(),
            ],
        )?);
        self.scheduler = Some(self.spawn(
            "scheduler.log",
            &[
                "kube-scheduler".into(),
                format!("--kubeconfig={kubeconfig}"),
                format!("--authentication-kubeconfig={kubeconfig}"),
                format!("--authorization-kubeconfig={kubeconfig}"),
                "--leader-elect=false".into(),
                "--bind-address=127.0.0.1".into(),
                format!("--secure-port={}", try_free_port()?),
            ],
        )?);
        Ok(())
    }

    /// Stops the API server (SIGKILL, like a crash) and starts it again on the same port and
    /// etcd; returns once it listens.
    ///
    /// # Errors
    /// When it does not come back.
    pub fn restart_apiserver(&mut self) -> Result<()> {
        if let Some(mut child) = self.apiserver.take() {
            child.kill()?;
            child.wait()?;
        }
        // The port must be free before the new process binds it.
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_ok() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        self.start_apiserver()
    }

    /// Path of the kubeconfig for `user` (`admin` or `tapio`).
    pub fn kubeconfig(&self, user: &str) -> PathBuf {
        self.dir.join(format!("{user}.kubeconfig"))
    }

    /// The static bearer token of `user`.
    ///
    /// # Errors
    /// When the token file cannot be read.
    pub fn token(&self, user: &str) -> Result<String> {
        Ok(std::fs::read_to_string(
            self.dir.join("pki").join(format!("{user}.token")),
        )?)
    }

    fn write_kubeconfig(&self, user: &str) -> Result<()> {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: https://127.0.0.1:{port}\n    certificate-authority: {ca}\nusers:\n- name: {user}\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: {user}\ncurrent-context: test\n",
            port = self.port,
            ca = self.dir.join("pki").join("ca.crt").display(),
            token = self.token(user)?,
        );
        std::fs::write(self.kubeconfig(user), text)?;
        Ok(())
    }

    /// The client URL of the control plane's own etcd (plain HTTP on loopback), where the API
    /// server keeps every object under `/registry/`.
    pub fn etcd_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.etcd_port)
    }

    /// The directory holding the logs, certificates and etcd data.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The pod sandbox image the test kubelet's containerd uses (imported locally).
pub const PAUSE_IMAGE: &str = "localhost/tapio/pause:local";
/// A busybox image for test containers (imported locally; use `imagePullPolicy: Never`).
pub const BUSYBOX_IMAGE: &str = "localhost/tapio/busybox:local";

/// A real kubelet (from the same binary) registered with a [`ControlPlane`], with a private
/// containerd as its runtime. Needs root and `containerd` on `PATH` (`.ci/install`).
pub struct Kubelet {
    dir: PathBuf,
    containerd: Option<Containerd>,
    kubelet: Option<Child>,
    /// The kubelet API's port on 127.0.0.1.
    pub port: u16,
}

impl ControlPlane {
    /// Starts a private containerd and a kubelet that registers as node `node`, authenticates
    /// requests with bearer tokens through the API server (TokenReview) and authorizes them
    /// there (SubjectAccessReview, so RBAC's `nodes/proxy` and `nodes/stats` apply). It serves
    /// TLS with the API server's certificate (valid for 127.0.0.1, signed by `pki/ca.crt`).
    ///
    /// # Errors
    /// When containerd or the kubelet does not start.
    pub fn start_kubelet(&self, node: &str) -> Result<Kubelet> {
        self.start_kubelet_with_backoff(node, None)
    }

    /// [`start_kubelet`](Self::start_kubelet), with the kubelet's crash-loop back-off capped at
    /// `max_restart_period` (its `crashLoopBackOff.maxContainerRestartPeriod`, at least 1 s;
    /// the initial 10 s back-off shrinks to it too) when given, so that a test sees a container
    /// restart several times within seconds.
    ///
    /// # Errors
    /// When containerd or the kubelet does not start.
    pub fn start_kubelet_with_backoff(
        &self,
        node: &str,
        max_restart_period: Option<Duration>,
    ) -> Result<Kubelet> {
        let dir = self.dir.join(format!("kubelet-{node}"));
        let containerd = Containerd::start(&dir.join("containerd"))?;
        let socket = containerd.socket();
        let mut kubelet = Kubelet {
            dir: dir.clone(),
            containerd: Some(containerd),
            kubelet: None,
            port: try_free_port()?,
        };
        let pki = self.dir.join("pki");
        // Eviction thresholds in bytes, not shares: on a large, nearly full build disk 1% is
        // gigabytes, and a parallel build crossing it would reject every pod (DiskPressure).
        let config = format!(
            "apiVersion: kubelet.config.k8s.io/v1beta1\nkind: KubeletConfiguration\naddress: 127.0.0.1\nport: {port}\nreadOnlyPort: 0\nhealthzPort: {healthz}\nfailCgroupV1: false\nfailSwapOn: false\ncgroupDriver: cgroupfs\ncgroupsPerQOS: false\nenforceNodeAllocatable: []\nevictionHard: {{memory.available: 100Mi, nodefs.available: 512Mi, imagefs.available: 512Mi, nodefs.inodesFree: 1%}}\ncontainerRuntimeEndpoint: unix://{socket}\ntlsCertFile: {cert}\ntlsPrivateKeyFile: {key}\nauthentication:\n  anonymous: {{enabled: false}}\n  webhook: {{enabled: true}}\n  x509: {{clientCAFile: {ca}}}\nauthorization:\n  mode: Webhook\n  webhook: {{cacheAuthorizedTTL: 1s, cacheUnauthorizedTTL: 1s}}\n",
            port = kubelet.port,
            healthz = try_free_port()?,
            socket = socket.display(),
            cert = pki.join("apiserver.crt").display(),
            key = pki.join("apiserver.key").display(),
            ca = pki.join("ca.crt").display(),
        );
        let config = match max_restart_period {
            Some(period) => format!(
                "{config}crashLoopBackOff:\n  maxContainerRestartPeriod: {}s\n",
                period.as_secs().max(1)
            ),
            None => config,
        };
        std::fs::write(dir.join("kubelet.yaml"), config)?;
        let log = std::fs::File::create(dir.join("kubelet.log"))?;
        kubelet.kubelet = Some(
            Command::new(&self.binary)
                .arg("kubelet")
                .arg(format!("--config={}", dir.join("kubelet.yaml").display()))
                .arg(format!(
                    "--kubeconfig={}",
                    self.kubeconfig("admin").display()
                ))
                .arg(format!("--hostname-override={node}"))
                // cAdvisor finds containers through its own containerd client, which dials the
                // default socket unless told otherwise; without it /stats/summary lists no pods.
                .arg(format!("--containerd={}", socket.display()))
                .arg(format!("--root-dir={}", dir.join("root").display()))
                .arg(format!("--cert-dir={}", dir.join("certs").display()))
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("start the kubelet")?,
        );
        wait_for_port(
            kubelet.port,
            Duration::from_secs(120),
            "the kubelet",
            &dir.join("kubelet.log"),
        )?;
        Ok(kubelet)
    }
}

impl Kubelet {
    /// The directory holding the kubelet's and containerd's logs and state.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Imports an OCI image-layout tar into the kubelet's containerd (namespace `k8s.io`), so
    /// that pods can run it with `imagePullPolicy: Never` or `IfNotPresent`.
    ///
    /// # Errors
    /// When `ctr images import` fails.
    pub fn import_image(&self, tar: &Path) -> Result<()> {
        let Some(containerd) = &self.containerd else {
            bail!("the kubelet's containerd is stopped");
        };
        let output = containerd
            .ctr(&["images", "import"])
            .arg(tar)
            .output()
            .context("run ctr images import")?;
        if !output.status.success() {
            bail!(
                "ctr images import {} failed: {}\n{}",
                tar.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(())
    }
}

impl Drop for Kubelet {
    /// Stops the kubelet, then its containerd (which kills and deletes every container task
    /// first: their shims outlive containerd otherwise), and unmounts what they mounted under
    /// the test directory (the kubelet's shared root, container root filesystems, shm).
    fn drop(&mut self) {
        if let Some(mut kubelet) = self.kubelet.take() {
            let _ = kubelet.kill();
            let _ = kubelet.wait();
        }
        // Kills the tasks it ran, stops it and undoes its mounts.
        drop(self.containerd.take());
        unmount_under(&self.dir);
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        for child in [
            self.scheduler.take(),
            self.controller_manager.take(),
            self.apiserver.take(),
            self.etcd.take(),
        ]
        .into_iter()
        .flatten()
        {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::env::var_os("TAPIO_KEEP_CONTROLPLANE").is_none() {
            // etcd may still be flushing as it dies; retry briefly.
            for _ in 0..10 {
                if std::fs::remove_dir_all(&self.dir).is_ok() || !self.dir.exists() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }
}
