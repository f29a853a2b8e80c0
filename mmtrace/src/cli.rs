//! Command-line interface.
use std::path::PathBuf;

use clap::{Parser, Subcommand};

/// Which file's pages were faulted in, evicted, and keep coming back: per-file
/// page-fault and page-cache tracing on eBPF.
///
/// Examples:
///   sudo mmtrace --pid 1234            trace a running process (and its new children)
///   sudo mmtrace -- python train.py    trace a command from its first instruction
///   sudo mmtrace --json -o trace.jsonl -- ./db
///   sudo mmtrace                       run the built-in demo
#[derive(Parser, Debug, Clone)]
#[command(name = "mmtrace", version, verbatim_doc_comment)]
pub struct Cli {
    /// Trace this process (all its threads); repeat for several.
    #[arg(short, long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,

    /// Trace every process of this cgroup and its descendants, including
    /// processes that enter later: a cgroup v2 path, a v1 memory-controller
    /// path, or a name in the memory hierarchy. With `-- COMMAND`, the
    /// command runs inside it.
    #[arg(short, long, value_name = "PATH")]
    pub cgroup: Option<String>,

    /// Do not follow children forked after the trace starts.
    #[arg(long)]
    pub no_children: bool,

    /// Stop after this many seconds.
    #[arg(short, long, global = true, value_name = "SECS", value_parser = positive_secs)]
    pub duration: Option<f64>,

    /// Print a report every SECS seconds while tracing (like pidstat).
    #[arg(short, long, global = true, value_name = "SECS", value_parser = positive_secs)]
    pub interval: Option<f64>,

    /// Write JSON Lines (metadata, intervals, summary) instead of tables.
    #[arg(long, global = true)]
    pub json: bool,

    /// Write the JSON Lines here instead of stdout (implies --json).
    #[arg(short, long, global = true, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Print no table (exit status and JSON only).
    #[arg(short, long, global = true)]
    pub quiet: bool,

    /// Rows in the file and mapping tables.
    #[arg(long, default_value_t = 20, value_name = "N")]
    pub top: usize,

    /// Also print the per-mapping table.
    #[arg(short, long, global = true)]
    pub mappings: bool,

    /// Capacity of the per-mapping map (entries) [default: 65536 on up to 8
    /// CPUs, less on more: its values are per CPU].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_mappings: Option<u32>,

    /// Capacity of the per-file map (entries) [default: as --max-mappings].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_files: Option<u32>,

    /// Capacity of the process scope (entries).
    #[arg(long, default_value_t = mmtrace_common::limits::SCOPE, value_name = "N")]
    pub max_processes: u32,

    /// Measure mmtrace's own cost: enable the kernel's BPF run-time
    /// statistics and report each program's runs and mean ns per run.
    #[arg(long, global = true)]
    pub bpf_stats: bool,

    /// More diagnostics on stderr (-v, -vv).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// The command to start and trace (after `--`).
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,

    #[command(subcommand)]
    pub sub: Option<Sub>,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Sub {
    /// Run one of mmtrace's own deterministic workloads (used by tests and
    /// benchmarks).
    #[command(hide = true)]
    Workload(crate::workload::WorkloadArgs),
    /// The built-in demo: a file read through mmap inside a memory-limited
    /// cgroup, traced with the live table, then the verdict. What `mmtrace`
    /// runs when no target is given.
    Demo(crate::demo::DemoArgs),
}

fn positive_secs(s: &str) -> Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of seconds"))?;
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(format!("`{s}`: must be more than 0 seconds"))
    }
}

impl Cli {
    /// Default capacity of a per-CPU map: `limit` entries on up to 8 CPUs,
    /// scaled down beyond (its memory is entries × value × CPUs), at least 4096.
    pub fn per_cpu_capacity(limit: u32, nr_cpus: usize) -> u32 {
        let scaled = limit as u64 * 8 / nr_cpus.max(8) as u64;
        (scaled as u32).max(4096.min(limit))
    }

    pub fn wants_json(&self) -> bool {
        self.json || self.output.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("mmtrace").chain(args.iter().copied()))
    }

    #[test]
    fn pid_and_options() {
        let c = parse(&[
            "--pid",
            "42",
            "-p",
            "43",
            "--no-children",
            "-i",
            "0.5",
            "-d",
            "10",
        ])
        .unwrap();
        assert_eq!(c.pids, [42, 43]);
        assert!(c.no_children);
        assert_eq!(c.interval, Some(0.5));
        assert_eq!(c.duration, Some(10.0));
        assert!(c.command.is_empty());
    }

    #[test]
    fn command_after_double_dash_keeps_its_own_flags() {
        let c = parse(&["--json", "--", "python", "-c", "print(1)", "--pid", "3"]).unwrap();
        assert_eq!(c.command, ["python", "-c", "print(1)", "--pid", "3"]);
        assert!(c.pids.is_empty());
        assert!(c.wants_json());
    }

    #[test]
    fn per_cpu_maps_shrink_on_big_machines() {
        assert_eq!(Cli::per_cpu_capacity(65_536, 2), 65_536);
        assert_eq!(Cli::per_cpu_capacity(65_536, 8), 65_536);
        assert_eq!(Cli::per_cpu_capacity(65_536, 64), 8_192);
        assert_eq!(Cli::per_cpu_capacity(65_536, 4096), 4_096);
        assert!(parse(&["--max-mappings", "0"]).is_err());
    }

    #[test]
    fn output_implies_json() {
        assert!(parse(&["-o", "x.jsonl"]).unwrap().wants_json());
        assert!(!parse(&[]).unwrap().wants_json());
    }

    #[test]
    fn bad_values_are_rejected_with_a_reason() {
        let e = parse(&["--interval", "0"]).unwrap_err().to_string();
        assert!(e.contains("more than 0"), "{e}");
        let e = parse(&["--duration", "soon"]).unwrap_err().to_string();
        assert!(e.contains("not a number"), "{e}");
        assert!(parse(&["--pid", "abc"]).is_err());
    }

    #[test]
    fn demo_takes_its_own_and_the_global_options() {
        let c = parse(&[
            "demo", "--size", "256M", "--limit", "64M", "--json", "-o", "x.jsonl",
        ])
        .unwrap();
        let Some(Sub::Demo(d)) = &c.sub else {
            panic!("not demo")
        };
        assert_eq!((d.size, d.limit), (256 << 20, 64 << 20));
        assert!(c.wants_json());
        let c = parse(&["--quiet", "demo", "--mode", "read"]).unwrap();
        assert!(c.quiet);
        assert!(parse(&["demo", "--mode", "bogus"]).is_err());
        assert!(
            parse(&["--cgroup", "app", "--", "true"])
                .unwrap()
                .cgroup
                .is_some()
        );
    }

    #[test]
    fn hidden_workload_subcommand() {
        let c = parse(&["workload", "anon", "--pages", "10"]).unwrap();
        assert!(matches!(c.sub, Some(Sub::Workload(_))));
    }
}
