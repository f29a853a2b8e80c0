//! `cargo xtask bench`: what tracing costs per page fault, side by side,
//! in one invocation, fine enough to resolve ~10 ns per fault.
//!
//! Two methods, both on one long-running storm process, never on separate
//! processes (whose run-to-run spread on a VM overstates a hook 3-5×):
//! - in-process chunks (`mmtrace bench-chunks chunks`): the storm attaches a
//!   hook set for one chunk and detaches it for the next, ABBA, and the
//!   figure is the median of the per-pair differences. Rows: untraced vs
//!   untraced (noise), empty programs on mmtrace's hooks (the floor),
//!   mmtrace's own programs (whose maps must count the attached chunks'
//!   faults exactly), and mmtrace against the floor head to head (the
//!   floor for one chunk, mmtrace for the next: what mmtrace adds over the
//!   floor without dividing two noisy medians); anonymous and
//!   copy-on-write storms.
//! - from outside (`mmtrace bench-chunks storm`): tracers that cannot be
//!   toggled in-process (bpftrace, perf trace, and mmtrace `--pid` so every
//!   row shares one method) attach to the storm for a window between
//!   untraced windows; each traced window is compared with the mean of its
//!   two neighbours, the figure is the median over rounds.
//!
//! Also mmtrace's start-up + teardown time, its locked map memory and RSS,
//! and the kernel's BPF run time of its programs per fault.

use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use crate::procinfo::{Footprint, Machine};
use crate::stats::{Chunk, Summary, in_window, is_abba, pair_differences, window_differences};
use crate::util::{Ctx, describe, median};

/// Options of `cargo xtask bench`.
pub struct BenchOpts {
    /// ABBA pairs of chunks per in-process row (anonymous storm).
    pub pairs: u32,
    /// Pairs of the copy-on-write rows (0: skip them).
    pub cow_pairs: u32,
    /// Pairs of the anonymous head-to-head row (copy-on-write: half).
    pub h2h_pairs: u32,
    /// MiB per chunk.
    pub chunk_mib: u64,
    /// Rounds of the outside method (0: skip it).
    pub rounds: u32,
    /// Seconds of each traced window (outside method).
    pub window: f64,
    /// Seconds of each untraced window (outside method).
    pub gap: f64,
    /// Seconds between a tracer saying it is ready and its window.
    pub settle: f64,
    /// Runs of `mmtrace -- /bin/true`.
    pub startup_runs: u32,
    /// Also an in-process row of mmtrace with `--latency`.
    pub latency: bool,
}

/// One printed row.
struct Row {
    method: &'static str,
    workload: &'static str,
    name: String,
    /// ns added per fault (per pair or per round), and the untraced ns per
    /// fault they add to; or why the row has no figure.
    result: Result<(Summary, f64), String>,
    /// The floor row's median this row is compared with.
    floor: Option<f64>,
    /// The row's "off" chunks had the floor attached (`vsfloor`): its
    /// figure is what it adds over the floor, measured head to head.
    over_floor: bool,
}

impl Row {
    fn to_json(&self) -> Value {
        let mut v = json!({
            "method": self.method,
            "workload": self.workload,
            "row": self.name,
        });
        match &self.result {
            Ok((s, base)) => {
                let key = if self.over_floor {
                    "added_ns_per_fault_over_floor"
                } else {
                    v["untraced_ns_per_fault"] = json!(base);
                    v["ratio_to_untraced"] = json!((base + s.median) / base);
                    "added_ns_per_fault"
                };
                v[key] = s.to_json();
                if let Some(r) = self.xfloor(s.median) {
                    v["ratio_to_floor"] = json!(r);
                }
            }
            Err(e) => v["missing"] = json!(e),
        }
        v
    }

    /// Over the floor: this row's added ns against the floor row's, or
    /// for a head-to-head row (floor + its difference) against the floor.
    fn xfloor(&self, median: f64) -> Option<f64> {
        let f = self.floor?;
        Some(if self.over_floor {
            (f + median) / f
        } else {
            median / f
        })
    }

    /// Over untraced: `-` for a head-to-head row (its base is the floor).
    fn xuntraced(&self, median: f64, base: f64) -> String {
        if self.over_floor {
            "-".to_string()
        } else {
            format!("{:.3}x", (base + median) / base)
        }
    }
}

impl BenchOpts {
    /// Pairs of the copy-on-write head-to-head row.
    fn cow_h2h_pairs(&self) -> u32 {
        self.h2h_pairs.div_ceil(2)
    }
}

fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Runs the whole bench against the release binary (already built).
pub fn bench(ctx: &Ctx, opts: &BenchOpts) -> Result<()> {
    let target = ctx.target_dir();
    let bin = target.join("release/mmtrace");
    if !bin.exists() {
        bail!(
            "{} is missing: `cargo xtask build --release` must succeed first",
            bin.display()
        );
    }
    let out_dir = target.join("bench");
    let work = out_dir.join("work");
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let machine = Machine::read();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let started = Instant::now();
    let mut rows = Vec::new();
    let mut raw = serde_json::Map::new();

    // In-process chunks.
    let h2h = format!("vsfloor:{}", opts.h2h_pairs);
    let anon = chunks(
        ctx,
        &bin,
        &["--kind", "anon"],
        opts.pairs,
        opts.chunk_mib,
        &if opts.latency {
            format!("noise,floor,mmtrace,{h2h},latency")
        } else {
            format!("noise,floor,mmtrace,{h2h}")
        },
    )?;
    rows.extend(chunk_rows(&anon, "anon minor"));
    let cow = if opts.cow_pairs > 0 {
        let path = work.join("cow.dat");
        let p = path.display().to_string();
        let v = chunks(
            ctx,
            &bin,
            &["--kind", "cow", "--path", &p],
            opts.cow_pairs,
            opts.chunk_mib,
            &format!("floor,mmtrace,vsfloor:{}", opts.cow_h2h_pairs()),
        )?;
        let _ = std::fs::remove_file(&path);
        rows.extend(chunk_rows(&v, "CoW"));
        Some(v)
    } else {
        None
    };
    let anon_floor = floor_of(&anon);

    // From outside.
    let mut footprints = Vec::new();
    if opts.rounds > 0 {
        let (outside, fp) = outside(ctx, &bin, opts, anon_floor)?;
        rows.extend(outside);
        footprints = fp;
    }

    // Start-up + teardown.
    let startup = startup(ctx, &bin, opts.startup_runs)?;

    print_report(
        &machine,
        &load,
        &rows,
        &anon,
        cow.as_ref(),
        &footprints,
        &startup,
        opts,
    );
    raw.insert("anon_chunks".into(), anon);
    if let Some(c) = cow {
        raw.insert("cow_chunks".into(), c);
    }
    let results = json!({
        "machine": { "kernel": machine.kernel, "cpu_model": machine.cpu_model, "cpus": machine.cpus },
        "loadavg": load.trim(),
        "binary": bin.display().to_string(),
        "options": {
            "pairs": opts.pairs, "cow_pairs": opts.cow_pairs, "h2h_pairs": opts.h2h_pairs, "chunk_mib": opts.chunk_mib,
            "rounds": opts.rounds, "window_s": opts.window, "gap_s": opts.gap, "settle_s": opts.settle,
        },
        "rows": rows.iter().map(Row::to_json).collect::<Vec<_>>(),
        "footprints": footprints.iter().map(|(n, f)| json!({
            "tracer": n, "vm_hwm": f.hwm, "vm_rss": f.rss, "maps": f.maps, "maps_memlock": f.memlock,
        })).collect::<Vec<_>>(),
        "startup_teardown_s": startup,
        "seconds": started.elapsed().as_secs_f64(),
        "raw": raw,
    });
    let json_path = out_dir.join("results.json");
    let mut text = serde_json::to_string_pretty(&results)?;
    text.push('\n');
    std::fs::write(&json_path, text).with_context(|| format!("writing {}", json_path.display()))?;
    eprintln!(
        "bench: wrote {} ({:.0} s)",
        json_path.display(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `mmtrace bench-chunks chunks ...`: its JSON.
fn chunks(ctx: &Ctx, bin: &Path, kind: &[&str], pairs: u32, mib: u64, rows: &str) -> Result<Value> {
    let mut cmd = ctx.as_root(bin)?;
    cmd.args(["bench-chunks", "chunks"])
        .args(kind)
        .args([
            "--pairs",
            &pairs.to_string(),
            "--mib",
            &mib.to_string(),
            "--rows",
            rows,
        ])
        .stderr(Stdio::inherit());
    eprintln!("bench: {}", describe(&cmd));
    let out = cmd
        .output()
        .with_context(|| format!("could not start `{}`", describe(&cmd)))?;
    if !out.status.success() {
        bail!("`{}` failed ({})", describe(&cmd), out.status);
    }
    serde_json::from_slice(&out.stdout).context("parsing bench-chunks' JSON")
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default()
}

/// The floor row's median added ns per fault.
fn floor_of(v: &Value) -> Option<f64> {
    let r = v["rows"].as_array()?.iter().find(|r| r["row"] == "floor")?;
    Some(
        Summary::of(&pair_differences(
            &floats(&r["off_ns_per_fault"]),
            &floats(&r["on_ns_per_fault"]),
        ))
        .median,
    )
}

fn chunk_rows(v: &Value, workload: &'static str) -> Vec<Row> {
    let floor = floor_of(v);
    let empty = Vec::new();
    v["rows"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|r| {
            let off = floats(&r["off_ns_per_fault"]);
            let order: Vec<bool> = r["on_first"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_bool).collect())
                .unwrap_or_default();
            if !is_abba(&order) {
                eprintln!("bench: warning: row {} was not run in ABBA order", r["row"]);
            }
            let on = floats(&r["on_ns_per_fault"]);
            let name = match r["row"].as_str().unwrap_or("") {
                "noise" => "untraced vs untraced (noise)".to_string(),
                "floor" => format!(
                    "floor: empty progs on {} hooks",
                    r["hooks"].as_array().map_or(0, Vec::len)
                ),
                row @ ("mmtrace" | "vsfloor" | "latency") => {
                    let who = match row {
                        "latency" => "mmtrace --latency",
                        "vsfloor" => "mmtrace vs floor",
                        _ => "mmtrace",
                    };
                    match r["check"]["exact"].as_bool() {
                        Some(true) => format!("{who} (counts exact)"),
                        _ => format!(
                            "{who} (COUNTS OFF: {} of {})",
                            r["check"]["traced_storm_faults"], r["check"]["expected_faults"]
                        ),
                    }
                }
                o => o.to_string(),
            };
            Row {
                method: "in-process",
                workload,
                name,
                result: Ok((Summary::of(&pair_differences(&off, &on)), median(&off))),
                floor: (r["row"] != "floor" && r["row"] != "noise")
                    .then_some(floor)
                    .flatten(),
                over_floor: r["row"] == "vsfloor",
            }
        })
        .collect()
}

/// A tracer attached from outside.
struct Peer {
    name: &'static str,
    /// The command, given the storm's pid; Err: why there is none.
    cmd: Result<Command, String>,
    /// A line that says it is attached (None: only the settle time).
    ready: Option<&'static str>,
}

fn peers(ctx: &Ctx, bin: &Path, pid: u32) -> Result<Vec<Peer>> {
    let bpftrace = ctx.which("bpftrace");
    let bt = |prog: String| -> Result<Command, String> {
        let b = bpftrace
            .as_ref()
            .ok_or_else(|| "not installed (bpftrace)".to_string())?;
        let mut c = ctx.as_root(b).map_err(|e| e.to_string())?;
        c.args(["-e", &prog]);
        Ok(c)
    };
    let perf = match ctx.which("perf") {
        Some(p) => {
            let mut c = ctx.as_root(p)?;
            c.args([
                "trace",
                "--pf=all",
                "-o",
                "/dev/null",
                "-p",
                &pid.to_string(),
            ]);
            Ok(c)
        }
        None => Err("not installed (linux-perf)".to_string()),
    };
    let mut mm = ctx.as_root(bin)?;
    mm.args(["--pid", &pid.to_string(), "-o", "/dev/null"]);
    Ok(vec![
        Peer {
            name: "nothing attached (noise)",
            cmd: Err(String::new()),
            ready: None,
        },
        Peer {
            name: "bpftrace: empty minor-faults probe",
            cmd: bt("software:minor-faults:1 { }".into()),
            ready: Some("Attaching"),
        },
        Peer {
            name: "bpftrace: count per pid",
            cmd: bt(format!(
                "software:minor-faults:1 /pid == {pid}/ {{ @[pid] = count(); }}"
            )),
            ready: Some("Attaching"),
        },
        Peer {
            name: "perf trace --pf=all -p",
            cmd: perf,
            ready: None,
        },
        Peer {
            name: "mmtrace --pid",
            cmd: Ok(mm),
            ready: Some("mmtrace: tracing"),
        },
    ])
}

/// A running tracer, its output scanned for the ready line.
struct Running {
    child: Child,
    ready: mpsc::Receiver<()>,
    said: Arc<Mutex<String>>,
}

fn spawn_peer(cmd: &mut Command, ready: Option<&'static str>) -> Result<Running> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("could not start `{}`", describe(cmd)))?;
    let (tx, rx) = mpsc::channel();
    let said = Arc::new(Mutex::new(String::new()));
    let out = child
        .stdout
        .take()
        .map(|o| Box::new(o) as Box<dyn std::io::Read + Send>);
    let err = child
        .stderr
        .take()
        .map(|o| Box::new(o) as Box<dyn std::io::Read + Send>);
    for stream in [out, err].into_iter().flatten() {
        let tx = tx.clone();
        let said = Arc::clone(&said);
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if ready.is_some_and(|r| line.contains(r)) {
                    let _ = tx.send(());
                }
                let mut s = said.lock().unwrap();
                // Keep the start (errors) and not the whole trace.
                if s.len() < 4000 {
                    s.push_str(&line);
                    s.push('\n');
                }
            }
        });
    }
    if ready.is_none() {
        let _ = tx.send(());
    }
    Ok(Running {
        child,
        ready: rx,
        said,
    })
}

impl Running {
    /// Waits for the ready line (30 s at most); Err with its output if it ended.
    fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if self.ready.recv_timeout(Duration::from_millis(50)).is_ok() {
                return Ok(());
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                return Err(format!("ended ({st}): {}", self.said()));
            }
        }
        Err(format!("not ready after 30 s: {}", self.said()))
    }

    fn said(&self) -> String {
        let s = self.said.lock().unwrap();
        s.lines().take(3).collect::<Vec<_>>().join(" / ")
    }

    /// SIGINT, then SIGKILL after 20 s; Err if it had already ended.
    fn stop(mut self) -> Result<(), String> {
        if let Ok(Some(st)) = self.child.try_wait() {
            return Err(format!("ended during its window ({st}): {}", self.said()));
        }
        // SAFETY: signals our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        Ok(())
    }
}

/// The outside storm's chunks, read as they come.
struct OutsideStorm {
    child: Child,
    pid: u32,
    chunks: Arc<Mutex<Vec<Chunk>>>,
}

impl OutsideStorm {
    fn start(ctx: &Ctx, bin: &Path, mib: u64) -> Result<Self> {
        let mut cmd = ctx.as_root(bin)?;
        cmd.args([
            "bench-chunks",
            "storm",
            "--kind",
            "anon",
            "--mib",
            &mib.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("could not start `{}`", describe(&cmd)))?;
        let mut lines = BufReader::new(child.stdout.take().context("storm stdout")?).lines();
        let first: Value = serde_json::from_str(&lines.next().context("the storm said nothing")??)?;
        let pid = first["pid"].as_u64().context("the storm gave no pid")? as u32;
        let chunks = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&chunks);
        std::thread::spawn(move || {
            for line in lines {
                let Ok(line) = line else { break };
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                // The thread's CPU time: time other tasks took the CPU
                // from the storm is not the tracer's cost.
                let (Some(t0), Some(t1), Some(ns), Some(pages)) = (
                    v["t0"].as_u64(),
                    v["t1"].as_u64(),
                    v["cpu_ns"].as_f64().or_else(|| v["ns"].as_f64()),
                    v["pages"].as_f64(),
                ) else {
                    continue;
                };
                sink.lock().unwrap().push(Chunk {
                    t0,
                    t1,
                    ns_per_fault: ns / pages,
                });
            }
        });
        Ok(Self { child, pid, chunks })
    }

    fn window(&self, start: u64, end: u64) -> Vec<f64> {
        in_window(&self.chunks.lock().unwrap(), start, end)
    }
}

impl Drop for OutsideStorm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Each tracer's footprint, by row name.
type Footprints = Vec<(String, Footprint)>;

/// The outside method: rows, and each tracer's footprint at the end of
/// its last window.
fn outside(
    ctx: &Ctx,
    bin: &Path,
    opts: &BenchOpts,
    floor: Option<f64>,
) -> Result<(Vec<Row>, Footprints)> {
    let storm = OutsideStorm::start(ctx, bin, opts.chunk_mib)?;
    let mut peers = peers(ctx, bin, storm.pid)?;
    let n = peers.len();
    // Per traced window: which peer; its ns/fault values (empty if failed).
    let mut traced: Vec<(usize, Vec<f64>)> = Vec::new();
    let mut untraced: Vec<Vec<f64>> = Vec::new();
    let mut failed: Vec<Option<String>> = vec![None; n];
    let mut footprints: Vec<(String, Footprint)> = Vec::new();
    let sleep = |s: f64| std::thread::sleep(Duration::from_secs_f64(s));
    let gap = |untraced: &mut Vec<Vec<f64>>| {
        let t0 = wall_ns();
        sleep(opts.gap);
        untraced.push(storm.window(t0, wall_ns()));
    };
    // Warm-up, then the first untraced window.
    sleep(1.0);
    gap(&mut untraced);
    for round in 0..opts.rounds {
        for k in 0..n {
            // Each round starts at another peer: no peer always follows another.
            let i = (k + round as usize) % n;
            let p = &mut peers[i];
            if failed[i].is_some() {
                continue;
            }
            let values = match &mut p.cmd {
                Err(why) if !why.is_empty() => {
                    failed[i] = Some(why.clone());
                    continue;
                }
                Err(_) => {
                    sleep(opts.settle);
                    let t0 = wall_ns();
                    sleep(opts.window);
                    storm.window(t0, wall_ns())
                }
                Ok(cmd) => {
                    let mut r = spawn_peer(cmd, p.ready)?;
                    if let Err(e) = r.wait_ready() {
                        let _ = r.stop();
                        failed[i] = Some(format!("failed: {e}"));
                        continue;
                    }
                    sleep(opts.settle);
                    let t0 = wall_ns();
                    sleep(opts.window);
                    let t1 = wall_ns();
                    if round + 1 == opts.rounds
                        && let Some(f) = Footprint::of(r.child.id())
                    {
                        footprints.push((p.name.to_string(), f));
                    }
                    if let Err(e) = r.stop() {
                        failed[i] = Some(format!("failed: {e}"));
                        continue;
                    }
                    storm.window(t0, t1)
                }
            };
            eprintln!(
                "bench: outside round {}/{}: {}: {:.0} ns/fault (untraced before: {:.0})",
                round + 1,
                opts.rounds,
                p.name,
                median(&values),
                untraced.last().map_or(f64::NAN, |u| median(u)),
            );
            traced.push((i, values));
            gap(&mut untraced);
        }
    }
    // Untraced windows sit between traced ones: window j's neighbours are
    // untraced j and j + 1.
    let values: Vec<Vec<f64>> = traced.iter().map(|(_, v)| v.clone()).collect();
    let diffs = window_differences(&untraced, &values);
    let base = median(&untraced.iter().map(|u| median(u)).collect::<Vec<_>>());
    let rows = peers
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let d: Vec<f64> = traced
                .iter()
                .zip(&diffs)
                .filter(|((j, _), d)| *j == i && d.is_finite())
                .map(|(_, d)| *d)
                .collect();
            let result = match &failed[i] {
                Some(why) => Err(why.clone()),
                None if d.is_empty() => Err("no window measured".into()),
                None => Ok((Summary::of(&d), base)),
            };
            Row {
                method: "outside",
                workload: "anon minor",
                name: p.name.to_string(),
                result,
                floor: (i > 0).then_some(floor).flatten(),
                over_floor: false,
            }
        })
        .collect();
    Ok((rows, footprints))
}

/// `mmtrace --quiet -- /bin/true`, wall seconds of each run.
fn startup(ctx: &Ctx, bin: &Path, runs: u32) -> Result<Vec<f64>> {
    let mut v = Vec::new();
    for _ in 0..runs {
        let mut cmd = ctx.as_root(bin)?;
        cmd.args(["--quiet", "--", "/bin/true"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let t = Instant::now();
        let st = cmd
            .status()
            .with_context(|| format!("could not start `{}`", describe(&cmd)))?;
        if !st.success() {
            bail!("`{}` failed ({st})", describe(&cmd));
        }
        v.push(t.elapsed().as_secs_f64());
    }
    Ok(v)
}

fn mib(b: u64) -> f64 {
    b as f64 / (1u64 << 20) as f64
}

/// The in-process rows' figures from the wall clock instead of the
/// thread's CPU time: `row +median (IQR)`.
fn wall_line(v: &Value) -> String {
    let empty = Vec::new();
    v["rows"]
        .as_array()
        .unwrap_or(&empty)
        .iter()
        .map(|r| {
            let s = Summary::of(&pair_differences(
                &floats(&r["off_wall_ns_per_fault"]),
                &floats(&r["on_wall_ns_per_fault"]),
            ));
            format!(
                "{} {:+.0} ({:+.0}..{:+.0})",
                r["row"].as_str().unwrap_or(""),
                s.median,
                s.q1,
                s.q3
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// BPF run time of a chunk row: (sum of ns per run of the programs that
/// run about once per storm fault, total run time / storm faults, lines).
fn bpf_line(v: &Value, row: &str) -> Option<String> {
    let r = v["rows"].as_array()?.iter().find(|r| r["row"] == row)?;
    let progs = r["bpf_stats"].as_array()?;
    let per_fault: Vec<(&str, f64, f64)> = progs
        .iter()
        .filter_map(|p| {
            Some((
                p["program"].as_str()?,
                p["ns_per_run"].as_f64()?,
                p["runs_per_storm_fault"].as_f64()?,
            ))
        })
        .collect();
    let hot: Vec<&(&str, f64, f64)> = per_fault.iter().filter(|p| p.2 >= 0.5).collect();
    let sum: f64 = hot.iter().map(|p| p.1).sum();
    let parts: Vec<String> = hot
        .iter()
        .map(|(n, ns, runs)| format!("{n} {ns:.0} ns x {runs:.2} runs/fault"))
        .collect();
    Some(format!("{sum:.0} ns per fault ({})", parts.join(" + ")))
}

#[allow(clippy::too_many_arguments, reason = "one printer of the whole report")]
fn print_report(
    m: &Machine,
    load: &str,
    rows: &[Row],
    anon: &Value,
    cow: Option<&Value>,
    footprints: &[(String, Footprint)],
    startup: &[f64],
    opts: &BenchOpts,
) {
    println!(
        "machine: Linux {} · {} · {} CPUs · load {}",
        m.kernel,
        m.cpu_model,
        m.cpus,
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "in-process: {} ABBA pairs of {} MiB chunks (anon), {} (CoW), mmtrace vs floor {} (anon) and {} (CoW); outside: {} rounds, {:.1} s windows, {:.1} s untraced between",
        opts.pairs,
        opts.chunk_mib,
        opts.cow_pairs,
        opts.h2h_pairs,
        opts.cow_h2h_pairs(),
        opts.rounds,
        opts.window,
        opts.gap
    );
    println!();
    println!(
        "{:<10} {:<10} {:<35} {:>9} {:>15} {:>15} {:>17} {:>9} {:>8}",
        "method",
        "workload",
        "row",
        "+ns/fault",
        "95% CI",
        "IQR",
        "min..max",
        "xuntraced",
        "xfloor"
    );
    for r in rows {
        match &r.result {
            Ok((s, base)) => println!(
                "{:<10} {:<10} {:<35} {:>+9.1} {:>15} {:>15} {:>17} {:>9} {:>8}",
                r.method,
                r.workload,
                r.name,
                s.median,
                format!("{:+.0}..{:+.0}", s.ci_lo, s.ci_hi),
                format!("{:+.0}..{:+.0}", s.q1, s.q3),
                format!("{:+.0}..{:+.0}", s.min, s.max),
                r.xuntraced(s.median, *base),
                r.xfloor(s.median)
                    .map_or("-".to_string(), |x| format!("{x:.2}x")),
            ),
            Err(why) => println!("{:<10} {:<10} {:<35} {why}", r.method, r.workload, r.name),
        }
    }
    let base = |v: &Value| {
        v["rows"]
            .as_array()
            .and_then(|a| a.first())
            .map_or(f64::NAN, |r| median(&floats(&r["off_ns_per_fault"])))
    };
    println!(
        "(+ns/fault: the storm thread's CPU time, median of per-pair (in-process) or per-round (outside) differences; untraced: {:.0} ns per anon fault{}; \
         xfloor: over the in-process floor of the same workload; mmtrace vs floor: the floor attached for the off chunks and mmtrace for the on chunks, \
         so +ns/fault is what mmtrace adds over the floor head to head and xfloor is (floor + that) / floor; kernel BPF run time: ns per run of the programs that ran \
         about once per storm fault, runs/fault > 1 = other processes' faults while attached)",
        base(anon),
        cow.map_or(String::new(), |c| format!(", {:.0} per CoW fault", base(c)))
    );
    println!();
    for (v, w) in [(Some(anon), "anon"), (cow, "CoW")] {
        if let Some(v) = v {
            println!(
                "wall clock, in-process, {w} (includes time other tasks took the CPU): {}",
                wall_line(v)
            );
        }
    }
    if let Some(l) = bpf_line(anon, "mmtrace") {
        println!("kernel BPF run time, mmtrace, anon: {l}");
    }
    if let Some(l) = bpf_line(anon, "latency") {
        println!("kernel BPF run time, mmtrace --latency, anon: {l}");
    }
    if let Some(l) = bpf_line(anon, "floor") {
        println!("kernel BPF run time, floor,   anon: {l}");
    }
    if let Some(c) = cow
        && let Some(l) = bpf_line(c, "mmtrace")
    {
        println!("kernel BPF run time, mmtrace, CoW:  {l}");
    }
    if !startup.is_empty() {
        let (lo, hi) = startup
            .iter()
            .fold((f64::MAX, f64::MIN), |(a, b), &x| (a.min(x), b.max(x)));
        println!(
            "mmtrace -- /bin/true (start-up + teardown): {:.2} s median of {} ({lo:.2}..{hi:.2})",
            median(startup),
            startup.len()
        );
    }
    for (name, f) in footprints {
        println!(
            "{name}: {} BPF maps locking {:.1} MiB; RSS {:.1} MiB, peak {:.1} MiB (tracing the storm)",
            f.maps,
            mib(f.memlock),
            mib(f.rss),
            mib(f.hwm)
        );
    }
}
