//! The kernel<->userspace ABI of mmtrace.
//!
//! Every type here is `#[repr(C)]`, padded explicitly (no implicit padding: the
//! BPF verifier rejects map keys with uninitialised bytes, and userspace must
//! build byte-identical keys), and its size is asserted in the tests below.
//! Counters are per-CPU map values: userspace sums the CPUs.
#![no_std]

/// Bits of [`MappingKey::kind`].
pub mod kind {
    /// The vma maps a file (`vm_file != NULL`).
    pub const FILE: u32 = 1 << 0;
    /// The vma is `VM_SHARED`.
    pub const SHARED: u32 = 1 << 1;
    /// `bpf_find_vma` failed (lock contention or no vma): the fault is counted
    /// for the process but not attributed to a mapping.
    pub const UNATTRIBUTED: u32 = 1 << 2;
}

/// Key of the per-mapping fault counters (`MAPPING_FAULTS`).
///
/// One row per (process, vma start, file): a vma reused for another file, or
/// a process image replaced by exec, gets a new row.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MappingKey {
    /// Thread-group id (the process id userspace sees).
    pub tgid: u32,
    /// [`kind`] bits.
    pub kind: u32,
    /// `vm_area_struct.vm_start` (0 when unattributed).
    pub vm_start: u64,
    /// `vm_area_struct.vm_end` when the row was created.
    pub vm_end: u64,
    /// `vm_pgoff`: the file offset of `vm_start`, in pages.
    pub pgoff: u64,
    /// `inode.i_ino` of the mapped file (0 for anonymous memory).
    pub ino: u64,
    /// `super_block.s_dev` in the kernel's encoding (`major << 20 | minor`).
    pub dev: u32,
    pub _pad: u32,
}

/// Per-mapping fault counters (a per-CPU value).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounters {
    /// `PERF_COUNT_SW_PAGE_FAULTS_MIN` events.
    pub minor: u64,
    /// `PERF_COUNT_SW_PAGE_FAULTS_MAJ` events.
    pub major: u64,
    /// Faults whose error code has the write bit (x86: bit 1).
    pub write: u64,
    /// Write faults on a private (`!VM_SHARED`) file mapping: copy-on-write.
    pub cow: u64,
    /// Pages mapped by these faults: the fault-around window
    /// (`mm_filemap_map_pages`) where one ran, else 1.
    pub pages_mapped: u64,
    /// Write faults on a present, write-protected page of a shared
    /// (`VM_SHARED`) file mapping (x86 error code P|W): the page was clean
    /// (written back, or mapped read-only by fault-around) and the write
    /// dirtied it again through `page_mkwrite`. First-touch writes (page not
    /// present) are not in it.
    pub wp_shared: u64,
}

/// The per-CPU vma cache slot of the fault path (`VMA_CACHE`): the last vma
/// a fault hit on this CPU, valid while the mm's `mm_lock_seq` is unchanged,
/// and the counters of the faults on it not yet flushed to `MAPPING_FAULTS`
/// (userspace adds them when it reads).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmaCache {
    /// `mm_struct` address (identity only, never dereferenced by userspace).
    pub mm: u64,
    /// `mm_lock_seq` when the slot was filled (even: no writer).
    pub seq: u64,
    /// `SCOPE_GEN` when the slot was filled: while unchanged, no process
    /// left the scope, so the slot's process is still traced.
    pub scope_gen: u64,
    /// The file's `address_space` (`file.f_mapping`; 0: anonymous), which
    /// the raw `mm_filemap_map_pages` tracepoint names: identity only.
    pub mapping: u64,
    /// The mapping row (with tgid); `vm_start..vm_end` is the cached range.
    pub key: MappingKey,
    /// Unflushed counters of this row.
    pub counters: FaultCounters,
}

/// Key of the per-file page-cache counters (`FILE_CACHE`). A present key also
/// means "this file is of interest": evictions of it are counted whoever
/// causes them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileKey {
    pub ino: u64,
    /// Kernel encoding (`major << 20 | minor`).
    pub dev: u32,
    pub _pad: u32,
}

/// Per-file page-cache counters (a per-CPU value), in pages (folios weighted
/// by `1 << order`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheCounters {
    pub added: u64,
    pub evicted: u64,
    /// Pages re-added after a *reclaim* eviction this trace saw (what the
    /// kernel calls a refault: only reclaim leaves shadow entries). An
    /// estimate bounded by the size of the `EVICTED` LRU map.
    pub refaulted: u64,
    /// Pages re-added after an invalidation (fadvise, truncate, ...) this
    /// trace saw: a re-read, not a refault (no shadow entry was left).
    pub readded: u64,
    /// `evicted` split by [`reason`].
    pub evicted_by: [u64; reason::COUNT],
    /// Evicted pages whose owner memcg (`folio->memcg_data`) is in the traced
    /// cgroup tree (`CGROUPS`); 0 when no cgroup is traced or the owner
    /// could not be read.
    pub evicted_owned: u64,
}

/// Why a page left the page cache, from the context of the eviction.
pub mod reason {
    /// Inside `mm_vmscan_memcg_reclaim_begin/end` of this thread, charged by
    /// an allocation: a memory cgroup's limit or memory.high.
    pub const MEMCG: usize = 0;
    /// Inside `mm_vmscan_direct_reclaim_begin/end`: global memory shortage.
    pub const DIRECT: usize = 1;
    /// The current task is kswapd (`PF_KSWAPD`).
    pub const KSWAPD: usize = 2;
    /// Other reclaim (`PF_MEMALLOC` outside the above, by a task not named
    /// below): see the reclaimers by command name.
    pub const OTHER_RECLAIM: usize = 3;
    /// posix_fadvise(POSIX_FADV_DONTNEED) and similar invalidations.
    pub const FADVISE: usize = 4;
    /// truncate(2), ftruncate(2), open(O_TRUNC).
    pub const TRUNCATE: usize = 5;
    /// The file was removed (unlink, rename over it, last close or exit).
    pub const UNLINK: usize = 6;
    /// A write(2) outside reclaim: writes to /proc/sys/vm/drop_caches
    /// (also direct-I/O writes invalidating cached pages).
    pub const DROP_CACHES: usize = 7;
    /// Anything else (other invalidations).
    pub const OTHER: usize = 8;
    /// Memcg reclaim asked for by a write to a cgroup file, not by an
    /// allocation: memory.reclaim (v2), memory.force_empty (v1), or a lowered
    /// memory.max / memory.high / memory.limit_in_bytes. Proactive.
    pub const PROACTIVE: usize = 9;
    /// DAMON's proactive reclaim (`kdamond`).
    pub const DAMON: usize = 10;
    /// khugepaged collapsing pages into a huge page.
    pub const KHUGEPAGED: usize = 11;
    /// Memory compaction (`kcompactd`).
    pub const COMPACTION: usize = 12;
    pub const COUNT: usize = 13;
    /// Names, by index (JSON keys).
    pub const NAMES: [&str; COUNT] = [
        "memcg_reclaim",
        "direct_reclaim",
        "kswapd",
        "other_reclaim",
        "fadvise",
        "truncate",
        "unlink",
        "drop_caches",
        "other",
        "proactive",
        "damon",
        "khugepaged",
        "compaction",
    ];

    /// Reclaim: the kernel leaves a shadow entry, so a page that comes back
    /// is a refault (`workingset_refault_file`).
    pub const fn is_reclaim(r: usize) -> bool {
        matches!(
            r,
            MEMCG | DIRECT | KSWAPD | OTHER_RECLAIM | PROACTIVE | DAMON
        )
    }

    /// Reclaim forced by a shortage (a cgroup limit or global memory), as
    /// opposed to proactive reclaim or an invalidation.
    pub const fn is_pressure(r: usize) -> bool {
        matches!(r, MEMCG | DIRECT | KSWAPD)
    }
}

/// Reclaim episodes of traced tasks (a per-CPU value), from the vmscan
/// begin/end tracepoints.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReclaimStats {
    pub memcg_episodes: u64,
    pub memcg_reclaimed: u64,
    pub memcg_ns: u64,
    pub direct_episodes: u64,
    pub direct_reclaimed: u64,
    pub direct_ns: u64,
    /// Proactive memcg reclaim ([`reason::PROACTIVE`]) run by traced tasks.
    pub proactive_episodes: u64,
    pub proactive_reclaimed: u64,
    pub proactive_ns: u64,
}

/// A reclaim in progress on a thread (key: tid).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReclaimCtx {
    /// [`reason::MEMCG`], [`reason::DIRECT`] or [`reason::PROACTIVE`].
    pub kind: u64,
    pub start_ns: u64,
}

/// A cgroup of the traced tree (`CGROUPS` key): (hierarchy, kernfs id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CgroupKey {
    /// Hierarchy id (`cgroup_root.hierarchy_id`; 0 = cgroup v2).
    pub hierarchy: u32,
    pub _pad: u32,
    /// `kernfs_node.id`: the inode number of the cgroup's directory.
    pub id: u64,
}

/// Value of the recently-evicted LRU map: one bit per page of a 64-page
/// chunk, split by how the page left.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EvictedBits {
    /// Evicted by reclaim ([`reason::is_reclaim`]): coming back is a refault.
    pub reclaimed: u64,
    /// Invalidated (fadvise, truncate, ...): coming back is a re-read.
    pub invalidated: u64,
}

/// Key of the recently-evicted LRU map used to detect refaults: `index` is
/// the page index / 64 (the value is a bitmap of those 64 pages).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PageKey {
    pub ino: u64,
    pub index: u64,
    pub dev: u32,
    pub _pad: u32,
}

/// Per-process record written when a thread of a traced process exits (a
/// per-CPU value keyed by tgid): the kernel's own fault counters of the
/// exiting threads, so the reconciliation survives the process.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExitRecord {
    /// Sum of `task_struct.min_flt` of the threads that exited.
    pub min_flt: u64,
    /// Sum of `task_struct.maj_flt` of the threads that exited.
    pub maj_flt: u64,
    /// Number of threads seen exiting.
    pub threads: u64,
    /// Non-zero once the whole thread group is dead.
    pub group_dead: u64,
    /// `comm` of the last exiting thread.
    pub comm: [u8; 16],
    /// `kernfs_node.id` of the memory cgroup the process died in (the inode
    /// number of its directory; 0: unknown), read when the group died: a
    /// process too short-lived for userspace to read /proc/<pid>/cgroup
    /// still gets its cgroup.
    pub memcg_id: u64,
}

/// Value of the `SCOPE` map (key: tgid).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScopeEntry {
    /// [`scope`] bits.
    pub flags: u32,
    pub _pad: u32,
}

/// Run-time configuration of the eBPF programs, written by the loader into the
/// `CONFIG` global before load (`EbpfLoader::override_global`).
///
/// Rust eBPF gets no CO-RE relocations, so kernel struct offsets come from
/// `/sys/kernel/btf/vmlinux` and tracepoint field offsets from tracefs
/// `format` files, both read at start by the loader. An offset of
/// [`Config::ABSENT`] means "this kernel has no such field".
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// mmtrace's own tgid: never traced.
    pub self_tgid: u32,
    /// Non-zero: the fault path may reuse the last vma per CPU while the
    /// process's `mm_lock_seq` is unchanged (needs `mm_lock_seq`).
    pub vma_cache: u32,
    // --- read on every fault entry: kept in the first cache line ---
    /// Non-zero when the raw tracepoints exceptions:page_fault_{user,kernel}
    /// (x86 only) are attached and hand over the error code.
    pub write_faults: u32,
    /// Non-zero with `--latency`: the fault entry hooks record the entry
    /// time and address of every fault, and the accounting (perf) event
    /// adds the fault's latency to `FAULT_LATENCY` / `PROC_STALL`.
    pub latency: u32,
    /// `task_struct.pagefault_disabled` ([`Config::ABSENT`]: unknown): a
    /// kernel-mode fault with it non-zero is a nofault read, never counted.
    pub task_pagefault_disabled: u32,
    /// Non-zero for `--all`: every process but mmtrace is in scope, without
    /// `SCOPE` entries (children are not added, nothing fills up).
    pub scope_all: u32,
    /// [`event_mask`] bits: which raw events go to the `EVENTS` ring buffer
    /// (0: none; the programs only aggregate).
    pub events: u32,
    // --- struct offsets (bytes), from BTF ---
    pub task_mm: u32,
    pub task_min_flt: u32,
    pub task_maj_flt: u32,
    /// `task_struct.pid` / `tgid`: the fault entry reads them from the task
    /// it has, instead of calling `bpf_get_current_pid_tgid` (a helper
    /// call is not inlined, and costs more than two loads).
    pub task_pid: u32,
    pub task_tgid: u32,
    pub mm_lock_seq: u32,
    pub vma_vm_start: u32,
    pub vma_vm_end: u32,
    pub vma_vm_flags: u32,
    pub vma_vm_pgoff: u32,
    pub vma_vm_file: u32,
    pub file_f_inode: u32,
    pub inode_i_ino: u32,
    pub inode_i_sb: u32,
    pub sb_s_dev: u32,
    // --- tracepoint field offsets (bytes), from tracefs `format` ---
    /// filemap:mm_filemap_{add_to,delete_from}_page_cache (same layout).
    pub tp_cache_ino: u32,
    pub tp_cache_index: u32,
    pub tp_cache_dev: u32,
    pub tp_cache_order: u32,
    /// filemap:mm_filemap_fault
    pub tp_fault_ino: u32,
    pub tp_fault_dev: u32,
    /// filemap:mm_filemap_map_pages
    pub tp_map_ino: u32,
    pub tp_map_dev: u32,
    pub tp_map_index: u32,
    pub tp_map_last_index: u32,
    /// sched:sched_process_exit `group_dead` (ABSENT on kernels < 6.16).
    pub tp_exit_group_dead: u32,
    /// task:task_newtask
    pub tp_newtask_pid: u32,
    pub tp_newtask_clone_flags: u32,
    /// Number of possible CPUs (bounds the cross-CPU hand-over search).
    pub nr_cpus: u32,
    /// `task_struct.flags` (PF_KSWAPD, PF_MEMALLOC).
    pub task_flags: u32,
    /// filemap:mm_filemap_{add_to,delete_from}_page_cache `pfn`.
    pub tp_cache_pfn: u32,
    /// Offset of the syscall number in the user `pt_regs` (x86: `orig_ax`);
    /// ABSENT: evictions are not classified by syscall.
    pub regs_syscall_nr: u32,
    /// vmscan:*_reclaim_end `nr_reclaimed`.
    pub tp_reclaim_nr: u32,
    /// cgroup:cgroup_attach_task `dst_root`, `dst_id`, `pid`.
    pub tp_attach_root: u32,
    pub tp_attach_id: u32,
    pub tp_attach_pid: u32,
    /// Non-zero when a cgroup tree is traced: tasks attached to a cgroup of
    /// `CGROUPS` join the scope, and leave it when moved out.
    pub cgroup_mode: u32,
    /// Owner memcg of an evicted page: address of the kernel's
    /// `vmemmap_base` variable (0: unknown), `sizeof(struct page)`,
    /// `page.memcg_data`, `mem_cgroup.css` + `cgroup_subsys_state.cgroup`,
    /// `cgroup.kn`, `kernfs_node.id`, `cgroup.root`, `cgroup_root.hierarchy_id`.
    pub vmemmap_base_addr: u64,
    /// The vmemmap base itself when it is fixed (no KASLR of memory
    /// regions: `vmemmap_base_addr` is 0).
    pub vmemmap_base: u64,
    pub page_size_of: u32,
    pub page_memcg_data: u32,
    pub memcg_css_cgroup: u32,
    pub cgroup_kn: u32,
    pub kn_id: u32,
    pub cgroup_root: u32,
    pub root_hierarchy_id: u32,
    /// `task_struct.cgroups`, `css_set.subsys[memory_cgrp_id]`,
    /// `cgroup_subsys_state.cgroup` (0: the memcg of an exiting task is not
    /// read).
    pub task_cgroups: u32,
    pub css_set_memcg: u32,
    pub css_cgroup: u32,
    pub _pad_memcg: u32,
    /// oom:mark_victim `pid`, `comm` (`__data_loc`), `total_vm`,
    /// `anon_rss`, `file_rss`, `shmem_rss` (kB), `oom_score_adj`; ABSENT
    /// pid: the tracepoint is missing.
    pub tp_oom_pid: u32,
    pub tp_oom_comm: u32,
    pub tp_oom_total_vm: u32,
    pub tp_oom_anon: u32,
    pub tp_oom_file: u32,
    pub tp_oom_shmem: u32,
    pub tp_oom_score_adj: u32,
    /// Stream one raw event in `events_sample` (per CPU); 0 or 1: all.
    pub events_sample: u32,
    // --- The write path (BTF offsets; tracefs offsets, ABSENT: no such event).
    /// `address_space.host`, `folio.flags`, `folio._nr_pages` (ABSENT: large
    /// folios count one page), the `PG_head` bit number,
    /// `writeback_control.nr_to_write`.
    pub mapping_host: u32,
    pub folio_flags: u32,
    pub folio_nr_pages: u32,
    pub pg_head: u32,
    pub wbc_nr_to_write: u32,
    /// syscalls:sys_enter_msync `start`, `flags`; sys_exit_msync `ret`.
    pub tp_msync_start: u32,
    pub tp_msync_flags: u32,
    pub tp_msync_ret: u32,
    /// ext4:ext4_writepages_result `dev`, `ino`, `pages_written`.
    pub tp_ext4_wp_dev: u32,
    pub tp_ext4_wp_ino: u32,
    pub tp_ext4_wp_pages: u32,
    /// iomap:iomap_writeback_folio `dev`, `ino`, `length` (bytes).
    pub tp_iomap_wb_dev: u32,
    pub tp_iomap_wb_ino: u32,
    pub tp_iomap_wb_length: u32,
    /// Non-zero: mapping rows are per (process, file, kind) — vm_start,
    /// vm_end and pgoff zeroed in `MAPPING_FAULTS` keys (`--all` without
    /// `--mappings`: a busy host has far more vmas than files).
    pub coarse_mappings: u32,
    /// The msync syscall number (x86_64: 26; ABSENT: msync(MS_SYNC) is not
    /// told apart from fsync in `ext4_sync_file_enter`).
    pub msync_nr: u32,
    /// ext4:ext4_sync_file_enter `dev`, `ino`.
    pub tp_ext4_sync_dev: u32,
    pub tp_ext4_sync_ino: u32,
    /// `file.f_mapping` (the raw `mm_filemap_map_pages` names the mapping).
    pub file_f_mapping: u32,
    /// Kernel text ranges `[start, end)` of the functions that run memcg
    /// reclaim for a write to a cgroup file (memory.reclaim, force_empty, a
    /// lowered limit): a reclaim whose kernel stack passes through one is
    /// [`reason::PROACTIVE`]. Unused pairs are zero.
    pub proactive_text: [[u64; 2]; PROACTIVE_RANGES],
    /// Eviction reason ([`reason`]) for each syscall number (255: none).
    pub syscall_reason: [u8; 512],
}

impl Default for Config {
    fn default() -> Self {
        Self::ZERO
    }
}

/// Number of [`Config::proactive_text`] ranges.
pub const PROACTIVE_RANGES: usize = 8;

impl Config {
    pub const ABSENT: u32 = u32::MAX;
    /// All zero.
    // SAFETY: every field is an integer or an array of integers.
    pub const ZERO: Config = unsafe { core::mem::zeroed() };
}

/// Bits of [`ScopeEntry::flags`].
pub mod scope {
    /// Children forked by this process join the scope.
    pub const FOLLOW_CHILDREN: u32 = 1 << 0;
    /// Added by the kernel at fork (not a target named by the user).
    pub const CHILD: u32 = 1 << 1;
    /// Added by the kernel when moved into the traced cgroup tree: it lived
    /// before, so its kernel counters need a baseline.
    pub const JOINED: u32 = 1 << 2;
}

/// Indexes of the per-CPU `ERRORS` array: events that could not be counted
/// where they belong. Userspace reports every non-zero one.
pub mod errors {
    /// `MAPPING_FAULTS` was full: faults counted only in `UNATTRIBUTED` rows.
    pub const MAPPING_FULL: u32 = 0;
    /// `FILE_CACHE` was full: page-cache events of a new file were lost.
    pub const FILE_FULL: u32 = 1;
    /// `SCOPE` was full: a forked child could not be added.
    pub const SCOPE_FULL: u32 = 2;
    /// `bpf_find_vma` failed (mmap lock busy, no vma).
    pub const FIND_VMA_FAILED: u32 = 3;
    /// `EXITS` was full.
    pub const EXIT_FULL: u32 = 4;
    /// A kernel read (`bpf_probe_read_kernel`) failed.
    pub const READ_FAILED: u32 = 5;
    /// The `NOTICES` ring buffer was full: a notice was dropped (path
    /// resolution or an OOM-kill record suffers; no counter is affected).
    pub const NOTICE_DROPPED: u32 = 6;
    /// `RECLAIMERS` was full: evicted pages of some reclaimer commands are
    /// counted per file but not per command.
    pub const RECLAIMER_FULL: u32 = 7;
    /// `TLB_FLUSHES` was full: TLB flushes of some processes were not counted.
    pub const TLB_FULL: u32 = 8;
    /// Two live threads shared a `THREAD_FAULTS` slot: a fault counted at
    /// entry stayed a minor fault without its outcome being checked.
    pub const FAULT_SLOT_TAKEN: u32 = 9;
    /// A fault and GUP faults of both kinds happened between two fault
    /// entries of a thread: the fault was kept as a minor one.
    pub const FAULT_AMBIGUOUS: u32 = 10;
    /// `FILE_WRITES` or `MSYNC_INFLIGHT` was full: write-path events of a
    /// file or an msync call were not counted.
    pub const WRITES_FULL: u32 = 11;
    pub const COUNT: u32 = 12;
}

/// A rare event userspace should act on at once, sent through the `NOTICES`
/// ring buffer (never per fault).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Notice {
    /// [`notice`] kind.
    pub kind: u32,
    /// The in-scope process that caused it.
    pub pid: u32,
    /// Kernel encoding.
    pub dev: u32,
    pub _pad: u32,
    pub ino: u64,
}

/// Kinds of [`Notice`] (and of every `NOTICES` record: the kind is first).
pub mod notice {
    /// A file became of interest: read the process's maps now, while the
    /// mapping still exists, to learn the file's path.
    pub const NEW_FILE: u32 = 1;
    /// The OOM killer chose a victim: an [`OomKill`](super::OomKill) record.
    pub const OOM_KILL: u32 = 2;
    /// A traced task got a kernel-generated SIGBUS or SIGSEGV: a
    /// [`SignalNotice`](super::SignalNotice) record.
    pub const SIGNAL: u32 = 3;
}

/// A kernel-generated SIGBUS or SIGSEGV (`si_code > 0`) sent to a traced
/// task (raw tracepoint `signal:signal_generate`), with the vma holding the
/// fault address as the faulting task saw it (looked up in the task itself:
/// the signal is generated inside the fault, before the task can unmap it).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SignalNotice {
    /// [`notice::SIGNAL`].
    pub kind: u32,
    /// Thread-group id and thread id of the task that got the signal.
    pub tgid: u32,
    pub tid: u32,
    /// `SIGBUS` (7) or `SIGSEGV` (11).
    pub signo: u32,
    /// `si_code` (e.g. `BUS_ADRERR` 2, `SEGV_MAPERR` 1).
    pub code: i32,
    /// [`signal_vma`] bits: whether a vma was found, file, shared.
    pub vma: u32,
    /// `si_addr`: the faulting address.
    pub addr: u64,
    /// The vma holding `addr` (when [`signal_vma::FOUND`]).
    pub vm_start: u64,
    pub vm_end: u64,
    /// `vm_pgoff`: the file page of `vm_start`.
    pub pgoff: u64,
    pub ino: u64,
    /// Kernel encoding (`major << 20 | minor`).
    pub dev: u32,
    pub _pad: u32,
    /// `bpf_ktime_get_ns()` when the signal was generated.
    pub ktime_ns: u64,
    pub comm: [u8; 16],
}

/// Bits of [`SignalNotice::vma`].
pub mod signal_vma {
    /// `bpf_find_vma` found a vma containing the address.
    pub const FOUND: u32 = 1 << 0;
    /// It maps a file.
    pub const FILE: u32 = 1 << 1;
    /// It is `VM_SHARED`.
    pub const SHARED: u32 = 1 << 2;
    /// The lookup itself failed (mmap lock busy): nothing is known.
    pub const LOOKUP_FAILED: u32 = 1 << 3;
}

/// Reasons of the `tlb:tlb_flush` tracepoint (`enum tlb_flush_reason`, x86;
/// the tracepoint's print fmt on Linux 6.18 lists six).
pub mod tlb_reason {
    /// `switch_mm` flushed the TLB while switching to another mm (counted
    /// against the task switched away from).
    pub const TASK_SWITCH: usize = 0;
    /// This CPU received a flush request from another CPU (the IPI handler
    /// flushing for the mm it runs): a shootdown received.
    pub const REMOTE_SHOOTDOWN: usize = 1;
    /// A local flush of a kernel range (rare for user processes).
    pub const LOCAL_SHOOTDOWN: usize = 2;
    /// The initiator flushed its own CPU's entries for a range of its mm
    /// (munmap, mprotect, madvise, migration...).
    pub const LOCAL_MM_SHOOTDOWN: usize = 3;
    /// The initiator asked other CPUs that may cache the mm to flush
    /// (`native_flush_tlb_multi`). Logged even when every other CPU is in
    /// lazy TLB mode and no interrupt is actually sent.
    pub const REMOTE_SEND_IPI: usize = 4;
    /// A flush request arrived on a CPU that no longer runs the mm.
    pub const REMOTE_WRONG_CPU: usize = 5;
    /// Slots (reasons above 5 count in the last one).
    pub const COUNT: usize = 8;
    /// Names, by index (JSON keys).
    pub const NAMES: [&str; COUNT] = [
        "task_switch",
        "remote_shootdown",
        "local_shootdown",
        "local_mm_shootdown",
        "remote_send_ipi",
        "remote_wrong_cpu",
        "unknown_6",
        "unknown_other",
    ];
}

/// TLB flushes of one traced process (a per-CPU value keyed by tgid), by
/// [`tlb_reason`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TlbCounters {
    /// `tlb_flush` events.
    pub flushes: [u64; tlb_reason::COUNT],
    /// Pages of the ranged flushes (`pages != -1`).
    pub pages: [u64; tlb_reason::COUNT],
    /// Full flushes (`pages == TLB_FLUSH_ALL`, -1): the whole TLB of the mm.
    pub full: [u64; tlb_reason::COUNT],
}

impl TlbCounters {
    pub fn add(&mut self, o: &Self) {
        for i in 0..tlb_reason::COUNT {
            self.flushes[i] += o.flushes[i];
            self.pages[i] += o.pages[i];
            self.full[i] += o.full[i];
        }
    }
}

/// The OOM killer marked a victim (`oom:mark_victim`), sent through
/// `NOTICES` for every victim on the host; `in_scope` says whether the
/// victim was traced.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OomKill {
    /// [`notice::OOM_KILL`].
    pub kind: u32,
    /// The victim's pid (a thread id; the process's id for a single-threaded
    /// or leader victim).
    pub pid: u32,
    /// Non-zero when `pid` was in the traced scope.
    pub in_scope: u32,
    pub oom_score_adj: i32,
    /// The victim's memory at the kill, kB.
    pub total_vm_kb: u64,
    pub anon_rss_kb: u64,
    pub file_rss_kb: u64,
    pub shmem_rss_kb: u64,
    /// `bpf_ktime_get_ns()` at the kill.
    pub ktime_ns: u64,
    pub comm: [u8; 16],
}

/// Bits of [`Config::events`].
pub mod event_mask {
    pub const MINOR_FAULTS: u32 = 1 << 0;
    pub const MAJOR_FAULTS: u32 = 1 << 1;
    pub const FAULTS: u32 = MINOR_FAULTS | MAJOR_FAULTS;
    pub const ADDS: u32 = 1 << 2;
    pub const EVICTIONS: u32 = 1 << 3;
}

/// Kinds of [`Event`].
pub mod event {
    pub const MINOR_FAULT: u32 = 1;
    pub const MAJOR_FAULT: u32 = 2;
    pub const CACHE_ADD: u32 = 3;
    pub const EVICTION: u32 = 4;
    /// Bits of [`Event::flags`] (faults).
    pub const WRITE: u32 = 1 << 0;
    pub const COW: u32 = 1 << 1;
    pub const FILE: u32 = 1 << 2;
    pub const SHARED: u32 = 1 << 3;
    /// The fault's vma could not be found (no file fields).
    pub const UNATTRIBUTED: u32 = 1 << 4;
    /// Evictions: the page was charged to the traced cgroup.
    pub const OWNED: u32 = 1 << 5;
}

/// One raw event (`--events`), sent through the `EVENTS` ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// [`event`] kind.
    pub kind: u32,
    /// The task that caused it (for evictions: the evicting task, which may
    /// be kswapd or another process).
    pub tgid: u32,
    pub tid: u32,
    /// Kernel encoding; 0 with `ino` 0: anonymous memory.
    pub dev: u32,
    pub ino: u64,
    /// Cache events: the first page index in the file. Faults: the vma's
    /// page offset in the file (`vm_pgoff`).
    pub index: u64,
    /// Cache events: pages of the folio. Faults: pages mapped (fault-around).
    pub pages: u64,
    /// Faults: the faulting address.
    pub addr: u64,
    /// Faults: the vma's start (with `index`, the file offset of `addr`).
    pub vm_start: u64,
    /// `bpf_ktime_get_ns()`.
    pub ktime_ns: u64,
    /// Faults: ns from the fault's entry to its accounting (0: unknown).
    pub latency_ns: u64,
    /// Evictions: the [`reason`] index.
    pub reason: u32,
    /// [`event`] flag bits.
    pub flags: u32,
}

/// Key of `FAULT_LATENCY`: a file (`ino` 0, `dev` 0: anonymous memory)
/// and the kernel's minor/major classification of the faults.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LatencyKey {
    pub ino: u64,
    /// Kernel encoding (`major << 20 | minor`).
    pub dev: u32,
    /// 1: major faults (`PAGE_FAULTS_MAJ`), 0: minor.
    pub major: u32,
}

/// Log2 buckets of [`LatencyHist`]: bucket 0 holds 0 ns, bucket `i >= 1`
/// holds `[2^(i-1), 2^i)` ns; the last one also everything above.
pub const LATENCY_BUCKETS: usize = 40;

/// Fault latency histogram (a per-CPU value): the time from fault entry
/// (`exceptions:page_fault_user/kernel`) to the kernel's accounting of the
/// fault (the perf software event), in ns.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LatencyHist {
    pub count: u64,
    pub sum_ns: u64,
    pub max_ns: u64,
    pub buckets: [u64; LATENCY_BUCKETS],
}

impl Default for LatencyHist {
    fn default() -> Self {
        Self {
            count: 0,
            sum_ns: 0,
            max_ns: 0,
            buckets: [0; LATENCY_BUCKETS],
        }
    }
}

impl LatencyHist {
    pub fn add(&mut self, o: &Self) {
        self.count += o.count;
        self.sum_ns += o.sum_ns;
        self.max_ns = self.max_ns.max(o.max_ns);
        for (a, b) in self.buckets.iter_mut().zip(o.buckets.iter()) {
            *a += b;
        }
    }
}

/// Fault stall totals of one process (`PROC_STALL`, a per-CPU value keyed
/// by tgid), split by the kernel's minor/major classification.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcStall {
    pub minor_count: u64,
    pub minor_sum_ns: u64,
    pub minor_max_ns: u64,
    pub major_count: u64,
    pub major_sum_ns: u64,
    pub major_max_ns: u64,
}

impl ProcStall {
    pub fn add(&mut self, o: &Self) {
        self.minor_count += o.minor_count;
        self.minor_sum_ns += o.minor_sum_ns;
        self.minor_max_ns = self.minor_max_ns.max(o.minor_max_ns);
        self.major_count += o.major_count;
        self.major_sum_ns += o.major_sum_ns;
        self.major_max_ns = self.major_max_ns.max(o.major_max_ns);
    }
}

/// Indexes of the per-CPU `LATENCY_MISSES` array (`--latency`): accounted
/// faults whose latency was not recorded, by why.
pub mod latency_miss {
    /// No fault entry of this thread was waiting (its slot was taken over
    /// by another thread, or the entry hook did not run).
    pub const NO_ENTRY: u32 = 0;
    /// The waiting entry was for another address: a stale entry (a fault
    /// that failed, SIGSEGV/SIGBUS, left no accounting event), never paired.
    pub const ADDR_MISMATCH: u32 = 1;
    /// Entry time after the accounting, or more than 60 s before it.
    pub const BAD_TIME: u32 = 2;
    /// `FAULT_LATENCY` or `PROC_STALL` was full.
    pub const MAP_FULL: u32 = 3;
    pub const COUNT: u32 = 4;
    /// Names, by index (JSON keys).
    pub const NAMES: [&str; COUNT as usize] = [
        "no_entry",
        "address_mismatch",
        "implausible_time",
        "map_full",
    ];
}

/// Capacity of `FAULT_LATENCY` (files x minor/major) with `--latency`.
pub const LATENCY_FILES: u32 = 8192;

/// Key of `RECLAIMERS`: the command name of a task that evicted pages of a
/// file of interest outside syscalls and cgroup/global reclaim (kdamond,
/// khugepaged, kcompactd, kworkers, ...).
pub type Comm = [u8; 16];

/// Capacity defaults (entries).
pub mod limits {
    pub const SCOPE: u32 = 16_384;
    pub const MAPPINGS: u32 = 65_536;
    pub const FILES: u32 = 65_536;
    /// 64 pages per entry: 16 GiB of evicted file pages remembered.
    pub const EVICTED: u32 = 65_536;
    /// Reclaimer command names remembered.
    pub const RECLAIMERS: u32 = 256;
    pub const EXITS: u32 = 16_384;
    /// Files with write-path counters (allocated on use).
    pub const WRITE_FILES: u32 = 16_384;
    /// msync calls in flight (one per traced thread at most).
    pub const MSYNC_INFLIGHT: u32 = 4096;
    /// Bytes of the `EVENTS` ring buffer with `--events` (50k events)...
    pub const EVENTS_BYTES: u32 = 4 << 20;
    /// ...and without (nothing is written to it; the smallest allowed).
    pub const EVENTS_BYTES_OFF: u32 = 4096;
}

#[cfg(feature = "user")]
mod user {
    use super::*;
    macro_rules! pod {
        ($($t:ty),*) => {$(
            // SAFETY: #[repr(C)] plain integers (and arrays of them) with
            // explicit padding: every bit pattern is valid, no pointers.
            unsafe impl aya::Pod for $t {}
        )*};
    }
    pod!(
        MappingKey,
        FaultCounters,
        FileKey,
        CacheCounters,
        PageKey,
        ExitRecord,
        ScopeEntry,
        Config,
        Notice,
        VmaCache,
        ReclaimStats,
        ReclaimCtx,
        CgroupKey,
        EvictedBits,
        OomKill,
        Event,
        SignalNotice,
        TlbCounters,
        LatencyKey,
        LatencyHist,
        ProcStall,
        WriteCounters,
        MsyncCall
    );
}

/// The write path of one file (`FILE_WRITES`, per CPU, keyed by
/// [`FileKey`]); counted for files of interest only.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteCounters {
    /// Pages that went from clean to dirty (`writeback_dirty_folio`, each
    /// event weighted by its folio's pages), whoever dirtied them.
    pub dirtied_pages: u64,
    /// `writeback_dirty_folio` events (one per folio).
    pub dirty_events: u64,
    /// Pages written back as the filesystem reports them, whatever started
    /// the writeback (flusher, fsync, msync): ext4 `ext4_writepages_result`,
    /// iomap filesystems (XFS...) `iomap_writeback_folio`. Zero on others.
    pub written_pages: u64,
    /// Pages written back by the flusher and sync(2) on any filesystem
    /// (`writeback_single_inode`: not fsync/msync).
    pub flusher_pages: u64,
    /// Times a traced task waited for a page of the file to finish
    /// writeback (`folio_wait_writeback`).
    pub wb_waits: u64,
    /// `msync` calls by traced tasks whose range starts in a mapping of the
    /// file, with `MS_SYNC` and without (`MS_ASYNC`: a no-op since 2.6.19).
    pub msync_sync: u64,
    pub msync_async: u64,
    /// Their total and longest time in the syscall.
    pub msync_ns: u64,
    pub msync_max_ns: u64,
    /// Pages the filesystem wrote back while those calls ran.
    pub msync_pages: u64,
}

impl WriteCounters {
    pub fn add(&mut self, o: &Self) {
        self.dirtied_pages += o.dirtied_pages;
        self.dirty_events += o.dirty_events;
        self.written_pages += o.written_pages;
        self.flusher_pages += o.flusher_pages;
        self.wb_waits += o.wb_waits;
        self.msync_sync += o.msync_sync;
        self.msync_async += o.msync_async;
        self.msync_ns += o.msync_ns;
        self.msync_max_ns = self.msync_max_ns.max(o.msync_max_ns);
        self.msync_pages += o.msync_pages;
    }
}

/// An msync call in flight (`MSYNC_INFLIGHT`, keyed by thread id).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsyncCall {
    pub start_ns: u64,
    /// The file whose mapping holds the range start (ino 0: none).
    pub ino: u64,
    pub dev: u32,
    /// `msync` flags (`MS_SYNC` = 4).
    pub flags: u32,
    /// Pages written back by the filesystem during the call.
    pub pages: u64,
}

/// `msync(2)` flags.
pub const MS_SYNC: u32 = 4;

impl FaultCounters {
    /// Wrapping: one CPU's copy can be below zero (a fault counted at entry
    /// on one CPU and taken back on another); the sum is right.
    pub fn add(&mut self, o: &Self) {
        self.minor = self.minor.wrapping_add(o.minor);
        self.major = self.major.wrapping_add(o.major);
        self.write = self.write.wrapping_add(o.write);
        self.cow = self.cow.wrapping_add(o.cow);
        self.pages_mapped = self.pages_mapped.wrapping_add(o.pages_mapped);
        self.wp_shared = self.wp_shared.wrapping_add(o.wp_shared);
    }

    /// Sums read while the programs run can catch a correction before the
    /// count it corrects (it sat in another CPU's cache slot): shows such a
    /// transiently negative counter as 0.
    pub fn clamp_negative(&mut self) {
        for v in [
            &mut self.minor,
            &mut self.major,
            &mut self.write,
            &mut self.cow,
            &mut self.pages_mapped,
            &mut self.wp_shared,
        ] {
            if (*v as i64) < 0 {
                *v = 0;
            }
        }
    }
}

impl CacheCounters {
    pub fn add(&mut self, o: &Self) {
        self.added += o.added;
        self.evicted += o.evicted;
        self.refaulted += o.refaulted;
        self.readded += o.readded;
        for (a, b) in self.evicted_by.iter_mut().zip(o.evicted_by.iter()) {
            *a += b;
        }
        self.evicted_owned += o.evicted_owned;
    }
}

impl ReclaimStats {
    pub fn add(&mut self, o: &Self) {
        self.memcg_episodes += o.memcg_episodes;
        self.memcg_reclaimed += o.memcg_reclaimed;
        self.memcg_ns += o.memcg_ns;
        self.direct_episodes += o.direct_episodes;
        self.direct_reclaimed += o.direct_reclaimed;
        self.direct_ns += o.direct_ns;
        self.proactive_episodes += o.proactive_episodes;
        self.proactive_reclaimed += o.proactive_reclaimed;
        self.proactive_ns += o.proactive_ns;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    #[test]
    fn abi_sizes_have_no_hidden_padding() {
        assert_eq!(size_of::<MappingKey>(), 48);
        assert_eq!(size_of::<FaultCounters>(), 48);
        assert_eq!(size_of::<FileKey>(), 16);
        assert_eq!(size_of::<CacheCounters>(), 32 + 8 * reason::COUNT + 8);
        assert_eq!(size_of::<ReclaimStats>(), 72);
        assert_eq!(size_of::<EvictedBits>(), 16);
        assert_eq!(size_of::<OomKill>(), 16 + 40 + 16);
        assert_eq!(size_of::<CgroupKey>(), 16);
        assert_eq!(size_of::<PageKey>(), 24);
        assert_eq!(size_of::<ExitRecord>(), 56);
        assert_eq!(size_of::<ScopeEntry>(), 8);
        assert_eq!(size_of::<Notice>(), 24);
        assert_eq!(size_of::<Event>(), 80);
        assert_eq!(size_of::<VmaCache>(), 32 + 48 + 48);
        assert_eq!(size_of::<Config>() % 8, 0);
        // No padding before Config's u64 fields either (aya::Pod).
        use core::mem::offset_of;
        assert_eq!(
            offset_of!(Config, vmemmap_base_addr),
            offset_of!(Config, cgroup_mode) + 4
        );
        assert_eq!(
            offset_of!(Config, proactive_text),
            offset_of!(Config, file_f_mapping) + 4
        );
        assert_eq!(size_of::<SignalNotice>(), 24 + 48 + 8 + 16);
        assert_eq!(size_of::<TlbCounters>(), 3 * 8 * tlb_reason::COUNT);
        assert_eq!(size_of::<LatencyKey>(), 16);
        assert_eq!(size_of::<LatencyHist>(), 24 + 8 * LATENCY_BUCKETS);
        assert_eq!(size_of::<ProcStall>(), 48);
        assert_eq!(size_of::<WriteCounters>(), 80);
        assert_eq!(size_of::<MsyncCall>(), 32);
    }

    #[test]
    fn counters_add_every_field() {
        let one = FaultCounters {
            minor: 1,
            major: 2,
            write: 3,
            cow: 4,
            pages_mapped: 5,
            wp_shared: 6,
        };
        let mut sum = one;
        sum.add(&one);
        assert_eq!(
            sum,
            FaultCounters {
                minor: 2,
                major: 4,
                write: 6,
                cow: 8,
                pages_mapped: 10,
                wp_shared: 12,
            }
        );
        let mut c = CacheCounters {
            added: 1,
            evicted: 2,
            refaulted: 3,
            evicted_owned: 4,
            ..Default::default()
        };
        c.evicted_by[reason::MEMCG] = 5;
        let mut s = c;
        s.add(&c);
        assert_eq!(
            (s.added, s.evicted, s.refaulted, s.evicted_owned),
            (2, 4, 6, 8)
        );
        assert_eq!(s.evicted_by[reason::MEMCG], 10);
        assert_eq!(s.evicted_by.iter().sum::<u64>(), 10);
    }
}
