//! `cargo xtask bench`: tracer overhead per page fault, untraced vs traced runs of mmtrace's own workloads, interleaved in pairs.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use crate::util::{Ctx, describe, is_tmpfs, median};

/// Options of `cargo xtask bench`.
pub struct BenchOpts {
    /// Untraced/traced pairs per scenario.
    pub pairs: u32,
    /// Pages of the minor-fault storm.
    pub pages: u64,
    /// Size of the cold-read file in MiB.
    pub file_mib: u64,
}

/// How a run of a pair is made.
#[derive(Clone, Copy)]
enum Mode {
    Untraced,
    /// `mmtrace --quiet [EXTRA] -- mmtrace ARGS`
    Traced(&'static [&'static str]),
}

/// One scenario's measurements (ns per fault, per run): `untraced` holds
/// the baseline runs (for the `--latency` scenario: traced without it).
struct Sample {
    name: &'static str,
    /// What the baseline runs are ("untraced", or "traced" for a flag's cost).
    baseline: &'static str,
    untraced: Vec<f64>,
    traced: Vec<f64>,
}

impl Sample {
    fn ratios(&self) -> Vec<f64> {
        self.untraced
            .iter()
            .zip(&self.traced)
            .map(|(u, t)| t / u)
            .collect()
    }

    /// ns added per fault, per pair.
    fn added(&self) -> Vec<f64> {
        self.untraced
            .iter()
            .zip(&self.traced)
            .map(|(u, t)| t - u)
            .collect()
    }

    fn to_json(&self) -> Value {
        json!({
            "scenario": self.name,
            "baseline": self.baseline,
            "added_ns_per_fault_median": median(&self.added()),
            "untraced_ns_per_fault_median": median(&self.untraced),
            "traced_ns_per_fault_median": median(&self.traced),
            "slowdown_median": median(&self.ratios()),
            "pairs": self.untraced.len(),
            "untraced_ns_per_fault": self.untraced,
            "traced_ns_per_fault": self.traced,
            "slowdown": self.ratios(),
        })
    }
}

/// Runs both scenarios against the release binary (already built) and prints the table.
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
    if is_tmpfs(&work) {
        eprintln!(
            "bench: warning: {} is on tmpfs; the cold-file scenario cannot evict its file and will read it warm \
             (set CARGO_TARGET_DIR to a disk-backed directory)",
            work.display()
        );
    }
    let b = Bencher {
        ctx,
        bin,
        report: work.join("report.json"),
    };

    let mut samples = Vec::new();

    let pages = opts.pages.to_string();
    eprintln!(
        "bench: minor-fault storm: {} anonymous pages, {} pairs",
        opts.pages, opts.pairs
    );
    // Four rounds, the first untimed: in a VM the first touch of guest
    // memory the hypervisor never backed is far slower and noisier.
    let storm = |report: &Path| -> Vec<String> {
        vec![
            "workload".into(),
            "anon".into(),
            "--pages".into(),
            pages.clone(),
            "--rounds".into(),
            "4".into(),
            "--report".into(),
            report.display().to_string(),
        ]
    };
    samples.push(b.scenario("minor-fault storm", opts.pairs, storm)?);
    // The cost of --latency: the same storm traced without and with it,
    // side by side in the same pairs (ABBA).
    samples.push(b.scenario_modes(
        "storm: --latency vs traced",
        (Mode::Traced(&[]), Mode::Traced(&["--latency"])),
        opts.pairs,
        &storm,
    )?);
    let bpf = b.bpf_cost(&[], &storm(&b.report))?;
    let bpf_lat = b.bpf_cost(&["--latency"], &storm(&b.report))?;

    let file = work.join("cold.dat");
    let bytes = opts.file_mib << 20;
    eprintln!(
        "bench: cold-file mmap read: creating {} ({} MiB)",
        file.display(),
        opts.file_mib
    );
    b.untraced(&[
        "workload".into(),
        "make-file".into(),
        "--path".into(),
        file.display().to_string(),
        "--size".into(),
        bytes.to_string(),
    ])?;
    let cold = b.scenario("cold-file mmap read", opts.pairs, |report| {
        vec![
            "workload".into(),
            "mmap-read".into(),
            "--path".into(),
            file.display().to_string(),
            "--drop-cache".into(),
            "--report".into(),
            report.display().to_string(),
        ]
    });
    let _ = std::fs::remove_file(&file);
    samples.push(cold?);

    print_table(&samples);
    println!(
        "BPF run time per fault (kernel BPF stats, minor-fault storm): {:.0} ns \
         (perf-event program {:.0} ns + write-flag raw tracepoint {:.0} ns)",
        bpf.0 + bpf.1,
        bpf.0,
        bpf.1
    );
    let untraced = samples
        .first()
        .map(|s| median(&s.untraced))
        .unwrap_or(f64::NAN);
    let added = (bpf_lat.0 + bpf_lat.1) - (bpf.0 + bpf.1);
    println!(
        "  with --latency: {:.0} ns (perf-event program {:.0} ns + entry raw tracepoint {:.0} ns): \
         +{added:.0} ns per fault, {:+.1}% of an untraced fault ({untraced:.0} ns)",
        bpf_lat.0 + bpf_lat.1,
        bpf_lat.0,
        bpf_lat.1,
        100.0 * added / untraced
    );
    let results = json!({
        "bpf_ns_per_fault": { "page_faults_min": bpf.0, "page_fault_user": bpf.1 },
        "bpf_ns_per_fault_latency": { "page_faults_min": bpf_lat.0, "page_fault_user": bpf_lat.1 },
        "binary": b.bin.display().to_string(),
        "kernel": kernel_release(),
        "pairs": opts.pairs,
        "anon_pages": opts.pages,
        "file_bytes": bytes,
        "scenarios": samples.iter().map(Sample::to_json).collect::<Vec<_>>(),
    });
    let json_path = out_dir.join("results.json");
    let mut text = serde_json::to_string_pretty(&results)?;
    text.push('\n');
    std::fs::write(&json_path, text).with_context(|| format!("writing {}", json_path.display()))?;
    eprintln!("bench: wrote {}", json_path.display());
    Ok(())
}

struct Bencher<'a> {
    ctx: &'a Ctx,
    bin: PathBuf,
    report: PathBuf,
}

impl Bencher<'_> {
    /// `pairs` untraced/traced pairs, alternating which of the two goes first.
    fn scenario(
        &self,
        name: &'static str,
        pairs: u32,
        workload: impl Fn(&Path) -> Vec<String>,
    ) -> Result<Sample> {
        self.scenario_modes(name, (Mode::Untraced, Mode::Traced(&[])), pairs, &workload)
    }

    /// `pairs` pairs of runs in modes `(base, other)`, alternating which of
    /// the two goes first.
    fn scenario_modes(
        &self,
        name: &'static str,
        (base, other): (Mode, Mode),
        pairs: u32,
        workload: &dyn Fn(&Path) -> Vec<String>,
    ) -> Result<Sample> {
        let args = workload(&self.report);
        let mut s = Sample {
            name,
            baseline: match base {
                Mode::Untraced => "untraced",
                Mode::Traced(_) => "traced",
            },
            untraced: Vec::new(),
            traced: Vec::new(),
        };
        for i in 0..pairs {
            let (u, t) = if i % 2 == 0 {
                let u = self.measure(base, &args)?;
                (u, self.measure(other, &args)?)
            } else {
                let t = self.measure(other, &args)?;
                (self.measure(base, &args)?, t)
            };
            eprintln!(
                "bench: {name}: pair {}/{pairs}: {} {u:.0} ns/fault, {} {t:.0} ns/fault ({:.2}x)",
                i + 1,
                s.baseline,
                if s.baseline == "untraced" {
                    "traced"
                } else {
                    "with the flag"
                },
                t / u
            );
            s.untraced.push(u);
            s.traced.push(t);
        }
        Ok(s)
    }

    /// One run; ns per page from the workload's own report.
    fn measure(&self, mode: Mode, args: &[String]) -> Result<f64> {
        let _ = std::fs::remove_file(&self.report);
        match mode {
            Mode::Traced(extra) => self.traced(extra, args)?,
            Mode::Untraced => self.untraced(args)?,
        }
        let text = std::fs::read_to_string(&self.report)
            .with_context(|| format!("the workload wrote no report {}", self.report.display()))?;
        let report: Value = serde_json::from_str(&text)
            .with_context(|| format!("parsing {}", self.report.display()))?;
        let elapsed = report["elapsed_ns"].as_f64().unwrap_or(0.0);
        let pages = report["timed_pages"]
            .as_f64()
            .or_else(|| report["pages"].as_f64())
            .unwrap_or(0.0);
        if elapsed <= 0.0 || pages <= 0.0 {
            bail!(
                "report {} lacks elapsed_ns/pages: {report}",
                self.report.display()
            );
        }
        if let Some(before) = report["resident_before"].as_f64()
            && before > pages / 100.0
        {
            eprintln!(
                "bench: warning: {before} of {pages} pages were still cached before the cold read"
            );
        }
        Ok(elapsed / pages)
    }

    /// Mean BPF run time per fault of the fault-path programs, from one
    /// traced run with `--bpf-stats` (kernel BPF_ENABLE_STATS).
    fn bpf_cost(&self, extra: &[&str], args: &[String]) -> Result<(f64, f64)> {
        let out = self.report.with_extension("stats.jsonl");
        let mut cmd = self.ctx.as_root(&self.bin)?;
        cmd.args(["--quiet", "--bpf-stats"])
            .args(extra)
            .arg("-o")
            .arg(&out)
            .arg("--")
            .arg(&self.bin)
            .args(args);
        quiet_run(&mut cmd)?;
        let text =
            std::fs::read_to_string(&out).with_context(|| format!("reading {}", out.display()))?;
        let summary: Value = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["type"] == "summary")
            .context("no summary record in the --bpf-stats run")?;
        let per = |name: &str| -> f64 {
            summary["bpf_stats"]
                .as_array()
                .and_then(|a| a.iter().find(|p| p["program"] == name))
                .and_then(|p| p["ns_per_run"].as_f64())
                .unwrap_or(0.0)
        };
        Ok((per("page_faults_min"), per("page_fault_user")))
    }

    /// `mmtrace ARGS`
    fn untraced(&self, args: &[String]) -> Result<()> {
        let mut cmd = self.ctx.cmd(&self.bin);
        cmd.args(args);
        quiet_run(&mut cmd)
    }

    /// `[sudo -E] mmtrace --quiet [EXTRA] -- mmtrace ARGS`
    fn traced(&self, extra: &[&str], args: &[String]) -> Result<()> {
        let mut cmd = self.ctx.as_root(&self.bin)?;
        cmd.arg("--quiet")
            .args(extra)
            .arg("--")
            .arg(&self.bin)
            .args(args);
        quiet_run(&mut cmd)
    }
}

/// Runs a command capturing its output; shows the output only if it fails.
fn quiet_run(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .output()
        .with_context(|| format!("could not start `{}`", describe(cmd)))?;
    if !out.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&out.stdout));
        eprintln!("{}", String::from_utf8_lossy(&out.stderr));
        bail!("`{}` failed ({})", describe(cmd), out.status);
    }
    Ok(())
}

fn print_table(samples: &[Sample]) {
    println!(
        "{:<27} {:>18} {:>18} {:>10} {:>10} {:>6}",
        "scenario", "baseline ns/fault", "measured ns/fault", "slowdown", "+ns/fault", "pairs"
    );
    for s in samples {
        println!(
            "{:<27} {:>18.1} {:>18.1} {:>9.2}x {:>10.0} {:>6}",
            s.name,
            median(&s.untraced),
            median(&s.traced),
            median(&s.ratios()),
            median(&s.added()),
            s.untraced.len()
        );
    }
    println!(
        "(medians over pairs; slowdown = median of per-pair measured/baseline; baseline = untraced, \
         or traced without --latency for the --latency row; cold-file mmap read is ns per file page)"
    );
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}
