//! `mmtrace demo` (and `mmtrace` with no target): the scenario mmtrace exists
//! for. A program reads a big file through mmap inside a memory-limited
//! cgroup; its RSS climbs to the limit and looks like a leak, while the
//! kernel quietly evicts the file's clean pages. The demo creates the file and
//! the cgroup, traces the reader with the live table, prints the verdict, and
//! removes the cgroup and the file afterwards — also on Ctrl-C or error.
use std::path::{Path, PathBuf};

use anyhow::{Context as _, Result, bail};
use tokio::signal::unix::{SignalKind, signal};

use crate::{cgroup, datafile::parse_size, preflight, session, spec::TraceSpec};

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Read the file through a shared mapping (page faults).
    Mmap,
    /// Read it with read(2) (no faults: page cache only), for contrast.
    Read,
}

#[derive(clap::Args, Debug, Clone)]
pub struct DemoArgs {
    /// Size of the demo file (K, M, G suffixes).
    #[arg(long, default_value = "1G", value_parser = parse_size)]
    pub size: u64,
    /// Memory limit of the demo cgroup (K, M, G suffixes).
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    pub limit: u64,
    /// How the reader reads the file.
    #[arg(long, value_enum, default_value_t = Mode::Mmap)]
    pub mode: Mode,
    /// Seconds the reader should take (it is paced so the live table can
    /// follow; 0: full speed).
    #[arg(long, default_value_t = 8)]
    pub seconds: u64,
    /// Directory for the file [default: /var/tmp; not tmpfs: its pages
    /// could not be evicted].
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

impl Default for DemoArgs {
    fn default() -> Self {
        Self {
            size: 1 << 30,
            limit: 256 << 20,
            mode: Mode::Mmap,
            seconds: 8,
            dir: None,
        }
    }
}

/// Removes what the demo created, whatever happens.
struct Cleanup {
    dir: Option<PathBuf>,
    cgroup: Option<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(cg) = &self.cgroup {
            remove_cgroup(cg);
        }
        if let Some(d) = &self.dir {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

/// Kills what is left in the cgroup, then removes it (a cgroup can only be
/// removed empty; the kernel needs a moment after the last exit).
fn remove_cgroup(cg: &Path) {
    for _ in 0..100 {
        let procs = cgroup::procs(&[(cg.to_path_buf(), 0)]);
        for p in &procs {
            // SAFETY: plain syscall.
            unsafe { libc::kill(*p as i32, libc::SIGKILL) };
        }
        if std::fs::remove_dir(cg).is_ok() || !cg.exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    eprintln!(
        "mmtrace demo: could not remove the cgroup {}; remove it with rmdir",
        cg.display()
    );
}

/// Creates a memory cgroup limited to `limit` bytes: cgroup v2 when its
/// memory controller is available, else the v1 memory controller.
pub fn create_cgroup(name: &str, limit: u64) -> Result<PathBuf> {
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let mounts = cgroup::mounts(&mountinfo);
    let v2 = mounts
        .iter()
        .find(|m| m.version == cgroup::Version::V2)
        .filter(|m| {
            std::fs::read_to_string(m.point.join("cgroup.controllers"))
                .is_ok_and(|c| c.split_whitespace().any(|x| x == "memory"))
        });
    if let Some(m) = v2 {
        // Let the root delegate memory to its children (no-op if it does).
        let _ = std::fs::write(m.point.join("cgroup.subtree_control"), "+memory");
        let dir = m.point.join(name);
        std::fs::create_dir(&dir)
            .with_context(|| format!("creating the cgroup {}", dir.display()))?;
        let set = std::fs::write(dir.join("memory.max"), limit.to_string());
        if let Err(e) = set {
            let _ = std::fs::remove_dir(&dir);
            return Err(e).with_context(|| format!("setting memory.max of {}", dir.display()));
        }
        return Ok(dir);
    }
    let Some(m) = mounts
        .iter()
        .find(|m| m.controllers.iter().any(|c| c == "memory"))
    else {
        bail!(
            "no memory cgroup controller is mounted (neither cgroup v2 with memory nor v1 memory)"
        );
    };
    let dir = m.point.join(name);
    std::fs::create_dir(&dir).with_context(|| format!("creating the cgroup {}", dir.display()))?;
    if let Err(e) = std::fs::write(dir.join("memory.limit_in_bytes"), limit.to_string()) {
        let _ = std::fs::remove_dir(&dir);
        return Err(e)
            .with_context(|| format!("setting memory.limit_in_bytes of {}", dir.display()));
    }
    Ok(dir)
}

/// Runs the demo; returns mmtrace's exit status.
pub async fn run(mut spec: TraceSpec, args: &DemoArgs) -> Result<i32> {
    preflight::check_privileges()?;
    if args.limit >= args.size {
        eprintln!(
            "mmtrace demo: note: the limit ({} MiB) is not below the file size ({} MiB): nothing will need reclaiming",
            args.limit >> 20,
            args.size >> 20
        );
    }
    // From here on Ctrl-C is ours: it must not skip the clean-up.
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let base = args
        .dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("/var/tmp"));
    let dir = base.join(format!("mmtrace-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cleanup = Cleanup {
        dir: Some(dir.clone()),
        cgroup: None,
    };

    eprintln!(
        "mmtrace demo: writing a {} MiB file in {} ...",
        args.size >> 20,
        dir.display()
    );
    let (d, size) = (dir.clone(), args.size);
    let make = tokio::task::spawn_blocking(move || crate::datafile::demo_file(&d, size));
    let file = tokio::select! {
        r = make => r.context("the file writer panicked")??,
        _ = sigint.recv() => {
            eprintln!("mmtrace demo: interrupted; cleaning up");
            return Ok(130);
        }
    };
    drop(sigint); // the trace installs its own handler
    let cg = create_cgroup(&format!("mmtrace-demo-{}", std::process::id()), args.limit)?;
    cleanup.cgroup = Some(cg.clone());
    eprintln!(
        "mmtrace demo: cgroup {} limited to {} MiB; the reader {} the file inside it",
        cg.display(),
        args.limit >> 20,
        match args.mode {
            Mode::Mmap => "maps and reads",
            Mode::Read => "read()s",
        }
    );

    let exe = std::env::current_exe().context("locating the mmtrace binary")?;
    spec.pids.clear();
    spec.all = false;
    spec.cgroup = Some(cg.display().to_string());
    spec.command = vec![
        exe.into_os_string(),
        "workload".into(),
        match args.mode {
            Mode::Mmap => "mmap-read",
            Mode::Read => "read",
        }
        .into(),
        "--path".into(),
        file.clone().into_os_string(),
        "--pace-mib-s".into(),
        match args.seconds {
            0 => 0,
            s => ((args.size >> 20) / s).max(1),
        }
        .to_string()
        .into(),
    ];
    if spec.interval.is_none() {
        spec.interval = Some(1.0);
    }
    let code = session::run(&spec).await;
    drop(cleanup);
    code
}
