//! `cargo xtask setup`: installs what building and running mmtrace needs (bpf-linker on LLVM 22, nightly rust-src, a mounted tracefs); idempotent and fast when all is present.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::util::{
    APT_LOCK_TIMEOUT_S, Ctx, apt_get_args, apt_lock_holder, describe, exit_code, is_root,
    lock_timeout_message, lock_wait_message, run, status,
};

/// The LLVM bpf-linker is built against (Debian package `llvm-22-dev`).
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";
const LLVM_PACKAGE: &str = "llvm-22-dev";
const LLVM_FEATURE: &str = "llvm-22";
const TRACEFS: &str = "/sys/kernel/tracing";

/// Checks every prerequisite and installs the missing ones.
pub fn setup(ctx: &Ctx) -> Result<()> {
    let start = Instant::now();
    bpf_linker(ctx)?;
    nightly_rust_src(ctx)?;
    tracefs(ctx)?;
    test_packages(ctx)?;
    eprintln!(
        "setup: prerequisites ready ({:.2}s)",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `bpf-linker` on PATH (or in ~/.cargo/bin), built against LLVM 22.
fn bpf_linker(ctx: &Ctx) -> Result<()> {
    let mut reinstall = false;
    if let Some(path) = ctx.which("bpf-linker") {
        match Command::new(&path).arg("--version").output() {
            Ok(out) if out.status.success() => {
                let version = String::from_utf8_lossy(&out.stdout);
                eprintln!(
                    "setup: bpf-linker ok: {} ({})",
                    path.display(),
                    version.trim()
                );
                return Ok(());
            }
            _ => {
                eprintln!(
                    "setup: {} is installed but does not run (its libLLVM may be gone); reinstalling",
                    path.display()
                );
                reinstall = true;
            }
        }
    } else {
        eprintln!("setup: bpf-linker not found on PATH or in ~/.cargo/bin; installing it");
    }

    let llvm_config = Path::new(LLVM_PREFIX).join("bin/llvm-config");
    // The unversioned libLLVM.so link comes with the -dev package only
    // (llvm-config alone may be there from the runtime package).
    let llvm_dev_lib = Path::new(LLVM_PREFIX).join("lib/libLLVM.so");
    if !llvm_config.exists() || !llvm_dev_lib.exists() {
        eprintln!(
            "setup: {} or {} missing; installing {LLVM_PACKAGE} with apt-get",
            llvm_config.display(),
            llvm_dev_lib.display()
        );
        apt_get(ctx, &["update"]).context(
            "`apt-get update` failed: check the network and /etc/apt/sources.list, then re-run `cargo xtask setup`",
        )?;
        apt_get(ctx, &["install", "-y", LLVM_PACKAGE]).with_context(|| {
            format!(
                "installing {LLVM_PACKAGE} failed: install LLVM 22's development files so that {} exists \
                 (on older Debian/Ubuntu add the https://apt.llvm.org repository first), then re-run `cargo xtask setup`",
                llvm_config.display()
            )
        })?;
    }

    // LLVM_PREFIX makes bpf-linker's build link LLVM 22, not the first
    // llvm-config on PATH (LLVM 14 on Debian 12: "unable to find library -lLLVM").
    let mut path = std::ffi::OsString::from(Path::new(LLVM_PREFIX).join("bin"));
    path.push(":");
    path.push(&ctx.path);
    let mut install = ctx.cargo();
    install
        .env("LLVM_PREFIX", LLVM_PREFIX)
        .env("PATH", path)
        .args([
            "install",
            "bpf-linker",
            "--no-default-features",
            "--features",
        ])
        .arg(LLVM_FEATURE);
    if reinstall {
        install.arg("--force");
    }
    run(&mut install).with_context(|| {
        format!(
            "`cargo install bpf-linker` failed: read the compiler error above; it needs {} \
             and network access to crates.io (re-run `cargo xtask setup` once fixed)",
            llvm_config.display()
        )
    })?;
    match ctx.which("bpf-linker") {
        Some(p) => eprintln!("setup: installed {}", p.display()),
        None => bail!(
            "bpf-linker was installed but is not on PATH: add cargo's bin directory (~/.cargo/bin) to PATH"
        ),
    }
    Ok(())
}

/// Debian packages the tests drive for real, by the command each provides
/// (or, `python3:MODULE`, the Python module): tmux (the live view in a
/// terminal), promtool and a real Prometheus (the metrics endpoint),
/// Python's prometheus_client (its OpenMetrics parser checks /metrics),
/// headless Chromium (the web dashboard); and the peers `cargo xtask
/// bench` measures mmtrace against, bpftrace and perf.
const TEST_PACKAGES: &[(&str, &str)] = &[
    ("tmux", "tmux"),
    ("promtool", "prometheus"),
    ("prometheus", "prometheus"),
    ("python3:prometheus_client", "python3-prometheus-client"),
    ("chromium", "chromium"),
    ("bpftrace", "bpftrace"),
    ("perf", "linux-perf"),
];

/// Whether what a [`TEST_PACKAGES`] entry provides is there.
fn provided(ctx: &Ctx, what: &str) -> bool {
    match what.strip_prefix("python3:") {
        // Debian's python3-* packages serve the system Python.
        Some(module) => {
            std::process::Command::new(if std::path::Path::new("/usr/bin/python3").exists() {
                "/usr/bin/python3"
            } else {
                "python3"
            })
            .args(["-c", &format!("import {module}")])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        }
        None => ctx.which(what).is_some(),
    }
}

/// Installs the [`TEST_PACKAGES`] whose command is missing (one apt run).
fn test_packages(ctx: &Ctx) -> Result<()> {
    let mut missing: Vec<&str> = TEST_PACKAGES
        .iter()
        .filter(|(what, _)| !provided(ctx, what))
        .map(|(_, pkg)| *pkg)
        .collect();
    missing.dedup();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!(
        "setup: installing {} with apt-get (the tests use them)",
        missing.join(", ")
    );
    apt_get(ctx, &["update"]).context(
        "`apt-get update` failed: check the network and /etc/apt/sources.list, then re-run `cargo xtask setup`",
    )?;
    let mut args = vec!["install", "-y", "--no-install-recommends"];
    args.extend(&missing);
    apt_get(ctx, &args).with_context(|| {
        format!(
            "installing {} failed: install them yourself, then re-run `cargo xtask setup`",
            missing.join(" ")
        )
    })
}

/// `apt-get ARGS` as root, non-interactively, once no other apt or dpkg run
/// holds the package manager's locks (saying who does, every 10 s), for up
/// to [`APT_LOCK_TIMEOUT_S`] in all. A run that fails with exit status 100
/// while a lock is held again (taken between the check and the start; apt
/// does not wait for the lists lock of `apt-get update`) is retried.
fn apt_get(ctx: &Ctx, args: &[&str]) -> Result<()> {
    let mut cmd = ctx.as_root("env").with_context(|| {
        format!(
            "installing {LLVM_PACKAGE} needs root: run `sudo apt-get install {LLVM_PACKAGE}` yourself, then re-run `cargo xtask setup`"
        )
    })?;
    cmd.args(apt_get_args(args));
    let start = Instant::now();
    let limit = Duration::from_secs(APT_LOCK_TIMEOUT_S);
    loop {
        wait_for_apt_locks(start, limit)?;
        let st = status(&mut cmd)?;
        if st.success() {
            return Ok(());
        }
        match apt_lock_holder() {
            Some(h) if exit_code(st) == 100 && start.elapsed() < limit => eprintln!(
                "setup: apt-get failed while {} holds {}; trying again once it is released",
                h.who(),
                h.lock.display()
            ),
            _ => bail!("`{}` failed ({st})", describe(&cmd)),
        }
    }
}

/// Returns once none of the package manager locks (`util::APT_LOCKS`) is held, printing who holds one at
/// once and then every 10 s; fails when `limit` since `start` has passed.
fn wait_for_apt_locks(start: Instant, limit: Duration) -> Result<()> {
    const SAY_EVERY: Duration = Duration::from_secs(10);
    let mut said: Option<Instant> = None;
    loop {
        let Some(h) = apt_lock_holder() else {
            if said.is_some() {
                eprintln!(
                    "setup: the package manager lock is free (waited {} s)",
                    start.elapsed().as_secs()
                );
            }
            return Ok(());
        };
        if start.elapsed() >= limit {
            bail!(lock_timeout_message(&h, limit.as_secs()));
        }
        if said.is_none_or(|t| t.elapsed() >= SAY_EVERY) {
            eprintln!(
                "setup: {}",
                lock_wait_message(&h, start.elapsed().as_secs(), limit.as_secs())
            );
            said = Some(Instant::now());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The nightly toolchain with `rust-src` (the eBPF crate is built with `-Z build-std=core`).
fn nightly_rust_src(ctx: &Ctx) -> Result<()> {
    if ctx.which("rustup").is_none() {
        bail!(
            "rustup is not on PATH: install it from https://rustup.rs (the eBPF build needs a nightly toolchain), then re-run `cargo xtask setup`"
        );
    }
    let out = ctx
        .cmd("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()
        .context("running `rustup component list`")?;
    if !out.status.success() {
        eprintln!("setup: no nightly toolchain; installing it with rust-src");
        return run(ctx.cmd("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]))
        .context(
            "installing the nightly toolchain failed: run `rustup toolchain install nightly --component rust-src` yourself, then re-run `cargo xtask setup`",
        );
    }
    let listed = String::from_utf8_lossy(&out.stdout);
    let has_src = listed
        .lines()
        .any(|l| l.split_whitespace().next() == Some("rust-src"));
    if has_src {
        eprintln!("setup: nightly rust-src ok");
        return Ok(());
    }
    eprintln!("setup: nightly lacks rust-src; adding it");
    run(ctx
        .cmd("rustup")
        .args(["component", "add", "rust-src", "--toolchain", "nightly"]))
    .context(
        "adding rust-src failed: run `rustup component add rust-src --toolchain nightly` yourself, then re-run `cargo xtask setup`",
    )
}

/// tracefs mounted at /sys/kernel/tracing (the tracer reads tracepoint formats there).
fn tracefs(ctx: &Ctx) -> Result<()> {
    if tracefs_mounted() {
        eprintln!("setup: tracefs ok ({TRACEFS})");
        return Ok(());
    }
    if !is_root() {
        bail!(
            "tracefs is not mounted at {TRACEFS}: run `sudo mount -t tracefs nodev {TRACEFS}` (or `cargo xtask setup` as root)"
        );
    }
    eprintln!("setup: tracefs not mounted; mounting it at {TRACEFS}");
    run(ctx
        .cmd("mount")
        .args(["-t", "tracefs", "nodev", TRACEFS]))
    .with_context(|| {
        format!(
            "mounting tracefs failed: the kernel needs CONFIG_TRACING, and in a container {TRACEFS} must be \
             mounted by the host (e.g. docker run -v /sys/kernel/tracing:/sys/kernel/tracing)"
        )
    })?;
    if !tracefs_mounted() {
        bail!(
            "tracefs was mounted but {TRACEFS}/events is missing: check that the kernel has tracepoints (CONFIG_TRACING)"
        );
    }
    Ok(())
}

/// Whether tracefs is at TRACEFS. /sys/kernel/tracing is often mode 0700, so
/// for non-root users the mount table is the answer, not the directory.
fn tracefs_mounted() -> bool {
    if Path::new(TRACEFS).join("events").is_dir() {
        return true;
    }
    std::fs::read_to_string("/proc/self/mounts").is_ok_and(|mounts| {
        mounts.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 2 && f[1] == TRACEFS && f[2] == "tracefs"
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The real apt path on an install that changes nothing: as root, with
    /// tmux installed and marked manual. Hold a lock meanwhile to see the
    /// wait, e.g. `python3 -c 'import fcntl,time; f=open("/var/lib/dpkg/lock-frontend","w");
    /// fcntl.lockf(f, fcntl.LOCK_EX); time.sleep(25)' &`.
    #[test]
    #[ignore = "runs apt-get as root (a no-op install of tmux)"]
    fn apt_get_of_an_installed_package_waits_for_the_lock_then_succeeds() {
        let manual = Command::new("apt-mark")
            .args(["showmanual", "tmux"])
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "tmux");
        if !is_root() || !manual {
            eprintln!("needs root and tmux installed and marked manual: skipped");
            return;
        }
        let ctx = Ctx::new().unwrap();
        let start = Instant::now();
        apt_get(&ctx, &["install", "-y", "tmux"]).unwrap();
        eprintln!(
            "apt_get returned after {:.1} s",
            start.elapsed().as_secs_f64()
        );
    }
}
