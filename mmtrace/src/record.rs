//! The typed record stream every output consumes: a `meta` record first,
//! `interval` records while tracing, `oom_kill`, `signal` and raw `event`
//! records as they happen, then `verdict` records and a final `summary`. JSON Lines is
//! this enum serialized; `mmtrace schema` prints its JSON Schema (generated
//! from these types, so the two cannot drift). docs/json-schema.md explains
//! the fields; a test checks it names every one.
use std::path::PathBuf;

use schemars::JsonSchema;
use serde::Serialize;

use crate::{
    cgroup::{MemoryState, Version},
    collect::loader::ProgramStats,
    kernel::{offsets::Features, probes::ProbeStatus},
    model::{OomKill, Report},
    verdict::Verdict,
};

/// Bumped when a field changes meaning or goes away (additions do not bump).
pub const SCHEMA_VERSION: u32 = 2;

/// One record of the stream (`type` names the variant).
#[derive(Clone, Debug, Serialize, JsonSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
#[allow(
    clippy::large_enum_variant,
    reason = "records are built once per interval and written at once; boxing buys nothing"
)]
pub enum Record {
    Meta(Meta),
    Interval(Interval),
    OomKill(OomKill),
    /// A traced process got a kernel-generated SIGBUS or SIGSEGV.
    Signal(crate::signals::SignalRecord),
    Event(crate::collect::events::RawEvent),
    Verdict(Verdict),
    Summary(Summary),
}

/// What was traced, with what.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct Meta {
    pub schema_version: u32,
    pub mmtrace_version: String,
    /// `uname -r`.
    pub kernel: String,
    pub start_time_unix_ms: u64,
    pub page_size: u64,
    /// Seconds between interval records; null: only the summary.
    pub interval_s: Option<f64>,
    pub scope: Scope,
    pub features: Features,
    /// Every probe of the probe table and whether it was attached.
    pub probes: Vec<ProbeStatus>,
}

/// What was traced.
#[derive(Clone, Debug, Default, PartialEq, Serialize, JsonSchema)]
pub struct Scope {
    /// `--pid` targets.
    pub pids: Vec<u32>,
    /// `-- COMMAND`, as given.
    pub command: Option<Vec<String>>,
    /// `--cgroup`, resolved to its directory.
    #[serde(default)]
    pub cgroup: Option<PathBuf>,
    /// `--all`: every process on the host.
    #[serde(default)]
    pub all: bool,
    pub follow_children: bool,
    /// Raw event kinds streamed (`--events`); empty: none.
    #[serde(default)]
    pub events: Vec<String>,
    /// One raw event in N is streamed (`--sample`).
    #[serde(default)]
    pub sample: u32,
}

/// How the trace ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    TargetExited,
    Interrupted,
    Duration,
    /// The traced cgroup was removed.
    CgroupRemoved,
    /// The trace loop failed; the report shows what was counted until then.
    Error,
}

impl EndReason {
    pub fn describe(self) -> &'static str {
        match self {
            Self::TargetExited => "target exited",
            Self::Interrupted => "interrupted",
            Self::Duration => "duration reached",
            Self::CgroupRemoved => "cgroup removed",
            Self::Error => "error",
        }
    }
}

/// How the command mmtrace started ended (`-- CMD` only).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, JsonSchema)]
pub struct CommandExit {
    pub pid: u32,
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    /// From wait4(2): the command plus the descendants it waited for.
    pub rusage_minor_faults: u64,
    pub rusage_major_faults: u64,
    /// The OOM killer ended it (an `oom_kill` record names it).
    pub oom_killed: bool,
}

impl CommandExit {
    /// How the command ended, for the final report's title.
    pub fn describe(&self) -> String {
        match (self.exit_code, self.signal) {
            (_, Some(9)) if self.oom_killed => {
                "command killed by the OOM killer (SIGKILL, status 137)".into()
            }
            (_, Some(sig)) => format!("command killed by signal {sig} (status {})", 128 + sig),
            (Some(code), None) => format!("command exited with status {code}"),
            (None, None) => "command exited".into(),
        }
    }
}

/// Reclaim the traced processes ran or waited in (from the vmscan hooks).
#[derive(Clone, Debug, Default, PartialEq, Serialize, JsonSchema)]
pub struct ReclaimRecord {
    pub memcg_episodes: u64,
    pub memcg_reclaimed_pages: u64,
    pub memcg_seconds: f64,
    pub direct_episodes: u64,
    pub direct_reclaimed_pages: u64,
    pub direct_seconds: f64,
    pub proactive_episodes: u64,
    pub proactive_reclaimed_pages: u64,
    pub proactive_seconds: f64,
}

impl From<&mmtrace_common::ReclaimStats> for ReclaimRecord {
    fn from(r: &mmtrace_common::ReclaimStats) -> Self {
        Self {
            memcg_episodes: r.memcg_episodes,
            memcg_reclaimed_pages: r.memcg_reclaimed,
            memcg_seconds: r.memcg_ns as f64 / 1e9,
            direct_episodes: r.direct_episodes,
            direct_reclaimed_pages: r.direct_reclaimed,
            direct_seconds: r.direct_ns as f64 / 1e9,
            proactive_episodes: r.proactive_episodes,
            proactive_reclaimed_pages: r.proactive_reclaimed,
            proactive_seconds: r.proactive_ns as f64 / 1e9,
        }
    }
}

/// The traced cgroup (`--cgroup`, or the root under `--all`): its memory
/// now, its componentwise peak, and the reclaim seen.
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct CgroupRecord {
    pub path: PathBuf,
    pub version: Version,
    /// The last sample (null without memory accounting).
    pub memory: Option<MemoryState>,
    pub peak: Option<MemoryState>,
    /// Growth of the kernel's `workingset_refault_file` since the start.
    pub kernel_refault_pages: Option<u64>,
    /// `memory.current` (or usage_in_bytes) of the recent samples, oldest
    /// first, for a sparkline.
    #[serde(default)]
    pub usage_history: Vec<u64>,
    pub reclaim: ReclaimRecord,
    pub page_size: u64,
}

/// Processes aggregated by the cgroup they run in (`--all`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, JsonSchema)]
pub struct CgroupRow {
    /// The memory cgroup's path inside its hierarchy (`/system.slice/x`).
    pub cgroup: String,
    pub processes: u64,
    /// Of which still alive.
    pub alive: u64,
    pub minor_faults: u64,
    pub major_faults: u64,
    pub rss_file_pages: u64,
    pub rss_anon_pages: u64,
}

/// One interval: counters cumulative since the start.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct Interval {
    pub seq: u64,
    pub elapsed_s: f64,
    #[serde(flatten)]
    pub report: Report,
    /// Processes by cgroup (`--all`; empty otherwise).
    pub cgroups: Vec<CgroupRow>,
    pub cgroup: Option<CgroupRecord>,
    /// Raw events the ring buffer had no room for (null: `--events` off).
    pub events_dropped: Option<u64>,
}

/// The final record.
#[derive(Clone, Debug, Serialize, JsonSchema)]
pub struct Summary {
    pub elapsed_s: f64,
    pub end_reason: EndReason,
    /// The error that ended the trace (`end_reason` `error`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(flatten)]
    pub report: Report,
    pub cgroups: Vec<CgroupRow>,
    pub cgroup: Option<CgroupRecord>,
    pub command: Option<CommandExit>,
    pub bpf_stats: Option<Vec<ProgramStats>>,
    pub verdicts: Vec<Verdict>,
    pub oom_kills: Vec<OomKill>,
    pub events_dropped: Option<u64>,
}

impl Summary {
    /// The final report's title: how long, and why it ended.
    pub fn title(&self) -> String {
        let why = match (&self.end_reason, &self.command) {
            (EndReason::TargetExited, Some(c)) => c.describe(),
            (EndReason::Error, _) => format!(
                "error: {}",
                self.error.as_deref().unwrap_or("unknown error")
            ),
            (e, _) => e.describe().into(),
        };
        format!("final report ({:.1} s, {why})", self.elapsed_s)
    }
}

/// The JSON Schema of the stream (`mmtrace schema`).
pub fn schema() -> schemars::Schema {
    schemars::schema_for!(Record)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary() -> Summary {
        Summary {
            elapsed_s: 1.25,
            end_reason: EndReason::TargetExited,
            error: None,
            report: Report::default(),
            cgroups: vec![],
            cgroup: None,
            command: Some(CommandExit {
                pid: 7,
                exit_code: None,
                signal: Some(9),
                oom_killed: true,
                ..Default::default()
            }),
            bpf_stats: None,
            verdicts: vec![],
            oom_kills: vec![],
            events_dropped: None,
        }
    }

    #[test]
    fn records_carry_their_type_and_flattened_report() {
        let v = serde_json::to_value(Record::Summary(summary())).unwrap();
        assert_eq!(v["type"], "summary");
        assert_eq!(v["end_reason"], "target_exited");
        for k in ["processes", "files", "mappings", "lost_faults", "errors"] {
            assert!(v.get(k).is_some(), "summary.{k} missing");
        }
        assert!(v.get("error").is_none());
        assert_eq!(v["command"]["oom_killed"], true);
    }

    #[test]
    fn titles_say_why_the_trace_ended() {
        let mut s = summary();
        assert_eq!(
            s.title(),
            "final report (1.2 s, command killed by the OOM killer (SIGKILL, status 137))"
        );
        s.end_reason = EndReason::Error;
        s.error = Some("reading SCOPE: EIO".into());
        assert!(s.title().ends_with("error: reading SCOPE: EIO)"));
        s.end_reason = EndReason::Duration;
        assert!(s.title().ends_with("duration reached)"));
    }

    #[test]
    fn schema_names_every_record_type() {
        let s = serde_json::to_string(&schema()).unwrap();
        for t in [
            "meta", "interval", "oom_kill", "signal", "event", "verdict", "summary",
        ] {
            assert!(s.contains(&format!("\"const\":\"{t}\"")), "{t} missing");
        }
    }

    #[test]
    fn command_exit_describes_itself() {
        let c = |exit_code, signal, oom_killed| CommandExit {
            exit_code,
            signal,
            oom_killed,
            ..Default::default()
        };
        assert_eq!(
            c(Some(0), None, false).describe(),
            "command exited with status 0"
        );
        assert_eq!(
            c(None, Some(15), false).describe(),
            "command killed by signal 15 (status 143)"
        );
        assert!(c(None, Some(9), true).describe().contains("OOM killer"));
    }
}
