//! TLB flushes per traced process, by reason (remote shootdowns are the
//! "mmap databases suffer TLB shootdowns" complaint). Per process, not per
//! file: a flush covers a range of an mm, whatever maps it.
//!
//! Hook: raw tracepoint `tlb:tlb_flush`, `TP_PROTO(int reason, unsigned long
//! pages)` (x86 only; `pages` is `TLB_FLUSH_ALL` = -1 for a full flush).
//! `enum tlb_flush_reason` on Linux 6.18 (BTF and the tracepoint's print
//! fmt): 0 on task switch, 1 remote shootdown, 2 local shootdown, 3 local MM
//! shootdown, 4 remote IPI send, 5 remote wrong CPU. Counted against the
//! current task's process: the initiator for 3 and 4, the interrupted task
//! (a thread running the mm) for 1 and 5, the task switched away from for 0.
use aya_ebpf::{macros::raw_tracepoint, programs::RawTracePointContext};
use mmtrace_common::{TlbCounters, errors, tlb_reason};

use crate::{
    maps::{TLB_FLUSHES, atomic_add, get_or_insert},
    scope,
};

const TLB_FLUSH_ALL: u64 = u64::MAX;

#[raw_tracepoint(tracepoint = "tlb_flush")]
pub fn tlb_flush(ctx: RawTracePointContext) -> u32 {
    let (_, tgid) = scope::current_ids();
    if !scope::in_scope(tgid) {
        return 0;
    }
    let reason = (ctx.arg::<u64>(0) & 0xffff_ffff) as usize;
    let pages = ctx.arg::<u64>(1);
    let i = if reason < tlb_reason::COUNT {
        reason
    } else {
        tlb_reason::COUNT - 1
    };
    let zero = TlbCounters::default();
    let Some(c) = get_or_insert(&TLB_FLUSHES, &tgid, &zero, errors::TLB_FULL) else {
        return 0;
    };
    // SAFETY: a map value shared by every CPU: atomic adds only.
    unsafe {
        if let Some(f) = (*c).flushes.get_mut(i) {
            atomic_add(f, 1);
        }
        if pages == TLB_FLUSH_ALL {
            if let Some(f) = (*c).full.get_mut(i) {
                atomic_add(f, 1);
            }
        } else if let Some(p) = (*c).pages.get_mut(i) {
            atomic_add(p, pages);
        }
    }
    0
}
