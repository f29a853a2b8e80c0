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
use core::ffi::c_void;

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_ktime_get_ns,
        generated::{bpf_find_vma, bpf_get_current_task, bpf_get_current_task_btf},
    },
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};
use mmtrace_common::{Config, SignalNotice, errors, notice, signal_vma};

use crate::{
    kread::read,
    maps::{NOTICES, count_error},
    scope,
};

const SIGBUS: u64 = 7;
const SIGSEGV: u64 = 11;
const VM_SHARED: u64 = 0x8;
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

/// What `bpf_find_vma`'s callback found (same reads as the fault path's).
#[repr(C)]
struct Found {
    ok: u64,
    has_file: u64,
    start: u64,
    end: u64,
    flags: u64,
    pgoff: u64,
    ino: u64,
    dev: u64,
}

/// `bpf_find_vma` callback: `long (*)(struct task_struct *, struct vm_area_struct *, void *)`.
#[inline(never)]
extern "C" fn signal_vma_callback(_task: *mut c_void, vma: *mut c_void, ctx: *mut c_void) -> i64 {
    let vma = vma as u64;
    let found = ctx as *mut Found;
    let c: &Config = crate::kread::config();
    // SAFETY: reads of CONFIG; `found` points at the caller's stack.
    unsafe {
        let (Some(start), Some(end), Some(flags), Some(pgoff), Some(file)) = (
            read::<u64>(vma, core::ptr::read_volatile(&c.vma_vm_start)),
            read::<u64>(vma, core::ptr::read_volatile(&c.vma_vm_end)),
            read::<u64>(vma, core::ptr::read_volatile(&c.vma_vm_flags)),
            read::<u64>(vma, core::ptr::read_volatile(&c.vma_vm_pgoff)),
            read::<u64>(vma, core::ptr::read_volatile(&c.vma_vm_file)),
        ) else {
            return 0;
        };
        (*found).start = start;
        (*found).end = end;
        (*found).flags = flags;
        (*found).pgoff = pgoff;
        if file != 0 {
            let Some(inode) = read::<u64>(file, core::ptr::read_volatile(&c.file_f_inode)) else {
                return 0;
            };
            let (Some(ino), Some(sb)) = (
                read::<u64>(inode, core::ptr::read_volatile(&c.inode_i_ino)),
                read::<u64>(inode, core::ptr::read_volatile(&c.inode_i_sb)),
            ) else {
                return 0;
            };
            let Some(dev) = read::<u32>(sb, core::ptr::read_volatile(&c.sb_s_dev)) else {
                return 0;
            };
            (*found).ino = ino;
            (*found).dev = dev as u64;
            (*found).has_file = 1;
        }
        (*found).ok = 1;
    }
    0
}

/// Fills the notice's vma fields: the vma of the current task holding
/// `n.addr`, if any (`-ENOENT`: the address is in no vma, SEGV_MAPERR).
#[inline(always)]
fn find_vma(n: &mut SignalNotice) {
    let mut found = Found {
        ok: 0,
        has_file: 0,
        start: 0,
        end: 0,
        flags: 0,
        pgoff: 0,
        ino: 0,
        dev: 0,
    };
    // SAFETY: plain helper call; a trusted (BTF) task pointer.
    let task = unsafe { bpf_get_current_task_btf() };
    // SAFETY: callback and context follow the helper's contract.
    let ret = unsafe {
        bpf_find_vma(
            task,
            n.addr,
            signal_vma_callback as *mut c_void,
            &mut found as *mut Found as *mut c_void,
            0,
        )
    };
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
    if found.flags & VM_SHARED != 0 {
        n.vma |= signal_vma::SHARED;
    }
    n.vm_start = found.start;
    n.vm_end = found.end;
    n.pgoff = found.pgoff;
    n.ino = found.ino;
    n.dev = found.dev as u32;
}
