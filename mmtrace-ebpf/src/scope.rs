//! The scope filter: which processes are traced. One hash lookup by tgid;
//! everything outside the scope costs nothing more.
use aya_ebpf::helpers::bpf_get_current_pid_tgid;
use mmtrace_common::ScopeEntry;

use crate::{kread::conf, maps::SCOPE};

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
