//! Compiles the C CO-RE programs under `ebpf/programs/` with clang into `OUT_DIR`.
//!
//! `vmlinux.h` is generated here from the build machine's BTF with
//! `bpftool btf dump file /sys/kernel/btf/vmlinux format c` (or taken from `TAPIO_VMLINUX_H`).
//! Thanks to CO-RE the object then loads on any kernel with BTF, not only the build machine's.
//! Needs the Debian packages `clang llvm libbpf-dev bpftool`.

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, exit};

const PROGRAMS: &[&str] = &["tapio", "dns"];

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("cargo sets it"));
    let programs = manifest.join("../programs");
    let out = PathBuf::from(env::var("OUT_DIR").expect("cargo sets it"));

    // The directory too: a new program file changes its modification time.
    println!("cargo:rerun-if-changed={}", programs.display());
    for entry in std::fs::read_dir(&programs).expect("ebpf/programs exists") {
        let path = entry.expect("readable directory entry").path();
        println!("cargo:rerun-if-changed={}", path.display());
    }
    println!("cargo:rerun-if-env-changed=TAPIO_VMLINUX_H");
    println!("cargo:rerun-if-env-changed=CLANG");
    println!("cargo:rerun-if-env-changed=BPFTOOL");

    let vmlinux = out.join("vmlinux.h");
    match env::var_os("TAPIO_VMLINUX_H") {
        Some(given) => {
            println!("cargo:rerun-if-changed={}", Path::new(&given).display());
            if let Err(err) = std::fs::copy(&given, &vmlinux) {
                fail(&format!(
                    "cannot copy TAPIO_VMLINUX_H={} to {}: {err}",
                    Path::new(&given).display(),
                    vmlinux.display()
                ));
            }
        }
        None => generate_vmlinux(&vmlinux),
    }

    let arch = match env::var("CARGO_CFG_TARGET_ARCH").as_deref() {
        Ok("x86_64") => "x86",
        Ok("aarch64") => "arm64",
        Ok("riscv64") => "riscv",
        Ok(other) => fail(&format!("no eBPF target arch mapping for `{other}`")),
        Err(_) => fail("CARGO_CFG_TARGET_ARCH is not set"),
    };
    let clang = env::var("CLANG").unwrap_or_else(|_| "clang".to_string());
    for program in PROGRAMS {
        let source = programs.join(format!("{program}.bpf.c"));
        let object = out.join(format!("{program}.bpf.o"));
        let output = Command::new(&clang)
            .args(["-g", "-O2", "-target", "bpf", "-Wall", "-Werror"])
            .arg(format!("-D__TARGET_ARCH_{arch}"))
            .arg("-I")
            .arg(&out)
            .arg("-I")
            .arg(&programs)
            .arg("-c")
            .arg(&source)
            .arg("-o")
            .arg(&object)
            .output();
        match output {
            Ok(done) if done.status.success() => {}
            Ok(done) => fail(&format!(
                "clang failed on {}:\n{}",
                source.display(),
                String::from_utf8_lossy(&done.stderr)
            )),
            Err(err) => fail(&format!(
                "cannot run `{clang}` ({err}); install clang and the libbpf headers: \
                 apt-get install -y clang llvm libbpf-dev bpftool"
            )),
        }
    }
}

fn generate_vmlinux(vmlinux: &Path) {
    let btf = Path::new("/sys/kernel/btf/vmlinux");
    if !btf.exists() {
        fail(
            "/sys/kernel/btf/vmlinux does not exist: this kernel has no BTF (CONFIG_DEBUG_INFO_BTF). \
             Build on a machine with BTF, or point TAPIO_VMLINUX_H at a vmlinux.h",
        );
    }
    let bpftool = env::var("BPFTOOL").ok().unwrap_or_else(|| {
        // Debian installs bpftool in /usr/sbin, which is not on every user's PATH.
        ["/usr/sbin/bpftool", "/usr/bin/bpftool"]
            .into_iter()
            .find(|candidate| Path::new(candidate).exists())
            .unwrap_or("bpftool")
            .to_string()
    });
    let output = Command::new(&bpftool)
        .args(["btf", "dump", "file"])
        .arg(btf)
        .args(["format", "c"])
        .output();
    match output {
        Ok(done) if done.status.success() => {
            if let Err(err) = std::fs::write(vmlinux, &done.stdout) {
                fail(&format!("cannot write {}: {err}", vmlinux.display()));
            }
        }
        Ok(done) => fail(&format!(
            "`{bpftool} btf dump file /sys/kernel/btf/vmlinux format c` failed:\n{}",
            String::from_utf8_lossy(&done.stderr)
        )),
        Err(err) => fail(&format!(
            "cannot run `{bpftool}` ({err}); install it: apt-get install -y bpftool"
        )),
    }
}

fn fail(message: &str) -> ! {
    eprintln!("error: tapio-ebpf build: {message}");
    println!("cargo:warning=tapio-ebpf build: {message}");
    exit(1)
}
