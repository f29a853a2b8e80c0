//! Map readers: per-CPU values summed, and the result as plain data with no
//! aya types, so the model can be tested on synthetic snapshots.
use std::collections::{BTreeMap, BTreeSet};

use mmtrace_common::{
    CacheCounters, ExitRecord, FaultCounters, FileKey, LatencyHist, LatencyKey, MappingKey,
    ProcStall, ReclaimStats, ScopeEntry, TlbCounters, errors, latency_miss,
};

/// Everything the kernel side has counted so far (cumulative since start).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// Fault counters per (process, vma, file), summed over CPUs.
    pub mappings: BTreeMap<MappingKey, FaultCounters>,
    /// Faults of in-scope processes that found no room in the mapping map.
    pub lost_faults: FaultCounters,
    /// Page-cache counters per file of interest, summed over CPUs.
    pub files: BTreeMap<FileKey, CacheCounters>,
    /// Kernel fault counters of exited threads, merged over CPUs.
    pub exits: BTreeMap<u32, ExitRecord>,
    /// Processes with faults still held in a per-CPU vma cache slot (not
    /// flushed to the mapping map yet).
    pub pending: BTreeSet<u32>,
    /// Processes currently in scope.
    pub scope: BTreeMap<u32, ScopeEntry>,
    /// Reclaim episodes of traced tasks.
    pub reclaim: ReclaimStats,
    /// Pages of files of interest evicted by tasks outside syscalls and
    /// cgroup/global reclaim, by command name (kdamond.0, khugepaged, ...).
    pub reclaimers: BTreeMap<String, u64>,
    /// Error counters, indexed by `mmtrace_common::errors`.
    pub errors: [u64; errors::COUNT as usize],
    /// The write path per file of interest (the (0, 0) key: msync calls on
    /// memory that is no file of interest), summed over CPUs.
    pub writes: BTreeMap<FileKey, mmtrace_common::WriteCounters>,
    /// TLB flushes per traced process (tgid), summed over CPUs.
    pub tlb: BTreeMap<u32, TlbCounters>,
    /// `--latency`: fault latency histograms per (file, major?), summed.
    pub latency: BTreeMap<LatencyKey, LatencyHist>,
    /// `--latency`: fault stall totals per process, summed.
    pub proc_stall: BTreeMap<u32, ProcStall>,
    /// `--latency`: accounted faults not paired with their entry, by
    /// `mmtrace_common::latency_miss` index.
    pub latency_misses: [u64; latency_miss::COUNT as usize],
}

/// A kernel `comm` (NUL-padded) as text.
pub fn comm_string(c: &[u8; 16]) -> String {
    let n = c.iter().position(|b| *b == 0).unwrap_or(c.len());
    String::from_utf8_lossy(&c[..n]).into_owned()
}

pub fn sum_faults(values: impl IntoIterator<Item = FaultCounters>) -> FaultCounters {
    let mut out = FaultCounters::default();
    for v in values {
        out.add(&v);
    }
    out
}

pub fn sum_cache(values: impl IntoIterator<Item = CacheCounters>) -> CacheCounters {
    let mut out = CacheCounters::default();
    for v in values {
        out.add(&v);
    }
    out
}

/// Names of the error counters, for reports.
pub fn error_name(index: u32) -> &'static str {
    match index {
        errors::MAPPING_FULL => "mapping_map_full",
        errors::FILE_FULL => "file_map_full",
        errors::SCOPE_FULL => "scope_map_full",
        errors::FIND_VMA_FAILED => "vma_lookup_failed",
        errors::EXIT_FULL => "exit_map_full",
        errors::READ_FAILED => "kernel_read_failed",
        errors::NOTICE_DROPPED => "notice_dropped",
        errors::RECLAIMER_FULL => "reclaimer_map_full",
        errors::TLB_FULL => "tlb_map_full",
        errors::WRITES_FULL => "write_map_full",
        errors::FAULT_SLOT_TAKEN => "fault_slot_taken",
        errors::FAULT_AMBIGUOUS => "fault_kind_ambiguous",
        _ => "other",
    }
}

/// What each error counter means for the numbers, and what to do.
pub fn error_advice(index: u32) -> &'static str {
    match index {
        errors::MAPPING_FULL => {
            "faults counted per process but not per mapping: raise --max-mappings or narrow the scope"
        }
        errors::FILE_FULL => {
            "page-cache events of some files were not counted: raise --max-files or narrow the scope"
        }
        errors::SCOPE_FULL => "some forked children were not traced: raise --max-processes",
        errors::FIND_VMA_FAILED => {
            "faults counted per process but not attributed to a mapping (mmap lock busy, or a fault that grew the stack)"
        }
        errors::EXIT_FULL => "kernel fault counts of some exited processes were lost",
        errors::READ_FAILED => "some kernel reads failed: attribution may be incomplete",
        errors::NOTICE_DROPPED => {
            "the notice ring buffer overflowed: some paths or OOM-kill records were lost"
        }
        errors::RECLAIMER_FULL => "some evictions were not counted by reclaimer command name",
        errors::TLB_FULL => "TLB flushes of some processes were not counted: raise --max-processes",
        errors::WRITES_FULL => {
            "write-path events of some files (or msync calls) were not counted: more than 16,384 files written"
        }
        errors::FAULT_SLOT_TAKEN => {
            "threads whose ids differ by a multiple of 16384 faulted at once: that many faults \
             were counted as minor without checking how they ended"
        }
        errors::FAULT_AMBIGUOUS => {
            "a fault and GUP faults of both kinds fell between two faults of a thread: that many \
             faults were counted as minor though one of them may have been major"
        }
        _ => "",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_has_a_name_and_advice() {
        for i in 0..errors::COUNT {
            assert_ne!(error_name(i), "other");
            assert!(!error_advice(i).is_empty());
        }
    }
}
