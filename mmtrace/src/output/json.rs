//! JSON Lines: a `meta` record first, one `interval` record per interval,
//! a final `summary`. Schema: docs/json-schema.md (versioned by
//! `schema_version`; fields are added, never renamed silently).
use std::io::Write;

use serde::Serialize;
use serde_json::{Value, json};

use crate::{kernel::offsets::Features, model::Report};

/// Bumped when a field changes meaning or goes away (additions do not bump).
pub const SCHEMA_VERSION: u32 = 2;

/// What was traced, for the meta record.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Scope {
    pub pids: Vec<u32>,
    pub command: Option<Vec<String>>,
    pub follow_children: bool,
}

/// How the trace ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    TargetExited,
    Interrupted,
    Duration,
    /// The traced cgroup was removed.
    CgroupRemoved,
    Error,
}

/// How the command mmtrace started ended (`-- CMD` only).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
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

/// An OOM kill record (`"type":"oom_kill"`), written as it happens.
pub fn oom_kill(k: &crate::model::OomKill) -> Value {
    let mut v = serde_json::to_value(k).unwrap_or(Value::Null);
    v["type"] = "oom_kill".into();
    v
}

pub fn meta(
    scope: &Scope,
    kernel: &str,
    page_size: u64,
    interval_s: Option<f64>,
    features: &Features,
    start_unix_ms: u128,
) -> Value {
    json!({
        "type": "meta",
        "schema_version": SCHEMA_VERSION,
        "mmtrace_version": env!("CARGO_PKG_VERSION"),
        "kernel": kernel,
        "start_time_unix_ms": start_unix_ms as u64,
        "page_size": page_size,
        "interval_s": interval_s,
        "scope": scope,
        "features": features,
    })
}

pub fn interval(seq: u64, elapsed_s: f64, r: &Report) -> Value {
    json!({
        "type": "interval",
        "seq": seq,
        "elapsed_s": elapsed_s,
        "processes": r.processes,
        "files": r.files,
        "lost_faults": r.lost_faults,
        "errors": r.errors,
    })
}

pub fn summary(
    elapsed_s: f64,
    end: EndReason,
    r: &Report,
    command: Option<&CommandExit>,
    bpf_stats: Option<&[crate::collect::loader::ProgramStats]>,
) -> Value {
    json!({
        "bpf_stats": bpf_stats,
        "type": "summary",
        "elapsed_s": elapsed_s,
        "end_reason": end,
        "processes": r.processes,
        "files": r.files,
        "mappings": r.mappings,
        "lost_faults": r.lost_faults,
        "errors": r.errors,
        "reclaimers": r.reclaimers,
        "command": command,
    })
}

/// Writes one record per line and flushes, so a reader sees every record as
/// soon as it is complete.
pub struct JsonSink {
    out: Box<dyn Write + Send>,
    name: String,
}

impl JsonSink {
    pub fn new(out: Box<dyn Write + Send>, name: impl Into<String>) -> Self {
        Self {
            out,
            name: name.into(),
        }
    }

    pub fn write(&mut self, v: &Value) -> anyhow::Result<()> {
        use anyhow::Context as _;
        let line = serde_json::to_string(v)?;
        writeln!(self.out, "{line}")
            .and_then(|_| self.out.flush())
            .with_context(|| format!("writing JSON to {}", self.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{FileKind, FileRow, ProcessRow};

    fn report() -> Report {
        Report {
            processes: vec![ProcessRow {
                pid: 1,
                comm: "x".into(),
                kernel_minor_faults: Some(3),
                ..Default::default()
            }],
            files: vec![FileRow {
                path: "/f".into(),
                dev: Some(crate::devnum::Dev {
                    major: 254,
                    minor: 0,
                }),
                kind: FileKind::File,
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    #[test]
    fn summary_has_the_documented_fields() {
        let v = summary(1.5, EndReason::TargetExited, &report(), None, None);
        assert_eq!(v["type"], "summary");
        assert_eq!(v["end_reason"], "target_exited");
        let p = &v["processes"][0];
        for k in [
            "pid",
            "comm",
            "minor_faults",
            "major_faults",
            "kernel_minor_faults",
            "kernel_major_faults",
        ] {
            assert!(p.get(k).is_some(), "processes[].{k} missing");
        }
        let f = &v["files"][0];
        for k in [
            "path",
            "dev",
            "ino",
            "minor_faults",
            "major_faults",
            "write_faults",
            "cow_faults",
            "pages_mapped",
            "pages_added",
            "pages_evicted",
            "refault_pages",
            "resident_pages",
        ] {
            assert!(f.get(k).is_some(), "files[].{k} missing");
        }
        assert_eq!(f["dev"], "254:0");
        assert_eq!(f["kind"], "file");
    }

    #[test]
    fn meta_comes_with_schema_and_scope() {
        let s = Scope {
            pids: vec![42],
            command: None,
            follow_children: true,
        };
        let v = meta(&s, "6.18.0", 4096, Some(1.0), &Features::default(), 0);
        assert_eq!(v["type"], "meta");
        assert_eq!(v["schema_version"], SCHEMA_VERSION);
        assert_eq!(v["scope"]["pids"][0], 42);
    }

    #[test]
    fn sink_writes_one_line_per_record_and_reports_write_errors() {
        #[derive(Clone, Default)]
        struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
        impl Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let b = Buf::default();
        let mut s = JsonSink::new(Box::new(b.clone()), "buf");
        s.write(&json!({"a": 1})).unwrap();
        s.write(&json!({"b": 2})).unwrap();
        assert_eq!(
            String::from_utf8(b.0.lock().unwrap().clone()).unwrap(),
            "{\"a\":1}\n{\"b\":2}\n"
        );

        struct Full;
        impl Write for Full {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::Error::from_raw_os_error(libc::ENOSPC))
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let err = JsonSink::new(Box::new(Full), "/full")
            .write(&json!({}))
            .unwrap_err();
        assert!(format!("{err:#}").contains("/full"));
    }
}
