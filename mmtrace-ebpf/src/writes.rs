//! The write path per file of interest: pages dirtied, pages written back,
//! waits on writeback, and `msync` calls with their time and the pages
//! each wrote. These hooks fire per folio or per syscall, never per fault.
//!
//! Hooks (Linux 6.18):
//! - raw `writeback:writeback_dirty_folio` `(struct folio *, struct
//!   address_space *)`: a folio went clean → dirty, in the dirtier's context
//!   (inside a write fault's `page_mkwrite`, or `write()`; a flusher redirty
//!   from a kworker). One event per folio: weighted by `folio_nr_pages`.
//!   shmem/tmpfs never fires it.
//! - raw `writeback:folio_wait_writeback` `(folio, mapping)`: a task waits
//!   for a folio under writeback (counted for traced tasks).
//! - raw `writeback:writeback_single_inode` `(struct inode *, struct
//!   writeback_control *, unsigned long nr_to_write)`: flusher/sync(2)
//!   writeback on any filesystem; wrote = nr_to_write − wbc->nr_to_write.
//!   fsync and msync do not come through it (measured: wrote = 0).
//! - `ext4:ext4_writepages_result` (dev, ino, pages_written) and
//!   `iomap:iomap_writeback_folio` (dev, ino, length in bytes; XFS and the
//!   other iomap filesystems): the pages a filesystem wrote, whoever asked
//!   (flusher, fsync, msync).
//! - msync calls, paired per thread id (a hash entry per call: a syscall,
//!   not a fault); pages the filesystem writes in the calling thread
//!   meanwhile are the call's. By default `ext4:ext4_sync_file_enter/exit`
//!   inside the msync syscall (its number in the task's user `pt_regs`):
//!   MS_SYNC on ext4, one call per file, no syscall hook. With
//!   `--msync-syscalls`, `syscalls:sys_enter_msync` / `sys_exit_msync`
//!   instead: every call, MS_ASYNC too, the range start's vma naming the
//!   file — but enabling a syscall tracepoint puts every syscall on the
//!   host through the syscall-tracing path.
use aya_ebpf::{
    helpers::{
        bpf_ktime_get_ns,
        generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
    },
    macros::{raw_tracepoint, tracepoint},
    programs::{RawTracePointContext, TracePointContext},
};
use mmtrace_common::{Config, FileKey, MS_SYNC, MsyncCall, WriteCounters, errors};

use crate::{
    kread::{conf, read},
    maps::{FILE_CACHE, FILE_WRITES, MSYNC_INFLIGHT, count_error, get_or_insert},
    scope,
};

#[raw_tracepoint(tracepoint = "writeback_dirty_folio")]
pub fn writeback_dirty_folio(ctx: RawTracePointContext) -> u32 {
    let (folio, mapping) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1));
    if let Some(c) = counters(&file_of_mapping(mapping)) {
        let pages = folio_pages(folio);
        // SAFETY: per-CPU value.
        unsafe {
            (*c).dirtied_pages += pages;
            (*c).dirty_events += 1;
        }
    }
    0
}

#[raw_tracepoint(tracepoint = "folio_wait_writeback")]
pub fn folio_wait_writeback(ctx: RawTracePointContext) -> u32 {
    let (_, tgid) = scope::current_ids();
    if !scope::in_scope(tgid) {
        return 0;
    }
    if let Some(c) = counters(&file_of_mapping(ctx.arg::<u64>(1))) {
        // SAFETY: per-CPU value.
        unsafe { (*c).wb_waits += 1 };
    }
    0
}

#[raw_tracepoint(tracepoint = "writeback_single_inode")]
pub fn writeback_single_inode(ctx: RawTracePointContext) -> u32 {
    let (inode, wbc, asked) = (ctx.arg::<u64>(0), ctx.arg::<u64>(1), ctx.arg::<i64>(2));
    let Some(left) = read::<i64>(wbc, conf!(wbc_nr_to_write)) else {
        return 0;
    };
    let wrote = asked - left;
    if wrote <= 0 {
        return 0;
    }
    if let Some(c) = counters(&file_of_inode(inode)) {
        // SAFETY: per-CPU value.
        unsafe { (*c).flusher_pages += wrote as u64 };
    }
    0
}

#[tracepoint]
pub fn ext4_writepages_result(ctx: TracePointContext) -> u32 {
    // SAFETY: offsets from the tracepoint's format file.
    let (Ok(dev), Ok(ino), Ok(pages)) = (unsafe {
        (
            ctx.read_at::<u32>(conf!(tp_ext4_wp_dev) as usize),
            ctx.read_at::<u64>(conf!(tp_ext4_wp_ino) as usize),
            ctx.read_at::<i32>(conf!(tp_ext4_wp_pages) as usize),
        )
    }) else {
        return 0;
    };
    written(&FileKey { ino, dev, _pad: 0 }, pages.max(0) as u64);
    0
}

#[tracepoint]
pub fn iomap_writeback_folio(ctx: TracePointContext) -> u32 {
    // SAFETY: offsets from the tracepoint's format file.
    let (Ok(dev), Ok(ino), Ok(len)) = (unsafe {
        (
            ctx.read_at::<u32>(conf!(tp_iomap_wb_dev) as usize),
            ctx.read_at::<u64>(conf!(tp_iomap_wb_ino) as usize),
            ctx.read_at::<u64>(conf!(tp_iomap_wb_length) as usize),
        )
    }) else {
        return 0;
    };
    written(&FileKey { ino, dev, _pad: 0 }, len.div_ceil(4096));
    0
}

#[tracepoint]
pub fn msync_enter(ctx: TracePointContext) -> u32 {
    let (tid, tgid) = scope::current_ids();
    if !scope::in_scope(tgid) {
        return 0;
    }
    // SAFETY: offsets from the tracepoint's format file.
    let (Ok(start), Ok(flags)) = (unsafe {
        (
            ctx.read_at::<u64>(conf!(tp_msync_start) as usize),
            ctx.read_at::<u64>(conf!(tp_msync_flags) as usize),
        )
    }) else {
        return 0;
    };
    // SAFETY: plain helper call; a trusted (BTF) task pointer.
    let task = unsafe { bpf_get_current_task_btf() };
    let (ret, found) = crate::faults::lookup_vma(task, start);
    let (ino, dev) = if ret == 0 && found.ok != 0 && found.has_file != 0 {
        (found.ino, found.dev as u32)
    } else {
        (0, 0)
    };
    let call = MsyncCall {
        // SAFETY: plain helper call.
        start_ns: unsafe { bpf_ktime_get_ns() },
        ino,
        dev,
        flags: flags as u32,
        pages: 0,
    };
    if MSYNC_INFLIGHT.insert(&tid, &call, 0).is_err() {
        count_error(errors::WRITES_FULL);
    }
    0
}

/// msync(MS_SYNC) on ext4 without syscall hooks: `vfs_fsync_range` of the
/// file, inside the msync syscall (the task's syscall number tells it
/// from fsync/fdatasync). One call per file the range covers.
#[tracepoint]
pub fn ext4_sync_enter(ctx: TracePointContext) -> u32 {
    let (tid, tgid) = scope::current_ids();
    if !scope::in_scope(tgid) || !in_msync() {
        return 0;
    }
    // SAFETY: offsets from the tracepoint's format file.
    let (Ok(dev), Ok(ino)) = (unsafe {
        (
            ctx.read_at::<u32>(conf!(tp_ext4_sync_dev) as usize),
            ctx.read_at::<u64>(conf!(tp_ext4_sync_ino) as usize),
        )
    }) else {
        return 0;
    };
    let call = MsyncCall {
        // SAFETY: plain helper call.
        start_ns: unsafe { bpf_ktime_get_ns() },
        ino,
        dev,
        flags: MS_SYNC,
        pages: 0,
    };
    if MSYNC_INFLIGHT.insert(&tid, &call, 0).is_err() {
        count_error(errors::WRITES_FULL);
    }
    0
}

#[tracepoint]
pub fn ext4_sync_exit(_ctx: TracePointContext) -> u32 {
    finish_msync();
    0
}

/// The current task is in the msync syscall.
#[inline(always)]
fn in_msync() -> bool {
    let nr = conf!(msync_nr);
    if nr == Config::ABSENT {
        return false;
    }
    // SAFETY: plain helper calls on the trusted current task.
    let regs = unsafe { bpf_task_pt_regs(bpf_get_current_task_btf()) } as u64;
    regs != 0 && read::<u64>(regs, conf!(regs_syscall_nr)) == Some(nr as u64)
}

#[tracepoint]
pub fn msync_exit(_ctx: TracePointContext) -> u32 {
    finish_msync();
    0
}

/// Ends this thread's msync call in flight (if any): its time and pages go
/// to its file's row.
#[inline(always)]
fn finish_msync() {
    let (tid, _) = scope::current_ids();
    // SAFETY: the entry is this thread's own; removed just below.
    let Some(call) = (unsafe { MSYNC_INFLIGHT.get(&tid) }).copied() else {
        return;
    };
    let _ = MSYNC_INFLIGHT.remove(&tid);
    // SAFETY: plain helper call.
    let ns = unsafe { bpf_ktime_get_ns() }.saturating_sub(call.start_ns);
    // A range in no file of interest is counted in the (0, 0) row.
    let mut key = FileKey {
        ino: call.ino,
        dev: call.dev,
        _pad: 0,
    };
    if FILE_CACHE.get_ptr(&key).is_none() {
        key = FileKey::default();
    }
    let zero = WriteCounters::default();
    let Some(c) = get_or_insert(&FILE_WRITES, &key, &zero, errors::WRITES_FULL) else {
        return;
    };
    // SAFETY: per-CPU value.
    unsafe {
        if call.flags & MS_SYNC != 0 {
            (*c).msync_sync += 1;
        } else {
            (*c).msync_async += 1;
        }
        (*c).msync_ns += ns;
        if ns > (*c).msync_max_ns {
            (*c).msync_max_ns = ns;
        }
        (*c).msync_pages += call.pages;
    }
}

/// Pages a filesystem wrote back: the file's count, and the calling
/// thread's msync call if one is in flight.
#[inline(always)]
fn written(key: &FileKey, pages: u64) {
    if pages == 0 {
        return;
    }
    let (tid, _) = scope::current_ids();
    if let Some(call) = MSYNC_INFLIGHT.get_ptr_mut(&tid) {
        // SAFETY: this thread's own entry.
        unsafe { (*call).pages += pages };
    }
    if let Some(c) = counters(&Some(*key)) {
        // SAFETY: per-CPU value.
        unsafe { (*c).written_pages += pages };
    }
}

/// The write counters of a file of interest (`FILE_CACHE` holds it).
#[inline(always)]
fn counters(key: &Option<FileKey>) -> Option<*mut WriteCounters> {
    let key = key.as_ref()?;
    FILE_CACHE.get_ptr(key)?;
    get_or_insert(
        &FILE_WRITES,
        key,
        &WriteCounters::default(),
        errors::WRITES_FULL,
    )
}

/// The file of an `address_space` (its `host` inode).
#[inline(always)]
fn file_of_mapping(mapping: u64) -> Option<FileKey> {
    if mapping == 0 {
        return None;
    }
    file_of_inode(read::<u64>(mapping, conf!(mapping_host))?)
}

#[inline(always)]
fn file_of_inode(inode: u64) -> Option<FileKey> {
    if inode == 0 {
        return None;
    }
    let ino = read::<u64>(inode, conf!(inode_i_ino))?;
    let sb = read::<u64>(inode, conf!(inode_i_sb))?;
    let dev = read::<u32>(sb, conf!(sb_s_dev))?;
    Some(FileKey { ino, dev, _pad: 0 })
}

/// Pages of a folio: `_nr_pages` when it is a large folio (`PG_head`), 1
/// otherwise (and where the kernel has no `_nr_pages`).
#[inline(always)]
fn folio_pages(folio: u64) -> u64 {
    let nr = conf!(folio_nr_pages);
    if nr == Config::ABSENT || folio == 0 {
        return 1;
    }
    let Some(flags) = read::<u64>(folio, conf!(folio_flags)) else {
        return 1;
    };
    if flags & (1u64 << (conf!(pg_head) & 63)) == 0 {
        return 1;
    }
    match read::<u32>(folio, nr) {
        Some(n) if n > 0 => n as u64,
        _ => 1,
    }
}
