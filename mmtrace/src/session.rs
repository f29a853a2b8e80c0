//! One trace as a pipeline: the spec → the tracer (preflight, load, attach,
//! with the command held at its gate) → the collector (every tick) → the
//! model → typed records → the sinks. The loop in the middle only decides
//! when to read and when to emit; an error inside it still ends in the
//! final report.
use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail};
use tokio::{
    signal::unix::{Signal, SignalKind, signal},
    sync::mpsc,
};

use crate::{
    cgroup::{self, Cgroup},
    collect::{
        cgroup_watch::CgroupWatch,
        collector::{Collector, Ready, Setup},
        events,
        loader::{Capacity, Tracer},
    },
    kernel::offsets,
    model,
    output::Sinks,
    preflight, procfs,
    record::{CommandExit, EndReason, Interval, Meta, Record, SCHEMA_VERSION, Scope, Summary},
    spec::TraceSpec,
    target::{self, Exited, GatedChild},
    verdict,
};

/// How often the maps and /proc are read (paths, new children, files).
const SCAN: Duration = Duration::from_millis(200);
/// Host-wide: /proc is bigger, read it less often.
const SCAN_ALL: Duration = Duration::from_secs(1);

pub fn page_size() -> u64 {
    // SAFETY: sysconf cannot fail for _SC_PAGESIZE.
    (unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).max(1) as u64
}

/// Runs one trace; returns the process exit status.
pub async fn run(spec: &TraceSpec) -> Result<i32> {
    // Before anything starts: a Ctrl-C during the attach (or right after
    // "tracing ...") ends the trace through its report, never by the
    // default action (which killed mmtrace without one).
    let mut signals = (
        signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
    );
    // The command's exit wakes the loop at once, not at the next tick (up
    // to 200 ms later: most of `mmtrace -- true` when it came after the
    // first tick).
    let mut sigchld = signal(SignalKind::child()).context("installing the SIGCHLD handler")?;
    let (stop_tx, mut stop_rx) = mpsc::channel(1);
    let mut sinks = Sinks::open(spec, stop_tx)?;
    let started = start(spec).await?;
    let Started {
        mut collector,
        child,
        meta,
        what,
    } = started;
    // From here on the command runs: any error still ends in the final
    // report (a sink that failed is skipped for the rest of the trace).
    let mut error = sinks.emit(&Record::Meta(meta)).err();
    let (mut end, mut exited) = (EndReason::Error, None);
    if error.is_none() {
        if !sinks.quiet_stderr() {
            eprintln!(
                "mmtrace: tracing {what}{}; Ctrl-C to stop",
                if spec.follow_children && !spec.all {
                    " and its children"
                } else {
                    ""
                }
            );
        }
        match watch(
            spec,
            &mut collector,
            child,
            &mut sinks,
            &mut stop_rx,
            &mut signals,
            &mut sigchld,
        )
        .await
        {
            Ok((e, x)) => (end, exited) = (e, x),
            Err(e) => error = Some(e),
        }
    }
    let exited = match (child, exited) {
        (Some(pid), None) => reap(pid).await,
        (_, e) => e,
    };
    let records = finish(spec, &mut collector, end, error.as_ref(), child, exited)?;
    crate::timing::phase("final report built");
    let mut late = None;
    for r in &records {
        if let Err(e) = sinks.emit(r) {
            late.get_or_insert(e);
        }
    }
    if let Err(e) = sinks.close().await {
        late.get_or_insert(e);
    }
    crate::timing::phase("report written");
    if let Some(e) = error {
        return Err(e.context(
            "the trace stopped early (the final report shows what was counted until then)",
        ));
    }
    if let Some(e) = late {
        return Err(e.context("writing the final report"));
    }
    Ok(match exited {
        Some(e) => e.shell_status(),
        None if child.is_some() => 130,
        None => 0,
    })
}

struct Started {
    collector: Collector,
    child: Option<u32>,
    meta: Meta,
    /// "command … (pid N)", "cgroup …", "every process on the host".
    what: String,
}

/// Preflight, targets, tracer, collector; the command (if any) released
/// last, once everything is attached.
async fn start(spec: &TraceSpec) -> Result<Started> {
    // The slow reads of kernel data start now, on threads of their own.
    // aya's parse of the kernel BTF (needed only once the offsets are
    // computed) starts now too if /proc/kallsyms need not be read, else
    // after mmtrace's own BTF parse: three threads at once on 2 CPUs slowed
    // /proc/kallsyms, which the offsets wait for.
    if offsets::prefetch_symbols() {
        crate::collect::loader::prefetch_loader();
    }
    let self_pid = std::process::id();
    for &pid in &spec.pids {
        if pid == self_pid {
            bail!("pid {pid} is mmtrace itself; mmtrace never traces itself");
        }
        if pid == 0 || !procfs::pid_exists(Path::new("/proc"), pid) {
            bail!("no process with pid {pid} (check it with `ps -p {pid}`)");
        }
    }
    let cgroup = match (&spec.cgroup, spec.all) {
        (Some(arg), _) => Some(resolve_cgroup(arg)?),
        (None, true) => memory_root().ok(),
        (None, false) => None,
    };
    let cmd_path = match spec.command.first() {
        Some(c) => Some(target::resolve_command(
            c,
            std::env::var("PATH").ok().as_deref(),
        )?),
        None => None,
    };

    preflight::check_privileges()?;
    // MMTRACE_BTF / MMTRACE_TRACEFS point at other files (tests, unusual
    // mounts); by default the kernel's own.
    let btf_path = std::env::var_os("MMTRACE_BTF").map(PathBuf::from);
    let btf = preflight::load_btf(
        btf_path
            .as_deref()
            .unwrap_or(Path::new(preflight::BTF_PATH)),
    )?;
    crate::timing::phase("BTF parsed");
    crate::collect::loader::prefetch_loader();
    let root = match std::env::var_os("MMTRACE_TRACEFS") {
        Some(r) => PathBuf::from(r),
        None => preflight::tracefs_root()?,
    };
    preflight::check_tracepoints(&root)?;
    let (mut config, mut features) = offsets::compute(&btf, &root, self_pid)?;
    features
        .choose_msync(spec.msync_syscalls)
        .map_err(|e| anyhow::anyhow!(e))?;
    drop(btf);
    crate::timing::phase("offsets computed (tracefs formats, kallsyms)");
    let watch = cgroup.map(CgroupWatch::new);
    if spec.all {
        config.scope_all = 1;
        // Host-wide, rows per (process, file) unless vmas are asked for.
        config.coarse_mappings = u32::from(!spec.mappings);
    } else if watch.is_some() {
        config.cgroup_mode = 1;
    }
    config.events = spec.kinds().mask;
    config.events_sample = spec.sample;
    if spec.latency {
        if !features.write_faults {
            bail!(
                "--latency needs the exceptions:page_fault_user/kernel tracepoints (x86), missing here"
            );
        }
        config.latency = 1;
    }

    let gated = match &cmd_path {
        Some(p) => {
            let io = match (spec.view, spec.json_on_stdout()) {
                (crate::spec::View::Top, _) => target::ChildIo::Detached,
                (_, true) => target::ChildIo::StdoutToStderr,
                (_, false) => target::ChildIo::Inherit,
            };
            Some(target::spawn_gated(p, &spec.command, io)?)
        }
        None => None,
    };
    match attach(spec, &config, &features, watch, gated.as_ref()) {
        Ok((collector, targets)) => {
            let child = match gated {
                Some(g) => Some(release_into(g, collector.watch.as_ref(), spec.all)?),
                None => None,
            };
            crate::timing::phase("command released");
            let what = describe(spec, &collector, child, targets);
            let meta = meta(spec, &features, collector.probes().to_vec(), &collector);
            Ok(Started {
                collector,
                child,
                meta,
                what,
            })
        }
        Err(e) => {
            if let Some(g) = gated {
                g.abort();
            }
            Err(e)
        }
    }
}

/// Loads the tracer with the initial scope and takes a first look at every
/// target. Returns the collector and how many processes were targeted.
fn attach(
    spec: &TraceSpec,
    config: &mmtrace_common::Config,
    features: &offsets::Features,
    watch: Option<CgroupWatch>,
    gated: Option<&GatedChild>,
) -> Result<(Collector, usize)> {
    let self_pid = std::process::id();
    let follow = spec.follow_children;
    let mut targets: Vec<(u32, bool)> = spec.pids.iter().map(|&p| (p, follow)).collect();
    if let (Some(w), false) = (&watch, spec.all) {
        targets.extend(
            w.procs()
                .into_iter()
                .filter(|p| *p != self_pid)
                .map(|p| (p, follow)),
        );
    }
    if let Some(g) = gated {
        targets.push((g.pid, follow));
    }
    // --all: every process's counters just before the attach, so a process
    // first looked at later is not charged faults from before its baseline.
    let mut baselines = Default::default();
    let mut tracer = Tracer::load(
        config,
        features,
        capacity(spec),
        &targets,
        spec.bpf_log,
        || {
            if spec.all {
                baselines = crate::collect::collector::host_baselines(Path::new("/proc"));
            }
        },
    )?;
    if spec.bpf_stats {
        tracer.enable_stats()?;
    }
    let has_memory = watch.as_ref().is_some_and(|w| w.cg.has_memory);
    if let (Some(w), false) = (&watch, spec.all) {
        tracer.set_cgroups(&w.keys())?;
    }
    crate::timing::phase("attached");
    let mut c = Collector::new(Setup {
        tracer,
        watch,
        page_size: page_size(),
        self_pid,
        follow,
        all: spec.all,
        // Owners are memcgs: they match the traced tree only if it is the
        // memory hierarchy (v1 memory, or v2 with the memory controller).
        owner_known: features.eviction_owner && has_memory && !spec.all,
        kinds: spec.kinds(),
        write_faults: features.write_faults,
        retain_exited: spec.retain_exited,
        latency: spec.latency,
        baselines,
    })?;
    if let Some(w) = &mut c.watch {
        w.sample();
    }
    let gated_pid = gated.map(|g| g.pid);
    for &(pid, _) in &targets {
        // A cgroup member may exit between the listing and now; a named
        // target may not.
        if !c.add_target(pid)? && (c.watch.is_none() || Some(pid) == gated_pid) {
            bail!("process {pid} exited before mmtrace could attach; nothing was traced");
        }
    }
    crate::timing::phase("targets read");
    Ok((c, targets.len()))
}

fn capacity(spec: &TraceSpec) -> Capacity {
    let nr_cpus = aya::util::nr_cpus().unwrap_or(1);
    let per_cpu = crate::cli::Cli::per_cpu_capacity;
    Capacity {
        processes: spec.capacity.processes,
        // One shared value per entry, allocated on insert: no scaling.
        mappings: spec
            .capacity
            .mappings
            .unwrap_or(mmtrace_common::limits::MAPPINGS),
        files: spec
            .capacity
            .files
            .unwrap_or_else(|| per_cpu(mmtrace_common::limits::FILES, nr_cpus)),
        events_bytes: if spec.kinds().mask != 0 {
            spec.capacity
                .events_bytes
                .unwrap_or(mmtrace_common::limits::EVENTS_BYTES)
        } else {
            mmtrace_common::limits::EVENTS_BYTES_OFF
        },
        ..Capacity::default()
    }
}

/// The command runs inside the traced cgroup: moved while it waits at the
/// gate, before its first instruction; then released.
fn release_into(g: GatedChild, watch: Option<&CgroupWatch>, all: bool) -> Result<u32> {
    if let (Some(w), false) = (watch, all) {
        let procs = w.cg.path.join("cgroup.procs");
        if let Err(e) = std::fs::write(&procs, g.pid.to_string()) {
            let pid = g.pid;
            g.abort();
            bail!(
                "moving the command (pid {pid}) into {}: {e}",
                procs.display()
            );
        }
    }
    Ok(g.release()?)
}

fn describe(spec: &TraceSpec, c: &Collector, child: Option<u32>, targets: usize) -> String {
    let cmd = || {
        format!(
            "command {:?} (pid {})",
            spec.command
                .iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" "),
            child.unwrap_or(0)
        )
    };
    match (&c.watch, child, spec.all) {
        (_, Some(_), true) => format!("every process on the host while {} runs", cmd()),
        (_, None, true) => "every process on the host".into(),
        (Some(w), Some(_), false) => {
            format!("cgroup {} with {} inside it", w.cg.path.display(), cmd())
        }
        (Some(w), None, false) => format!("cgroup {} ({targets} processes)", w.cg.path.display()),
        (None, Some(_), _) => cmd(),
        (None, None, _) => format!(
            "pid {}",
            spec.pids
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

fn meta(
    spec: &TraceSpec,
    features: &offsets::Features,
    probes: Vec<crate::kernel::probes::ProbeStatus>,
    c: &Collector,
) -> Meta {
    Meta {
        schema_version: SCHEMA_VERSION,
        mmtrace_version: env!("CARGO_PKG_VERSION").into(),
        kernel: preflight::kernel_release(),
        start_time_unix_ms: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
        page_size: page_size(),
        interval_s: spec.interval,
        scope: Scope {
            pids: spec.pids.clone(),
            // Text for the record (an argument that is not UTF-8 shows
            // U+FFFD here; the command itself got the exact bytes).
            command: (!spec.command.is_empty()).then(|| {
                spec.command
                    .iter()
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect()
            }),
            cgroup: c
                .watch
                .as_ref()
                .filter(|_| !spec.all)
                .map(|w| w.cg.path.clone()),
            all: spec.all,
            follow_children: spec.follow_children,
            events: spec.events.clone(),
            sample: spec.sample,
        },
        features: *features,
        probes,
    }
}

/// The loop: a tick reads everything, notices are drained as they come,
/// interval records are emitted on time; it ends when the target exits, the
/// duration is reached, the cgroup goes, or a signal (or `q`) arrives.
async fn watch(
    spec: &TraceSpec,
    c: &mut Collector,
    child: Option<u32>,
    sinks: &mut Sinks,
    stop: &mut mpsc::Receiver<()>,
    (sigint, sigterm): &mut (Signal, Signal),
    sigchld: &mut Signal,
) -> Result<(EndReason, Option<Exited>)> {
    let mut tick = tokio::time::interval(if spec.all { SCAN_ALL } else { SCAN });
    let start = Instant::now();
    let interval = spec.interval.map(Duration::from_secs_f64);
    let mut next_report = interval.map(|i| start + i);
    let deadline = spec.duration.map(|d| start + Duration::from_secs_f64(d));
    let mut seq = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            // A child exited (or stopped): read and check now.
            _ = sigchld.recv(), if child.is_some() => {}
            r = c.ready() => {
                let (events, kills) = match r? {
                    Ready::Notices => (Vec::new(), c.drain_notices()),
                    Ready::Events => c.drain_events(),
                };
                emit_kills(sinks, kills, c.kinds().oom)?;
                for sig in c.take_signals() {
                    sinks.emit(&Record::Signal(sig))?;
                }
                sinks.emit_events(events)?;
                continue;
            }
            _ = sigint.recv() => return Ok((EndReason::Interrupted, None)),
            _ = sigterm.recv() => return Ok((EndReason::Interrupted, None)),
            _ = stop.recv() => return Ok((EndReason::Interrupted, None)),
        }
        c.refresh()?;
        if c.cgroup_gone() && !spec.all {
            eprintln!("mmtrace: the traced cgroup was removed; ending the trace");
            return Ok((EndReason::CgroupRemoved, None));
        }
        if let Some(pid) = child {
            if let Some(e) = target::wait(pid, false).context("waiting for the command")? {
                crate::timing::phase("command exit seen");
                return Ok((EndReason::TargetExited, Some(e)));
            }
        } else if !spec.pids.is_empty() && c.targets_gone(&spec.pids) {
            return Ok((EndReason::TargetExited, None));
        }
        let now = Instant::now();
        if deadline.is_some_and(|d| now >= d) {
            return Ok((EndReason::Duration, None));
        }
        if let (Some(at), Some(i)) = (next_report, interval)
            && now >= at
        {
            seq += 1;
            next_report = Some(at + i);
            sinks.emit(&Record::Interval(interval_record(spec, c, seq)))?;
        }
    }
}

/// OOM kills as they happen (and as raw events with `--events oom`).
fn emit_kills(sinks: &mut Sinks, kills: Vec<model::OomKill>, as_events: bool) -> Result<()> {
    for k in kills {
        if as_events {
            sinks.emit(&Record::Event(events::oom_event(&k)))?;
        }
        sinks.emit(&Record::OomKill(k))?;
    }
    Ok(())
}

fn interval_record(spec: &TraceSpec, c: &mut Collector, seq: u64) -> Interval {
    let mut r = c.report();
    if !spec.mappings {
        r.mappings.clear();
    }
    let (report, cgroups) = c.shape(r, spec.top);
    Interval {
        seq,
        elapsed_s: c.elapsed_s(),
        report,
        cgroups,
        cgroup: c.cgroup_record(),
        events_dropped: c.events_dropped(),
    }
}

/// The command after a signal: a terminal Ctrl-C reached it too; a SIGTERM
/// sent to mmtrace alone is passed on. It gets 5 s to finish.
async fn reap(pid: u32) -> Option<Exited> {
    // SAFETY: plain syscall.
    unsafe { libc::kill(pid as i32, libc::SIGTERM) };
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        if let Ok(Some(e)) = target::wait(pid, false) {
            return Some(e);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("mmtrace: the command (pid {pid}) is still running; it is no longer traced");
    None
}

/// The final records: late OOM kills, the verdicts, the summary.
fn finish(
    spec: &TraceSpec,
    c: &mut Collector,
    end: EndReason,
    error: Option<&anyhow::Error>,
    child: Option<u32>,
    exited: Option<Exited>,
) -> Result<Vec<Record>> {
    let bpf_stats = spec.bpf_stats.then(|| c.tracer().program_stats());
    let mut out: Vec<Record> = Vec::new();
    let oom_events = c.kinds().oom;
    let kill_records = |k: model::OomKill| {
        let e = oom_events.then(|| Record::Event(events::oom_event(&k)));
        e.into_iter().chain([Record::OomKill(k)])
    };
    if c.kinds().mask != 0 {
        // The last raw events (after notices: their files' paths).
        let (evs, kills) = c.drain_events();
        out.extend(kills.into_iter().flat_map(kill_records));
        out.extend(evs.into_iter().map(Record::Event));
    }
    let finished = c.finish();
    crate::timing::phase("final read, detach started");
    out.extend(c.take_signals().into_iter().map(Record::Signal));
    match finished {
        Ok(kills) => out.extend(kills.into_iter().flat_map(kill_records)),
        // The maps could not be read one last time: report what was read.
        Err(e) => log::warn!("the final read failed: {e:#}"),
    }
    let r = c.report();
    let command = match (child, exited) {
        (Some(pid), Some(e)) => Some(CommandExit {
            pid,
            exit_code: e.exit_code,
            signal: e.signal,
            rusage_minor_faults: e.minflt,
            rusage_major_faults: e.majflt,
            oom_killed: c.ledger.oom_kills.iter().any(|k| k.pid == pid),
        }),
        _ => None,
    };
    if let Some(w) = &mut c.watch
        && !w.gone()
    {
        w.sample();
    }
    let mut verdicts = verdict::assess(
        &c.ledger,
        &r,
        c.watch.as_ref(),
        command.as_ref(),
        page_size(),
    );
    if spec.all {
        for v in verdicts.iter_mut().filter(|v| v.pid.is_none()) {
            v.scope = "host";
        }
    }
    out.extend(verdicts.iter().cloned().map(Record::Verdict));
    let (report, cgroups) = c.shape(r, spec.top);
    out.push(Record::Summary(Summary {
        elapsed_s: c.elapsed_s(),
        end_reason: end,
        error: error.map(|e| format!("{e:#}")),
        report,
        cgroups,
        cgroup: c.cgroup_record(),
        command,
        bpf_stats,
        verdicts,
        oom_kills: c.ledger.oom_kills.clone(),
        events_dropped: c.events_dropped(),
    }));
    Ok(out)
}

/// Resolves `--cgroup` against this machine's cgroup mounts.
pub fn resolve_cgroup(arg: &str) -> Result<Cgroup> {
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let pc = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    Ok(cgroup::resolve(arg, &cgroup::mounts(&mountinfo), &pc)?)
}

/// The root of the memory hierarchy (v1 memory, or v2 with the memory
/// controller): the host's memory for `--all`.
fn memory_root() -> Result<Cgroup> {
    let mountinfo =
        std::fs::read_to_string("/proc/self/mountinfo").context("reading /proc/self/mountinfo")?;
    let mounts = cgroup::mounts(&mountinfo);
    // "" is relative: the root of the memory hierarchy (v1 memory, else v2).
    // ("/" is an absolute path: the file system's root, not a cgroup.)
    let cg = cgroup::resolve("", &mounts, "")?;
    Ok(cg)
}
