//! Helpers shared by the privileged test binaries.
#![allow(dead_code, reason = "each test binary uses its own subset")]

use std::{
    io::{BufRead as _, BufReader, Read as _},
    path::{Path, PathBuf},
    process::{Child, Command, Output},
    sync::{Mutex, MutexGuard},
    time::Duration,
};

use serde_json::Value;

static SERIAL: Mutex<()> = Mutex::new(());

/// Serialises the tests of one binary: page-cache and cgroup experiments
/// must not overlap.
pub fn lock() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

pub fn mmtrace() -> Command {
    Command::new(env!("CARGO_BIN_EXE_mmtrace"))
}

pub fn require_root() {
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "these tests load eBPF programs (and create cgroups): run them as root (cargo xtask test does)"
    );
}

/// A scratch directory on the target's disk (page cache can be dropped
/// there, unlike tmpfs).
pub fn scratch() -> tempfile::TempDir {
    tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap()
}

/// The JSON Lines records of a trace.
pub fn records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("each line is JSON"))
        .collect()
}

pub fn summary(recs: &[Value]) -> &Value {
    let s = recs.last().expect("at least one record");
    assert_eq!(s["type"], "summary", "the last record is the summary");
    s
}

pub fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or_else(|| panic!("not a number: {v}"))
}

pub fn ok(out: &Output) {
    assert!(
        out.status.success(),
        "status {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A memory cgroup removed (with anything left in it) when dropped.
pub struct TestCgroup(pub PathBuf);

impl TestCgroup {
    pub fn new(tag: &str, limit: u64) -> Self {
        let name = format!("mmtrace-test-{tag}-{}", std::process::id());
        Self(mmtrace::demo::create_cgroup(&name, limit).expect("creating a memory cgroup"))
    }
    pub fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
    pub fn add(&self, pid: u32) {
        std::fs::write(self.0.join("cgroup.procs"), pid.to_string()).unwrap();
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for _ in 0..100 {
            for p in std::fs::read_to_string(self.0.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
            {
                // SAFETY: plain syscall.
                unsafe { libc::kill(p.trim().parse().unwrap_or(0), libc::SIGKILL) };
            }
            if std::fs::remove_dir(&self.0).is_ok() || !self.0.exists() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Writes a file of `bytes` non-zero bytes with `mmtrace workload make-file`.
pub fn make_file(dir: &Path, name: &str, bytes: u64) -> PathBuf {
    let p = dir.join(name);
    let out = mmtrace()
        .args(["workload", "make-file", "--path"])
        .arg(&p)
        .args(["--size", &bytes.to_string()])
        .output()
        .unwrap();
    ok(&out);
    p
}

/// Writes back and evicts a file's pages (fdatasync + POSIX_FADV_DONTNEED).
pub fn drop_cache(p: &Path) {
    let f = std::fs::File::open(p).unwrap();
    use std::os::fd::AsRawFd;
    // SAFETY: plain syscalls on a valid fd.
    let r = unsafe {
        libc::fdatasync(f.as_raw_fd());
        libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED)
    };
    assert_eq!(r, 0);
}

/// Evictions of a file row by reclaimers no test controls: DAMON (which
/// proactively reclaims page cache on the test VM), kswapd, proactive
/// reclaim and compaction. A test that evicts pages itself allows these on
/// top, since they may take a page moments before the test's own eviction.
pub fn background_evictions(row: &Value) -> u64 {
    ["damon", "kswapd", "proactive", "compaction"]
        .iter()
        .map(|r| u(&row["evicted_by"][r]))
        .sum()
}

/// Waits until a tracer started with piped stderr (and without `--quiet`)
/// says it is tracing, so a test starts its workload after the attach
/// rather than after a fixed delay (1.5-1.8 s to attach was measured on a
/// loaded host). The rest of its stderr, from the start, is what the
/// returned thread gives.
pub fn wait_tracing(child: &mut Child) -> std::thread::JoinHandle<String> {
    let mut err = BufReader::new(child.stderr.take().expect("stderr piped"));
    let mut said = String::new();
    while !said.contains("mmtrace: tracing") {
        let mut l = String::new();
        if err.read_line(&mut l).unwrap() == 0 {
            panic!("mmtrace ended before tracing: {said}");
        }
        said.push_str(&l);
    }
    std::thread::spawn(move || {
        let _ = err.read_to_string(&mut said);
        said
    })
}
