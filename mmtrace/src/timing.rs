//! Start and stop phases on stderr, for finding where `mmtrace -- CMD`
//! spends its wall time: `RUST_LOG=mmtrace::timing=debug` (or `-vv`) logs
//! each phase with the milliseconds since the trace began.
use std::{sync::OnceLock, time::Instant};

static T0: OnceLock<Instant> = OnceLock::new();

/// Starts the clock (the first call wins).
pub fn start() {
    T0.get_or_init(Instant::now);
}

/// Logs that `what` has just ended.
pub fn phase(what: &str) {
    if log::log_enabled!(log::Level::Debug) {
        let ms = T0.get_or_init(Instant::now).elapsed().as_secs_f64() * 1e3;
        log::debug!("{ms:7.1} ms  {what}");
    }
}

/// CPU time this thread has used, in milliseconds.
pub fn thread_cpu_ms() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 / 1e6
}
