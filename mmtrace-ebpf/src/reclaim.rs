//! Reclaim and cgroups: the context that tells why a page left the page
//! cache, reclaim episodes of traced tasks, and tasks joining or leaving the
//! traced cgroup tree.
//!
//! Hooks (Linux 6.18 `format`; offsets are read from tracefs at start):
//!   vmscan:mm_vmscan_memcg_reclaim_begin / mm_vmscan_direct_reclaim_begin
//!     (order, gfp_flags): the current thread starts reclaiming
//!   vmscan:mm_vmscan_memcg_reclaim_end / mm_vmscan_direct_reclaim_end
//!     field:unsigned long nr_reclaimed; offset:8; size:8
//!   cgroup:cgroup_attach_task (writer's context)
//!     field:int dst_root; offset:8; field:u64 dst_id; offset:16; field:int pid; offset:24
use aya_ebpf::{
    EbpfContext as _,
    helpers::{bpf_ktime_get_ns, generated::bpf_get_stack},
    macros::tracepoint,
    programs::TracePointContext,
};
use mmtrace_common::{
    CgroupKey, PROACTIVE_RANGES, ReclaimCtx, ScopeEntry, errors, reason, scope as sc,
};

use crate::{
    kread::conf,
    maps::{CGROUPS, RECLAIM, RECLAIM_STATS, SCOPE, count_error},
    scope,
};

#[tracepoint]
pub fn memcg_reclaim_begin(ctx: TracePointContext) -> u32 {
    let kind = if requested_by_cgroup_write(&ctx) {
        reason::PROACTIVE
    } else {
        reason::MEMCG
    };
    begin(kind as u64);
    0
}

#[tracepoint]
pub fn direct_reclaim_begin(_ctx: TracePointContext) -> u32 {
    begin(reason::DIRECT as u64);
    0
}

#[tracepoint]
pub fn memcg_reclaim_end(ctx: TracePointContext) -> u32 {
    end(&ctx);
    0
}

#[tracepoint]
pub fn direct_reclaim_end(ctx: TracePointContext) -> u32 {
    end(&ctx);
    0
}

#[tracepoint]
pub fn cgroup_attach_task(ctx: TracePointContext) -> u32 {
    let _ = try_attach(&ctx);
    0
}

/// Kernel frames searched for a cgroup-file writer (memory.reclaim sits two
/// frames above the tracepoint on 6.18).
const STACK_FRAMES: usize = 8;

/// Whether this memcg reclaim runs for a write to a cgroup file
/// (memory.reclaim, force_empty, a lowered limit) rather than for an
/// allocation: one of the configured functions is on the kernel stack.
/// Reclaim begins are rare (once per reclaim episode), so the stack walk is
/// affordable here.
#[inline(always)]
fn requested_by_cgroup_write(ctx: &TracePointContext) -> bool {
    let cfg = crate::kread::config();
    // SAFETY: reading a static written by the loader.
    let first = unsafe { core::ptr::read_volatile(&cfg.proactive_text[0][0]) };
    if first == 0 {
        return false;
    }
    let mut stack = [0u64; STACK_FRAMES];
    // SAFETY: the buffer is STACK_FRAMES u64s; flags 0 = kernel stack.
    let n = unsafe {
        bpf_get_stack(
            ctx.as_ptr(),
            stack.as_mut_ptr().cast(),
            (STACK_FRAMES * 8) as u32,
            0,
        )
    };
    if n <= 0 {
        return false;
    }
    let frames = (n as usize / 8).min(STACK_FRAMES);
    for (i, &ip) in stack.iter().enumerate() {
        if i >= frames {
            break;
        }
        for r in 0..PROACTIVE_RANGES {
            // SAFETY: reading a static written by the loader; r is in bounds.
            let (lo, hi) = unsafe {
                (
                    core::ptr::read_volatile(&cfg.proactive_text[r][0]),
                    core::ptr::read_volatile(&cfg.proactive_text[r][1]),
                )
            };
            if lo != 0 && ip >= lo && ip < hi {
                return true;
            }
        }
    }
    false
}

#[inline(always)]
fn begin(kind: u64) {
    let (tid, _) = scope::current_ids();
    // SAFETY: plain helper call.
    let start_ns = unsafe { bpf_ktime_get_ns() };
    let _ = RECLAIM.insert(&tid, &ReclaimCtx { kind, start_ns }, 0);
}

#[inline(always)]
fn end(ctx: &TracePointContext) {
    let (tid, tgid) = scope::current_ids();
    // SAFETY: plain data copy of the value.
    let Some(r) = (unsafe { RECLAIM.get(&tid) }).copied() else {
        return;
    };
    let _ = RECLAIM.remove(&tid);
    if !scope::in_scope(tgid) {
        return;
    }
    // SAFETY: offset from the tracepoint's format file.
    let reclaimed = unsafe { ctx.read_at::<u64>(conf!(tp_reclaim_nr) as usize) }.unwrap_or(0);
    // SAFETY: plain helper call.
    let ns = unsafe { bpf_ktime_get_ns() }.saturating_sub(r.start_ns);
    if let Some(s) = RECLAIM_STATS.get_ptr_mut(0) {
        // SAFETY: per-CPU slot.
        unsafe {
            if r.kind == reason::MEMCG as u64 {
                (*s).memcg_episodes += 1;
                (*s).memcg_reclaimed += reclaimed;
                (*s).memcg_ns += ns;
            } else if r.kind == reason::PROACTIVE as u64 {
                (*s).proactive_episodes += 1;
                (*s).proactive_reclaimed += reclaimed;
                (*s).proactive_ns += ns;
            } else {
                (*s).direct_episodes += 1;
                (*s).direct_reclaimed += reclaimed;
                (*s).direct_ns += ns;
            }
        }
    }
}

/// A task moved into a cgroup of the traced tree joins the scope (with its
/// future children); moved out of it, it leaves.
#[inline(always)]
fn try_attach(ctx: &TracePointContext) -> Result<(), i32> {
    if conf!(cgroup_mode) == 0 {
        return Ok(());
    }
    // SAFETY: offsets from the tracepoint's format file.
    let (root, id, pid) = unsafe {
        (
            ctx.read_at::<i32>(conf!(tp_attach_root) as usize)?,
            ctx.read_at::<u64>(conf!(tp_attach_id) as usize)?,
            ctx.read_at::<i32>(conf!(tp_attach_pid) as usize)?,
        )
    };
    // The key carries the hierarchy: a move in another hierarchy (cpu,
    // pids, ...) never matches.
    let key = CgroupKey {
        hierarchy: root as u32,
        _pad: 0,
        id,
    };
    let pid = pid as u32;
    if CGROUPS.get_ptr(&key).is_some() {
        // `pid` is a thread id: cgroup.procs moves every thread, and the
        // leader's id is the tgid. A non-leader id added here is removed
        // when that thread exits (sched_process_exit).
        let entry = ScopeEntry {
            flags: sc::FOLLOW_CHILDREN | sc::JOINED,
            _pad: 0,
        };
        if crate::scope::insert(pid, &entry).is_err() {
            count_error(errors::SCOPE_FULL);
        }
    } else if SCOPE.get_ptr(&pid).is_some() {
        crate::scope::remove(pid);
    }
    Ok(())
}
