//! What the server knows: the latest state (meta, latest interval,
//! verdicts, OOM kills, summary), a bounded ring of raw events, a bounded
//! columnar history of the intervals' totals, and the metrics. The sink
//! updates it record by record under a short lock; handlers read it.
use std::{
    collections::{BTreeMap, VecDeque},
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::Serialize;

use super::{metrics::Accum, pagemap::Files};
use crate::{model::Report, record::Record};

/// Raw event records kept for `/api/snapshot`.
pub const EVENTS_KEPT: usize = 256;
/// OOM kills kept.
pub const OOM_KEPT: usize = 256;
/// History points kept (an hour at one interval a second).
pub const HISTORY_KEPT: usize = 3600;

/// One record as sent: its SSE id (the record's number in the stream,
/// from 1), event name (the record's type) and JSON.
#[derive(Clone, Debug)]
pub struct Msg {
    pub id: u64,
    pub event: &'static str,
    pub data: Arc<str>,
}

pub fn type_name(r: &Record) -> &'static str {
    match r {
        Record::Meta(_) => "meta",
        Record::Interval(_) => "interval",
        Record::OomKill(_) => "oom_kill",
        Record::Signal(_) => "signal",
        Record::Event(_) => "event",
        Record::Verdict(_) => "verdict",
        Record::Summary(_) => "summary",
    }
}

/// One point of the history: the totals of one interval (cumulative).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Point {
    pub elapsed_s: f64,
    pub minor_faults: u64,
    pub major_faults: u64,
    pub write_faults: u64,
    pub pages_added: u64,
    pub pages_evicted: u64,
    pub evicted_by: BTreeMap<&'static str, u64>,
    pub refault_pages: u64,
    pub cgroup_usage_bytes: Option<u64>,
    pub cgroup_limit_bytes: Option<u64>,
    pub cgroup_file_bytes: Option<u64>,
    pub cgroup_anon_bytes: Option<u64>,
    pub psi_some_total_us: Option<u64>,
    pub psi_full_total_us: Option<u64>,
    pub events_dropped: Option<u64>,
}

impl Point {
    pub fn of(
        elapsed_s: f64,
        r: &Report,
        cg: Option<&crate::record::CgroupRecord>,
        events_dropped: Option<u64>,
    ) -> Self {
        let mut p = Point {
            elapsed_s,
            events_dropped,
            ..Default::default()
        };
        for x in &r.processes {
            p.minor_faults += x.minor_faults;
            p.major_faults += x.major_faults;
            p.write_faults += x.write_faults;
        }
        for f in &r.files {
            p.pages_added += f.pages_added;
            p.pages_evicted += f.pages_evicted;
            p.refault_pages += f.refault_pages;
            for (k, v) in &f.evicted_by {
                *p.evicted_by.entry(k).or_default() += v;
            }
        }
        if let Some(m) = cg.and_then(|c| c.memory.as_ref()) {
            p.cgroup_usage_bytes = Some(m.usage_bytes);
            p.cgroup_limit_bytes = m.limit_bytes;
            p.cgroup_file_bytes = Some(m.file_bytes);
            p.cgroup_anon_bytes = Some(m.anon_bytes);
            p.psi_some_total_us = m.psi.map(|p| p.some_total_us);
            p.psi_full_total_us = m.psi.map(|p| p.full_total_us);
        }
        p
    }
}

/// The history as `/api/snapshot` sends it: one array per column.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Columns {
    pub elapsed_s: Vec<f64>,
    pub minor_faults: Vec<u64>,
    pub major_faults: Vec<u64>,
    pub write_faults: Vec<u64>,
    pub pages_added: Vec<u64>,
    pub pages_evicted: Vec<u64>,
    pub evicted_by: BTreeMap<&'static str, Vec<Option<u64>>>,
    pub refault_pages: Vec<u64>,
    pub cgroup_usage_bytes: Vec<Option<u64>>,
    pub cgroup_limit_bytes: Vec<Option<u64>>,
    pub cgroup_file_bytes: Vec<Option<u64>>,
    pub cgroup_anon_bytes: Vec<Option<u64>>,
    pub psi_some_total_us: Vec<Option<u64>>,
    pub psi_full_total_us: Vec<Option<u64>>,
    pub events_dropped: Vec<Option<u64>>,
}

/// The last [`HISTORY_KEPT`] points.
#[derive(Clone, Debug, Default)]
pub struct History {
    points: VecDeque<Point>,
    cap: usize,
}

impl History {
    pub fn new(cap: usize) -> Self {
        Self {
            points: VecDeque::new(),
            cap,
        }
    }

    pub fn push(&mut self, p: Point) {
        if self.points.len() == self.cap {
            self.points.pop_front();
        }
        self.points.push_back(p);
    }

    pub fn columns(&self) -> Columns {
        let mut c = Columns::default();
        let reasons: std::collections::BTreeSet<&'static str> = self
            .points
            .iter()
            .flat_map(|p| p.evicted_by.keys().copied())
            .collect();
        for p in &self.points {
            c.elapsed_s.push(p.elapsed_s);
            c.minor_faults.push(p.minor_faults);
            c.major_faults.push(p.major_faults);
            c.write_faults.push(p.write_faults);
            c.pages_added.push(p.pages_added);
            c.pages_evicted.push(p.pages_evicted);
            for r in &reasons {
                c.evicted_by
                    .entry(r)
                    .or_default()
                    .push(p.evicted_by.get(r).copied());
            }
            c.refault_pages.push(p.refault_pages);
            c.cgroup_usage_bytes.push(p.cgroup_usage_bytes);
            c.cgroup_limit_bytes.push(p.cgroup_limit_bytes);
            c.cgroup_file_bytes.push(p.cgroup_file_bytes);
            c.cgroup_anon_bytes.push(p.cgroup_anon_bytes);
            c.psi_some_total_us.push(p.psi_some_total_us);
            c.psi_full_total_us.push(p.psi_full_total_us);
            c.events_dropped.push(p.events_dropped);
        }
        c
    }
}

/// The cgroup path inside its hierarchy (`/sys/fs/cgroup/a/b` → `/a/b`),
/// as process rows name cgroups: the longest mount point that prefixes it
/// is cut off.
pub fn cgroup_label(path: &Path, mount_points: &[PathBuf]) -> String {
    let best = mount_points
        .iter()
        .filter(|m| path.starts_with(m))
        .max_by_key(|m| m.as_os_str().len());
    match best.and_then(|m| path.strip_prefix(m).ok()) {
        Some(rest) => format!("/{}", rest.to_string_lossy()),
        None => path.to_string_lossy().into_owned(),
    }
}

/// Everything the handlers read.
pub struct State {
    next_id: u64,
    pub meta: Option<Msg>,
    pub latest: Option<Msg>,
    pub summary: Option<Msg>,
    pub verdicts: Vec<Msg>,
    pub oom_kills: VecDeque<Msg>,
    pub events: VecDeque<Msg>,
    /// The id of the last record applied.
    pub last_id: u64,
    pub history: History,
    pub metrics: Accum,
    pub files: Files,
    pub page_size: u64,
    all: bool,
    mount_points: Vec<PathBuf>,
}

impl State {
    pub fn new(files_cap: usize, mount_points: Vec<PathBuf>) -> Self {
        Self {
            next_id: 1,
            meta: None,
            latest: None,
            summary: None,
            verdicts: Vec::new(),
            oom_kills: VecDeque::new(),
            events: VecDeque::new(),
            last_id: 0,
            history: History::new(HISTORY_KEPT),
            metrics: Accum::new(files_cap),
            files: Files::default(),
            page_size: crate::session::page_size(),
            all: false,
            mount_points,
        }
    }

    /// Folds `r` in; returns it as sent to `/events`.
    pub fn apply(&mut self, r: &Record) -> Msg {
        let data: Arc<str> = serde_json::to_string(r)
            .unwrap_or_else(|e| format!("{{\"type\":\"error\",\"error\":{:?}}}", e.to_string()))
            .into();
        let msg = Msg {
            id: self.next_id,
            event: type_name(r),
            data,
        };
        self.next_id += 1;
        self.last_id = msg.id;
        match r {
            Record::Meta(m) => {
                self.page_size = m.page_size;
                self.all = m.scope.all;
                self.files.counting = !m.scope.events.is_empty();
                self.metrics
                    .set_meta(m.page_size, &m.mmtrace_version, &m.kernel);
                self.meta = Some(msg.clone());
            }
            Record::Interval(i) => {
                let label = i
                    .cgroup
                    .as_ref()
                    .map(|c| cgroup_label(&c.path, &self.mount_points));
                self.metrics.apply(&super::metrics::Input {
                    elapsed_s: i.elapsed_s,
                    report: &i.report,
                    cgroups: &i.cgroups,
                    cgroup: i.cgroup.as_ref(),
                    cgroup_label: label.as_deref(),
                    events_dropped: i.events_dropped,
                    all: self.all,
                });
                self.files.learn(&i.report.files);
                self.history.push(Point::of(
                    i.elapsed_s,
                    &i.report,
                    i.cgroup.as_ref(),
                    i.events_dropped,
                ));
                self.latest = Some(msg.clone());
            }
            Record::OomKill(_) => {
                if self.oom_kills.len() == OOM_KEPT {
                    self.oom_kills.pop_front();
                }
                self.oom_kills.push_back(msg.clone());
            }
            // Signals are also in every interval's and the summary's report.
            Record::Signal(_) => {}
            Record::Event(e) => {
                self.files.event(e);
                if self.events.len() == EVENTS_KEPT {
                    self.events.pop_front();
                }
                self.events.push_back(msg.clone());
            }
            Record::Verdict(_) => self.verdicts.push(msg.clone()),
            Record::Summary(s) => {
                let label = s
                    .cgroup
                    .as_ref()
                    .map(|c| cgroup_label(&c.path, &self.mount_points));
                self.metrics.apply(&super::metrics::Input {
                    elapsed_s: s.elapsed_s,
                    report: &s.report,
                    cgroups: &s.cgroups,
                    cgroup: s.cgroup.as_ref(),
                    cgroup_label: label.as_deref(),
                    events_dropped: s.events_dropped,
                    all: self.all,
                });
                if let Some(b) = &s.bpf_stats {
                    self.metrics.set_bpf_stats(b);
                }
                self.files.learn(&s.report.files);
                self.history.push(Point::of(
                    s.elapsed_s,
                    &s.report,
                    s.cgroup.as_ref(),
                    s.events_dropped,
                ));
                self.summary = Some(msg.clone());
            }
        }
        msg
    }

    /// The records a client connecting now gets first: meta, the latest
    /// interval, the OOM kills, the verdicts, and the summary if the trace
    /// ended.
    pub fn replay(&self) -> Vec<Msg> {
        let mut v: Vec<Msg> = self.meta.iter().chain(&self.latest).cloned().collect();
        v.extend(self.oom_kills.iter().cloned());
        v.extend(self.verdicts.iter().cloned());
        v.extend(self.summary.iter().cloned());
        v
    }

    pub fn ended(&self) -> bool {
        self.summary.is_some()
    }

    /// The `/api/snapshot` body.
    pub fn snapshot(&self, clients: usize) -> String {
        let raw = |m: &Option<Msg>| {
            m.as_ref()
                .map_or("null".to_string(), |m| m.data.to_string())
        };
        let list = |it: &mut dyn Iterator<Item = &Msg>| {
            let items: Vec<&str> = it.map(|m| &*m.data).collect();
            format!("[{}]", items.join(","))
        };
        let history =
            serde_json::to_string(&self.history.columns()).unwrap_or_else(|_| "{}".into());
        format!(
            "{{\"meta\":{},\"latest\":{},\"summary\":{},\"verdicts\":{},\"oom_kills\":{},\"events\":{},\"history\":{},\"server\":{{\"clients\":{}}}}}",
            raw(&self.meta),
            raw(&self.latest),
            raw(&self.summary),
            list(&mut self.verdicts.iter()),
            list(&mut self.oom_kills.iter()),
            list(&mut self.events.iter()),
            history,
            clients
        )
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    #[test]
    fn history_is_a_bounded_ring_of_columns() {
        let mut h = History::new(3);
        for i in 0..5u64 {
            let mut p = Point {
                elapsed_s: i as f64,
                minor_faults: i * 10,
                ..Default::default()
            };
            if i >= 3 {
                p.evicted_by.insert("memcg_reclaim", i);
            }
            h.push(p);
        }
        assert_eq!(h.points.len(), 3);
        let c = h.columns();
        assert_eq!(c.elapsed_s, [2.0, 3.0, 4.0]);
        assert_eq!(c.minor_faults, [20, 30, 40]);
        assert_eq!(c.evicted_by["memcg_reclaim"], [None, Some(3), Some(4)]);
        assert_eq!(c.cgroup_usage_bytes, [None, None, None]);
        let v = serde_json::to_value(&c).unwrap();
        for k in [
            "elapsed_s",
            "minor_faults",
            "major_faults",
            "write_faults",
            "pages_added",
            "pages_evicted",
            "evicted_by",
            "refault_pages",
            "cgroup_usage_bytes",
            "cgroup_limit_bytes",
            "cgroup_file_bytes",
            "cgroup_anon_bytes",
            "psi_some_total_us",
            "psi_full_total_us",
            "events_dropped",
        ] {
            assert!(v.get(k).is_some(), "{k}");
        }
    }

    pub(in crate::output::serve) fn meta() -> Record {
        Record::Meta(crate::record::Meta {
            schema_version: crate::record::SCHEMA_VERSION,
            mmtrace_version: "0.0.0".into(),
            kernel: "6.18".into(),
            start_time_unix_ms: 0,
            page_size: 4096,
            interval_s: Some(1.0),
            scope: crate::record::Scope::default(),
            features: Default::default(),
            probes: vec![],
        })
    }

    pub(in crate::output::serve) fn interval(seq: u64) -> Record {
        Record::Interval(crate::record::Interval {
            seq,
            elapsed_s: seq as f64,
            report: Report::default(),
            cgroups: vec![],
            cgroup: None,
            events_dropped: None,
        })
    }

    #[test]
    fn late_clients_get_the_state_and_the_snapshot_has_the_contract() {
        let mut st = State::new(50, vec![]);
        assert_eq!(st.apply(&meta()).id, 1);
        st.apply(&interval(1));
        let last = st.apply(&interval(2));
        assert_eq!((last.id, last.event), (3, "interval"));
        let replay = st.replay();
        let kinds: Vec<_> = replay.iter().map(|m| (m.event, m.id)).collect();
        assert_eq!(
            kinds,
            [("meta", 1), ("interval", 3)],
            "meta, then the latest interval"
        );
        assert_eq!(st.last_id, 3);
        assert!(!st.ended());
        let v: serde_json::Value = serde_json::from_str(&st.snapshot(4)).unwrap();
        assert_eq!(v["meta"]["type"], "meta");
        assert_eq!(v["latest"]["seq"], 2);
        assert!(v["summary"].is_null());
        assert_eq!(v["verdicts"], serde_json::json!([]));
        assert_eq!(v["events"], serde_json::json!([]));
        assert_eq!(v["oom_kills"], serde_json::json!([]));
        assert_eq!(v["history"]["elapsed_s"], serde_json::json!([1.0, 2.0]));
        assert_eq!(v["server"]["clients"], 4);
    }

    #[test]
    fn cgroup_paths_lose_their_mount_point() {
        let m = [
            PathBuf::from("/sys/fs/cgroup"),
            PathBuf::from("/sys/fs/cgroup/memory"),
        ];
        assert_eq!(cgroup_label(Path::new("/sys/fs/cgroup/a/b"), &m), "/a/b");
        assert_eq!(cgroup_label(Path::new("/sys/fs/cgroup/memory/x"), &m), "/x");
        assert_eq!(cgroup_label(Path::new("/sys/fs/cgroup"), &m), "/");
        assert_eq!(cgroup_label(Path::new("/elsewhere/y"), &m), "/elsewhere/y");
    }
}
