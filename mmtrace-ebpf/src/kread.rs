//! Kernel memory reads at offsets the loader computed from BTF (`CONFIG`).
//!
//! Rust eBPF has no CO-RE, so instead of compiling struct layouts in, every
//! field is read with `bpf_probe_read_kernel(base + offset)` where the offset
//! was looked up in `/sys/kernel/btf/vmlinux` at start.
use aya_ebpf::helpers::bpf_probe_read_kernel;
use mmtrace_common::{Config, errors};

use crate::maps::count_error;

/// Written by the loader (`EbpfLoader::override_global("CONFIG", ..)`).
#[unsafe(no_mangle)]
static CONFIG: Config = Config {
    self_tgid: 0,
    vma_cache: 0,
    task_mm: 0,
    task_min_flt: 0,
    task_maj_flt: 0,
    mm_lock_seq: 0,
    vma_vm_start: 0,
    vma_vm_end: 0,
    vma_vm_flags: 0,
    vma_vm_pgoff: 0,
    vma_vm_file: 0,
    file_f_inode: 0,
    inode_i_ino: 0,
    inode_i_sb: 0,
    sb_s_dev: 0,
    tp_cache_ino: 0,
    tp_cache_index: 0,
    tp_cache_dev: 0,
    tp_cache_order: 0,
    tp_fault_ino: 0,
    tp_fault_dev: 0,
    tp_map_ino: 0,
    tp_map_dev: 0,
    tp_map_index: 0,
    tp_map_last_index: 0,
    tp_exit_group_dead: 0,
    tp_newtask_pid: 0,
    tp_newtask_clone_flags: 0,
    write_faults: 0,
    nr_cpus: 0,
};

/// Reads one `CONFIG` field; volatile so the compiler cannot fold the
/// loader-written value to the zero above.
macro_rules! conf {
    ($field:ident) => {{
        #[allow(unused_unsafe, reason = "the macro is also used inside unsafe blocks")]
        // SAFETY: reading a static.
        let v = unsafe { core::ptr::read_volatile(&$crate::kread::config().$field) };
        v
    }};
}
pub(crate) use conf;

#[inline(always)]
pub fn config() -> &'static Config {
    &CONFIG
}

/// Reads a `T` at `base + off`; counts a failed read.
#[inline(always)]
pub fn read<T>(base: u64, off: u32) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel validates the address.
    match unsafe { bpf_probe_read_kernel((base + off as u64) as *const T) } {
        Ok(v) => Some(v),
        Err(_) => {
            count_error(errors::READ_FAILED);
            None
        }
    }
}
