//! Page cache: additions, evictions and refaults per file of interest.
//!
//! Hooks (Linux 6.18 `format`, both events share the layout; one event per
//! folio, so pages = `1 << order`):
//!   filemap:mm_filemap_add_to_page_cache / mm_filemap_delete_from_page_cache
//!     field:unsigned long pfn;   offset:8;  size:8
//!     field:unsigned long i_ino; offset:16; size:8
//!     field:unsigned long index; offset:24; size:8
//!     field:dev_t s_dev;         offset:32; size:4
//!     field:unsigned char order; offset:36; size:1
//!   filemap:mm_filemap_fault (6.12+, fires at the start of filemap_fault(),
//!   before readahead adds pages, so the file is registered in time). Only
//!   attached where faults are not counted at entry: the entry registers the
//!   file of a vma when it looks the vma up (`faults`), for no program per
//!   file fault.
//!     field:unsigned long i_ino; offset:8; field:dev_t s_dev; offset:16
//! Offsets are read from tracefs at start, not taken from this comment.
//!
//! A file is "of interest" once an in-scope process faults on it, adds or
//! evicts pages of it, once a page of it charged to the traced cgroup is
//! evicted, or once userspace finds it in a target's maps / fds. Evictions
//! of such files are counted whoever evicts them (reclaim often runs
//! elsewhere).
//!
//! Refaults mean what the kernel means: a page re-added after a *reclaim*
//! eviction (reclaim leaves a shadow entry, `workingset_refault_file`
//! counts it). A page re-added after an invalidation (fadvise, truncate) is
//! a re-read, counted apart.
use aya_ebpf::{
    EbpfContext,
    helpers::{
        bpf_get_current_comm,
        generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use aya_log_ebpf::debug;
use mmtrace_common::{
    CacheCounters, CgroupKey, Comm, Config, Event, EvictedBits, FileKey, Notice, PageKey, errors,
    event, event_mask, notice, reason,
};

use crate::{
    events,
    kread::{conf, read, tp_field},
    maps::{CGROUPS, EVICTED, FILE_CACHE, NOTICES, RECLAIM, RECLAIMERS, count_error},
    scope,
};

#[tracepoint]
pub fn filemap_add(ctx: TracePointContext) -> u32 {
    let _ = try_add(&ctx);
    0
}

#[tracepoint]
pub fn filemap_delete(ctx: TracePointContext) -> u32 {
    let _ = try_delete(&ctx);
    0
}

#[tracepoint]
pub fn filemap_fault(ctx: TracePointContext) -> u32 {
    let _ = try_fault(&ctx);
    0
}

/// Makes `key` a file of interest for `tgid` (idempotent); a new file is
/// announced to userspace so it can learn the path while the mapping lives.
#[inline(always)]
pub fn register_file<C: EbpfContext>(
    ctx: &C,
    key: &FileKey,
    tgid: u32,
) -> Option<*mut CacheCounters> {
    if let Some(c) = FILE_CACHE.get_ptr_mut(key) {
        return Some(c);
    }
    // BPF_NOEXIST: only the CPU that wins the insert announces the file.
    if FILE_CACHE.insert(key, &CacheCounters::default(), 1).is_ok() {
        log_new_file(ctx, key, tgid);
        let n = Notice {
            kind: notice::NEW_FILE,
            pid: tgid,
            dev: key.dev,
            _pad: 0,
            ino: key.ino,
        };
        if NOTICES.output::<Notice>(&n, 0).is_err() {
            count_error(errors::NOTICE_DROPPED);
        }
    }
    let c = FILE_CACHE.get_ptr_mut(key);
    if c.is_none() {
        count_error(errors::FILE_FULL);
    }
    c
}

/// `-vv`: a file became of interest (rare: once per file).
#[inline(always)]
fn log_new_file<C: EbpfContext>(ctx: &C, key: &FileKey, tgid: u32) {
    debug!(
        ctx,
        "file {}:{} ino {} of interest (pid {})",
        key.dev >> 20,
        key.dev & 0xfffff,
        key.ino,
        tgid
    );
}

/// (file, page index, pages in the folio) of a page-cache event.
#[inline(always)]
fn read_cache_event(ctx: &TracePointContext) -> Result<(FileKey, u64, u64), i32> {
    // Offsets from the tracepoint's format file.
    let ino = tp_field::<u64>(ctx, conf!(tp_cache_ino))?;
    let dev = tp_field::<u32>(ctx, conf!(tp_cache_dev))?;
    let index = tp_field::<u64>(ctx, conf!(tp_cache_index))?;
    let order = tp_field::<u8>(ctx, conf!(tp_cache_order))? as u64;
    Ok((FileKey { ino, dev, _pad: 0 }, index, 1u64 << (order & 31)))
}

#[inline(always)]
fn try_add(ctx: &TracePointContext) -> Result<(), i32> {
    let (key, index, pages) = read_cache_event(ctx)?;
    let c = match FILE_CACHE.get_ptr_mut(&key) {
        Some(c) => c,
        None => {
            let (_, tgid) = scope::current_ids();
            if !scope::in_scope(tgid) {
                return Ok(());
            }
            match register_file(ctx, &key, tgid) {
                Some(c) => c,
                None => return Ok(()),
            }
        }
    };
    let (refaulted, readded) = evicted_pages(&key, index, pages, Mark::Added);
    // SAFETY: per-CPU value.
    unsafe {
        (*c).added += pages;
        (*c).refaulted += refaulted;
        (*c).readded += readded;
    }
    if events::wanted(event_mask::ADDS) {
        cache_event(&mut Event {
            kind: event::CACHE_ADD,
            dev: key.dev,
            ino: key.ino,
            index,
            pages,
            ..Event::default()
        });
    }
    Ok(())
}

/// What happened to a range of pages, for the recently-evicted bitmaps.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mark {
    /// Added back: count and clear the marks.
    Added,
    /// Evicted by reclaim.
    Reclaimed,
    /// Invalidated (not reclaim).
    Invalidated,
}

/// Pages per `EVICTED` entry: one bit each in a u64.
const CHUNK_PAGES: u64 = 64;
/// Largest folio handled: 32 chunks = 2048 pages (order 11).
const MAX_CHUNKS: u64 = 32;

/// Marks evicted pages `index..index + pages` in the recently-evicted
/// bitmaps, or (`Mark::Added`) checks and clears them; returns how many of
/// them were marked reclaimed and invalidated before (refaults, re-reads).
///
/// Page granularity, not folio: a file evicted as order-2 folios may come
/// back as order-0 pages or one order-4 folio, and must still match. Folios
/// are naturally aligned, so one covers whole bits of one or more chunks.
#[inline(always)]
fn evicted_pages(key: &FileKey, index: u64, pages: u64, mark: Mark) -> (u64, u64) {
    let (mut refaulted, mut readded) = (0u64, 0u64);
    let first = index / CHUNK_PAGES;
    let last = (index + pages - 1) / CHUNK_PAGES;
    for i in 0..MAX_CHUNKS {
        let chunk = first + i;
        if chunk > last {
            break;
        }
        let lo = if chunk == first {
            index % CHUNK_PAGES
        } else {
            0
        };
        let hi = if chunk == last {
            (index + pages - 1) % CHUNK_PAGES
        } else {
            CHUNK_PAGES - 1
        };
        let width = hi - lo + 1;
        let bits = if width >= 64 {
            u64::MAX
        } else {
            ((1u64 << width) - 1) << lo
        };
        let page = PageKey {
            ino: key.ino,
            index: chunk,
            dev: key.dev,
            _pad: 0,
        };
        match EVICTED.get_ptr_mut(&page) {
            // SAFETY: an LRU map value; a racing CPU can at worst lose a bit
            // (refaults are labelled an estimate).
            Some(b) => unsafe {
                match mark {
                    Mark::Added => {
                        refaulted += ((*b).reclaimed & bits).count_ones() as u64;
                        readded += ((*b).invalidated & bits).count_ones() as u64;
                        (*b).reclaimed &= !bits;
                        (*b).invalidated &= !bits;
                    }
                    Mark::Reclaimed => {
                        (*b).reclaimed |= bits;
                        (*b).invalidated &= !bits;
                    }
                    Mark::Invalidated => {
                        (*b).invalidated |= bits;
                        (*b).reclaimed &= !bits;
                    }
                }
            },
            None if mark == Mark::Added => {}
            None => {
                let v = if mark == Mark::Reclaimed {
                    EvictedBits {
                        reclaimed: bits,
                        invalidated: 0,
                    }
                } else {
                    EvictedBits {
                        reclaimed: 0,
                        invalidated: bits,
                    }
                };
                let _ = EVICTED.insert(&page, &v, 0);
            }
        }
    }
    (refaulted, readded)
}

#[inline(always)]
fn try_delete(ctx: &TracePointContext) -> Result<(), i32> {
    let (key, index, pages) = read_cache_event(ctx)?;
    // SAFETY: offset from the tracepoint's format file.
    let pfn = tp_field::<u64>(ctx, conf!(tp_cache_pfn)).unwrap_or(0);
    let owned = owned_by_traced_cgroup(pfn);
    // A file not yet of interest becomes one when a task in scope evicts it
    // (fadvise before the first read) or when the page was charged to the
    // traced cgroup: every eviction the scope causes or suffers counts, from
    // the first one.
    let c = match FILE_CACHE.get_ptr_mut(&key) {
        Some(c) => c,
        None => {
            let (_, tgid) = scope::current_ids();
            if !owned && !scope::in_scope(tgid) {
                return Ok(());
            }
            match register_file(ctx, &key, tgid) {
                Some(c) => c,
                None => return Ok(()),
            }
        }
    };
    let why = eviction_reason(pages);
    // SAFETY: per-CPU value; `why` < reason::COUNT.
    unsafe {
        (*c).evicted += pages;
        if why < reason::COUNT {
            (*c).evicted_by[why] += pages;
        }
        if owned {
            (*c).evicted_owned += pages;
        }
    }
    let mark = if reason::is_reclaim(why) {
        Mark::Reclaimed
    } else {
        Mark::Invalidated
    };
    evicted_pages(&key, index, pages, mark);
    if events::wanted(event_mask::EVICTIONS) {
        cache_event(&mut Event {
            kind: event::EVICTION,
            dev: key.dev,
            ino: key.ino,
            index,
            pages,
            reason: why as u32,
            flags: if owned { event::OWNED } else { 0 },
            ..Event::default()
        });
    }
    Ok(())
}

/// Out of line: the hot path without events stays as it was.
#[inline(never)]
fn cache_event(e: &mut Event) {
    events::emit(e);
}

/// The reason named by a kernel thread's command (`kdamond.0`, ...).
#[inline(always)]
fn reason_by_comm(comm: &Comm, memalloc: bool) -> usize {
    if comm.starts_with(b"kdamond") {
        reason::DAMON
    } else if comm.starts_with(b"khugepaged") {
        reason::KHUGEPAGED
    } else if comm.starts_with(b"kcompactd") {
        reason::COMPACTION
    } else if memalloc {
        reason::OTHER_RECLAIM
    } else {
        reason::OTHER
    }
}

/// Counts `pages` evicted by the current task under its command name.
#[inline(always)]
fn count_reclaimer(comm: &Comm, pages: u64) {
    if let Some(p) = RECLAIMERS.get_ptr_mut(comm) {
        // SAFETY: per-CPU value.
        unsafe { *p += pages };
        return;
    }
    // BPF_NOEXIST: another CPU may have inserted it meanwhile; look again.
    let _ = RECLAIMERS.insert(comm, &0, 1);
    match RECLAIMERS.get_ptr_mut(comm) {
        // SAFETY: per-CPU value.
        Some(p) => unsafe { *p += pages },
        None => count_error(errors::RECLAIMER_FULL),
    }
}

const PF_MEMALLOC: u32 = 0x0000_0800;
const PF_KSWAPD: u32 = 0x0002_0000;
const PF_KTHREAD: u32 = 0x0020_0000;

/// Why the current context is evicting `pages` (see
/// `mmtrace_common::reason`): kswapd, else a reclaim this thread is in
/// (memcg, proactive, direct), else a kernel thread or other reclaim named
/// by its command (also counted in `RECLAIMERS`), else the syscall the
/// thread is in (its user `pt_regs` hold the number).
#[inline(always)]
fn eviction_reason(pages: u64) -> usize {
    let (tid, _) = scope::current_ids();
    // SAFETY: plain helper call.
    let task_btf = unsafe { bpf_get_current_task_btf() };
    let task = task_btf as u64;
    let flags = read::<u32>(task, conf!(task_flags)).unwrap_or(0);
    if flags & PF_KSWAPD != 0 {
        return reason::KSWAPD;
    }
    // SAFETY: plain data copy of the value.
    if let Some(r) = unsafe { RECLAIM.get(&tid) } {
        return r.kind as usize;
    }
    let memalloc = flags & PF_MEMALLOC != 0;
    if memalloc || flags & PF_KTHREAD != 0 {
        let comm = bpf_get_current_comm().unwrap_or([0; 16]);
        count_reclaimer(&comm, pages);
        return reason_by_comm(&comm, memalloc);
    }
    let off = conf!(regs_syscall_nr);
    if off == Config::ABSENT {
        return reason::OTHER;
    }
    // SAFETY: trusted task pointer from bpf_get_current_task_btf.
    let regs = unsafe { bpf_task_pt_regs(task_btf) } as u64;
    if regs == 0 {
        return reason::OTHER;
    }
    let nr = read::<u64>(regs, off).unwrap_or(u64::MAX);
    if nr < 512 {
        // SAFETY: reading the loader-written table; nr < 512 is in bounds.
        let r = unsafe {
            core::ptr::read_volatile(&crate::kread::config().syscall_reason[nr as usize])
        };
        if (r as usize) < reason::COUNT {
            return r as usize;
        }
    }
    reason::OTHER
}

/// Whether the page at `pfn` is charged to a memcg of the traced cgroup tree
/// (`folio->memcg_data`, read through the kernel's vmemmap).
#[inline(always)]
fn owned_by_traced_cgroup(pfn: u64) -> bool {
    let base_addr = conf!(vmemmap_base_addr);
    let mut base = conf!(vmemmap_base);
    if conf!(cgroup_mode) == 0 || (base_addr == 0 && base == 0) || pfn == 0 {
        return false;
    }
    if base_addr != 0 {
        match read::<u64>(base_addr, 0) {
            Some(b) => base = b,
            None => return false,
        }
    }
    let page = base + pfn * conf!(page_size_of) as u64;
    // The low bits of memcg_data are flags (objcg/kmem).
    let Some(memcg) = read::<u64>(page, conf!(page_memcg_data)).map(|m| m & !7) else {
        return false;
    };
    if memcg == 0 {
        return false;
    }
    let Some(cgrp) = read::<u64>(memcg, conf!(memcg_css_cgroup)) else {
        return false;
    };
    let (Some(kn), Some(root)) = (
        read::<u64>(cgrp, conf!(cgroup_kn)),
        read::<u64>(cgrp, conf!(cgroup_root)),
    ) else {
        return false;
    };
    let (Some(id), Some(hierarchy)) = (
        read::<u64>(kn, conf!(kn_id)),
        read::<i32>(root, conf!(root_hierarchy_id)),
    ) else {
        return false;
    };
    CGROUPS
        .get_ptr(&CgroupKey {
            hierarchy: hierarchy as u32,
            _pad: 0,
            id,
        })
        .is_some()
}

#[inline(always)]
fn try_fault(ctx: &TracePointContext) -> Result<(), i32> {
    let (_, tgid) = scope::current_ids();
    if !scope::in_scope(tgid) {
        return Ok(());
    }
    // SAFETY: offsets from the tracepoint's format file.
    let (ino, dev) = unsafe {
        (
            ctx.read_at::<u64>(conf!(tp_fault_ino) as usize)?,
            ctx.read_at::<u32>(conf!(tp_fault_dev) as usize)?,
        )
    };
    register_file(ctx, &FileKey { ino, dev, _pad: 0 }, tgid);
    Ok(())
}
