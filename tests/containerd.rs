//! A private containerd (Debian's 1.6, with runc) for the container runtime collector's tests
//! and benchmark and for the test kubelet: its own root, state and socket under a directory of the caller's, the local
//! pause and busybox images imported (no registry is reachable), and `restrict_oom_score_adj`
//! on (this machine cannot lower a process's `oom_score_adj`). Needs root and `containerd`,
//! `ctr` and `runc` on `PATH` (`.ci/install`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::control_plane::{BUSYBOX_IMAGE, PAUSE_IMAGE};

/// A running private containerd; stopped, with every task it ran killed and its mounts
/// undone, when dropped.
pub struct Containerd {
    dir: PathBuf,
    child: Option<Child>,
}

impl Containerd {
    /// Writes a configuration under `dir` (created), starts containerd on it, waits for its
    /// socket, and imports the pause image (the sandbox image) and the busybox image into
    /// namespace `k8s.io`.
    ///
    /// # Errors
    /// When containerd does not start or an image does not import.
    pub fn start(dir: &Path) -> Result<Containerd> {
        std::fs::create_dir_all(dir.join("root"))?;
        std::fs::create_dir_all(dir.join("state"))?;
        let socket = dir.join("containerd.sock");
        let defaults = Command::new("containerd")
            .args(["config", "default"])
            .output()
            .context("run `containerd config default` (is containerd installed? .ci/install)")?;
        let config = String::from_utf8_lossy(&defaults.stdout)
            .lines()
            .map(|line| {
                let trimmed = line.trim_start();
                if trimmed.starts_with("root = ") && !line.starts_with(' ') {
                    format!("root = \"{}\"", dir.join("root").display())
                } else if trimmed.starts_with("state = ") && !line.starts_with(' ') {
                    format!("state = \"{}\"", dir.join("state").display())
                } else if trimmed == "address = \"/run/containerd/containerd.sock\"" {
                    format!("  address = \"{}\"", socket.display())
                } else if trimmed.starts_with("sandbox_image = ") {
                    format!("    sandbox_image = \"{PAUSE_IMAGE}\"")
                } else if trimmed == "restrict_oom_score_adj = false" {
                    // This machine cannot lower oom_score_adj (no CAP_SYS_RESOURCE).
                    line.replace("false", "true")
                } else {
                    line.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::write(dir.join("config.toml"), config)?;
        let mut containerd = Containerd {
            dir: dir.to_path_buf(),
            child: None,
        };
        containerd.launch()?;
        for (file, image, entrypoint) in [
            ("pause.tar", PAUSE_IMAGE, &["/bin/sleep", "2147483647"][..]),
            ("busybox.tar", BUSYBOX_IMAGE, &["/bin/sh"][..]),
        ] {
            let tar = dir.join(file);
            let status = Command::new("python3")
                .arg(crate::repo_root().join("tests/kubelet/mkimage.py"))
                .arg(&tar)
                .arg(image)
                .args(entrypoint)
                .status()
                .context("run tests/kubelet/mkimage.py (needs busybox-static, .ci/install)")?;
            if !status.success() {
                bail!("mkimage.py failed for {image}: {status}");
            }
            let output = containerd
                .ctr(&["images", "import"])
                .arg(&tar)
                .output()
                .context("run ctr images import")?;
            if !output.status.success() {
                bail!(
                    "ctr images import {image} failed: {}\n{}",
                    output.status,
                    String::from_utf8_lossy(&output.stderr)
                );
            }
        }
        Ok(containerd)
    }

    /// Its socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("containerd.sock")
    }

    /// Its directory (configuration, root, state, log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stops containerd (SIGKILL, as a crash would), leaving the containers' shims running.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts containerd again on the same configuration (after [`Containerd::stop`]) and
    /// waits for its socket to answer.
    ///
    /// # Errors
    /// When it does not come back.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.launch()
    }

    fn launch(&mut self) -> Result<()> {
        let socket = self.socket();
        let _ = std::fs::remove_file(&socket);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("containerd.log"))?;
        self.child = Some(
            Command::new("containerd")
                .arg("--config")
                .arg(self.dir.join("config.toml"))
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()
                .context("start containerd")?,
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let answered = socket.exists()
                && self
                    .ctr(&["version"])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|status| status.success());
            if answered {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "containerd did not answer on {} (log: {})",
                    socket.display(),
                    self.dir.join("containerd.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `ctr` on this containerd's socket, in namespace `k8s.io`, with `args`.
    pub fn ctr(&self, args: &[&str]) -> Command {
        let mut command = Command::new("ctr");
        command
            .arg("--address")
            .arg(self.socket())
            .args(["--namespace", "k8s.io"])
            .args(args);
        command
    }
}

impl Drop for Containerd {
    /// Kills and deletes every task (their shims outlive containerd otherwise), stops
    /// containerd, unmounts what it mounted under its directory and removes the directory.
    fn drop(&mut self) {
        if self.child.is_some()
            && let Ok(listed) = self
                .ctr(&["tasks", "ls", "-q"])
                .stderr(Stdio::null())
                .output()
        {
            for task in String::from_utf8_lossy(&listed.stdout).split_whitespace() {
                let _ = self
                    .ctr(&["tasks", "kill", "--signal", "SIGKILL", task])
                    .stderr(Stdio::null())
                    .output();
                let _ = self
                    .ctr(&["tasks", "delete", "--force", task])
                    .stderr(Stdio::null())
                    .output();
            }
        }
        self.stop();
        unmount_under(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Unmounts (lazily, deepest first) every mount point under `dir`: what containers and the
/// kubelet mounted there (root filesystems, shm, the kubelet's shared root).
pub(crate) fn unmount_under(dir: &Path) {
    let prefix = dir.display().to_string();
    let mut mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.split(' ').nth(4).map(String::from))
        .filter(|point| point.starts_with(&prefix))
        .collect();
    mounts.sort_by_key(|point| std::cmp::Reverse(point.len()));
    for point in mounts {
        let _ = Command::new("umount").arg("-l").arg(&point).status();
    }
}
