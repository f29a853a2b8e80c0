//! Command-line interface.
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

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
    #[command(flatten)]
    pub target: TargetArgs,

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

    /// Fold processes that exited more than SECS ago into one `exited` row
    /// per cgroup (their faults stay on their files), so a long trace of a
    /// busy host stays bounded.
    #[arg(long, default_value_t = 60.0, value_name = "SECS")]
    pub retain_exited: f64,

    /// Also print the per-mapping table.
    #[arg(short, long, global = true)]
    pub mappings: bool,

    /// Capacity of the per-mapping map (entries; memory is taken per entry
    /// in use, not for the capacity) [default: 65536].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_mappings: Option<u32>,

    /// Capacity of the per-file map (entries) [default: 65536 on up to 8
    /// CPUs, less on more: its values are per CPU].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_files: Option<u32>,

    /// Capacity of the process scope (entries).
    #[arg(long, default_value_t = mmtrace_common::limits::SCOPE, value_name = "N")]
    pub max_processes: u32,

    /// Measure mmtrace's own cost: enable the kernel's BPF run-time
    /// statistics and report each program's runs and mean ns per run.
    #[arg(long, global = true)]
    pub bpf_stats: bool,

    /// Fault latency: the time from each fault's entry to the kernel's
    /// accounting of it, as log2 histograms per file (minor/major: total,
    /// p50, p99, max) and totals per process ("WHAT FAULTS COST"). Not
    /// I/O time: a minor fault can wait on readahead, a major one may not
    /// sleep. x86 only (needs exceptions:page_fault_user). Off by default:
    /// it attaches the perf page-fault events as well, and took the kernel
    /// BPF run time per anonymous minor fault from 128-131 ns to 557-650 ns
    /// (`--bpf-stats`, `mmtrace workload anon --pages 65536 --rounds 4`,
    /// two runs each, 2-vCPU Linux 6.18 KVM guest).
    #[arg(long, global = true)]
    pub latency: bool,

    /// Count every msync(2) call of the traced threads through the syscall
    /// tracepoints: MS_ASYNC too, on any filesystem, with its time and the
    /// pages it wrote. Off by default because enabling any syscall
    /// tracepoint sends every syscall of every task on the host through
    /// the kernel's syscall-tracing path while mmtrace runs (measured
    /// +0.1-0.25 us per getppid on a loaded 2-vCPU 6.18 VM, `perf bench
    /// syscall basic`). Without it, msync(MS_SYNC) is counted on ext4
    /// through ext4_sync_file_enter/exit (no syscall cost), and MS_ASYNC,
    /// a no-op on Linux, is not seen.
    #[arg(long, global = true)]
    pub msync_syscalls: bool,

    /// More diagnostics on stderr (-v, -vv).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,

    /// Stream single events as `"type":"event"` JSON records: a comma list
    /// of faults, minor, major, adds, evictions, oom, all. Aggregation stays
    /// in the kernel; events go through a ring buffer whose drops are
    /// counted in every interval record.
    #[arg(long, global = true, value_name = "KINDS", value_delimiter = ',')]
    pub events: Vec<String>,

    /// With --events: stream one event in N (per CPU) on busy hosts.
    #[arg(long, global = true, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub sample: Option<u32>,

    /// Bytes of the raw event ring buffer (a power of two, at least one
    /// page) [default: 4 MiB].
    #[arg(long, global = true, value_name = "BYTES", value_parser = crate::datafile::parse_u32_size)]
    pub events_buffer: Option<u32>,

    /// Serve a live dashboard, Prometheus metrics (/metrics), the records
    /// as Server-Sent Events (/events) and a JSON snapshot (/api/snapshot)
    /// over HTTP on ADDR while tracing [default: 127.0.0.1:9723]. Loopback
    /// only unless --serve-public. Intervals default to 1 s (the table
    /// still prints only the final report unless -i is given).
    #[arg(long, global = true, value_name = "ADDR", num_args = 0..=1,
          default_missing_value = crate::output::serve::DEFAULT_ADDR)]
    pub serve: Option<String>,

    /// Allow --serve on a non-loopback address (file paths and command
    /// names become visible to the network; there is no authentication).
    #[arg(long, global = true)]
    pub serve_public: bool,

    /// Files exported one by one in /metrics (the busiest; the rest sum
    /// into file="other"); at most 500.
    #[arg(long, global = true, value_name = "N",
          default_value_t = crate::output::serve::metrics::DEFAULT_FILES,
          value_parser = serve_files)]
    pub serve_files: usize,

    /// Keep serving the final state this many seconds after the trace
    /// ends (Ctrl-C stops earlier).
    #[arg(long, global = true, value_name = "SECS", value_parser = positive_secs)]
    pub serve_linger: Option<f64>,

    #[command(subcommand)]
    pub sub: Option<Sub>,
}

fn serve_files(s: &str) -> Result<usize, String> {
    let n: usize = s
        .parse()
        .map_err(|_| format!("`{s}` is not a number of files"))?;
    if n > crate::output::serve::metrics::MAX_FILES {
        return Err(format!(
            "`{s}`: at most {} files (each is a few series)",
            crate::output::serve::metrics::MAX_FILES
        ));
    }
    Ok(n)
}

/// What to trace; `mmtrace` and `mmtrace top` take the same.
#[derive(Args, Debug, Clone, Default, PartialEq)]
pub struct TargetArgs {
    /// Trace this process (all its threads); repeat for several.
    #[arg(short, long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,

    /// Trace every process of this cgroup and its descendants, including
    /// processes that enter later: a cgroup v2 path, a v1 memory-controller
    /// path, or a name in the memory hierarchy. With `-- COMMAND`, the
    /// command runs inside it.
    #[arg(short, long, value_name = "PATH")]
    pub cgroup: Option<String>,

    /// Trace every process on the host (as `perf -a`), aggregated per
    /// cgroup, per process and per file.
    #[arg(short = 'a', long)]
    pub all: bool,

    /// Do not follow children forked after the trace starts.
    #[arg(long)]
    pub no_children: bool,

    /// The command to start and trace (after `--`); its arguments are passed
    /// on byte for byte (they need not be UTF-8).
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<std::ffi::OsString>,
}

#[derive(Subcommand, Debug, Clone)]
pub enum Sub {
    /// A live full-screen view, like top: the per-file table updating every
    /// second (sort with the column keys m M w c p a e f r, b busiest; ←/→
    /// scroll), processes, the cgroup's usage against its limit, the
    /// verdict. `q` quits and prints the final report; a trace that ends by
    /// itself stays on screen until `q`. Without a target: the demo.
    Top(TargetArgs),
    /// Print the JSON Schema of the record stream (`--json`).
    Schema,
    /// Print the man page (roff) on stdout.
    #[command(hide = true)]
    Man,
    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Run one of mmtrace's own deterministic workloads (used by tests and
    /// benchmarks).
    /// (Its arguments are parsed by the binary's own workload module: the
    /// workloads are not part of the library.)
    #[command(hide = true)]
    Workload {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        args: Vec<String>,
    },
    /// The runner of `cargo xtask bench`: a fault storm in chunks, hooks
    /// attached for every other chunk (ABBA), or without end for tracers
    /// attached from outside.
    /// (Parsed by the binary's own bench_chunks module.)
    #[command(hide = true)]
    BenchChunks {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, num_args = 0..)]
        args: Vec<String>,
    },
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

    /// The man page (roff), from the same definitions as `--help`.
    pub fn man_page() -> std::io::Result<Vec<u8>> {
        use clap::CommandFactory as _;
        let mut out = Vec::new();
        clap_mangen::Man::new(Self::command()).render(&mut out)?;
        Ok(out)
    }

    /// Shell completions for `shell`.
    pub fn completions(shell: clap_complete::Shell) -> Vec<u8> {
        use clap::CommandFactory as _;
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut Self::command(), "mmtrace", &mut out);
        out
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
        assert_eq!(c.target.pids, [42, 43]);
        assert!(c.target.no_children);
        assert_eq!(c.interval, Some(0.5));
        assert_eq!(c.duration, Some(10.0));
        assert!(c.target.command.is_empty());
    }

    #[test]
    fn command_after_double_dash_keeps_its_own_flags() {
        let c = parse(&["--json", "--", "python", "-c", "print(1)", "--pid", "3"]).unwrap();
        assert_eq!(c.target.command, ["python", "-c", "print(1)", "--pid", "3"]);
        assert!(c.target.pids.is_empty());
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
                .target
                .cgroup
                .is_some()
        );
    }

    #[test]
    fn all_events_and_the_top_view() {
        let c = parse(&["-a", "--events", "faults,evictions", "--sample", "10"]).unwrap();
        assert!(c.target.all);
        assert_eq!(c.events, ["faults", "evictions"]);
        assert_eq!(c.sample, Some(10));
        assert!(parse(&["--sample", "0"]).is_err());
        let c = parse(&["top", "--cgroup", "app", "-i", "2"]).unwrap();
        let Some(Sub::Top(t)) = &c.sub else {
            panic!("not top")
        };
        assert_eq!(t.cgroup.as_deref(), Some("app"));
        assert_eq!(c.interval, Some(2.0));
        let c = parse(&["top", "--", "sleep", "1"]).unwrap();
        assert!(matches!(&c.sub, Some(Sub::Top(t)) if t.command == ["sleep", "1"]));
        assert!(parse(&["--events-buffer", "8M"]).unwrap().events_buffer == Some(8 << 20));
    }

    #[test]
    fn man_page_and_completions_are_generated() {
        let man = String::from_utf8(Cli::man_page().unwrap()).unwrap();
        assert!(
            man.contains(".TH mmtrace"),
            "{}",
            &man[..200.min(man.len())]
        );
        assert!(man.contains("\\-\\-cgroup") || man.contains("cgroup"));
        let bash = String::from_utf8(Cli::completions(clap_complete::Shell::Bash)).unwrap();
        assert!(bash.contains("--cgroup") && bash.contains("--all"));
    }

    #[test]
    fn hidden_workload_subcommand() {
        let c = parse(&["workload", "anon", "--pages", "10"]).unwrap();
        let Some(Sub::Workload { args }) = c.sub else {
            panic!("not workload")
        };
        assert_eq!(args, ["anon", "--pages", "10"]);
    }
}
