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
//!   before readahead adds pages, so the file is registered in time)
//!     field:unsigned long i_ino; offset:8; field:dev_t s_dev; offset:16
//! Offsets are read from tracefs at start, not taken from this comment.
//!
//! A file is "of interest" once an in-scope process faults on it or adds
//! pages of it, or userspace finds it in a target's maps / fds. Evictions of
//! such files are counted whoever evicts them (reclaim often runs elsewhere).
use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use mmtrace_common::{CacheCounters, FileKey, Notice, PageKey, errors, notice};

use crate::{
    kread::conf,
    maps::{EVICTED, FILE_CACHE, NOTICES, count_error},
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
pub fn register_file(key: &FileKey, tgid: u32) -> Option<*mut CacheCounters> {
    if let Some(c) = FILE_CACHE.get_ptr_mut(key) {
        return Some(c);
    }
    // BPF_NOEXIST: only the CPU that wins the insert announces the file.
    if FILE_CACHE.insert(key, &CacheCounters::default(), 1).is_ok() {
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

/// (file, page index, pages in the folio) of a page-cache event.
#[inline(always)]
fn read_cache_event(ctx: &TracePointContext) -> Result<(FileKey, u64, u64), i32> {
    // SAFETY: offsets from the tracepoint's format file.
    unsafe {
        let ino = ctx.read_at::<u64>(conf!(tp_cache_ino) as usize)?;
        let dev = ctx.read_at::<u32>(conf!(tp_cache_dev) as usize)?;
        let index = ctx.read_at::<u64>(conf!(tp_cache_index) as usize)?;
        let order = ctx.read_at::<u8>(conf!(tp_cache_order) as usize)? as u64;
        Ok((FileKey { ino, dev, _pad: 0 }, index, 1u64 << (order & 31)))
    }
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
            match register_file(&key, tgid) {
                Some(c) => c,
                None => return Ok(()),
            }
        }
    };
    let refaulted = evicted_pages(&key, index, pages, false);
    // SAFETY: per-CPU value.
    unsafe {
        (*c).added += pages;
        (*c).refaulted += refaulted;
    }
    Ok(())
}

/// Pages per `EVICTED` entry: one bit each in a u64.
const CHUNK_PAGES: u64 = 64;
/// Largest folio handled: 32 chunks = 2048 pages (order 11).
const MAX_CHUNKS: u64 = 32;

/// Marks (`evict`) or checks-and-clears (`!evict`) the pages
/// `index..index + pages` in the recently-evicted bitmaps; returns how many
/// of them were marked before (the refaulted pages when adding).
///
/// Page granularity, not folio: a file evicted as order-2 folios may come
/// back as order-0 pages or one order-4 folio, and must still match. Folios
/// are naturally aligned, so one covers whole bits of one or more chunks.
#[inline(always)]
fn evicted_pages(key: &FileKey, index: u64, pages: u64, evict: bool) -> u64 {
    let mut found = 0u64;
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
            Some(b) => {
                // SAFETY: an LRU map value; a racing CPU can at worst lose a
                // bit (refaults are labelled an estimate).
                unsafe {
                    if evict {
                        *b |= bits;
                    } else {
                        found += (*b & bits).count_ones() as u64;
                        *b &= !bits;
                    }
                }
            }
            None if evict => {
                let _ = EVICTED.insert(&page, &bits, 0);
            }
            None => {}
        }
    }
    found
}

#[inline(always)]
fn try_delete(ctx: &TracePointContext) -> Result<(), i32> {
    let (key, index, pages) = read_cache_event(ctx)?;
    let Some(c) = FILE_CACHE.get_ptr_mut(&key) else {
        return Ok(());
    };
    // SAFETY: per-CPU value.
    unsafe { (*c).evicted += pages };
    evicted_pages(&key, index, pages, true);
    Ok(())
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
    register_file(&FileKey { ino, dev, _pad: 0 }, tgid);
    Ok(())
}
