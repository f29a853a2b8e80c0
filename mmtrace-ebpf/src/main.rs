//! mmtrace's eBPF programs, grouped by kernel subsystem:
//! - `faults`: page faults (perf software events, the kernel's own minor/major
//!   classification) attributed to the faulting vma;
//! - `pagecache`: page-cache additions / evictions / refaults per file;
//! - `process`: scope maintenance (children joining, processes exiting);
//! - `reclaim`: reclaim context (why pages leave), cgroup joins;
//! - `oom`: OOM-killer victims, sent to userspace as they happen;
//! - `signals`: kernel-generated SIGBUS/SIGSEGV of traced tasks, with the
//!   vma of the fault address, sent to userspace as they happen;
//! - `tlb`: TLB flushes per traced process, by reason;
//! - `writes`: the write path per file (dirtied, written back, msync);
//! - `events`: single events, only when asked for (`--events`);
//! - `latency`: fault latency histograms (`--latency`);
//! - `bench`: empty programs, the cost floor `cargo xtask bench` measures.
//!
//! Maps live in `maps`, the scope filter in `scope`, kernel reads at run-time
//! offsets in `kread`. Aggregation happens here: no per-fault record crosses
//! to userspace unless raw events are asked for.
#![no_std]
#![feature(core_intrinsics)]
#![feature(asm_experimental_arch)]
#![allow(
    internal_features,
    reason = "atomic_xadd: the bpf target has no AtomicU64::fetch_add"
)]
#![no_main]
#![allow(
    clippy::needless_borrows_for_generic_args,
    reason = "map keys and values are passed by reference on purpose: a by-value argument is \
              another copy on the 512-byte BPF stack"
)]

mod bench;
mod events;
mod faults;
mod kread;
mod latency;
mod maps;
mod oom;
mod pagecache;
mod process;
mod reclaim;
mod scope;
mod signals;
mod tlb;
mod writes;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// GPL-compatible: `bpf_probe_read_kernel` and `bpf_find_vma` are GPL-only helpers.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
