//! What one trace is asked to do, built once from the command line (or by
//! the demo) and read by every stage; nothing downstream sees `Cli`.
use std::path::PathBuf;

use thiserror::Error;

use crate::{cli::Cli, collect::events::Kinds, output::serve::ServeOptions};

/// Where the JSON Lines go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum JsonDest {
    Stdout,
    File(PathBuf),
}

/// How the human sees the trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    /// Tables (per interval and final), on stdout — or stderr when the JSON
    /// takes stdout.
    Table,
    /// No table: exit status and JSON only (`--quiet`).
    Quiet,
    /// The live full-screen view (`mmtrace top`), then the final table.
    Top,
}

/// Map capacities asked for; `None`: the default for this machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Capacities {
    pub processes: u32,
    pub mappings: Option<u32>,
    pub files: Option<u32>,
    /// Bytes of the raw-event ring buffer.
    pub events_bytes: Option<u32>,
}

/// One trace.
#[derive(Clone, Debug, PartialEq)]
pub struct TraceSpec {
    pub pids: Vec<u32>,
    pub cgroup: Option<String>,
    /// Every process on the host.
    pub all: bool,
    /// A command to start (inside `cgroup` when given).
    pub command: Vec<std::ffi::OsString>,
    pub follow_children: bool,
    pub interval: Option<f64>,
    pub duration: Option<f64>,
    pub json: Option<JsonDest>,
    pub view: View,
    /// Rows of the tables (and of the per-process / per-cgroup rows kept in
    /// records under `--all`).
    pub top: usize,
    /// Exited processes are folded away after this long.
    pub retain_exited: std::time::Duration,
    pub mappings: bool,
    pub capacity: Capacities,
    pub bpf_stats: bool,
    /// `--latency`: fault stall histograms.
    pub latency: bool,
    /// `--msync-syscalls`: msync counted through the syscall tracepoints.
    pub msync_syscalls: bool,
    /// Raw event kinds to stream (`--events`): names as given, validated.
    pub events: Vec<String>,
    /// Stream one raw event in N.
    pub sample: u32,
    /// The eBPF programs' own diagnostics (`-vv`).
    pub bpf_log: bool,
    /// `--serve`: the HTTP server.
    pub serve: Option<ServeOptions>,
    /// Interval records go to the table too (false when only `--serve`
    /// asked for them).
    pub table_intervals: bool,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum SpecError {
    #[error(
        "nothing to trace: give --pid PID, --cgroup PATH, --all or -- COMMAND (or run `mmtrace demo`)"
    )]
    NoTarget,
    #[error("give either --pid or --cgroup, not both (a command may run inside --cgroup)")]
    PidAndCgroup,
    #[error("--all traces every process already: drop --pid/--cgroup")]
    AllAndOthers,
    #[error("--sample needs --events (it thins the raw event stream)")]
    SampleWithoutEvents,
    #[error("--events: {0}")]
    Events(String),
    #[error(
        "--events streams JSON records: add --json (stdout), -o FILE or --serve; the table shows only totals"
    )]
    EventsWithoutJson,
    #[error("{0}")]
    Serve(String),
    #[error(
        "--events-buffer {0}: the ring buffer's size must be a power of two of at least 4096 bytes (e.g. 1M, 16M)"
    )]
    EventsBuffer(u32),
}

impl TraceSpec {
    /// The options of `cli`, without checking that a target is given (the
    /// demo adds its own).
    pub fn from_cli(cli: &Cli) -> Self {
        let json = match (&cli.output, cli.json) {
            (Some(p), _) => Some(JsonDest::File(p.clone())),
            (None, true) => Some(JsonDest::Stdout),
            (None, false) => None,
        };
        let view = if cli.quiet { View::Quiet } else { View::Table };
        let serve = cli.serve.as_ref().map(|addr| ServeOptions {
            addr: addr.clone(),
            public: cli.serve_public,
            files: cli.serve_files,
            linger: cli.serve_linger,
        });
        Self {
            pids: cli.target.pids.clone(),
            cgroup: cli.target.cgroup.clone(),
            all: cli.target.all,
            command: cli.target.command.clone(),
            follow_children: !cli.target.no_children,
            // The server updates from interval records: one a second
            // unless -i says otherwise.
            interval: cli.interval.or_else(|| serve.as_ref().map(|_| 1.0)),
            table_intervals: cli.interval.is_some() || serve.is_none(),
            duration: cli.duration,
            json,
            view,
            top: cli.top,
            retain_exited: std::time::Duration::try_from_secs_f64(cli.retain_exited)
                .unwrap_or(std::time::Duration::MAX),
            mappings: cli.mappings,
            capacity: Capacities {
                processes: cli.max_processes,
                mappings: cli.max_mappings,
                files: cli.max_files,
                events_bytes: cli.events_buffer,
            },
            bpf_stats: cli.bpf_stats,
            latency: cli.latency,
            msync_syscalls: cli.msync_syscalls,
            events: cli.events.clone(),
            sample: cli.sample.unwrap_or(1),
            bpf_log: cli.verbose >= 2,
            serve,
        }
    }

    /// Checks that the targets make one trace.
    pub fn validate(&self) -> Result<(), SpecError> {
        if self.all && (!self.pids.is_empty() || self.cgroup.is_some()) {
            return Err(SpecError::AllAndOthers);
        }
        if !self.all && self.pids.is_empty() && self.command.is_empty() && self.cgroup.is_none() {
            return Err(SpecError::NoTarget);
        }
        if !self.pids.is_empty() && self.cgroup.is_some() {
            return Err(SpecError::PidAndCgroup);
        }
        if self.sample > 1 && self.events.is_empty() {
            return Err(SpecError::SampleWithoutEvents);
        }
        Kinds::parse(&self.events).map_err(SpecError::Events)?;
        if !self.events.is_empty() && self.json.is_none() && self.serve.is_none() {
            return Err(SpecError::EventsWithoutJson);
        }
        if let Some(s) = &self.serve {
            crate::output::serve::parse_addr(&s.addr, s.public).map_err(SpecError::Serve)?;
        }
        if let Some(b) = self.capacity.events_bytes
            && (b < 4096 || !b.is_power_of_two())
        {
            return Err(SpecError::EventsBuffer(b));
        }
        Ok(())
    }

    /// The raw event kinds asked for (none if `events` does not parse:
    /// `validate` refuses that).
    pub fn kinds(&self) -> Kinds {
        Kinds::parse(&self.events).unwrap_or_default()
    }

    /// The JSON takes stdout (then tables go to stderr).
    pub fn json_on_stdout(&self) -> bool {
        self.json == Some(JsonDest::Stdout)
    }

    /// No target at all: what `mmtrace` alone runs (the demo).
    pub fn has_target(&self) -> bool {
        self.all || !self.pids.is_empty() || !self.command.is_empty() || self.cgroup.is_some()
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    fn spec(args: &[&str]) -> TraceSpec {
        let cli =
            Cli::try_parse_from(std::iter::once("mmtrace").chain(args.iter().copied())).unwrap();
        TraceSpec::from_cli(&cli)
    }

    #[test]
    fn json_destination_and_view() {
        let s = spec(&["--json", "-p", "1"]);
        assert!(s.json_on_stdout());
        assert_eq!(s.view, View::Table);
        let s = spec(&["-o", "x.jsonl", "-q", "-p", "1"]);
        assert_eq!(s.json, Some(JsonDest::File("x.jsonl".into())));
        assert_eq!(s.view, View::Quiet);
        assert!(!s.json_on_stdout());
    }

    #[test]
    fn targets_are_checked() {
        assert_eq!(spec(&[]).validate(), Err(SpecError::NoTarget));
        assert!(!spec(&[]).has_target());
        assert_eq!(
            spec(&["-p", "1", "--cgroup", "x"]).validate(),
            Err(SpecError::PidAndCgroup)
        );
        assert_eq!(
            spec(&["--all", "-p", "1"]).validate(),
            Err(SpecError::AllAndOthers)
        );
        assert_eq!(spec(&["-a"]).validate(), Ok(()));
        assert_eq!(spec(&["-a", "--", "sleep", "1"]).validate(), Ok(()));
        assert_eq!(spec(&["--cgroup", "x", "--", "true"]).validate(), Ok(()));
    }

    #[test]
    fn options_carry_over() {
        let s = spec(&[
            "-p",
            "3",
            "--no-children",
            "-i",
            "0.5",
            "-vv",
            "--max-files",
            "99",
        ]);
        assert_eq!(s.pids, [3]);
        assert!(!s.follow_children);
        assert_eq!(s.interval, Some(0.5));
        assert!(s.bpf_log);
        assert_eq!(s.capacity.files, Some(99));
        assert!(!spec(&["-v", "-p", "1"]).bpf_log);
    }

    #[test]
    fn raw_events_are_checked() {
        let s = spec(&["-a", "--events", "faults,evictions", "--json"]);
        assert_eq!(s.validate(), Ok(()));
        assert_eq!(
            s.kinds().mask,
            mmtrace_common::event_mask::FAULTS | mmtrace_common::event_mask::EVICTIONS
        );
        assert_eq!(
            spec(&["-a", "--events", "faults"]).validate(),
            Err(SpecError::EventsWithoutJson)
        );
        let e = spec(&["-a", "--json", "--events", "fault"]).validate();
        assert!(matches!(e, Err(SpecError::Events(m)) if m.contains("`fault`")));
        assert_eq!(
            spec(&["-a", "--sample", "3"]).validate(),
            Err(SpecError::SampleWithoutEvents)
        );
        for bad in ["1000", "3M", "2K"] {
            let e = spec(&["-a", "--json", "--events", "adds", "--events-buffer", bad]).validate();
            assert!(matches!(e, Err(SpecError::EventsBuffer(_))), "{bad}: {e:?}");
        }
        let s = spec(&["-a", "--json", "--events", "adds", "--events-buffer", "1M"]);
        assert_eq!(s.validate(), Ok(()));
    }

    #[test]
    fn serve_takes_events_without_json_and_checks_its_address() {
        let s = spec(&["-a", "--serve", "--events", "faults"]);
        assert_eq!(s.validate(), Ok(()));
        let o = s.serve.as_ref().unwrap();
        assert_eq!(o.addr, "127.0.0.1:9723");
        assert_eq!(o.files, 50);
        assert_eq!(s.interval, Some(1.0));
        assert!(!s.table_intervals);
        assert_eq!(
            spec(&["-a", "--serve=[::1]:9000", "-i", "2"]).interval,
            Some(2.0)
        );
        let e = spec(&["-a", "--serve", "0.0.0.0:9723"]).validate();
        assert!(
            matches!(&e, Err(SpecError::Serve(m)) if m.contains("--serve-public")),
            "{e:?}"
        );
        assert_eq!(
            spec(&["-a", "--serve", "0.0.0.0:9723", "--serve-public"]).validate(),
            Ok(())
        );
        let e = spec(&["-a", "--serve", "nowhere:x"]).validate();
        assert!(
            matches!(&e, Err(SpecError::Serve(m)) if m.contains("not an address")),
            "{e:?}"
        );
        let s = spec(&["--serve", "--", "sleep", "1"]);
        assert_eq!(s.command, ["sleep", "1"]);
        assert!(s.serve.is_some());
        assert!(Cli::try_parse_from(["mmtrace", "-a", "--serve-files", "501"]).is_err());
        assert!(spec(&["-p", "1"]).table_intervals && spec(&["-p", "1"]).interval.is_none());
    }
}
