//! TLB flushes per process, by reason, from the kernel's per-tgid counters
//! (`tlb:tlb_flush`). Per process, not per file: a flush covers a range of
//! the process's address space, whatever is mapped there.
use std::collections::BTreeMap;

use mmtrace_common::{TlbCounters, tlb_reason};
use serde::Serialize;

/// One reason's counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct TlbReasonRow {
    /// `tlb_flush` events.
    pub flushes: u64,
    /// Pages of the ranged flushes.
    pub pages: u64,
    /// Full flushes (`pages` = -1: the whole TLB of the mm).
    pub full_flushes: u64,
}

/// TLB flushes of one process (`processes[].tlb_flushes`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct TlbFlushes {
    /// Flushes this process's threads did because another CPU asked
    /// (reason 1, `remote_shootdown`): the interrupts a multi-threaded
    /// munmap/mprotect costs its siblings.
    pub remote_shootdowns: u64,
    /// Times this process asked other CPUs to flush (reason 4,
    /// `remote_send_ipi`). Logged even when every other CPU was idle or
    /// lazy and no interrupt was sent (1,255 of 2,000 single-threaded
    /// munmaps on the project's 6.18 VM).
    pub remote_flush_requests: u64,
    /// Every reason.
    pub flushes: u64,
    /// By reason (`task_switch`, `remote_shootdown`, `local_shootdown`,
    /// `local_mm_shootdown`, `remote_send_ipi`, `remote_wrong_cpu`; other
    /// reasons only when seen).
    pub by_reason: BTreeMap<&'static str, TlbReasonRow>,
}

impl TlbFlushes {
    pub fn from_counters(c: &TlbCounters) -> Self {
        let mut by_reason = BTreeMap::new();
        for (i, name) in tlb_reason::NAMES.iter().enumerate() {
            let row = TlbReasonRow {
                flushes: c.flushes[i],
                pages: c.pages[i],
                full_flushes: c.full[i],
            };
            if i <= tlb_reason::REMOTE_WRONG_CPU || row.flushes > 0 {
                by_reason.insert(*name, row);
            }
        }
        Self {
            remote_shootdowns: c.flushes[tlb_reason::REMOTE_SHOOTDOWN],
            remote_flush_requests: c.flushes[tlb_reason::REMOTE_SEND_IPI],
            flushes: c.flushes.iter().sum(),
            by_reason,
        }
    }

    /// Adds another process's counts (exited and `others` rows).
    pub fn add(&mut self, o: &Self) {
        self.remote_shootdowns += o.remote_shootdowns;
        self.remote_flush_requests += o.remote_flush_requests;
        self.flushes += o.flushes;
        for (k, v) in &o.by_reason {
            let r = self.by_reason.entry(k).or_default();
            r.flushes += v.flushes;
            r.pages += v.pages;
            r.full_flushes += v.full_flushes;
        }
    }

    /// `a + b` when either is known.
    pub fn sum(a: Option<&Self>, b: Option<&Self>) -> Option<Self> {
        match (a, b) {
            (None, None) => None,
            (a, b) => {
                let mut s = a.cloned().unwrap_or_default();
                if let Some(b) = b {
                    s.add(b);
                }
                Some(s)
            }
        }
    }

    /// The table's line: remote shootdowns first.
    pub fn line(&self) -> String {
        let r = |k: &str| self.by_reason.get(k).copied().unwrap_or_default();
        let mm = r("local_mm_shootdown");
        format!(
            "{} remote shootdowns received, {} remote flush requests (not all sent an IPI), \
             {} local range flushes ({} pages, {} full), {} on task switch",
            crate::output::table::count(self.remote_shootdowns),
            crate::output::table::count(self.remote_flush_requests),
            crate::output::table::count(mm.flushes),
            crate::output::table::count(mm.pages),
            crate::output::table::count(mm.full_flushes),
            crate::output::table::count(r("task_switch").flushes),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_become_named_reasons_and_add_up() {
        let mut c = TlbCounters::default();
        c.flushes[1] = 5;
        c.flushes[3] = 7;
        c.pages[3] = 70;
        c.full[3] = 1;
        c.flushes[4] = 6;
        c.flushes[7] = 2;
        let t = TlbFlushes::from_counters(&c);
        assert_eq!(
            (t.remote_shootdowns, t.remote_flush_requests, t.flushes),
            (5, 6, 20)
        );
        assert_eq!(
            t.by_reason.len(),
            7,
            "six named reasons plus a seen unknown"
        );
        assert_eq!(t.by_reason["local_mm_shootdown"].pages, 70);
        assert_eq!(t.by_reason["local_mm_shootdown"].full_flushes, 1);
        let s = TlbFlushes::sum(Some(&t), Some(&t)).unwrap();
        assert_eq!((s.remote_shootdowns, s.flushes), (10, 40));
        assert_eq!(s.by_reason["remote_send_ipi"].flushes, 12);
        assert_eq!(TlbFlushes::sum(None, None), None);
        assert!(
            t.line()
                .starts_with("5 remote shootdowns received, 6 remote flush requests")
        );
    }
}
