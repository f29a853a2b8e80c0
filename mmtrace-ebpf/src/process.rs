//! Process lifetime: children join the scope at fork, the kernel's own fault
//! counters are captured when threads exit, and the scope entry leaves when
//! the whole thread group is dead (so a recycled pid is never counted).
//!
//! Hooks (Linux 6.18 `format`):
//!   task:task_newtask (parent's context, before the child runs)
//!     field:pid_t pid; offset:8; size:4
//!     field:u64 clone_flags; offset:32; size:8
//!   sched:sched_process_exit (exiting thread's context)
//!     field:pid_t pid; offset:24; size:4
//!     field:bool group_dead; offset:32; size:1   (6.16+; absent before: then
//!     the group is taken as dead when its leader exits)
use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_task},
    macros::tracepoint,
    programs::TracePointContext,
};
use mmtrace_common::{Config, ExitRecord, ScopeEntry, errors, scope as sc};

use crate::{
    kread::{conf, read},
    maps::{EXITS, atomic_add, count_error, get_or_insert},
    scope,
};

const CLONE_THREAD: u64 = 0x0001_0000;

#[tracepoint]
pub fn task_newtask(ctx: TracePointContext) -> u32 {
    let _ = try_newtask(&ctx);
    0
}

#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let _ = try_exit(&ctx);
    0
}

#[inline(always)]
fn try_newtask(ctx: &TracePointContext) -> Result<(), i32> {
    let (_, tgid) = scope::current_ids();
    let Some(parent) = scope::lookup(tgid) else {
        return Ok(());
    };
    if parent.flags & sc::FOLLOW_CHILDREN == 0 {
        return Ok(());
    }
    // SAFETY: offsets from the tracepoint's format file.
    let (pid, flags) = unsafe {
        (
            ctx.read_at::<i32>(conf!(tp_newtask_pid) as usize)?,
            ctx.read_at::<u64>(conf!(tp_newtask_clone_flags) as usize)?,
        )
    };
    if flags & CLONE_THREAD != 0 {
        return Ok(()); // a thread: already covered by its tgid
    }
    let entry = ScopeEntry {
        flags: sc::FOLLOW_CHILDREN | sc::CHILD,
        _pad: 0,
    };
    if scope::insert(pid as u32, &entry).is_err() {
        count_error(errors::SCOPE_FULL);
    }
    Ok(())
}

#[inline(always)]
fn try_exit(ctx: &TracePointContext) -> Result<(), i32> {
    let (tid, tgid) = scope::current_ids();
    if !scope::in_scope(tgid) {
        return Ok(());
    }
    // SAFETY: plain helper call.
    let task = unsafe { bpf_get_current_task() };
    let min = read::<u64>(task, conf!(task_min_flt)).unwrap_or(0);
    let maj = read::<u64>(task, conf!(task_maj_flt)).unwrap_or(0);
    let gd_off = conf!(tp_exit_group_dead);
    let group_dead = if gd_off == Config::ABSENT {
        tid == tgid
    } else {
        // SAFETY: offset from the tracepoint's format file.
        unsafe { ctx.read_at::<u8>(gd_off as usize)? != 0 }
    };
    let Some(r) = get_or_insert(&EXITS, &tgid, &ExitRecord::default(), errors::EXIT_FULL) else {
        return Ok(());
    };
    // SAFETY: a map value shared by every CPU: threads of one process exit
    // on several CPUs at once, so the sums are atomic adds. Only the group's
    // last thread writes the rest.
    unsafe {
        atomic_add(&raw mut (*r).min_flt, min);
        atomic_add(&raw mut (*r).maj_flt, maj);
        atomic_add(&raw mut (*r).threads, 1);
        if group_dead {
            (*r).group_dead = 1;
            if let Ok(comm) = bpf_get_current_comm() {
                (*r).comm = comm;
            }
            (*r).memcg_id = memcg_id(task);
        }
    }
    crate::faults::settle_exit(tid, min, maj);
    if group_dead {
        scope::remove(tgid);
    }
    Ok(())
}

/// `task->cgroups->subsys[memory_cgrp_id]->cgroup->kn->id`: the inode
/// number of the memory cgroup's directory (0 when unreadable).
#[inline(always)]
fn memcg_id(task: u64) -> u64 {
    if conf!(task_cgroups) == 0 {
        return 0;
    }
    let Some(cset) = read::<u64>(task, conf!(task_cgroups)) else {
        return 0;
    };
    let Some(css) = read::<u64>(cset, conf!(css_set_memcg)).filter(|c| *c != 0) else {
        return 0;
    };
    let Some(cgrp) = read::<u64>(css, conf!(css_cgroup)) else {
        return 0;
    };
    let Some(kn) = read::<u64>(cgrp, conf!(cgroup_kn)) else {
        return 0;
    };
    read::<u64>(kn, conf!(kn_id)).unwrap_or(0)
}
