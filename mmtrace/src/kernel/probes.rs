//! The one table of mmtrace's probes: which eBPF program goes on which hook,
//! whether the trace can run without it, and what is lost (the fallback)
//! when the kernel lacks it. The preflight checks it, the loader attaches
//! from it, and the `meta` record reports it — nothing else lists hooks.
use serde::Serialize;

/// Where a program attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// A tracefs tracepoint `category:event` (offsets read from its format).
    Tracepoint {
        category: &'static str,
        event: &'static str,
    },
    /// A raw tracepoint (arguments are the kernel function's; x86 only here).
    RawTracepoint {
        category: &'static str,
        event: &'static str,
    },
    /// A software perf event on every online CPU.
    PerfSoftware(SoftwareCounter),
}

/// The software perf counters mmtrace samples (period 1: every event).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SoftwareCounter {
    MinorFaults,
    MajorFaults,
}

/// Whether a trace can run without the probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    Required,
    /// Optional: `without` says what the report lacks when it is missing.
    Optional {
        without: &'static str,
    },
}

/// One row of the table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Probe {
    /// The eBPF program's name (its function in mmtrace-ebpf).
    pub program: &'static str,
    pub hook: Hook,
    pub need: Need,
    /// What it counts.
    pub purpose: &'static str,
}

impl Probe {
    pub fn required(&self) -> bool {
        self.need == Need::Required
    }

    /// The tracefs `(category, event)` whose format must exist, if any.
    pub fn tracefs_event(&self) -> Option<(&'static str, &'static str)> {
        match self.hook {
            Hook::Tracepoint { category, event } | Hook::RawTracepoint { category, event } => {
                Some((category, event))
            }
            Hook::PerfSoftware(_) => None,
        }
    }

    /// The hook as people write it: `filemap:mm_filemap_fault`,
    /// `raw:exceptions:page_fault_user`, `perf:page-faults-min`.
    pub fn hook_name(&self) -> String {
        match self.hook {
            Hook::Tracepoint { category, event } => format!("{category}:{event}"),
            Hook::RawTracepoint { category, event } => format!("raw:{category}:{event}"),
            Hook::PerfSoftware(SoftwareCounter::MinorFaults) => "perf:page-faults-min".into(),
            Hook::PerfSoftware(SoftwareCounter::MajorFaults) => "perf:page-faults-maj".into(),
        }
    }
}

const fn tp(
    program: &'static str,
    category: &'static str,
    event: &'static str,
    purpose: &'static str,
) -> Probe {
    Probe {
        program,
        hook: Hook::Tracepoint { category, event },
        need: Need::Required,
        purpose,
    }
}

/// Every probe, in attach order. Required hooks have existed since Linux
/// 5.x; the optional ones say what is lost without them.
pub const PROBES: &[Probe] = &[
    Probe {
        program: "page_faults_min",
        hook: Hook::PerfSoftware(SoftwareCounter::MinorFaults),
        need: Need::Required,
        purpose: "minor faults per mapping",
    },
    Probe {
        program: "page_faults_maj",
        hook: Hook::PerfSoftware(SoftwareCounter::MajorFaults),
        need: Need::Required,
        purpose: "major faults per mapping",
    },
    tp(
        "filemap_add",
        "filemap",
        "mm_filemap_add_to_page_cache",
        "pages added to the page cache, refaults",
    ),
    tp(
        "filemap_delete",
        "filemap",
        "mm_filemap_delete_from_page_cache",
        "evictions and their reason",
    ),
    tp(
        "filemap_fault",
        "filemap",
        "mm_filemap_fault",
        "which file a fault read",
    ),
    tp(
        "filemap_map_pages",
        "filemap",
        "mm_filemap_map_pages",
        "pages mapped by fault-around",
    ),
    Probe {
        program: "filemap_map_pages_entry",
        hook: Hook::RawTracepoint {
            category: "filemap",
            event: "mm_filemap_map_pages",
        },
        need: Need::Optional {
            without: "pages mapped by fault-around are not counted",
        },
        purpose: "pages mapped by fault-around (with faults counted at entry)",
    },
    tp(
        "task_newtask",
        "task",
        "task_newtask",
        "children join the scope",
    ),
    tp(
        "sched_process_exit",
        "sched",
        "sched_process_exit",
        "exit-time fault counters",
    ),
    tp(
        "memcg_reclaim_begin",
        "vmscan",
        "mm_vmscan_memcg_reclaim_begin",
        "memcg reclaim episodes",
    ),
    tp(
        "memcg_reclaim_end",
        "vmscan",
        "mm_vmscan_memcg_reclaim_end",
        "memcg reclaim episodes",
    ),
    tp(
        "direct_reclaim_begin",
        "vmscan",
        "mm_vmscan_direct_reclaim_begin",
        "direct reclaim episodes",
    ),
    tp(
        "direct_reclaim_end",
        "vmscan",
        "mm_vmscan_direct_reclaim_end",
        "direct reclaim episodes",
    ),
    tp(
        "cgroup_attach_task",
        "cgroup",
        "cgroup_attach_task",
        "processes moved into a traced cgroup",
    ),
    Probe {
        program: "oom_mark_victim",
        hook: Hook::Tracepoint {
            category: "oom",
            event: "mark_victim",
        },
        need: Need::Optional {
            without: "OOM kills are seen only in the cgroup's counters, without the victim's memory",
        },
        purpose: "OOM kills with the victim's memory",
    },
    Probe {
        program: "page_fault_user",
        hook: Hook::RawTracepoint {
            category: "exceptions",
            event: "page_fault_user",
        },
        need: Need::Optional {
            without: "write and copy-on-write faults are not told apart (x86 only)",
        },
        purpose: "write and copy-on-write faults",
    },
    Probe {
        program: "page_fault_kernel",
        hook: Hook::RawTracepoint {
            category: "exceptions",
            event: "page_fault_kernel",
        },
        need: Need::Optional {
            without: "write faults from inside the kernel are not told apart (x86 only)",
        },
        purpose: "write faults taken in kernel mode",
    },
    Probe {
        program: "signal_generate",
        hook: Hook::RawTracepoint {
            category: "signal",
            event: "signal_generate",
        },
        need: Need::Optional {
            without: "SIGBUS/SIGSEGV of traced processes are not reported (no signal records)",
        },
        purpose: "SIGBUS/SIGSEGV on mappings, with the file and page",
    },
    Probe {
        program: "tlb_flush",
        hook: Hook::RawTracepoint {
            category: "tlb",
            event: "tlb_flush",
        },
        need: Need::Optional {
            without: "TLB flushes per process are not counted (tlb_flushes null; x86 only)",
        },
        purpose: "TLB flushes and shootdowns per process, by reason",
    },
    Probe {
        program: "writeback_dirty_folio",
        hook: Hook::RawTracepoint {
            category: "writeback",
            event: "writeback_dirty_folio",
        },
        need: Need::Optional {
            without: "pages dirtied per file are not counted",
        },
        purpose: "pages dirtied per file (weighted by folio size)",
    },
    Probe {
        program: "folio_wait_writeback",
        hook: Hook::RawTracepoint {
            category: "writeback",
            event: "folio_wait_writeback",
        },
        need: Need::Optional {
            without: "waits on writeback are not counted",
        },
        purpose: "traced tasks waiting for a page under writeback",
    },
    Probe {
        program: "writeback_single_inode",
        hook: Hook::RawTracepoint {
            category: "writeback",
            event: "writeback_single_inode",
        },
        need: Need::Optional {
            without: "flusher writeback per file is not counted",
        },
        purpose: "pages written back by the flusher and sync(2), any filesystem",
    },
    Probe {
        program: "ext4_writepages_result",
        hook: Hook::Tracepoint {
            category: "ext4",
            event: "ext4_writepages_result",
        },
        need: Need::Optional {
            without: "pages fsync/msync write on ext4 are not counted",
        },
        purpose: "pages written back on ext4 (flusher, fsync, msync)",
    },
    Probe {
        program: "iomap_writeback_folio",
        hook: Hook::Tracepoint {
            category: "iomap",
            event: "iomap_writeback_folio",
        },
        need: Need::Optional {
            without: "pages fsync/msync write on XFS (iomap) are not counted",
        },
        purpose: "pages written back on XFS and other iomap filesystems",
    },
    Probe {
        program: "ext4_sync_enter",
        hook: Hook::Tracepoint {
            category: "ext4",
            event: "ext4_sync_file_enter",
        },
        need: Need::Optional {
            without: "msync(MS_SYNC) calls on ext4 are not counted",
        },
        purpose: "msync(MS_SYNC) on ext4: calls, time, pages written (no syscall hook)",
    },
    Probe {
        program: "ext4_sync_exit",
        hook: Hook::Tracepoint {
            category: "ext4",
            event: "ext4_sync_file_exit",
        },
        need: Need::Optional {
            without: "msync(MS_SYNC) calls on ext4 are not counted",
        },
        purpose: "msync(MS_SYNC) on ext4: calls, time, pages written (no syscall hook)",
    },
    Probe {
        program: "msync_enter",
        hook: Hook::Tracepoint {
            category: "syscalls",
            event: "sys_enter_msync",
        },
        need: Need::Optional {
            without: "MS_ASYNC and msync on filesystems other than ext4 are not counted",
        },
        purpose: "--msync-syscalls: every msync call, its time and the pages it wrote",
    },
    Probe {
        program: "msync_exit",
        hook: Hook::Tracepoint {
            category: "syscalls",
            event: "sys_exit_msync",
        },
        need: Need::Optional {
            without: "MS_ASYNC and msync on filesystems other than ext4 are not counted",
        },
        purpose: "--msync-syscalls: every msync call, its time and the pages it wrote",
    },
];

/// The probe of a program.
pub fn by_program(program: &str) -> Option<&'static Probe> {
    PROBES.iter().find(|p| p.program == program)
}

/// What happened to a probe in this trace (for the `meta` record).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct ProbeStatus {
    pub program: String,
    pub hook: String,
    pub required: bool,
    pub attached: bool,
    /// Why it is not attached, and what the report lacks for it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missing: Option<String>,
}

impl ProbeStatus {
    pub fn new(p: &Probe, attached: Result<(), String>) -> Self {
        let missing = attached.err().map(|why| match p.need {
            Need::Optional { without } => format!("{why}: {without}"),
            Need::Required => why,
        });
        Self {
            program: p.program.into(),
            hook: p.hook_name(),
            required: p.required(),
            attached: missing.is_none(),
            missing,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn programs_are_unique_and_optional_ones_say_what_is_lost() {
        for (i, p) in PROBES.iter().enumerate() {
            assert!(
                PROBES[i + 1..].iter().all(|q| q.program != p.program),
                "{} twice",
                p.program
            );
            if let Need::Optional { without } = p.need {
                assert!(!without.is_empty(), "{}", p.program);
            }
        }
        assert!(by_program("filemap_add").unwrap().required());
        assert!(!by_program("oom_mark_victim").unwrap().required());
    }

    #[test]
    fn every_program_exists_in_the_ebpf_crate() {
        let src: String = [
            "faults.rs",
            "pagecache.rs",
            "process.rs",
            "reclaim.rs",
            "oom.rs",
            "signals.rs",
            "tlb.rs",
            "writes.rs",
        ]
        .iter()
        .map(|f| {
            std::fs::read_to_string(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join("../mmtrace-ebpf/src")
                    .join(f),
            )
            .unwrap()
        })
        .collect();
        for p in PROBES {
            assert!(
                src.contains(&format!("pub fn {}(", p.program)),
                "no eBPF program {}",
                p.program
            );
        }
    }

    #[test]
    fn status_names_the_hook_and_the_loss() {
        let s = ProbeStatus::new(
            by_program("oom_mark_victim").unwrap(),
            Err("not in tracefs".into()),
        );
        assert_eq!(s.hook, "oom:mark_victim");
        assert!(!s.attached);
        assert!(s.missing.unwrap().contains("not in tracefs: OOM kills"));
        let s = ProbeStatus::new(by_program("page_faults_min").unwrap(), Ok(()));
        assert_eq!(
            (s.hook.as_str(), s.attached),
            ("perf:page-faults-min", true)
        );
    }
}
