//! Builds the eBPF programs' [`Config`] for the running kernel: struct member
//! offsets from BTF, tracepoint field offsets from tracefs `format` files.
//! Each lookup that fails names the struct/field or tracepoint it needed.
use std::path::Path;

use mmtrace_common::Config;

use super::{
    btf::{Btf, BtfError},
    tracefs::{self, Format, TracefsError},
};

#[derive(Debug, thiserror::Error)]
pub enum OffsetsError {
    #[error("kernel BTF lacks what mmtrace needs ({0}); this kernel is not supported")]
    Btf(#[from] BtfError),
    #[error(transparent)]
    Tracefs(#[from] TracefsError),
    #[error("unexpected tracepoint layout: {0}")]
    Layout(String),
}

/// Optional features this kernel does or does not offer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct Features {
    /// `exceptions:page_fault_user` exists (x86): write and copy-on-write
    /// faults can be told apart.
    pub write_faults: bool,
    /// `mm_struct.mm_lock_seq` exists: the per-CPU vma cache is safe.
    pub vma_cache: bool,
    /// `sched_process_exit` has `group_dead` (6.16+).
    pub exit_group_dead: bool,
    /// Evictions inside syscalls are told apart (x86_64 syscall table).
    pub eviction_syscalls: bool,
    /// The owner memcg of an evicted page can be read (vmemmap, BTF).
    pub eviction_owner: bool,
    /// `oom:mark_victim` exists: OOM kills are reported with the victim's
    /// memory at the kill.
    pub oom_kills: bool,
    /// The kernel functions behind cgroup-file reclaim were found in
    /// /proc/kallsyms: proactive reclaim is told apart from limit reclaim.
    pub proactive_reclaim: bool,
    /// The write-path hooks' struct offsets were found in BTF: pages
    /// dirtied, flusher writeback and writeback waits are counted per file.
    pub write_path: bool,
    /// `syscalls:sys_enter_msync`/`sys_exit_msync` exist (CONFIG_FTRACE_SYSCALLS).
    pub msync: bool,
    /// `ext4:ext4_writepages_result` exists: pages written on ext4, by
    /// fsync and msync too.
    pub ext4_writeback: bool,
    /// `iomap:iomap_writeback_folio` exists: pages written on XFS and the
    /// other iomap filesystems.
    pub iomap_writeback: bool,
    /// `ext4:ext4_sync_file_enter/exit` exist and the syscall number can be
    /// read (x86_64): msync(MS_SYNC) on ext4 is counted without syscall
    /// tracepoints.
    pub ext4_msync: bool,
    /// What [`Features::choose_msync`] chose (`--msync-syscalls`), so the
    /// probes left out by that choice are not reported as missing.
    #[serde(skip)]
    #[schemars(skip)]
    pub msync_syscalls_chosen: Option<bool>,
}

impl Features {
    /// Where msync calls are counted: through the syscall tracepoints when
    /// `syscalls` (`--msync-syscalls`; an error if the kernel lacks them),
    /// else on ext4 only, without syscall hooks. Every trace (and the
    /// bench's) makes this choice here.
    pub fn choose_msync(&mut self, syscalls: bool) -> Result<(), &'static str> {
        self.msync_syscalls_chosen = Some(syscalls);
        if syscalls {
            if !self.msync {
                return Err(
                    "--msync-syscalls needs the syscalls:sys_enter_msync/sys_exit_msync tracepoints (CONFIG_FTRACE_SYSCALLS), missing here",
                );
            }
            self.ext4_msync = false;
        } else {
            self.msync = false;
        }
        Ok(())
    }

    /// `program` is left out by a choice, not missing: no warning.
    pub fn left_out_by_choice(&self, program: &str) -> bool {
        matches!(
            (program, self.msync_syscalls_chosen),
            ("msync_enter" | "msync_exit", Some(false))
                | ("ext4_sync_enter" | "ext4_sync_exit", Some(true))
        )
    }
}

/// Kernel functions that run memcg reclaim because a cgroup file was
/// written, not because an allocation needed memory (Linux 6.18):
/// memory.reclaim (`user_proactive_reclaim`, `memory_reclaim`), v1
/// memory.force_empty, and lowered limits (v1 `mem_cgroup_resize_max`, v2
/// `memory_max_write` / `memory_high_write`).
pub const PROACTIVE_FUNCTIONS: &[&str] = &[
    "user_proactive_reclaim",
    "memory_reclaim",
    "mem_cgroup_force_empty_write",
    "mem_cgroup_force_empty",
    "mem_cgroup_resize_max",
    "memory_max_write",
    "memory_high_write",
];

/// Address, type and name of a /proc/kallsyms line (`ADDR T name\t[module]`),
/// as bytes: this runs for ~120k lines at every start, where `str` lines
/// (UTF-8 checks, `read_line`, `from_str_radix`) cost as much as the
/// kernel's formatting of the file.
fn kallsyms_line(l: &[u8]) -> Option<(u64, u8, &[u8])> {
    let l = l.trim_ascii_start();
    let sp = l.iter().position(|&b| b == b' ')?;
    let (a, rest) = (&l[..sp], &l[sp + 1..]);
    let (&t, rest) = rest.split_first()?;
    let name = rest.strip_prefix(b" ")?;
    let end = name
        .iter()
        .position(|&b| matches!(b, b'\t' | b' ' | b'\n'))
        .unwrap_or(name.len());
    Some((hex(a)?, t, &name[..end]))
}

/// A non-empty hexadecimal number of at most 16 digits.
fn hex(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 16 {
        return None;
    }
    s.iter().try_fold(0u64, |n, &b| {
        let d = match b {
            b'0'..=b'9' => b - b'0',
            b'a'..=b'f' => b - b'a' + 10,
            b'A'..=b'F' => b - b'A' + 10,
            _ => return None,
        };
        Some(n << 4 | u64::from(d))
    })
}

/// `[start, end)` of each of `names` found in `kallsyms` (end: the next
/// symbol's address), in the order found; at most `max`. Addresses of 0
/// (kptr_restrict) give nothing.
pub fn text_ranges(kallsyms: &str, names: &[&str], max: usize) -> Vec<[u64; 2]> {
    let mut scan = Scan::default();
    scan.all_lines(kallsyms.as_bytes(), names);
    scan.ranges(max)
}

/// One pass over /proc/kallsyms, line by line.
#[derive(Default)]
struct Scan {
    addrs: Vec<u64>,
    starts: Vec<u64>,
    vmemmap_base: Option<u64>,
    /// The address of `_text`: where the kernel was loaded.
    text: Option<u64>,
}

impl Scan {
    /// Every complete line of `buf`; returns how many bytes they took.
    fn lines(&mut self, buf: &[u8], names: &[&str]) -> usize {
        let mut used = 0;
        for l in buf.split_inclusive(|&b| b == b'\n') {
            if l.last() != Some(&b'\n') {
                break;
            }
            self.line(l, names);
            used += l.len();
        }
        used
    }

    /// Every line of `text`, the last one also without a newline.
    fn all_lines(&mut self, text: &[u8], names: &[&str]) {
        text.split(|&b| b == b'\n')
            .for_each(|l| self.line(l, names));
    }

    fn line(&mut self, l: &[u8], names: &[&str]) {
        let Some((a, t, name)) = kallsyms_line(l) else {
            return;
        };
        self.addrs.push(a);
        if a != 0
            && matches!(t, b't' | b'T')
            && names.iter().any(|n| n.as_bytes() == name)
            && !self.starts.contains(&a)
        {
            self.starts.push(a);
        }
        if name == b"vmemmap_base" && self.vmemmap_base.is_none() {
            self.vmemmap_base = Some(a);
        }
        if name == b"_text" && self.text.is_none() {
            self.text = Some(a);
        }
    }

    /// Each start's end is the least address above it: one pass over the
    /// addresses per start (a handful), no sort of the ~120k.
    fn ranges(self, max: usize) -> Vec<[u64; 2]> {
        let addrs = self.addrs;
        self.starts
            .into_iter()
            .filter_map(|a| {
                let end = addrs.iter().copied().filter(|&x| x > a).min()?;
                Some([a, end])
            })
            .take(max)
            .collect()
    }
}

/// Eviction reason per x86_64 syscall number: what a task was doing when a
/// page of a file left the page cache in its context (outside reclaim).
pub fn x86_64_syscall_reasons() -> [u8; 512] {
    use mmtrace_common::reason as r;
    let mut t = [u8::MAX; 512];
    for (nr, why) in [
        (221, r::FADVISE),   // fadvise64
        (28, r::FADVISE),    // madvise (MADV_REMOVE and friends)
        (76, r::TRUNCATE),   // truncate
        (77, r::TRUNCATE),   // ftruncate
        (285, r::TRUNCATE),  // fallocate (punch hole)
        (2, r::TRUNCATE),    // open (O_TRUNC)
        (85, r::TRUNCATE),   // creat
        (257, r::TRUNCATE),  // openat (O_TRUNC)
        (437, r::TRUNCATE),  // openat2 (O_TRUNC)
        (87, r::UNLINK),     // unlink
        (263, r::UNLINK),    // unlinkat
        (82, r::UNLINK),     // rename (over an existing file)
        (264, r::UNLINK),    // renameat
        (316, r::UNLINK),    // renameat2
        (3, r::UNLINK),      // close (last reference to a removed file)
        (436, r::UNLINK),    // close_range
        (60, r::UNLINK),     // exit
        (231, r::UNLINK),    // exit_group
        (1, r::DROP_CACHES), // write (/proc/sys/vm/drop_caches)
    ] {
        t[nr] = why as u8;
    }
    t
}

/// Where x86_64 loads the kernel without KASLR (`__START_KERNEL`).
const X86_64_UNRANDOMIZED_TEXT: u64 = 0xffff_ffff_8100_0000;

/// Where the kernel's `struct page` array starts: the address of the
/// `vmemmap_base` variable (in /proc/kallsyms with `CONFIG_KALLSYMS_ALL`),
/// else the fixed x86_64 base (4-level paging; 5-level when the CPU has
/// `la57`) — but only when the kernel was not loaded at a random address:
/// with KASLR on, memory regions (vmemmap among them) are randomised too,
/// and a fixed base would read the wrong `struct page`. Then (0, 0): the
/// owner memcg of evicted pages is not read.
pub fn vmemmap(kallsyms: &str, cpuinfo: &str) -> (u64, u64) {
    let mut scan = Scan::default();
    scan.all_lines(kallsyms.as_bytes(), &[]);
    vmemmap_from(scan.vmemmap_base, scan.text, cpuinfo)
}

fn vmemmap_from(vmemmap_base: Option<u64>, text: Option<u64>, cpuinfo: &str) -> (u64, u64) {
    if let Some(addr) = vmemmap_base {
        return (addr, 0);
    }
    if !cfg!(target_arch = "x86_64") || text != Some(X86_64_UNRANDOMIZED_TEXT) {
        return (0, 0);
    }
    let la57 = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .is_some_and(|l| l.split_whitespace().any(|f| f == "la57"));
    (
        0,
        if la57 {
            0xffd4_0000_0000_0000
        } else {
            0xffff_ea00_0000_0000
        },
    )
}

/// What mmtrace needs from /proc/kallsyms.
#[derive(Clone, Debug, Default)]
struct Symbols {
    /// See [`vmemmap`].
    vmemmap: (u64, u64),
    /// See [`text_ranges`] (of [`PROACTIVE_FUNCTIONS`]).
    ranges: Vec<[u64; 2]>,
}

/// Where [`Symbols`] are kept for the next traces of this boot: the
/// kernel's own symbols never move until it reboots, and formatting
/// /proc/kallsyms is the longest part of a start (55-60 ms of kernel CPU on
/// the 2-vCPU VM, what the offsets wait for). Root's only (kernel addresses:
/// mode 0600 in a 0700 directory), in a tmpfs that a reboot empties, and
/// tagged with the boot id and the functions asked for.
const CACHE_DIR: &str = "/run/mmtrace";
const CACHE: &str = "/run/mmtrace/kallsyms";
// 2: the fixed vmemmap base only when the kernel text is not randomised.
const CACHE_MAGIC: &str = "mmtrace kallsyms 2";

impl Symbols {
    /// From the cache when it is this boot's, else from /proc/kallsyms
    /// (then cached, if its addresses were visible).
    fn read() -> Self {
        Self::cached().unwrap_or_else(Self::read_and_cache)
    }

    /// This boot's cached symbols, if there are.
    fn cached() -> Option<Self> {
        let boot_id = boot_id()?;
        Self::from_cache(&read_cache()?, &boot_id)
    }

    /// Scans /proc/kallsyms and caches what it found.
    fn read_and_cache() -> Self {
        let s = Self::scan();
        if let Some(boot_id) = boot_id()
            && (!s.ranges.is_empty() || s.vmemmap.0 != 0)
        {
            write_cache(&s.to_cache(&boot_id));
        }
        s
    }

    fn to_cache(&self, boot_id: &str) -> String {
        let mut t = format!(
            "{CACHE_MAGIC}\n{boot_id}\n{} {}\n{:x} {:x}\n",
            PROACTIVE_FUNCTIONS.join(","),
            mmtrace_common::PROACTIVE_RANGES,
            self.vmemmap.0,
            self.vmemmap.1
        );
        for [lo, hi] in &self.ranges {
            t += &format!("{lo:x} {hi:x}\n");
        }
        t
    }

    /// The cached symbols, if `text` is a cache of this boot for the same
    /// functions.
    fn from_cache(text: &str, boot_id: &str) -> Option<Self> {
        let mut lines = text.lines();
        let asked = format!(
            "{} {}",
            PROACTIVE_FUNCTIONS.join(","),
            mmtrace_common::PROACTIVE_RANGES
        );
        if lines.next()? != CACHE_MAGIC || lines.next()? != boot_id || lines.next()? != asked {
            return None;
        }
        let pair = |l: &str| -> Option<(u64, u64)> {
            let (a, b) = l.split_once(' ')?;
            Some((hex(a.as_bytes())?, hex(b.as_bytes())?))
        };
        let vmemmap = pair(lines.next()?)?;
        let ranges = lines
            .map(|l| pair(l).map(|(lo, hi)| [lo, hi]))
            .collect::<Option<Vec<_>>>()?;
        (ranges.len() <= mmtrace_common::PROACTIVE_RANGES).then_some(Self { vmemmap, ranges })
    }

    /// A chunk at a time: the whole file (5.4 MB here) is never in memory.
    fn scan() -> Self {
        use std::io::Read as _;
        let t0 = std::time::Instant::now();
        let mut scan = Scan::default();
        if let Ok(mut f) = std::fs::File::open("/proc/kallsyms") {
            let mut buf = vec![0u8; 256 << 10];
            let mut have = 0;
            loop {
                match f.read(&mut buf[have..]) {
                    Ok(0) => {
                        scan.all_lines(&buf[..have], PROACTIVE_FUNCTIONS);
                        break;
                    }
                    Ok(n) => have += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(_) => break,
                }
                let used = scan.lines(&buf[..have], PROACTIVE_FUNCTIONS);
                buf.copy_within(used..have, 0);
                have -= used;
                if have == buf.len() {
                    break; // a line longer than the buffer: not kallsyms
                }
            }
        }
        log::debug!(
            "/proc/kallsyms read in {:.1} ms ({:.1} ms of CPU)",
            t0.elapsed().as_secs_f64() * 1e3,
            crate::timing::thread_cpu_ms()
        );
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Self {
            vmemmap: vmemmap_from(scan.vmemmap_base, scan.text, &cpuinfo),
            ranges: scan.ranges(mmtrace_common::PROACTIVE_RANGES),
        }
    }
}

fn boot_id() -> Option<String> {
    let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let id = id.trim();
    (!id.is_empty()).then(|| id.to_owned())
}

/// The cache's text, if it is root's own and only root can read it.
fn read_cache() -> Option<String> {
    use std::os::unix::fs::{MetadataExt as _, OpenOptionsExt as _};
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(CACHE)
        .ok()?;
    let m = f.metadata().ok()?;
    if m.uid() != 0 || m.mode() & 0o077 != 0 || !m.is_file() || m.len() > 4096 {
        return None;
    }
    let mut text = String::new();
    std::io::Read::read_to_string(&mut f, &mut text).ok()?;
    Some(text)
}

/// Writes the cache (a new file renamed over the old: concurrent traces
/// never read half of one). Failures only cost the next start the scan.
fn write_cache(text: &str) {
    use std::os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _};
    // SAFETY: plain syscall.
    if unsafe { libc::geteuid() } != 0 {
        return;
    }
    let _ = std::fs::DirBuilder::new().mode(0o700).create(CACHE_DIR);
    let dir_ok = std::fs::symlink_metadata(CACHE_DIR)
        .is_ok_and(|m| m.is_dir() && m.uid() == 0 && m.mode() & 0o077 == 0);
    if !dir_ok {
        return;
    }
    let tmp = format!("{CACHE}.{}", std::process::id());
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&tmp)
        .and_then(|mut f| std::io::Write::write_all(&mut f, text.as_bytes()));
    if written.is_err() || std::fs::rename(&tmp, CACHE).is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
}

/// The symbols found by [`prefetch_symbols`]: cached, or being read.
enum Prefetched {
    Cached(Symbols),
    Reading(std::thread::JoinHandle<Symbols>),
}

static PREFETCH: std::sync::Mutex<Option<Prefetched>> = std::sync::Mutex::new(None);

/// Takes the symbols from this boot's cache, or starts reading
/// /proc/kallsyms on a thread of its own: the kernel takes 50-120 ms to
/// format its ~120k lines (measured on a 2-vCPU VM), time that [`compute`]
/// would otherwise wait for, while the BTF is parsed meanwhile. Without
/// it, [`compute`] reads them itself. Returns whether they were cached
/// (nothing is being read).
pub fn prefetch_symbols() -> bool {
    let Ok(mut p) = PREFETCH.lock() else {
        return false;
    };
    if p.is_none() {
        *p = match Symbols::cached() {
            Some(s) => Some(Prefetched::Cached(s)),
            None => std::thread::Builder::new()
                .name("kallsyms".into())
                .spawn(Symbols::read_and_cache)
                .ok()
                .map(Prefetched::Reading),
        };
    }
    matches!(*p, Some(Prefetched::Cached(_)))
}

fn symbols() -> Symbols {
    let started = PREFETCH.lock().ok().and_then(|mut p| p.take());
    match started {
        Some(Prefetched::Cached(s)) => s,
        Some(Prefetched::Reading(h)) => h.join().unwrap_or_default(),
        None => Symbols::read(),
    }
}

fn off(f: &Format, name: &str, sizes: &[u32]) -> Result<u32, TracefsError> {
    Ok(f.field_sized(name, sizes)?.offset)
}

/// Computes the configuration for this kernel.
pub fn compute(
    btf: &Btf,
    tracefs_root: &Path,
    self_tgid: u32,
) -> Result<(Config, Features), OffsetsError> {
    let mut c = Config {
        self_tgid,
        // Possible CPUs, the range of bpf_map_lookup_percpu_elem.
        nr_cpus: aya::util::nr_cpus().map(|n| n as u32).unwrap_or(1),
        ..Config::default()
    };
    let mut feat = Features::default();

    c.task_mm = btf.member_offset("task_struct", "mm")?;
    c.task_min_flt = btf.member_offset("task_struct", "min_flt")?;
    c.task_maj_flt = btf.member_offset("task_struct", "maj_flt")?;
    c.task_pid = btf.member_offset("task_struct", "pid")?;
    c.task_tgid = btf.member_offset("task_struct", "tgid")?;
    c.task_pagefault_disabled = btf
        .member_offset("task_struct", "pagefault_disabled")
        .unwrap_or(Config::ABSENT);
    c.vma_vm_start = btf.member_offset("vm_area_struct", "vm_start")?;
    c.vma_vm_end = btf.member_offset("vm_area_struct", "vm_end")?;
    c.vma_vm_flags = btf.member_offset("vm_area_struct", "vm_flags")?;
    c.vma_vm_pgoff = btf.member_offset("vm_area_struct", "vm_pgoff")?;
    c.vma_vm_file = btf.member_offset("vm_area_struct", "vm_file")?;
    c.file_f_inode = btf.member_offset("file", "f_inode")?;
    c.file_f_mapping = btf.member_offset("file", "f_mapping")?;
    c.inode_i_ino = btf.member_offset("inode", "i_ino")?;
    c.inode_i_sb = btf.member_offset("inode", "i_sb")?;
    c.sb_s_dev = btf.member_offset("super_block", "s_dev")?;
    // seqcount_t { unsigned sequence; }: present with CONFIG_PER_VMA_LOCK.
    match btf.member_offset("mm_struct", "mm_lock_seq") {
        Ok(o) if btf.member_size("mm_struct", "mm_lock_seq").unwrap_or(0) >= 4 => {
            c.mm_lock_seq = o;
            c.vma_cache = 1;
            feat.vma_cache = true;
        }
        _ => c.mm_lock_seq = Config::ABSENT,
    }

    let add = tracefs::read_format(tracefs_root, "filemap", "mm_filemap_add_to_page_cache")?;
    let del = tracefs::read_format(tracefs_root, "filemap", "mm_filemap_delete_from_page_cache")?;
    c.tp_cache_ino = off(&add, "i_ino", &[8])?;
    c.tp_cache_index = off(&add, "index", &[8])?;
    c.tp_cache_dev = off(&add, "s_dev", &[4])?;
    c.tp_cache_order = off(&add, "order", &[1])?;
    // The delete program reads with the same offsets: insist they agree.
    for (name, o) in [
        ("i_ino", c.tp_cache_ino),
        ("index", c.tp_cache_index),
        ("s_dev", c.tp_cache_dev),
        ("order", c.tp_cache_order),
    ] {
        if del.field(name)?.offset != o {
            return Err(OffsetsError::Layout(format!(
                "mm_filemap_delete_from_page_cache.{name} differs from mm_filemap_add_to_page_cache"
            )));
        }
    }
    let fault = tracefs::read_format(tracefs_root, "filemap", "mm_filemap_fault")?;
    c.tp_fault_ino = off(&fault, "i_ino", &[8])?;
    c.tp_fault_dev = off(&fault, "s_dev", &[4])?;
    let map = tracefs::read_format(tracefs_root, "filemap", "mm_filemap_map_pages")?;
    c.tp_map_ino = off(&map, "i_ino", &[8])?;
    c.tp_map_dev = off(&map, "s_dev", &[4])?;
    c.tp_map_index = off(&map, "index", &[8])?;
    c.tp_map_last_index = off(&map, "last_index", &[8])?;
    let newtask = tracefs::read_format(tracefs_root, "task", "task_newtask")?;
    c.tp_newtask_pid = off(&newtask, "pid", &[4])?;
    c.tp_newtask_clone_flags = off(&newtask, "clone_flags", &[8])?;
    let exit = tracefs::read_format(tracefs_root, "sched", "sched_process_exit")?;
    match exit.field_sized("group_dead", &[1]) {
        Ok(f) => {
            c.tp_exit_group_dead = f.offset;
            feat.exit_group_dead = true;
        }
        Err(_) => c.tp_exit_group_dead = Config::ABSENT,
    }
    // Raw tracepoints: the arguments are TP_PROTO's, no offsets needed.
    // (MMTRACE_SKIP_PROBES, the loader's cost-measurement knob, can leave
    // them detached: then the perf events count.)
    let skipped = std::env::var("MMTRACE_SKIP_PROBES")
        .is_ok_and(|v| v.split(',').any(|x| x.starts_with("page_fault_")));
    if tracefs_root
        .join("events/exceptions/page_fault_user")
        .is_dir()
        && !skipped
    {
        c.write_faults = 1;
        feat.write_faults = true;
    }
    // --- Eviction reasons and owners.
    c.task_flags = btf.member_offset("task_struct", "flags")?;
    c.tp_cache_pfn = off(&add, "pfn", &[8])?;
    c.syscall_reason = [u8::MAX; 512];
    c.regs_syscall_nr = Config::ABSENT;
    if cfg!(target_arch = "x86_64")
        && let Ok(o) = btf.member_offset("pt_regs", "orig_ax")
    {
        c.regs_syscall_nr = o;
        c.syscall_reason = x86_64_syscall_reasons();
        feat.eviction_syscalls = true;
    }
    let memcg_end = tracefs::read_format(tracefs_root, "vmscan", "mm_vmscan_memcg_reclaim_end")?;
    c.tp_reclaim_nr = off(&memcg_end, "nr_reclaimed", &[8])?;
    let direct_end = tracefs::read_format(tracefs_root, "vmscan", "mm_vmscan_direct_reclaim_end")?;
    if off(&direct_end, "nr_reclaimed", &[8])? != c.tp_reclaim_nr {
        return Err(OffsetsError::Layout(
            "mm_vmscan_direct_reclaim_end.nr_reclaimed differs from mm_vmscan_memcg_reclaim_end"
                .into(),
        ));
    }
    let attach = tracefs::read_format(tracefs_root, "cgroup", "cgroup_attach_task")?;
    c.tp_attach_root = off(&attach, "dst_root", &[4])?;
    c.tp_attach_id = off(&attach, "dst_id", &[8])?;
    c.tp_attach_pid = off(&attach, "pid", &[4])?;
    let owner = (|| -> Result<(), BtfError> {
        c.page_size_of = btf.struct_size("page")?;
        c.page_memcg_data = btf.member_offset("page", "memcg_data")?;
        c.memcg_css_cgroup = btf.member_offset("mem_cgroup", "css")?
            + btf.member_offset("cgroup_subsys_state", "cgroup")?;
        c.cgroup_kn = btf.member_offset("cgroup", "kn")?;
        c.kn_id = btf.member_offset("kernfs_node", "id")?;
        c.cgroup_root = btf.member_offset("cgroup", "root")?;
        c.root_hierarchy_id = btf.member_offset("cgroup_root", "hierarchy_id")?;
        Ok(())
    })();
    // The memcg an exiting task dies in (needs the cgroup/kernfs offsets).
    if owner.is_ok() {
        let memcg = (|| -> Result<(u32, u32, u32), BtfError> {
            let id = btf.enum_value("cgroup_subsys_id", "memory_cgrp_id")?;
            Ok((
                btf.member_offset("task_struct", "cgroups")?,
                btf.member_offset("css_set", "subsys")? + 8 * id as u32,
                btf.member_offset("cgroup_subsys_state", "cgroup")?,
            ))
        })();
        if let Ok((task, cset, css)) = memcg {
            (c.task_cgroups, c.css_set_memcg, c.css_cgroup) = (task, cset, css);
        }
    }
    let Symbols {
        vmemmap: (addr, base),
        ranges,
    } = symbols();
    feat.proactive_reclaim = !ranges.is_empty();
    for (slot, r) in c.proactive_text.iter_mut().zip(ranges) {
        *slot = r;
    }
    oom_offsets(&mut c, &mut feat, tracefs_root);
    write_path_offsets(btf, &mut c, &mut feat, tracefs_root);
    (c.vmemmap_base_addr, c.vmemmap_base) = (addr, base);
    feat.eviction_owner = owner.is_ok() && (addr != 0 || base != 0);
    if !feat.eviction_owner {
        (c.vmemmap_base_addr, c.vmemmap_base) = (0, 0);
    }
    Ok((c, feat))
}

/// The write path's offsets: BTF for the raw tracepoints' structs, tracefs
/// for msync and the filesystems' writeback events. Whatever is missing
/// leaves its probe detached (and says so), never the trace.
fn write_path_offsets(btf: &Btf, c: &mut Config, feat: &mut Features, tracefs_root: &Path) {
    let structs = (|| -> Result<(), BtfError> {
        c.mapping_host = btf.member_offset("address_space", "host")?;
        c.folio_flags = btf.member_offset("folio", "flags")?;
        c.wbc_nr_to_write = btf.member_offset("writeback_control", "nr_to_write")?;
        Ok(())
    })();
    feat.write_path = structs.is_ok();
    // Large folios: `_nr_pages` (64-bit, 6.x) and the PG_head flag bit.
    c.folio_nr_pages = match (
        btf.member_offset("folio", "_nr_pages"),
        btf.member_size("folio", "_nr_pages"),
        btf.enum_value("pageflags", "PG_head"),
    ) {
        (Ok(o), Ok(4), Ok(bit)) if (0..64).contains(&bit) => {
            c.pg_head = bit as u32;
            o
        }
        _ => Config::ABSENT,
    };
    let msync = (|| -> Result<(), TracefsError> {
        let enter = tracefs::read_format(tracefs_root, "syscalls", "sys_enter_msync")?;
        let exit = tracefs::read_format(tracefs_root, "syscalls", "sys_exit_msync")?;
        c.tp_msync_start = off(&enter, "start", &[8])?;
        c.tp_msync_flags = off(&enter, "flags", &[8])?;
        c.tp_msync_ret = off(&exit, "ret", &[8])?;
        Ok(())
    })();
    feat.msync = msync.is_ok();
    let ext4 = (|| -> Result<(), TracefsError> {
        let f = tracefs::read_format(tracefs_root, "ext4", "ext4_writepages_result")?;
        c.tp_ext4_wp_dev = off(&f, "dev", &[4])?;
        c.tp_ext4_wp_ino = off(&f, "ino", &[8])?;
        c.tp_ext4_wp_pages = off(&f, "pages_written", &[4])?;
        Ok(())
    })();
    feat.ext4_writeback = ext4.is_ok();
    let iomap = (|| -> Result<(), TracefsError> {
        let f = tracefs::read_format(tracefs_root, "iomap", "iomap_writeback_folio")?;
        c.tp_iomap_wb_dev = off(&f, "dev", &[4])?;
        c.tp_iomap_wb_ino = off(&f, "ino", &[8])?;
        c.tp_iomap_wb_length = off(&f, "length", &[8])?;
        Ok(())
    })();
    feat.iomap_writeback = iomap.is_ok();
    c.msync_nr = Config::ABSENT;
    let sync = (|| -> Result<(), TracefsError> {
        let f = tracefs::read_format(tracefs_root, "ext4", "ext4_sync_file_enter")?;
        tracefs::read_format(tracefs_root, "ext4", "ext4_sync_file_exit")?;
        c.tp_ext4_sync_dev = off(&f, "dev", &[4])?;
        c.tp_ext4_sync_ino = off(&f, "ino", &[8])?;
        Ok(())
    })();
    if sync.is_ok() && cfg!(target_arch = "x86_64") && c.regs_syscall_nr != Config::ABSENT {
        c.msync_nr = 26; // __NR_msync, arch/x86/entry/syscalls/syscall_64.tbl
        feat.ext4_msync = true;
    }
}

/// `oom:mark_victim` field offsets; without the tracepoint (or with another
/// layout) OOM kills are seen only through the cgroup's counters.
fn oom_offsets(c: &mut Config, feat: &mut Features, tracefs_root: &Path) {
    c.tp_oom_pid = Config::ABSENT;
    let Ok(f) = tracefs::read_format(tracefs_root, "oom", "mark_victim") else {
        return;
    };
    let all = (|| -> Result<(), TracefsError> {
        c.tp_oom_pid = off(&f, "pid", &[4])?;
        c.tp_oom_comm = off(&f, "comm", &[4])?;
        c.tp_oom_total_vm = off(&f, "total_vm", &[8])?;
        c.tp_oom_anon = off(&f, "anon_rss", &[8])?;
        c.tp_oom_file = off(&f, "file_rss", &[8])?;
        c.tp_oom_shmem = off(&f, "shmem_rss", &[8])?;
        c.tp_oom_score_adj = off(&f, "oom_score_adj", &[2])?;
        Ok(())
    })();
    feat.oom_kills = all.is_ok() && f.field("comm").is_ok_and(|x| x.is_data_loc());
    if !feat.oom_kills {
        c.tp_oom_pid = Config::ABSENT;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_msync_choice_leaves_one_pair_of_probes_out_quietly() {
        let all = Features {
            msync: true,
            ext4_msync: true,
            ..Features::default()
        };
        let mut f = all;
        f.choose_msync(false).unwrap();
        assert!(!f.msync && f.ext4_msync);
        assert!(f.left_out_by_choice("msync_enter") && !f.left_out_by_choice("ext4_sync_exit"));
        let mut f = all;
        f.choose_msync(true).unwrap();
        assert!(f.msync && !f.ext4_msync);
        assert!(f.left_out_by_choice("ext4_sync_enter") && !f.left_out_by_choice("msync_exit"));
        let mut f = Features::default();
        assert!(f.choose_msync(true).is_err(), "no syscall tracepoints here");
        assert!(!Features::default().left_out_by_choice("msync_enter"));
    }

    #[test]
    fn text_ranges_end_at_the_next_symbol() {
        let k = "ffffffff81000000 T _stext
                 ffffffff816a8480 t memory_reclaim
                 ffffffff816a8400 t before
                 ffffffff816a8600 t after
                 ffffffff816a6160 t mem_cgroup_resize_max
                 ffffffff816a6300 t mem_cgroup_write
                 ffffffff82000000 D memory_high_write
";
        let r = text_ranges(k, PROACTIVE_FUNCTIONS, 8);
        assert_eq!(
            r,
            [
                [0xffff_ffff_816a_8480, 0xffff_ffff_816a_8600],
                [0xffff_ffff_816a_6160, 0xffff_ffff_816a_6300]
            ],
            "data symbols are not functions"
        );
        assert!(
            text_ranges(
                "0000000000000000 t memory_reclaim\n0000000000000000 t after\n",
                &["memory_reclaim"],
                8
            )
            .is_empty(),
            "hidden addresses (kptr_restrict) give no range"
        );
        assert_eq!(text_ranges(k, PROACTIVE_FUNCTIONS, 1).len(), 1);
    }

    #[test]
    fn kallsyms_lines_with_modules_and_newlines() {
        assert_eq!(
            kallsyms_line(b"ffffffff816a8480 t memory_reclaim\n"),
            Some((0xffff_ffff_816a_8480, b't', &b"memory_reclaim"[..]))
        );
        assert_eq!(
            kallsyms_line(b"ffffffffc0a01000 t nft_init\t[nf_tables]\n"),
            Some((0xffff_ffff_c0a0_1000, b't', &b"nft_init"[..]))
        );
        assert_eq!(
            kallsyms_line(b"ffffffff816a8480 t last_line_without_newline"),
            Some((
                0xffff_ffff_816a_8480,
                b't',
                &b"last_line_without_newline"[..]
            ))
        );
        assert_eq!(kallsyms_line(b"garbage\n"), None);
        assert_eq!(kallsyms_line(b"ffffffffx16a8480 t bad_hex\n"), None);
        assert_eq!(kallsyms_line(b"1ffffffff816a8480 t too_long\n"), None);
    }

    #[test]
    fn the_symbols_cache_is_this_boots_for_these_functions() {
        let s = Symbols {
            vmemmap: (0xffff_ffff_82e1_c0a8, 0),
            ranges: vec![[0xffff_ffff_816a_8480, 0xffff_ffff_816a_8600]],
        };
        let t = s.to_cache("boot-a");
        let back = Symbols::from_cache(&t, "boot-a").unwrap();
        assert_eq!((back.vmemmap, back.ranges), (s.vmemmap, s.ranges.clone()));
        assert!(Symbols::from_cache(&t, "boot-b").is_none(), "another boot");
        let other = t.replacen("memory_reclaim", "memory_reclaim_v2", 1);
        assert!(
            Symbols::from_cache(&other, "boot-a").is_none(),
            "other functions"
        );
        assert!(Symbols::from_cache(&t.replace("816a8600", "zz"), "boot-a").is_none());
        assert!(Symbols::from_cache("", "boot-a").is_none());
        let none = Symbols {
            vmemmap: (0, 0xffff_ea00_0000_0000),
            ranges: Vec::new(),
        };
        let back = Symbols::from_cache(&none.to_cache("b"), "b").unwrap();
        assert_eq!((back.vmemmap, back.ranges), (none.vmemmap, Vec::new()));
    }

    #[test]
    fn vmemmap_from_kallsyms_or_the_fixed_base() {
        let k = "ffffffff81000000 T _stext\nffffffff82e1c0a8 D vmemmap_base\n";
        assert_eq!(vmemmap(k, ""), (0xffff_ffff_82e1_c0a8, 0));
        let fixed = "ffffffff81000000 T _text\n";
        if cfg!(target_arch = "x86_64") {
            assert_eq!(
                vmemmap(fixed, "flags : fpu vme\n"),
                (0, 0xffff_ea00_0000_0000)
            );
            assert_eq!(
                vmemmap(fixed, "flags : fpu la57\n"),
                (0, 0xffd4_0000_0000_0000)
            );
        }
        // KASLR on (text moved), no vmemmap_base symbol: unknown, not a
        // guess; and no _text at all: unknown too.
        let moved = "ffffffff9a200000 T _text\n";
        assert_eq!(vmemmap(moved, "flags : fpu vme\n"), (0, 0));
        assert_eq!(vmemmap("", "flags : fpu vme\n"), (0, 0));
    }

    #[test]
    fn syscall_table_names_the_eviction_syscalls() {
        use mmtrace_common::reason as r;
        let t = x86_64_syscall_reasons();
        assert_eq!(t[221] as usize, r::FADVISE);
        assert_eq!(t[77] as usize, r::TRUNCATE);
        assert_eq!(t[263] as usize, r::UNLINK);
        assert_eq!(t[1] as usize, r::DROP_CACHES);
        assert_eq!(t[0], u8::MAX, "read evicts nothing");
    }
}
