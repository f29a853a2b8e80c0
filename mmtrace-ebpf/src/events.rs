//! Raw events (`--events`): single faults, page-cache additions and
//! evictions copied to the `EVENTS` ring buffer, only when userspace asked
//! for their kind (`CONFIG.events`), thinned to one in `events_sample` per
//! CPU. A full ring buffer drops the event and counts it in
//! `EVENTS_DROPPED` (per CPU): the aggregated counters never depend on it.
use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns};
use mmtrace_common::Event;

use crate::{
    kread::conf,
    maps::{EVENTS, EVENTS_DROPPED, EVENTS_SAMPLE},
};

/// Userspace asked for events of `mask` ([`mmtrace_common::event_mask`]).
#[inline(always)]
pub fn wanted(mask: u32) -> bool {
    conf!(events) & mask != 0
}

/// Counts this candidate against the sampling rate: true for one in N.
#[inline(always)]
fn sampled() -> bool {
    let n = conf!(events_sample) as u64;
    if n <= 1 {
        return true;
    }
    let Some(t) = EVENTS_SAMPLE.get_ptr_mut(0) else {
        return true;
    };
    // SAFETY: per-CPU slot, no concurrent writer on this CPU.
    unsafe {
        *t += 1;
        *t % n == 0
    }
}

/// Sends `e` (time and ids filled in here), or counts it as dropped.
#[inline(always)]
pub fn emit(e: &mut Event) {
    if !sampled() {
        return;
    }
    let id = bpf_get_current_pid_tgid();
    e.tid = id as u32;
    e.tgid = (id >> 32) as u32;
    // SAFETY: plain helper call.
    e.ktime_ns = unsafe { bpf_ktime_get_ns() };
    if EVENTS.output::<Event>(e, 0).is_err()
        && let Some(d) = EVENTS_DROPPED.get_ptr_mut(0)
    {
        // SAFETY: per-CPU slot.
        unsafe { *d += 1 };
    }
}
