//! One trace from start to final report: checks the input, runs the
//! preflight, starts the command at its gate, loads the tracer, then scans
//! `/proc` and the maps until the target exits, the duration ends or a signal
//! arrives — and always prints the final report.
use std::{
    collections::BTreeSet,
    fs::File,
    io::Write as _,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail};
use aya::maps::{MapData, RingBuf};
use mmtrace_common::{CgroupKey, Notice, ReclaimStats, notice};

use crate::model::OomKill;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};

use crate::{
    cgroup::{self, Cgroup, MemoryState},
    cli::Cli,
    collect::{
        Snapshot,
        loader::{Capacity, Tracer},
    },
    devnum::Dev,
    kernel::offsets,
    model::Ledger,
    names::Names,
    output::{
        json::{self, CommandExit, EndReason, JsonSink, Scope},
        table::{self, TableOptions},
    },
    preflight,
    procfs::{self, ProcError},
    residency,
    target::{self, Exited},
    verdict::{self, Ending, Evidence, Verdict},
};

const PROC: &str = "/proc";
/// How often /proc and the maps are scanned (paths, new children, files).
const SCAN: Duration = Duration::from_millis(200);

pub fn page_size() -> u64 {
    // SAFETY: sysconf cannot fail for _SC_PAGESIZE.
    (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).max(1) as u64
}

/// Where the human table goes.
enum TableOut {
    None,
    Stdout,
    Stderr,
}

struct Outputs {
    json: Option<JsonSink>,
    table: TableOut,
    opts: TableOptions,
}

impl Outputs {
    /// One line where the table goes.
    fn line(&self, text: &str) {
        match self.table {
            TableOut::None => {}
            TableOut::Stdout => {
                println!("{text}");
                let _ = std::io::stdout().flush();
            }
            TableOut::Stderr => eprintln!("{text}"),
        }
    }

    fn table(&mut self, title: String, r: &crate::model::Report) {
        self.opts.title = title;
        let text = table::render(r, &self.opts);
        match self.table {
            TableOut::None => {}
            TableOut::Stdout => {
                print!("{text}");
                let _ = std::io::stdout().flush();
            }
            TableOut::Stderr => eprint!("{text}"),
        }
    }
}

/// Runs mmtrace; returns the process exit status.
pub async fn run(cli: &Cli) -> Result<i32> {
    // --- Input that can be checked without privileges.
    let json_sink = if cli.wants_json() {
        Some(match &cli.output {
            Some(p) => {
                let f = File::create(p)
                    .with_context(|| format!("cannot write the JSON output to {}", p.display()))?;
                JsonSink::new(
                    Box::new(std::io::BufWriter::new(f)),
                    p.display().to_string(),
                )
            }
            None => JsonSink::new(Box::new(std::io::stdout()), "stdout"),
        })
    } else {
        None
    };
    let self_pid = std::process::id();
    for &pid in &cli.pids {
        if pid == self_pid {
            bail!("pid {pid} is mmtrace itself; mmtrace never traces itself");
        }
        if pid == 0 || !procfs::pid_exists(Path::new(PROC), pid) {
            bail!("no process with pid {pid} (check it with `ps -p {pid}`)");
        }
    }
    if cli.pids.is_empty() && cli.command.is_empty() && cli.cgroup.is_none() {
        bail!(
            "nothing to trace: give --pid PID, --cgroup PATH or -- COMMAND (or run `mmtrace demo`)"
        );
    }
    if !cli.pids.is_empty() && cli.cgroup.is_some() {
        bail!("give either --pid or --cgroup, not both (a command may run inside --cgroup)");
    }
    let cgroup = match &cli.cgroup {
        Some(arg) => Some(resolve_cgroup(arg)?),
        None => None,
    };
    trace(cli, json_sink, cli.command.clone(), self_pid, cgroup).await
}

/// Resolves `--cgroup` against this machine's cgroup mounts.
pub fn resolve_cgroup(arg: &str) -> Result<Cgroup> {
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let pc = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    Ok(cgroup::resolve(arg, &cgroup::mounts(&mountinfo), &pc)?)
}

async fn trace(
    cli: &Cli,
    json_sink: Option<JsonSink>,
    command: Vec<String>,
    self_pid: u32,
    cgroup: Option<Cgroup>,
) -> Result<i32> {
    let cmd_path = match command.first() {
        Some(c) => Some(target::resolve_command(
            c,
            std::env::var("PATH").ok().as_deref(),
        )?),
        None => None,
    };

    // --- Preflight.
    preflight::check_privileges()?;
    // MMTRACE_BTF / MMTRACE_TRACEFS point at other files (tests, unusual
    // mounts); by default the kernel's own.
    let btf_path = std::env::var_os("MMTRACE_BTF").map(PathBuf::from);
    let btf = preflight::load_btf(
        btf_path
            .as_deref()
            .unwrap_or(Path::new(preflight::BTF_PATH)),
    )?;
    let root = match std::env::var_os("MMTRACE_TRACEFS") {
        Some(r) => PathBuf::from(r),
        None => preflight::tracefs_root()?,
    };
    preflight::check_tracepoints(&root)?;
    let (mut config, features) = offsets::compute(&btf, &root, self_pid)?;
    let mut watch = cgroup.map(CgroupWatch::new);
    if watch.is_some() {
        config.cgroup_mode = 1;
    }
    drop(btf);
    if !features.write_faults {
        log::warn!(
            "exceptions:page_fault_user is missing (not x86?): write and copy-on-write faults are not told apart"
        );
    }

    // --- Targets.
    let follow = !cli.no_children;
    let json_on_stdout = json_sink.is_some() && cli.output.is_none();
    let gated = match &cmd_path {
        Some(p) => Some(target::spawn_gated(p, &command, json_on_stdout)?),
        None => None,
    };
    let mut targets: Vec<(u32, bool)> = cli.pids.iter().map(|&p| (p, follow)).collect();
    if let Some(w) = &watch {
        targets.extend(
            cgroup::procs(&w.dirs)
                .into_iter()
                .filter(|p| *p != self_pid)
                .map(|p| (p, follow)),
        );
    }
    if let Some(g) = &gated {
        targets.push((g.pid, follow));
    }
    let nr_cpus = aya::util::nr_cpus().unwrap_or(1);
    let cap = Capacity {
        processes: cli.max_processes,
        mappings: cli
            .max_mappings
            .unwrap_or_else(|| Cli::per_cpu_capacity(mmtrace_common::limits::MAPPINGS, nr_cpus)),
        files: cli
            .max_files
            .unwrap_or_else(|| Cli::per_cpu_capacity(mmtrace_common::limits::FILES, nr_cpus)),
        ..Capacity::default()
    };
    let mut tracer = match Tracer::load(&config, &features, cap, &targets) {
        Ok(t) => t,
        Err(e) => {
            if let Some(g) = gated {
                g.abort();
            }
            return Err(e);
        }
    };

    let ps = page_size();
    let mut ledger = Ledger::new(ps);
    let mut names = Names::default();
    let proc_root = Path::new(PROC);
    if let Some(w) = &mut watch {
        tracer.set_cgroups(&w.keys())?;
        // Owners are memcgs: they match the traced tree only if it is the
        // memory hierarchy (v1 memory, or v2 with the memory controller).
        ledger.owner_known = features.eviction_owner && w.cg.has_memory;
        w.sample();
    }
    for &(pid, _) in &targets {
        let stat = match procfs::read_stat(proc_root, pid) {
            Ok(s) => s,
            // A cgroup member may exit between the listing and now.
            Err(ProcError::NotFound { .. })
                if watch.is_some() && Some(pid) != gated.as_ref().map(|g| g.pid) =>
            {
                continue;
            }
            Err(ProcError::NotFound { .. }) => {
                if let Some(g) = gated {
                    g.abort();
                }
                bail!("process {pid} exited before mmtrace could attach; nothing was traced");
            }
            Err(e) => return Err(e.into()),
        };
        ledger.add_process(pid, true, Some(&stat), thread_faults(proc_root, pid));
    }
    if cli.bpf_stats {
        tracer.enable_stats()?;
    }
    if let (Some(g), Some(w)) = (&gated, &watch) {
        // The command runs inside the traced cgroup: move it while it waits
        // at the gate, before its first instruction.
        let procs = w.cg.path.join("cgroup.procs");
        if let Err(e) = std::fs::write(&procs, g.pid.to_string()) {
            let pid = g.pid;
            if let Some(g) = gated {
                g.abort();
            }
            bail!(
                "moving the command (pid {pid}) into {}: {e}",
                procs.display()
            );
        }
    }
    let child = match gated {
        Some(g) => Some(g.release()?),
        None => None,
    };

    // --- Outputs.
    let mut out = Outputs {
        json: json_sink,
        table: if cli.quiet {
            TableOut::None
        } else if json_on_stdout {
            TableOut::Stderr
        } else {
            TableOut::Stdout
        },
        opts: TableOptions {
            page_size: ps,
            top: cli.top,
            mappings: cli.mappings,
            title: String::new(),
            write_faults: features.write_faults,
        },
    };
    let start = Instant::now();
    let start_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let scope = Scope {
        pids: cli.pids.clone(),
        command: cmd_path.as_ref().map(|_| command.clone()),
        follow_children: follow,
    };
    if let Some(j) = &mut out.json {
        j.write(&json::meta(
            &scope,
            &preflight::kernel_release(),
            ps,
            cli.interval,
            &features,
            start_ms,
        ))?;
    }
    if !cli.quiet {
        let what = match (child, &watch) {
            (Some(pid), Some(w)) => format!(
                "cgroup {} with command {:?} (pid {pid}) inside it",
                w.cg.path.display(),
                command.join(" ")
            ),
            (None, Some(w)) => format!(
                "cgroup {} ({} processes)",
                w.cg.path.display(),
                targets.len()
            ),
            (Some(pid), None) => format!("command {:?} (pid {pid})", command.join(" ")),
            (None, None) => format!(
                "pid {}",
                cli.pids
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        eprintln!(
            "mmtrace: tracing {what}{}; Ctrl-C to stop",
            if follow { " and its children" } else { "" }
        );
    }

    // --- Trace loop.
    let mut sigint = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut sigterm = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut scan = tokio::time::interval(SCAN);
    let interval = cli.interval.map(Duration::from_secs_f64);
    let mut next_report = interval.map(|i| start + i);
    let deadline = cli.duration.map(|d| start + Duration::from_secs_f64(d));
    let mut seq = 0u64;
    let mut exited: Option<Exited> = None;
    // SAFETY: the ring buffer's fd lives inside the AsyncFd until it drops.
    let mut notices = unsafe { AsyncFd::register(tracer.take_notices()?) }
        .map_err(|e| anyhow::anyhow!("polling the notice ring buffer: {e}"))?;
    let end = loop {
        tokio::select! {
            _ = scan.tick() => {}
            guard = notices.readable_mut() => {
                let mut guard = guard.context("polling the notice ring buffer")?;
                let kills = drain_notices(guard.get_inner_mut(), &mut ledger, &mut names, proc_root, start);
                guard.clear_ready();
                report_oom_kills(&mut out, &kills)?;
                continue;
            }
            _ = sigint.recv() => break EndReason::Interrupted,
            _ = sigterm.recv() => break EndReason::Interrupted,
        }
        let snap = refresh(&mut ledger, &mut names, &mut tracer, proc_root)?;
        if let Some(w) = &mut watch {
            if w.gone() {
                eprintln!(
                    "mmtrace: cgroup {} was removed; ending the trace",
                    w.cg.path.display()
                );
                break EndReason::CgroupRemoved;
            }
            w.rescan(&mut tracer, &mut ledger, &snap, proc_root, self_pid, follow)?;
            w.sample();
        }
        if let Some(pid) = child {
            if let Some(e) = target::wait(pid, false).context("waiting for the command")? {
                exited = Some(e);
                break EndReason::TargetExited;
            }
        } else if watch.is_none()
            && cli
                .pids
                .iter()
                .all(|&p| !procfs::pid_exists(proc_root, p) || !snap.scope.contains_key(&p))
        {
            break EndReason::TargetExited;
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            break EndReason::Duration;
        }
        if let (Some(at), Some(i)) = (next_report, interval)
            && now >= at
        {
            seq += 1;
            next_report = Some(at + i);
            refresh_names(&mut ledger, &mut names);
            update_residency(&mut ledger, &snap);
            let r = ledger.report(&snap);
            let el = start.elapsed().as_secs_f64();
            if let Some(j) = &mut out.json {
                let mut v = json::interval(seq, el, &r);
                if let Some(w) = &watch {
                    v["cgroup"] = w.to_json(&snap.reclaim, ps);
                }
                j.write(&v)?;
            }
            out.table(format!("interval {seq} (+{el:.1} s)"), &r);
            if let Some(w) = &watch {
                out.line(&w.line(&snap.reclaim, ps));
            }
        }
    };

    // --- The command: let it finish after a signal, then reap it.
    if let (Some(pid), None) = (child, exited) {
        // A terminal Ctrl-C reached the command too; a SIGTERM sent to
        // mmtrace alone is passed on.
        // SAFETY: plain syscall.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        let until = Instant::now() + Duration::from_secs(5);
        while Instant::now() < until {
            if let Ok(Some(e)) = target::wait(pid, false) {
                exited = Some(e);
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        if exited.is_none() {
            eprintln!("mmtrace: the command (pid {pid}) is still running; it is no longer traced");
        }
    }

    // --- Final report.
    let kills = drain_notices(notices.get_mut(), &mut ledger, &mut names, proc_root, start);
    report_oom_kills(&mut out, &kills)?;
    let bpf_stats = cli.bpf_stats.then(|| tracer.program_stats());
    // Detach first: the final read then sees counters that no longer move.
    tracer.detach();
    let snap = refresh(&mut ledger, &mut names, &mut tracer, proc_root)?;
    drop(notices);
    drop(tracer);
    resolve_unknown(&mut ledger, &snap, proc_root);
    refresh_names(&mut ledger, &mut names);
    update_residency(&mut ledger, &snap);
    let r = ledger.report(&snap);
    let el = start.elapsed().as_secs_f64();
    let cmd_exit = match (child, exited) {
        (Some(pid), Some(e)) => Some(CommandExit {
            pid,
            exit_code: e.exit_code,
            signal: e.signal,
            rusage_minor_faults: e.minflt,
            rusage_major_faults: e.majflt,
            oom_killed: ledger.oom_kills.iter().any(|k| k.pid == pid),
        }),
        _ => None,
    };
    if let Some(w) = &mut watch
        && !w.gone()
    {
        w.sample();
    }
    let verdicts = verdicts(&ledger, &r, watch.as_ref(), cmd_exit.as_ref(), ps);
    if let Some(j) = &mut out.json {
        for v in &verdicts {
            let mut rec = serde_json::to_value(v)?;
            rec["type"] = "verdict".into();
            j.write(&rec)?;
        }
        let mut v = json::summary(el, end, &r, cmd_exit.as_ref(), bpf_stats.as_deref());
        if let Some(w) = &watch {
            v["cgroup"] = w.to_json(&snap.reclaim, ps);
        }
        v["verdicts"] = serde_json::to_value(&verdicts)?;
        v["oom_kills"] = serde_json::to_value(&ledger.oom_kills)?;
        j.write(&v)?;
    }
    let cmd_why = cmd_exit.as_ref().map(CommandExit::describe);
    let why = match end {
        EndReason::TargetExited if cmd_why.is_some() => cmd_why.as_deref().unwrap_or_default(),
        EndReason::TargetExited => "target exited",
        EndReason::Interrupted => "interrupted",
        EndReason::Duration => "duration reached",
        EndReason::CgroupRemoved => "cgroup removed",
        EndReason::Error => "error",
    };
    out.table(format!("final report ({el:.1} s, {why})"), &r);
    if let Some(w) = &watch {
        out.line(&w.line(&snap.reclaim, ps));
    }
    for v in &verdicts {
        let whom = match v.pid {
            Some(pid) => format!("pid {pid}"),
            None => "the cgroup".into(),
        };
        out.line(&format!("verdict ({whom}): {}", v.message));
    }
    if let (Some(stats), false) = (&bpf_stats, cli.quiet) {
        eprintln!(
            "{:<22} {:>12} {:>14} {:>10}",
            "BPF PROGRAM", "RUNS", "TOTAL ns", "ns/RUN"
        );
        for p in stats {
            let per = p
                .ns_per_run
                .map(|n| format!("{n:.0}"))
                .unwrap_or_else(|| "-".into());
            eprintln!(
                "{:<22} {:>12} {:>14} {:>10}",
                p.program, p.run_count, p.run_time_ns, per
            );
        }
    }
    Ok(match exited {
        Some(e) => e.shell_status(),
        None if child.is_some() => 130,
        None => 0,
    })
}

/// Reads the maps, then /proc for every process in scope (new children get
/// a zero baseline: they were born inside the trace), and registers the
/// files they map or hold open.
fn refresh(
    ledger: &mut Ledger,
    names: &mut Names,
    tracer: &mut Tracer,
    root: &Path,
) -> Result<Snapshot> {
    let snap = tracer.snapshot()?;
    let mut pids: BTreeSet<u32> = snap.scope.keys().copied().collect();
    pids.extend(
        ledger
            .procs
            .iter()
            .filter(|(_, p)| p.alive)
            .map(|(pid, _)| *pid),
    );
    for pid in pids {
        if !snap.scope.contains_key(&pid) {
            ledger.mark_gone(pid);
            continue;
        }
        if !ledger.procs.contains_key(&pid) {
            // Born inside the trace: its counters started at zero. Moved into
            // the traced cgroup: it lived before, so take a baseline now.
            let joined = snap.scope[&pid].flags & mmtrace_common::scope::JOINED != 0;
            match procfs::read_stat(root, pid) {
                Ok(stat) if joined => {
                    ledger.add_process(pid, false, Some(&stat), thread_faults(root, pid))
                }
                _ => ledger.add_process(pid, false, None, (0, 0)),
            }
        }
        match procfs::read_stat(root, pid) {
            Ok(stat) => {
                let status = procfs::read_status(root, pid).ok();
                let maps = procfs::read_maps(root, pid).ok();
                let fds = procfs::read_fd_files(root, pid).unwrap_or_default();
                take_handles(names, root, pid, maps.as_deref().unwrap_or_default(), &fds);
                ledger.observe(pid, Some(&stat), status, maps, &fds);
            }
            Err(_) => ledger.mark_gone(pid),
        }
    }
    tracer.register_files(&ledger.known_files())?;
    Ok(snap)
}

/// Acts on the kernel's notices: a new file of interest is looked up in the
/// maps of the process that touched it, while that mapping still exists; an
/// OOM kill of a traced process is recorded (and returned, to be written).
fn drain_notices(
    rb: &mut RingBuf<MapData>,
    ledger: &mut Ledger,
    names: &mut Names,
    root: &Path,
    start: Instant,
) -> Vec<OomKill> {
    let mut kills = Vec::new();
    while let Some(item) = rb.next() {
        if item.len() < 4 {
            continue;
        }
        let kind = u32::from_ne_bytes([item[0], item[1], item[2], item[3]]);
        if kind == notice::OOM_KILL && item.len() >= std::mem::size_of::<mmtrace_common::OomKill>()
        {
            // SAFETY: the kernel wrote an OomKill; read_unaligned copes with alignment.
            let k: mmtrace_common::OomKill =
                unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            if k.in_scope != 0 || ledger.procs.contains_key(&k.pid) {
                let cg = std::fs::read_to_string(root.join(k.pid.to_string()).join("cgroup"))
                    .ok()
                    .and_then(|t| cgroup::memory_cgroup_of(&t));
                kills.push(oom_kill(&k, cg, start.elapsed().as_secs_f64()));
            }
            continue;
        }
        if kind != notice::NEW_FILE || item.len() < std::mem::size_of::<Notice>() {
            continue;
        }
        // SAFETY: the kernel wrote a Notice; read_unaligned copes with alignment.
        let n: Notice = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
        if ledger.knows((n.dev, n.ino)) {
            continue;
        }
        let maps = procfs::read_maps(root, n.pid).unwrap_or_default();
        let fds = procfs::read_fd_files(root, n.pid).unwrap_or_default();
        take_handles(names, root, n.pid, &maps, &fds);
        ledger.learn_paths(&maps, &fds);
    }
    ledger.oom_kills.extend(kills.iter().cloned());
    kills
}

/// The userspace form of the kernel's OOM-kill record (kB → bytes).
fn oom_kill(k: &mmtrace_common::OomKill, cgroup: Option<String>, elapsed_s: f64) -> OomKill {
    OomKill {
        pid: k.pid,
        comm: crate::collect::maps::comm_string(&k.comm),
        anon_rss_bytes: k.anon_rss_kb * 1024,
        file_rss_bytes: k.file_rss_kb * 1024,
        shmem_rss_bytes: k.shmem_rss_kb * 1024,
        total_vm_bytes: k.total_vm_kb * 1024,
        oom_score_adj: k.oom_score_adj,
        in_scope: k.in_scope != 0,
        cgroup,
        elapsed_s,
    }
}

/// Writes OOM kills as they happen: a JSON record and a line.
fn report_oom_kills(out: &mut Outputs, kills: &[OomKill]) -> Result<()> {
    let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
    for k in kills {
        if let Some(j) = &mut out.json {
            j.write(&json::oom_kill(k))?;
        }
        out.line(&format!(
            "mmtrace: the OOM killer ended pid {} ({}) at +{:.1} s: anon {:.0} MiB, file {:.0} MiB, shmem {:.0} MiB at the kill{}",
            k.pid,
            k.comm,
            k.elapsed_s,
            mib(k.anon_rss_bytes),
            mib(k.file_rss_bytes),
            mib(k.shmem_rss_bytes),
            k.cgroup
                .as_deref()
                .map(|c| format!(" (cgroup {c})"))
                .unwrap_or_default()
        ));
    }
    Ok(())
}

/// Last resort for files whose path is still unknown (their process was too
/// short-lived): any process on the machine that maps or holds them.
fn resolve_unknown(ledger: &mut Ledger, snap: &Snapshot, root: &Path) {
    let unknown = snap
        .files
        .keys()
        .map(|k| (k.dev, k.ino))
        .chain(
            snap.mappings
                .keys()
                .filter(|k| k.kind & mmtrace_common::kind::FILE != 0)
                .map(|k| (k.dev, k.ino)),
        )
        .any(|id| !ledger.knows(id));
    if !unknown {
        return;
    }
    for pid in procfs::list_pids(root).unwrap_or_default() {
        let maps = procfs::read_maps(root, pid).unwrap_or_default();
        let fds = procfs::read_fd_files(root, pid).unwrap_or_default();
        ledger.learn_paths(&maps, &fds);
    }
}

/// Takes a file handle for every file a process maps or holds open that
/// has none yet, through its `/proc` link (see `names`).
fn take_handles(
    names: &mut Names,
    root: &Path,
    pid: u32,
    maps: &[procfs::MapEntry],
    fds: &[procfs::OpenFile],
) {
    let dir = root.join(pid.to_string());
    for m in maps.iter().filter(|m| m.is_file()) {
        let id = (m.dev.to_kernel(), m.ino);
        if !names.tried(id) {
            names.learn(
                id,
                &dir.join(format!("map_files/{:x}-{:x}", m.start, m.end)),
            );
        }
    }
    for f in fds {
        let id = (f.dev.to_kernel(), f.ino);
        if !names.tried(id) {
            names.learn(id, &dir.join(format!("fd/{}", f.fd)));
        }
    }
}

/// Every known path becomes the file's name now (after renames), or is
/// marked deleted.
fn refresh_names(ledger: &mut Ledger, names: &mut Names) {
    for (id, info) in ledger.paths.iter_mut() {
        let now = names.current(*id, info);
        if now.path.is_empty() {
            info.deleted = true;
        } else {
            *info = now;
        }
    }
}

/// Residency of every reported file (cachestat, or mincore).
fn update_residency(ledger: &mut Ledger, snap: &Snapshot) {
    let mut ids: BTreeSet<(u32, u64)> = snap.files.keys().map(|k| (k.dev, k.ino)).collect();
    ids.extend(
        snap.mappings
            .keys()
            .filter(|k| k.kind & mmtrace_common::kind::FILE != 0)
            .map(|k| (k.dev, k.ino)),
    );
    for id in ids {
        let Some(p) = ledger.paths.get(&id) else {
            continue;
        };
        if p.deleted {
            continue;
        }
        let expect = (Dev::from_kernel(id.0), id.1);
        match residency::file_residency(Path::new(&p.path), Some(expect)) {
            Ok(r) => {
                ledger.residency.insert(id, r);
            }
            Err(e) => log::debug!("residency of {}: {e}", p.path),
        }
    }
}

/// The traced cgroup tree: its directories, the memory samples for the
/// pressure timeline and the verdict (start, componentwise peak, last).
struct CgroupWatch {
    cg: Cgroup,
    dirs: Vec<(PathBuf, u64)>,
    start: Option<MemoryState>,
    peak: Option<MemoryState>,
    last: Option<MemoryState>,
}

impl CgroupWatch {
    fn new(cg: Cgroup) -> Self {
        let dirs = cgroup::tree(&cg.path);
        Self {
            cg,
            dirs,
            start: None,
            peak: None,
            last: None,
        }
    }

    fn keys(&self) -> Vec<CgroupKey> {
        self.dirs
            .iter()
            .map(|(_, id)| CgroupKey {
                hierarchy: self.cg.hierarchy,
                _pad: 0,
                id: *id,
            })
            .collect()
    }

    fn gone(&self) -> bool {
        !self.cg.path.join("cgroup.procs").exists()
    }

    fn sample(&mut self) {
        if !self.cg.has_memory {
            return;
        }
        let Ok(m) = cgroup::memory_state(&self.cg, Path::new("/proc/pressure/memory")) else {
            return;
        };
        if self.start.is_none() {
            self.start = Some(m.clone());
        }
        let peak = self.peak.get_or_insert_with(|| m.clone());
        peak.usage_bytes = peak.usage_bytes.max(m.usage_bytes);
        peak.file_bytes = peak.file_bytes.max(m.file_bytes);
        peak.anon_bytes = peak.anon_bytes.max(m.anon_bytes);
        peak.shmem_bytes = peak.shmem_bytes.max(m.shmem_bytes);
        peak.dirty_bytes = peak.dirty_bytes.max(m.dirty_bytes);
        self.last = Some(m);
    }

    /// New sub-cgroups join the kernel's set; processes the kernel did not
    /// see enter (moved before the tree was known) join the scope now.
    fn rescan(
        &mut self,
        tracer: &mut Tracer,
        ledger: &mut Ledger,
        snap: &Snapshot,
        root: &Path,
        self_pid: u32,
        follow: bool,
    ) -> Result<()> {
        let dirs = cgroup::tree(&self.cg.path);
        if dirs.len() != self.dirs.len() || dirs.iter().any(|d| !self.dirs.contains(d)) {
            self.dirs = dirs;
            tracer.set_cgroups(&self.keys())?;
        }
        for pid in cgroup::procs(&self.dirs) {
            if pid == self_pid || snap.scope.contains_key(&pid) || ledger.procs.contains_key(&pid) {
                continue;
            }
            let Ok(stat) = procfs::read_stat(root, pid) else {
                continue;
            };
            tracer.add_to_scope(pid, follow)?;
            ledger.add_process(pid, true, Some(&stat), thread_faults(root, pid));
        }
        Ok(())
    }

    fn to_json(&self, reclaim: &ReclaimStats, page_size: u64) -> serde_json::Value {
        let refaults = match (&self.start, &self.last) {
            (Some(s), Some(l)) => Some(l.refault_file.saturating_sub(s.refault_file)),
            _ => None,
        };
        serde_json::json!({
            "path": self.cg.path,
            "version": self.cg.version,
            "memory": self.last,
            "peak": self.peak,
            "kernel_refault_pages": refaults,
            "reclaim": {
                "memcg_episodes": reclaim.memcg_episodes,
                "memcg_reclaimed_pages": reclaim.memcg_reclaimed,
                "memcg_seconds": reclaim.memcg_ns as f64 / 1e9,
                "direct_episodes": reclaim.direct_episodes,
                "direct_reclaimed_pages": reclaim.direct_reclaimed,
                "direct_seconds": reclaim.direct_ns as f64 / 1e9,
                "proactive_episodes": reclaim.proactive_episodes,
                "proactive_reclaimed_pages": reclaim.proactive_reclaimed,
                "proactive_seconds": reclaim.proactive_ns as f64 / 1e9,
            },
            "page_size": page_size,
        })
    }

    /// The pressure line under each table.
    fn line(&self, reclaim: &ReclaimStats, page_size: u64) -> String {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let mut s = format!("cgroup {}", self.cg.path.display());
        if let Some(m) = &self.last {
            let limit = m.limit_bytes.or(m.high_bytes);
            s.push_str(&format!(": usage {:.0}", mib(m.usage_bytes)));
            if let Some(l) = limit {
                s.push_str(&format!(
                    "/{:.0} MiB ({:.0}%)",
                    mib(l),
                    100.0 * m.usage_bytes as f64 / l.max(1) as f64
                ));
            } else {
                s.push_str(" MiB (no limit)");
            }
            s.push_str(&format!(
                ", file {:.0} MiB, anon {:.0} MiB",
                mib(m.file_bytes),
                mib(m.anon_bytes)
            ));
            if let Some(st) = &self.start {
                s.push_str(&format!(
                    ", refaults {}",
                    m.refault_file.saturating_sub(st.refault_file)
                ));
            }
            if let (Some(p), Some(scope)) = (&m.psi, m.psi_scope) {
                s.push_str(&format!(", PSI some {:.1}% ({scope})", p.some_avg10));
            }
        }
        let episodes = reclaim.memcg_episodes + reclaim.direct_episodes;
        if episodes > 0 {
            s.push_str(&format!(
                "\n  reclaim: {episodes} episodes, {:.0} MiB reclaimed in {:.2} s",
                mib((reclaim.memcg_reclaimed + reclaim.direct_reclaimed) * page_size),
                (reclaim.memcg_ns + reclaim.direct_ns) as f64 / 1e9
            ));
        }
        s
    }
}

/// Sum of the kernel's fault counters over a process's live threads.
fn thread_faults(root: &Path, pid: u32) -> (u64, u64) {
    procfs::list_tasks(root, pid)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|t| procfs::read_task_stat(root, pid, t).ok())
        .fold((0, 0), |a, s| (a.0 + s.minflt, a.1 + s.majflt))
}

/// How process `pid` ended, from what was seen.
fn ending_of(ledger: &Ledger, pid: u32, cmd: Option<&CommandExit>) -> Ending {
    if ledger.oom_kills.iter().any(|k| k.pid == pid) {
        return Ending::OomKilled;
    }
    match cmd.filter(|c| c.pid == pid) {
        Some(c) if c.signal.is_some() => Ending::Killed,
        Some(_) => Ending::Exited,
        None if ledger.procs.get(&pid).is_some_and(|p| p.alive) => Ending::Running,
        None => Ending::Exited,
    }
}

/// The verdicts: the traced cgroup's (when it has memory accounting), then
/// each target process whose memory was sampled.
fn verdicts(
    ledger: &Ledger,
    r: &crate::model::Report,
    watch: Option<&CgroupWatch>,
    cmd: Option<&CommandExit>,
    page_size: u64,
) -> Vec<Verdict> {
    let mut out = Vec::new();
    let has_limit = watch
        .and_then(|w| w.start.as_ref())
        .is_some_and(|s| s.limit_bytes.is_some() || s.high_bytes.is_some());
    if let Some(w) = watch
        && let (Some(s), Some(p), Some(l)) = (&w.start, &w.peak, &w.last)
    {
        let kills: Vec<OomKill> = ledger.oom_kills.clone();
        let victim_anon = kills.iter().map(|k| k.anon_rss_bytes).max().unwrap_or(0);
        let anon_growth = (p.anon_bytes as i64 - s.anon_bytes as i64).max(victim_anon as i64);
        let ending = if !kills.is_empty() {
            Ending::OomKilled
        } else if let Some(c) = cmd {
            ending_of(ledger, c.pid, cmd)
        } else if ledger.procs.values().any(|p| p.alive) {
            Ending::Running
        } else {
            Ending::Unknown
        };
        out.push(verdict::judge(&Evidence {
            pid: None,
            cgroup: Some(w.cg.path.display().to_string()),
            file_growth: p.file_bytes as i64 - s.file_bytes as i64,
            anon_growth,
            anon_still_growing: l.anon_bytes + (1 << 20) >= p.anon_bytes
                && p.anon_bytes > s.anon_bytes,
            dirty_shmem: l.dirty_bytes + l.shmem_bytes,
            files: r.files.clone(),
            page_size,
            oom_kills: kills,
            ending: Some(ending),
            has_limit,
            kernel_refault_pages: Some(l.refault_file.saturating_sub(s.refault_file)),
        }));
    }
    for (pid, p) in ledger.procs.iter().filter(|(_, p)| p.target) {
        let (Some(first), Some(peak), Some(last)) = (p.first_rss, p.peak_rss, p.last_rss) else {
            continue;
        };
        let kills: Vec<OomKill> = ledger
            .oom_kills
            .iter()
            .filter(|k| k.pid == *pid)
            .cloned()
            .collect();
        let at_kill = kills
            .iter()
            .map(|k| k.anon_rss_bytes / 1024)
            .max()
            .unwrap_or(0);
        let peak_anon = peak.anon_kib.max(at_kill);
        let files = r
            .files
            .iter()
            .filter(|f| r.mappings.iter().any(|m| m.pid == *pid && m.path == f.path))
            .cloned()
            .collect();
        out.push(verdict::judge(&Evidence {
            pid: Some(*pid),
            cgroup: None,
            file_growth: (peak.file_kib as i64 - first.file_kib as i64) * 1024,
            anon_growth: (peak_anon as i64 - first.anon_kib as i64) * 1024,
            anon_still_growing: p.alive
                && last.anon_kib + 1024 >= peak.anon_kib
                && peak.anon_kib > first.anon_kib,
            dirty_shmem: peak.shmem_kib * 1024,
            files,
            page_size,
            oom_kills: kills,
            ending: Some(ending_of(ledger, *pid, cmd)),
            has_limit,
            kernel_refault_pages: None,
        }));
    }
    out
}
