//! The traced cgroup tree, observed from userspace: its directories (kept in
//! step with the kernel's `CGROUPS` set), its members, and memory samples
//! for the pressure line and the verdict (first, componentwise peak, last).
use std::{
    collections::VecDeque,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::Result;
use mmtrace_common::{CgroupKey, ReclaimStats};

use crate::{
    cgroup::{self, Cgroup, MemoryState},
    record::CgroupRecord,
};

/// Samples kept for the sparkline (one a second).
const HISTORY: usize = 120;

pub struct CgroupWatch {
    pub cg: Cgroup,
    pub dirs: Vec<(PathBuf, u64)>,
    pub start: Option<MemoryState>,
    pub peak: Option<MemoryState>,
    pub last: Option<MemoryState>,
    history: VecDeque<u64>,
    last_history: Option<Instant>,
}

impl CgroupWatch {
    pub fn new(cg: Cgroup) -> Self {
        let dirs = cgroup::tree(&cg.path);
        Self {
            cg,
            dirs,
            start: None,
            peak: None,
            last: None,
            history: VecDeque::new(),
            last_history: None,
        }
    }

    /// The kernel's keys of every cgroup of the tree.
    pub fn keys(&self) -> Vec<CgroupKey> {
        self.dirs
            .iter()
            .map(|(_, id)| CgroupKey {
                hierarchy: self.cg.hierarchy,
                _pad: 0,
                id: *id,
            })
            .collect()
    }

    pub fn gone(&self) -> bool {
        !self.cg.path.join("cgroup.procs").exists()
    }

    /// Re-reads the tree; true when it changed (new or removed children).
    pub fn rescan_dirs(&mut self) -> bool {
        let dirs = cgroup::tree(&self.cg.path);
        let changed = dirs.len() != self.dirs.len() || dirs.iter().any(|d| !self.dirs.contains(d));
        if changed {
            self.dirs = dirs;
        }
        changed
    }

    /// Processes in the tree now.
    pub fn procs(&self) -> Vec<u32> {
        cgroup::procs(&self.dirs)
    }

    /// One memory sample (no-op without memory accounting).
    pub fn sample(&mut self) {
        if !self.cg.has_memory {
            return;
        }
        let Ok(m) = cgroup::memory_state(&self.cg, Path::new("/proc/pressure/memory")) else {
            return;
        };
        self.add_sample(m, Instant::now());
    }

    fn add_sample(&mut self, m: MemoryState, now: Instant) {
        if self.start.is_none() {
            self.start = Some(m.clone());
        }
        let peak = self.peak.get_or_insert_with(|| m.clone());
        peak.usage_bytes = peak.usage_bytes.max(m.usage_bytes);
        peak.file_bytes = peak.file_bytes.max(m.file_bytes);
        peak.anon_bytes = peak.anon_bytes.max(m.anon_bytes);
        peak.shmem_bytes = peak.shmem_bytes.max(m.shmem_bytes);
        peak.dirty_bytes = peak.dirty_bytes.max(m.dirty_bytes);
        if self
            .last_history
            .is_none_or(|t| now.duration_since(t) >= Duration::from_secs(1))
        {
            self.last_history = Some(now);
            if self.history.len() == HISTORY {
                self.history.pop_front();
            }
            self.history.push_back(m.usage_bytes);
        }
        self.last = Some(m);
    }

    /// The cgroup's record (with the reclaim the kernel side counted).
    pub fn record(&self, reclaim: &ReclaimStats, page_size: u64) -> CgroupRecord {
        let refaults = match (&self.start, &self.last) {
            (Some(s), Some(l)) => Some(l.refault_file.saturating_sub(s.refault_file)),
            _ => None,
        };
        CgroupRecord {
            path: self.cg.path.clone(),
            version: self.cg.version,
            memory: self.last.clone(),
            peak: self.peak.clone(),
            kernel_refault_pages: refaults,
            usage_history: self.history.iter().copied().collect(),
            reclaim: reclaim.into(),
            page_size,
        }
    }

    /// Keeps the kernel's cgroup set equal to the tree.
    pub fn sync(&mut self, set: impl FnOnce(&[CgroupKey]) -> Result<()>) -> Result<()> {
        if self.rescan_dirs() {
            set(&self.keys())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn watch() -> CgroupWatch {
        CgroupWatch {
            cg: Cgroup {
                path: "/nonexistent/cg".into(),
                version: cgroup::Version::V2,
                hierarchy: 0,
                has_memory: true,
            },
            dirs: vec![],
            start: None,
            peak: None,
            last: None,
            history: VecDeque::new(),
            last_history: None,
        }
    }

    fn mem(usage: u64, anon: u64) -> MemoryState {
        MemoryState {
            usage_bytes: usage,
            anon_bytes: anon,
            ..Default::default()
        }
    }

    #[test]
    fn peak_is_componentwise_and_history_is_one_a_second() {
        let mut w = watch();
        let t = Instant::now();
        w.add_sample(mem(10, 5), t);
        w.add_sample(mem(30, 1), t + Duration::from_millis(200));
        w.add_sample(mem(20, 9), t + Duration::from_millis(1200));
        let p = w.peak.as_ref().unwrap();
        assert_eq!((p.usage_bytes, p.anon_bytes), (30, 9));
        assert_eq!(w.start.as_ref().unwrap().usage_bytes, 10);
        assert_eq!(w.last.as_ref().unwrap().usage_bytes, 20);
        let r = w.record(&ReclaimStats::default(), 4096);
        assert_eq!(r.usage_history, [10, 20]);
        for i in 0..200 {
            w.add_sample(mem(i, 0), t + Duration::from_secs(2 + i));
        }
        assert_eq!(w.history.len(), HISTORY);
        assert_eq!(*w.history.back().unwrap(), 199);
    }
}
