//! The scope filter: which processes are traced. One hash lookup by tgid;
//! everything outside the scope costs nothing more. The fault path keeps
//! the last verdict per CPU, valid while `SCOPE_GEN` is unchanged: every
//! change of the scope (a process added or removed, here or by userspace)
//! changes it.
use aya_ebpf::helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns};
use mmtrace_common::ScopeEntry;

use crate::{
    kread::conf,
    maps::{SCOPE, SCOPE_GEN, SCOPE_VERDICT},
};

/// This CPU's last scope verdict ([`SCOPE_VERDICT`]).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Verdict {
    pub tgid: u32,
    pub traced: u32,
    /// `SCOPE_GEN` before the lookup.
    pub scope_gen: u64,
}

/// The current task's (tid, tgid).
#[inline(always)]
pub fn current_ids() -> (u32, u32) {
    let id = bpf_get_current_pid_tgid();
    (id as u32, (id >> 32) as u32)
}

/// `--all`: every process but mmtrace itself.
#[inline(always)]
pub fn all() -> bool {
    conf!(scope_all) != 0
}

/// The scope entry of `tgid`, if it is traced (under `--all` one that asks
/// no child to be added: all are in scope already).
#[inline(always)]
pub fn lookup(tgid: u32) -> Option<ScopeEntry> {
    if all() {
        return (tgid != conf!(self_tgid)).then_some(ScopeEntry { flags: 0, _pad: 0 });
    }
    // SAFETY: entries are plain data; a concurrent removal at worst yields a
    // stale copy of an 8-byte value.
    unsafe { SCOPE.get(&tgid) }.copied()
}

#[inline(always)]
pub fn in_scope(tgid: u32) -> bool {
    if all() {
        return tgid != conf!(self_tgid);
    }
    SCOPE.get_ptr(&tgid).is_some()
}

/// The scope generation: it changes whenever a process leaves the scope.
#[inline(always)]
pub fn generation() -> u64 {
    match SCOPE_GEN.get_ptr(0) {
        // SAFETY: an 8-byte array slot.
        Some(g) => unsafe { core::ptr::read_volatile(g) },
        None => 0,
    }
}

/// `in_scope`, through this CPU's last verdict when the scope has not
/// changed since (`scope_gen`, read by the caller before anything else).
#[inline(always)]
pub fn in_scope_cached(tgid: u32, scope_gen: u64) -> bool {
    if all() {
        return tgid != conf!(self_tgid);
    }
    let Some(v) = SCOPE_VERDICT.get_ptr_mut(0) else {
        return in_scope(tgid);
    };
    // SAFETY: per-CPU slot.
    unsafe {
        if (*v).tgid == tgid && (*v).scope_gen == scope_gen {
            return (*v).traced != 0;
        }
        let traced = SCOPE.get_ptr(&tgid).is_some();
        *v = Verdict {
            tgid,
            traced: traced as u32,
            scope_gen,
        };
        traced
    }
}

/// Voids the cached verdicts (after a change of `SCOPE`). The new
/// generation is the time, not a count: two CPUs changing the scope at once
/// cannot both write the value a reader already saw.
#[inline(always)]
fn bump() {
    if let Some(g) = SCOPE_GEN.get_ptr_mut(0) {
        // SAFETY: an 8-byte array slot; plain helper call.
        unsafe { core::ptr::write_volatile(g, bpf_ktime_get_ns()) };
    }
}

/// Adds `tgid` to the scope.
#[inline(always)]
pub fn insert(tgid: u32, entry: &ScopeEntry) -> Result<(), i32> {
    let r = SCOPE.insert(&tgid, entry, 0);
    bump();
    r
}

/// Removes `tgid` from the scope.
#[inline(always)]
pub fn remove(tgid: u32) {
    let _ = SCOPE.remove(&tgid);
    bump();
}
