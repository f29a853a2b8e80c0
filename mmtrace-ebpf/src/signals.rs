//! SIGBUS and SIGSEGV on mappings: a kernel-generated (`si_code > 0`)
//! SIGBUS or SIGSEGV sent to a traced task, with the vma holding the fault
//! address, sent to userspace at once through `NOTICES` (rare: never on a
//! hot path).
//!
//! Hook: raw tracepoint `signal:signal_generate`,
//!   `TP_PROTO(int sig, struct kernel_siginfo *info, struct task_struct *task,
//!   int group, int result)` (Linux 6.18, include/trace/events/signal.h).
//! The classic tracepoint has no fault address; the raw form's siginfo has
//! it: `kernel_siginfo { int si_signo; int si_errno; int si_code; union
//! _sifields }`, so `si_code` is at +8 and `si_addr` at +16 (KERNEL-NOTES:
//! verified exact on 6.18 x86-64).
//!
//! A fault's SIGBUS/SIGSEGV (`force_sig_fault`) is generated inside the fault,
//! in the faulting task, after the mmap lock was dropped: the vma is looked
//! up here with `bpf_find_vma` on the current task, before the task can run
//! its handler or die. A signal generated for another task (e.g. a
//! memory-failure `BUS_MCEERR_AO` sent to a process that maps the poisoned
//! page) is not recorded: its vma would be another mm's.

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_ktime_get_ns,
        generated::{bpf_get_current_task, bpf_get_current_task_btf},
    },
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use mmtrace_common::{SignalNotice, errors, notice, signal_vma};

use crate::{
    kread::read,
    maps::{NOTICES, count_error},
    scope,
};

const SIGBUS: u64 = 7;
const SIGSEGV: u64 = 11;
/// `kernel_siginfo.si_code` and `si_addr` (x86-64, every 6.x kernel).
const SI_CODE: u32 = 8;
const SI_ADDR: u32 = 16;

#[raw_tracepoint(tracepoint = "signal_generate")]
pub fn signal_generate(ctx: RawTracePointContext) -> u32 {
    let sig = ctx.arg::<u64>(0) & 0xffff_ffff;
    if sig != SIGBUS && sig != SIGSEGV {
        return 0;
    }
    let (tid, tgid) = scope::current_ids();
    if !scope::in_scope(tgid) {
        return 0;
    }
    // SAFETY: plain helper call.
    if ctx.arg::<u64>(2) != unsafe { bpf_get_current_task() } {
        return 0;
    }
    let info = ctx.arg::<u64>(1);
    let Some(code) = read::<i32>(info, SI_CODE) else {
        return 0;
    };
    // si_code <= 0: sent by a process (kill, tkill, sigqueue), not a fault.
    if code <= 0 {
        return 0;
    }
    let addr = read::<u64>(info, SI_ADDR).unwrap_or(0);
    let mut n = SignalNotice {
        kind: notice::SIGNAL,
        tgid,
        tid,
        signo: sig as u32,
        code,
        addr,
        // SAFETY: plain helper call.
        ktime_ns: unsafe { bpf_ktime_get_ns() },
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        ..SignalNotice::default()
    };
    find_vma(&mut n);
    if NOTICES.output::<SignalNotice>(&n, 0).is_err() {
        count_error(errors::NOTICE_DROPPED);
    }
    0
}

/// Fills the notice's vma fields: the vma of the current task holding
/// `n.addr`, if any (`-ENOENT`: the address is in no vma, SEGV_MAPERR).
#[inline(always)]
fn find_vma(n: &mut SignalNotice) {
    // SAFETY: plain helper call; a trusted (BTF) task pointer.
    let task = unsafe { bpf_get_current_task_btf() };
    let (ret, found) = crate::faults::lookup_vma(task, n.addr);
    const ENOENT: i64 = -2;
    if ret == ENOENT {
        return;
    }
    if ret != 0 || found.ok == 0 {
        n.vma = signal_vma::LOOKUP_FAILED;
        return;
    }
    n.vma = signal_vma::FOUND;
    if found.has_file != 0 {
        n.vma |= signal_vma::FILE;
    }
    if found.flags & crate::faults::VM_SHARED != 0 {
        n.vma |= signal_vma::SHARED;
    }
    n.vm_start = found.start;
    n.vm_end = found.end;
    n.pgoff = found.pgoff;
    n.ino = found.ino;
    n.dev = found.dev as u32;
}
