//! OOM kills: the victim the OOM killer marked, with its memory at the kill,
//! sent to userspace at once (rare: never on a hot path).
//!
//! Hook (Linux 6.18 `format`; offsets are read from tracefs at start):
//!   oom:mark_victim (the OOM killer's context, not the victim's)
//!     field:int pid;                  offset:8;  size:4
//!     field:__data_loc char[] comm;   offset:12; size:4
//!     field:unsigned long total_vm;   offset:16; size:8   (kB)
//!     field:unsigned long anon_rss;   offset:24; size:8   (kB)
//!     field:unsigned long file_rss;   offset:32; size:8   (kB)
//!     field:unsigned long shmem_rss;  offset:40; size:8   (kB)
//!     field:short oom_score_adj;      offset:64; size:2
use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::tracepoint, programs::TracePointContext};
use aya_log_ebpf::{info, warn};
use mmtrace_common::{OomKill, errors, notice};

use crate::{
    kread::conf,
    maps::{NOTICES, count_error},
    scope,
};

#[tracepoint]
pub fn oom_mark_victim(ctx: TracePointContext) -> u32 {
    let _ = try_mark_victim(&ctx);
    0
}

#[inline(always)]
fn try_mark_victim(ctx: &TracePointContext) -> Result<(), i32> {
    // SAFETY: offsets from the tracepoint's format file.
    let mut k = unsafe {
        let pid = ctx.read_at::<i32>(conf!(tp_oom_pid) as usize)? as u32;
        OomKill {
            kind: notice::OOM_KILL,
            pid,
            in_scope: scope::in_scope(pid) as u32,
            oom_score_adj: ctx.read_at::<i16>(conf!(tp_oom_score_adj) as usize)? as i32,
            total_vm_kb: ctx.read_at::<u64>(conf!(tp_oom_total_vm) as usize)?,
            anon_rss_kb: ctx.read_at::<u64>(conf!(tp_oom_anon) as usize)?,
            file_rss_kb: ctx.read_at::<u64>(conf!(tp_oom_file) as usize)?,
            shmem_rss_kb: ctx.read_at::<u64>(conf!(tp_oom_shmem) as usize)?,
            ktime_ns: bpf_ktime_get_ns(),
            comm: [0; 16],
        }
    };
    // __data_loc: the low 16 bits are the string's offset in the record.
    // SAFETY: offsets from the tracepoint's format file and the record.
    if let Ok(loc) = unsafe { ctx.read_at::<u32>(conf!(tp_oom_comm) as usize) } {
        let off = (loc & 0xffff) as usize;
        // SAFETY: the string's offset inside the record, from the record.
        if let Ok(c) = unsafe { ctx.read_at::<[u8; 16]>(off) } {
            k.comm = c;
        }
    }
    info!(
        ctx,
        "oom victim pid {} (traced: {}), anon {} kB", k.pid, k.in_scope, k.anon_rss_kb
    );
    if NOTICES.output::<OomKill>(&k, 0).is_err() {
        warn!(
            ctx,
            "notice ring buffer full: OOM kill of {} dropped", k.pid
        );
        count_error(errors::NOTICE_DROPPED);
    }
    Ok(())
}
