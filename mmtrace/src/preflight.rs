//! One place that checks, before anything is loaded, that mmtrace can run
//! here: privileges, BTF, tracefs and every tracepoint it needs. Each failure
//! is one sentence that says what to do.
use std::path::{Path, PathBuf};

use crate::kernel::{btf::Btf, tracefs};

#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    #[error(
        "mmtrace needs root (or CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN) to load eBPF programs: run it with sudo"
    )]
    NotPrivileged,
    #[error(
        "kernel BTF not found at {0}: mmtrace needs a kernel built with CONFIG_DEBUG_INFO_BTF=y (most distribution kernels are)"
    )]
    NoBtf(PathBuf),
    #[error("reading kernel BTF at {path}: {reason}")]
    BadBtf { path: PathBuf, reason: String },
    #[error(
        "tracefs is not mounted and could not be mounted ({0}): run `sudo mount -t tracefs nodev /sys/kernel/tracing`"
    )]
    NoTracefs(String),
    #[error(
        "tracepoint {0}:{1} is missing from this kernel (mmtrace needs Linux 6.12 or newer for the filemap fault tracepoints)"
    )]
    MissingTracepoint(&'static str, &'static str),
}

pub const BTF_PATH: &str = "/sys/kernel/btf/vmlinux";
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Whether a `/proc/self/status` text grants what loading needs.
pub fn privileged(status: &str, euid: u32) -> bool {
    if euid == 0 {
        return true;
    }
    let Some(eff) = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
    else {
        return false;
    };
    let has = |c: u32| eff & (1u64 << c) != 0;
    has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON))
}

pub fn check_privileges() -> Result<(), PreflightError> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    if privileged(&status, euid) {
        Ok(())
    } else {
        Err(PreflightError::NotPrivileged)
    }
}

pub fn load_btf(path: &Path) -> Result<Btf, PreflightError> {
    if !path.exists() {
        return Err(PreflightError::NoBtf(path.to_path_buf()));
    }
    Btf::from_file(path).map_err(|e| PreflightError::BadBtf {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Finds tracefs, mounting it at /sys/kernel/tracing if it is not mounted.
pub fn tracefs_root() -> Result<PathBuf, PreflightError> {
    if let Some(r) = tracefs::find_root() {
        return Ok(r);
    }
    let target = c"/sys/kernel/tracing";
    // SAFETY: constant C strings.
    let r = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(PreflightError::NoTracefs(
            std::io::Error::last_os_error().to_string(),
        ));
    }
    log::info!("mounted tracefs at /sys/kernel/tracing");
    tracefs::find_root()
        .ok_or_else(|| PreflightError::NoTracefs("no events directory after mounting".into()))
}

/// Every required tracepoint is there.
pub fn check_tracepoints(root: &Path) -> Result<(), PreflightError> {
    for p in crate::kernel::probes::PROBES
        .iter()
        .filter(|p| p.required())
    {
        let Some((cat, ev)) = p.tracefs_event() else {
            continue;
        };
        if !root
            .join("events")
            .join(cat)
            .join(ev)
            .join("format")
            .exists()
        {
            return Err(PreflightError::MissingTracepoint(cat, ev));
        }
    }
    Ok(())
}

/// The kernel release, for reports.
pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn root_or_the_right_capabilities() {
        assert!(privileged("", 0));
        assert!(!privileged("Name:\tx\nCapEff:\t0000000000000000\n", 1000));
        // CAP_BPF + CAP_PERFMON
        assert!(privileged("CapEff:\t000000c000000000\n", 1000));
        // only CAP_BPF
        assert!(!privileged("CapEff:\t0000008000000000\n", 1000));
        // CAP_SYS_ADMIN
        assert!(privileged("CapEff:\t0000000000200000\n", 1000));
        assert!(!privileged("CapEff:\tzz\n", 1000));
    }

    #[test]
    fn missing_tracepoints_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let e = check_tracepoints(dir.path()).unwrap_err();
        assert!(
            e.to_string()
                .contains("filemap:mm_filemap_add_to_page_cache"),
            "{e}"
        );
        for (cat, ev) in crate::kernel::probes::PROBES
            .iter()
            .filter_map(|p| p.tracefs_event())
        {
            let d = dir.path().join("events").join(cat).join(ev);
            std::fs::create_dir_all(&d).unwrap();
            std::fs::write(d.join("format"), "").unwrap();
        }
        check_tracepoints(dir.path()).unwrap();
    }

    #[test]
    fn missing_btf_says_what_is_needed() {
        let e = load_btf(Path::new("/nonexistent/vmlinux")).err().unwrap();
        assert!(e.to_string().contains("CONFIG_DEBUG_INFO_BTF"));
    }
}
