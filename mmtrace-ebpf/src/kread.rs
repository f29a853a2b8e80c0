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
static CONFIG: Config = Config::ZERO;

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
