//! Empty programs for `cargo xtask bench`: the floor of mmtrace's cost, one
//! empty program on each hook mmtrace attaches (loaded and attached only by
//! the hidden `mmtrace bench-chunks`, never by a trace). Each does nothing
//! but return, so attaching it measures the hook's own cost per event.
use aya_ebpf::{
    macros::{perf_event, raw_tracepoint, tracepoint},
    programs::{PerfEventContext, RawTracePointContext, TracePointContext},
};

/// Attached by name to any raw tracepoint (the bench attaches it to the
/// raw tracepoints mmtrace uses, e.g. `page_fault_user`).
#[raw_tracepoint]
pub fn empty_raw_tp(_ctx: RawTracePointContext) -> u32 {
    0
}

/// Attached to any tracefs tracepoint mmtrace uses.
#[tracepoint]
pub fn empty_tp(_ctx: TracePointContext) -> u32 {
    0
}

/// Attached to the software perf events mmtrace samples (page-faults-min/maj).
#[perf_event]
pub fn empty_perf(_ctx: PerfEventContext) -> u32 {
    0
}
