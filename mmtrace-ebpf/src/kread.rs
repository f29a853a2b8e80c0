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

/// A record field [`tp_field`] can load: its size picks the load.
pub trait TpField: Copy {
    fn from_u64(v: u64) -> Self;
}
impl TpField for u64 {
    fn from_u64(v: u64) -> Self {
        v
    }
}
impl TpField for u32 {
    fn from_u64(v: u64) -> Self {
        v as u32
    }
}
impl TpField for u8 {
    fn from_u64(v: u64) -> Self {
        v as u8
    }
}

/// One load of `size` bytes at the constant offset `O` of `p`, written as
/// BPF assembly: LLVM turned loads at constant offsets chosen by a `match`
/// into one load at a computed address, which the verifier refuses for a
/// context pointer ("dereference of modified ctx ptr").
#[inline(always)]
unsafe fn ctx_load<const O: usize>(p: *const u8, size: usize) -> u64 {
    let v: u64;
    // SAFETY: the caller's tracepoint record; the verifier checks the access.
    unsafe {
        match size {
            8 => {
                core::arch::asm!("{v} = *(u64 *)({p} + {o})", v = out(reg) v, p = in(reg) p, o = const O, options(readonly, nostack, preserves_flags))
            }
            4 => {
                core::arch::asm!("{v} = *(u32 *)({p} + {o})", v = out(reg) v, p = in(reg) p, o = const O, options(readonly, nostack, preserves_flags))
            }
            _ => {
                core::arch::asm!("{v} = *(u8 *)({p} + {o})", v = out(reg) v, p = in(reg) p, o = const O, options(readonly, nostack, preserves_flags))
            }
        }
    }
    v
}

/// Reads a `T` at byte `off` of a classic tracepoint's record with a plain
/// load instead of `bpf_probe_read` (a helper call per field: most of what
/// the page-cache hooks cost). The verifier allows loads from a tracepoint
/// context only at a constant, `T`-aligned offset of at least 8, so `off`
/// goes through arms of constant offsets. `off` comes from `CONFIG`, which
/// the verifier knows (frozen `.rodata`): it keeps only the arm taken and
/// turns the comparisons before it into jumps. Any other offset falls back
/// to the helper (`TracePointContext::read_at`).
#[inline(always)]
pub fn tp_field<T: TpField>(
    ctx: &aya_ebpf::programs::TracePointContext,
    off: u32,
) -> Result<T, i32> {
    use aya_ebpf::EbpfContext as _;
    let p = ctx.as_ptr() as *const u8;
    let size = core::mem::size_of::<T>();
    macro_rules! arms {
        ($($o:literal)*) => {
            match off as usize {
                $(
                    $o if $o % size == 0 => {
                        // SAFETY: see `ctx_load`.
                        return Ok(T::from_u64(unsafe { ctx_load::<$o>(p, size) }));
                    }
                )*
                _ => {}
            }
        };
    }
    arms!(8 12 16 20 24 28 32 36 40 44 48 52 56 60);
    // SAFETY: bpf_probe_read checks the address.
    unsafe { ctx.read_at::<T>(off as usize) }
}
