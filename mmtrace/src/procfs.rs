//! Readers and parsers for the `/proc` files mmtrace joins kernel events
//! with: `maps`, `stat`, `status`, `comm`, `fd/`, `task/` and `children`.
//!
//! Parsers take text so they can be unit-tested; readers take the procfs
//! root (normally `/proc`) so tests can point them at fixture directories.

use std::fs;
use std::io;
use std::os::unix::{ffi::OsStrExt as _, fs::MetadataExt as _};
use std::path::{Path, PathBuf};

use crate::devnum::Dev;

/// Errors from reading or parsing procfs.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("process {pid} does not exist (it may have exited)")]
    NotFound { pid: u32 },
    #[error("thread {tid} of process {pid} does not exist (it may have exited)")]
    ThreadNotFound { pid: u32, tid: u32 },
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("cannot parse {what}: {line:?}")]
    Parse { what: String, line: String },
}

impl ProcError {
    fn parse(what: impl Into<String>, line: &str) -> ProcError {
        ProcError::Parse {
            what: what.into(),
            line: line.to_owned(),
        }
    }

    /// Prefixes a parse error's `what` with the file it came from.
    fn in_file(self, path: &Path) -> ProcError {
        match self {
            ProcError::Parse { what, line } => ProcError::Parse {
                what: format!("{what} in {}", path.display()),
                line,
            },
            other => other,
        }
    }
}

fn is_gone(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH)
}

/// Reads a file belonging to `pid`, mapping "no such file/process" to
/// [`ProcError::NotFound`]. procfs text is not always UTF-8 (paths, comm), so
/// invalid bytes are replaced.
fn read_pid_file(path: &Path, pid: u32) -> Result<String, ProcError> {
    match fs::read(path) {
        Ok(bytes) => Ok(String::from_utf8_lossy(&bytes).into_owned()),
        Err(e) if is_gone(&e) => Err(ProcError::NotFound { pid }),
        Err(source) => Err(ProcError::Io {
            path: path.to_owned(),
            source,
        }),
    }
}

fn pid_dir(root: &Path, pid: u32) -> PathBuf {
    root.join(pid.to_string())
}

// ---------------------------------------------------------------------------
// maps

/// One line of `/proc/<pid>/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapEntry {
    pub start: u64,
    pub end: u64,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    pub shared: bool,
    pub offset: u64,
    pub dev: Dev,
    pub ino: u64,
    /// The pathname column minus a trailing `" (deleted)"`, with the
    /// kernel's `\012` decoded to a newline ([`unescape_maps_path`]), e.g.
    /// `/usr/lib/libc.so.6`, `[heap]`, `[anon:foo]`; `None` when empty.
    /// Invalid UTF-8 is replaced here; `path_raw` keeps the exact bytes.
    pub path: Option<String>,
    /// The name's exact bytes, only when they are not UTF-8.
    pub path_raw: Option<Vec<u8>>,
    pub deleted: bool,
}

impl MapEntry {
    /// The permission column as the kernel prints it, e.g. `r-xp`.
    pub fn perms(&self) -> String {
        let mut s = String::with_capacity(4);
        s.push(if self.read { 'r' } else { '-' });
        s.push(if self.write { 'w' } else { '-' });
        s.push(if self.exec { 'x' } else { '-' });
        s.push(if self.shared { 's' } else { 'p' });
        s
    }

    /// Whether the mapping is backed by a file (not anonymous or a special
    /// `[...]` region). Pseudo-files count: `/memfd:x`, `/dev/zero`,
    /// `/SYSV…`, `anon_inode:…` have an inode the kernel's events name.
    pub fn is_file(&self) -> bool {
        self.ino != 0
            && self
                .path
                .as_deref()
                .is_some_and(|p| p.starts_with('/') || p.starts_with("anon_inode:"))
    }

    /// Length of the mapping in bytes.
    pub fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether `addr` falls inside the mapping.
    pub fn contains(&self, addr: u64) -> bool {
        self.start <= addr && addr < self.end
    }
}

const DELETED_SUFFIX: &str = " (deleted)";

/// Splits off the next whitespace-separated field, returning it and the rest
/// (still starting with the separating whitespace).
fn next_field(s: &str) -> Option<(&str, &str)> {
    let s = s.trim_start_matches([' ', '\t']);
    if s.is_empty() {
        return None;
    }
    let end = s.find([' ', '\t']).unwrap_or(s.len());
    Some((&s[..end], &s[end..]))
}

fn parse_map_line(bytes: &[u8]) -> Result<MapEntry, ProcError> {
    let text = String::from_utf8_lossy(bytes);
    let line: &str = &text;
    let missing = |what: &str| ProcError::parse(format!("maps line: missing {what}"), line);
    let (range, rest) = next_field(line).ok_or_else(|| missing("address range"))?;
    let (perms, rest) = next_field(rest).ok_or_else(|| missing("permissions"))?;
    let (offset, rest) = next_field(rest).ok_or_else(|| missing("offset"))?;
    let (dev, rest) = next_field(rest).ok_or_else(|| missing("device"))?;
    let (ino, rest) = next_field(rest).ok_or_else(|| missing("inode"))?;

    let bad = |what: &str| ProcError::parse(format!("maps line: bad {what}"), line);
    let (start, end) = range.split_once('-').ok_or_else(|| bad("address range"))?;
    let start = u64::from_str_radix(start, 16).map_err(|_| bad("start address"))?;
    let end = u64::from_str_radix(end, 16).map_err(|_| bad("end address"))?;
    if end < start {
        return Err(bad("address range (end before start)"));
    }
    let p = perms.as_bytes();
    if p.len() != 4
        || !matches!(p[0], b'r' | b'-')
        || !matches!(p[1], b'w' | b'-')
        || !matches!(p[2], b'x' | b'-')
        || !matches!(p[3], b's' | b'p')
    {
        return Err(bad("permissions"));
    }
    let offset = u64::from_str_radix(offset, 16).map_err(|_| bad("offset"))?;
    let dev = Dev::parse_maps(dev).ok_or_else(|| bad("device"))?;
    let ino: u64 = ino.parse().map_err(|_| bad("inode"))?;

    // The pathname follows padding spaces; it may itself contain spaces
    // (and, unlike the fields before it, any byte but a newline).
    let path_start = bytes.len() - rest.trim_start_matches([' ', '\t']).len();
    let mut path = bytes.get(path_start..).unwrap_or_default();
    if text.len() != bytes.len() {
        // Invalid UTF-8 was replaced: find the column in the bytes.
        path = path_column(bytes);
    }
    let mut deleted = false;
    if let Some(p) = path.strip_suffix(DELETED_SUFFIX.as_bytes()) {
        path = p;
        deleted = true;
    }
    let (path, path_raw) = name_from_bytes(&unescape_maps_bytes(path));
    Ok(MapEntry {
        start,
        end,
        read: p[0] == b'r',
        write: p[1] == b'w',
        exec: p[2] == b'x',
        shared: p[3] == b's',
        offset,
        dev,
        ino,
        path: (!path.is_empty()).then_some(path),
        path_raw,
        deleted,
    })
}

/// The pathname column of a maps line: what follows the five fields and
/// the padding.
fn path_column(line: &[u8]) -> &[u8] {
    let mut rest = line;
    for _ in 0..5 {
        let start = rest.iter().position(|b| !b.is_ascii_whitespace());
        rest = &rest[start.unwrap_or(rest.len())..];
        let end = rest.iter().position(|b| b.is_ascii_whitespace());
        rest = &rest[end.unwrap_or(rest.len())..];
    }
    let start = rest.iter().position(|b| *b != b' ' && *b != b'\t');
    &rest[start.unwrap_or(rest.len())..]
}

/// A name as text (invalid UTF-8 replaced) and, only when it is not UTF-8,
/// its exact bytes.
pub fn name_from_bytes(b: &[u8]) -> (String, Option<Vec<u8>>) {
    match std::str::from_utf8(b) {
        Ok(s) => (s.to_owned(), None),
        Err(_) => (String::from_utf8_lossy(b).into_owned(), Some(b.to_vec())),
    }
}

/// [`unescape_maps_path`] on bytes.
fn unescape_maps_bytes(p: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(p.len());
    let mut i = 0;
    while i < p.len() {
        if p[i..].starts_with(b"\\012") {
            out.push(b'\n');
            i += 4;
        } else {
            out.push(p[i]);
            i += 1;
        }
    }
    out
}

/// Parses the text of `/proc/<pid>/maps`.
pub fn parse_maps(text: &str) -> Result<Vec<MapEntry>, ProcError> {
    parse_maps_bytes(text.as_bytes())
}

/// Parses `/proc/<pid>/maps` as read (names need not be UTF-8).
pub fn parse_maps_bytes(bytes: &[u8]) -> Result<Vec<MapEntry>, ProcError> {
    bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(parse_map_line)
        .collect()
}

/// A `/proc/<pid>/maps` path as the file is really named. The kernel writes
/// a newline in a mapped file's name as the four characters `\012` and
/// escapes nothing else (fs/proc/task_mmu.c, Linux 6.x: the path is printed
/// with `seq_path(m, ..., "\n")`, whose `mangle_path` writes each character
/// of the set `"\n"` as `\ooo`), so only that sequence is decoded. A name that
/// really contains the characters `\012` reads the same in `maps` and is
/// decoded as a newline: the kernel's text cannot tell them apart.
///
/// Applied by [`parse_maps`] to [`MapEntry::path`].
pub fn unescape_maps_path(p: &str) -> String {
    p.replace("\\012", "\n")
}

/// Reads and parses `root/<pid>/maps`.
pub fn read_maps(root: &Path, pid: u32) -> Result<Vec<MapEntry>, ProcError> {
    let path = pid_dir(root, pid).join("maps");
    let bytes = match fs::read(&path) {
        Ok(b) => b,
        Err(e) if is_gone(&e) => return Err(ProcError::NotFound { pid }),
        Err(source) => return Err(ProcError::Io { path, source }),
    };
    parse_maps_bytes(&bytes).map_err(|e| e.in_file(&path))
}

// ---------------------------------------------------------------------------
// stat

/// The fields of `/proc/<pid>/stat` mmtrace uses (see proc_pid_stat(5)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProcStat {
    pub pid: u32,
    pub comm: String,
    pub state: char,
    pub ppid: u32,
    pub minflt: u64,
    pub majflt: u64,
    pub num_threads: u64,
    /// Start time after boot, in clock ticks.
    pub starttime: u64,
}

/// Parses `/proc/<pid>/stat` (or `task/<tid>/stat`). The comm field may
/// contain spaces and parentheses, so it ends at the last `)`.
pub fn parse_stat(text: &str) -> Result<ProcStat, ProcError> {
    let line = text.trim_end_matches('\n');
    let bad = |what: &str| ProcError::parse(format!("stat: {what}"), line);
    let open = line
        .find(" (")
        .ok_or_else(|| bad("missing '(' before comm"))?;
    let close = line
        .rfind(')')
        .ok_or_else(|| bad("missing ')' after comm"))?;
    if close < open {
        return Err(bad("')' before '('"));
    }
    let pid: u32 = line[..open].trim().parse().map_err(|_| bad("bad pid"))?;
    let comm = line[open + 2..close].to_owned();
    // fields[0] is field 3 (state) in the 1-based numbering of proc_pid_stat(5).
    let fields: Vec<&str> = line[close + 1..].split_ascii_whitespace().collect();
    let field = |n: usize| -> Result<&str, ProcError> {
        fields
            .get(n - 3)
            .copied()
            .ok_or_else(|| bad(&format!("missing field {n}")))
    };
    let num = |n: usize, name: &str| -> Result<u64, ProcError> {
        field(n)?
            .parse()
            .map_err(|_| bad(&format!("bad {name} (field {n})")))
    };
    let mut state = field(3)?.chars();
    let state = match (state.next(), state.next()) {
        (Some(c), None) => c,
        _ => return Err(bad("bad state (field 3)")),
    };
    let ppid = u32::try_from(num(4, "ppid")?).map_err(|_| bad("ppid out of range"))?;
    Ok(ProcStat {
        pid,
        comm,
        state,
        ppid,
        minflt: num(10, "minflt")?,
        majflt: num(12, "majflt")?,
        num_threads: num(20, "num_threads")?,
        starttime: num(22, "starttime")?,
    })
}

/// Reads and parses `root/<pid>/stat`.
pub fn read_stat(root: &Path, pid: u32) -> Result<ProcStat, ProcError> {
    let path = pid_dir(root, pid).join("stat");
    let text = read_pid_file(&path, pid)?;
    parse_stat(&text).map_err(|e| e.in_file(&path))
}

/// Reads and parses `root/<pid>/task/<tid>/stat`.
pub fn read_task_stat(root: &Path, pid: u32, tid: u32) -> Result<ProcStat, ProcError> {
    let path = pid_dir(root, pid)
        .join("task")
        .join(tid.to_string())
        .join("stat");
    let text = match read_pid_file(&path, pid) {
        Err(ProcError::NotFound { .. }) if pid_exists(root, pid) => {
            return Err(ProcError::ThreadNotFound { pid, tid });
        }
        other => other?,
    };
    parse_stat(&text).map_err(|e| e.in_file(&path))
}

/// Numeric entries of a directory, sorted.
fn numeric_entries(dir: &Path) -> io::Result<Vec<u32>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if let Some(n) = entry.file_name().to_str().and_then(|s| s.parse().ok()) {
            out.push(n);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Thread ids of `pid` (entries of `root/<pid>/task`), sorted.
pub fn list_tasks(root: &Path, pid: u32) -> Result<Vec<u32>, ProcError> {
    let dir = pid_dir(root, pid).join("task");
    numeric_entries(&dir).map_err(|e| {
        if is_gone(&e) {
            ProcError::NotFound { pid }
        } else {
            ProcError::Io {
                path: dir,
                source: e,
            }
        }
    })
}

// ---------------------------------------------------------------------------
// status

/// The fields of `/proc/<pid>/status` mmtrace uses. Memory sizes in KiB.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcStatus {
    pub tgid: u32,
    pub ppid: u32,
    pub rss_anon_kib: u64,
    pub rss_file_kib: u64,
    pub rss_shmem_kib: u64,
    pub vm_rss_kib: u64,
}

/// Parses `/proc/<pid>/status`. `Tgid` and `PPid` are required; the memory
/// lines are missing for kernel threads and read as 0.
pub fn parse_status(text: &str) -> Result<ProcStatus, ProcError> {
    let mut st = ProcStatus::default();
    let (mut have_tgid, mut have_ppid) = (false, false);
    for line in text.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        let kib = || -> Result<u64, ProcError> {
            let n = value.strip_suffix("kB").unwrap_or(value).trim_end();
            n.parse()
                .map_err(|_| ProcError::parse(format!("status: bad {key} value"), line))
        };
        let id = || -> Result<u32, ProcError> {
            value
                .parse()
                .map_err(|_| ProcError::parse(format!("status: bad {key} value"), line))
        };
        match key {
            "Tgid" => {
                st.tgid = id()?;
                have_tgid = true;
            }
            "PPid" => {
                st.ppid = id()?;
                have_ppid = true;
            }
            "RssAnon" => st.rss_anon_kib = kib()?,
            "RssFile" => st.rss_file_kib = kib()?,
            "RssShmem" => st.rss_shmem_kib = kib()?,
            "VmRSS" => st.vm_rss_kib = kib()?,
            _ => {}
        }
    }
    let first = text.lines().next().unwrap_or("");
    if !have_tgid {
        return Err(ProcError::parse("status: no Tgid line", first));
    }
    if !have_ppid {
        return Err(ProcError::parse("status: no PPid line", first));
    }
    Ok(st)
}

/// Reads and parses `root/<pid>/status`.
pub fn read_status(root: &Path, pid: u32) -> Result<ProcStatus, ProcError> {
    let path = pid_dir(root, pid).join("status");
    let text = read_pid_file(&path, pid)?;
    parse_status(&text).map_err(|e| e.in_file(&path))
}

/// Reads `root/<pid>/comm` without its trailing newline.
pub fn read_comm(root: &Path, pid: u32) -> Result<String, ProcError> {
    let path = pid_dir(root, pid).join("comm");
    let text = read_pid_file(&path, pid)?;
    Ok(text.trim_end_matches('\n').to_owned())
}

// ---------------------------------------------------------------------------
// fds

/// A regular file a process has open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenFile {
    pub fd: u32,
    /// Userspace encoding (from stat), decoded.
    pub dev: Dev,
    pub ino: u64,
    /// The link target, minus a trailing `" (deleted)"` (invalid UTF-8
    /// replaced; `path_raw` has the exact bytes then).
    pub path: String,
    pub path_raw: Option<Vec<u8>>,
}

/// Lists the regular files `pid` has open, by stat()ing each
/// `root/<pid>/fd/<n>` (following the link). Fds that close while we look,
/// or that we may not stat, are skipped. Sorted by fd.
pub fn read_fd_files(root: &Path, pid: u32) -> Result<Vec<OpenFile>, ProcError> {
    let dir = pid_dir(root, pid).join("fd");
    let fds = numeric_entries(&dir).map_err(|e| {
        if is_gone(&e) {
            ProcError::NotFound { pid }
        } else {
            ProcError::Io {
                path: dir.clone(),
                source: e,
            }
        }
    })?;
    let mut out = Vec::new();
    for fd in fds {
        let link = dir.join(fd.to_string());
        let Ok(meta) = fs::metadata(&link) else {
            continue;
        };
        if !meta.file_type().is_file() {
            continue;
        }
        let Ok(target) = fs::read_link(&link) else {
            continue;
        };
        let target = target.as_os_str().as_bytes();
        let bytes = target
            .strip_suffix(DELETED_SUFFIX.as_bytes())
            .unwrap_or(target);
        let (path, path_raw) = name_from_bytes(bytes);
        out.push(OpenFile {
            fd,
            dev: Dev::from_user(meta.dev()),
            ino: meta.ino(),
            path,
            path_raw,
        });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// processes

/// Whether `root/<pid>` exists. On the real procfs this is also true for
/// thread ids, whose directories exist but are not listed.
pub fn pid_exists(root: &Path, pid: u32) -> bool {
    pid_dir(root, pid).is_dir()
}

/// All pids under `root`, sorted.
pub fn list_pids(root: &Path) -> Result<Vec<u32>, ProcError> {
    numeric_entries(root).map_err(|source| ProcError::Io {
        path: root.to_owned(),
        source,
    })
}

/// Children of `pid`: the union of `root/<pid>/task/*/children` (needs
/// `CONFIG_PROC_CHILDREN`), sorted. Empty if the process is gone or the
/// files are missing.
pub fn children_of(root: &Path, pid: u32) -> Vec<u32> {
    let task_dir = pid_dir(root, pid).join("task");
    let Ok(tids) = numeric_entries(&task_dir) else {
        return Vec::new();
    };
    let mut out: Vec<u32> = tids
        .into_iter()
        .filter_map(|tid| fs::read_to_string(task_dir.join(tid.to_string()).join("children")).ok())
        .flat_map(|text| {
            text.split_ascii_whitespace()
                .filter_map(|s| s.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAPS: &str = "\
55d0c0a00000-55d0c0a28000 r--p 00000000 fe:00 1311132                    /usr/bin/my prog
55d0c0a28000-55d0c0b00000 r-xp 00028000 fe:00 1311132                    /usr/bin/my prog
55d0c1e2a000-55d0c1e4b000 rw-p 00000000 00:00 0                          [heap]
7f1e4c000000-7f1e4c021000 rw-p 00000000 00:00 0 
7f1e50000000-7f1e50100000 rw-s 00000000 00:01 2049                       /memfd:shm (deleted)
7f1e50200000-7f1e50300000 r--s 00001000 103:02 77                         /data/old.db (deleted)
7f1e50400000-7f1e50401000 rw-p 00000000 00:00 0                          [anon:my arena]
7ffd3c0f0000-7ffd3c111000 rw-p 00000000 00:00 0                          [stack]
7ffd3c1d9000-7ffd3c1db000 r-xp 00000000 00:00 0                          [vdso]
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
";

    #[test]
    fn maps_parses_all_kinds() {
        let m = parse_maps(MAPS).unwrap();
        assert_eq!(m.len(), 10);

        assert_eq!(m[0].start, 0x55d0c0a00000);
        assert_eq!(m[0].end, 0x55d0c0a28000);
        assert_eq!(m[0].perms(), "r--p");
        assert_eq!(m[0].dev, Dev::new(254, 0));
        assert_eq!(m[0].ino, 1311132);
        assert_eq!(m[0].path.as_deref(), Some("/usr/bin/my prog"));
        assert!(m[0].is_file() && !m[0].deleted);

        assert_eq!(m[1].perms(), "r-xp");
        assert!(m[1].exec && m[1].read && !m[1].write && !m[1].shared);
        assert_eq!(m[1].offset, 0x28000);

        assert_eq!(m[2].path.as_deref(), Some("[heap]"));
        assert!(!m[2].is_file());

        assert_eq!(m[3].path, None, "anonymous mapping with trailing space");
        assert!(!m[3].is_file());

        assert_eq!(m[4].path.as_deref(), Some("/memfd:shm"));
        assert!(m[4].deleted && m[4].shared && m[4].is_file());
        assert_eq!(m[4].perms(), "rw-s");

        assert_eq!(m[5].dev, Dev::new(259, 2));
        assert_eq!(m[5].path.as_deref(), Some("/data/old.db"));
        assert!(m[5].deleted);
        assert_eq!(m[5].offset, 0x1000);

        assert_eq!(m[6].path.as_deref(), Some("[anon:my arena]"));
        assert_eq!(m[7].path.as_deref(), Some("[stack]"));
        assert_eq!(m[8].path.as_deref(), Some("[vdso]"));
        assert_eq!(m[9].start, 0xffffffffff600000);
        assert_eq!(m[9].perms(), "--xp");
        assert!(m[9].contains(0xffffffffff600fff) && !m[9].contains(0xffffffffff601000));
        assert_eq!(m[9].len(), 0x1000);
    }

    #[test]
    fn maps_paths_unescape_the_kernels_newline() {
        assert_eq!(unescape_maps_path("/tmp/a\\012b"), "/tmp/a\nb");
        assert_eq!(unescape_maps_path("/tmp/plain"), "/tmp/plain");
        assert_eq!(unescape_maps_path("\\012\\012"), "\n\n");
        // Only the newline is escaped by the kernel: other octal-looking
        // text, tabs and backslashes are the file's own.
        assert_eq!(
            unescape_maps_path("/tmp/x\\011\\\\y\t"),
            "/tmp/x\\011\\\\y\t"
        );
        assert_eq!(unescape_maps_path("/tmp/a\\\\012"), "/tmp/a\\\n");
        assert_eq!(unescape_maps_path("/tmp/\\01"), "/tmp/\\01");
        // Round trip through the kernel's escaping.
        let kernel = |s: &str| s.replace('\n', "\\012");
        for name in [
            "/tmp/a\nb",
            "/tmp/\n\n\n",
            "/tmp/new\nline\tand tab and \"quotes\" \u{fffd}",
            "/tmp/back\\slash\\\n",
        ] {
            assert_eq!(unescape_maps_path(&kernel(name)), name, "{name:?}");
        }
    }

    /// The kernel really writes a newline in a mapped file's name as `\012`.
    #[test]
    fn maps_of_a_mapped_file_with_a_newline_in_its_name() {
        use std::os::fd::AsRawFd as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new\nline \\012 \x1b[1m.bin");
        fs::write(&path, [7u8; 4096]).unwrap();
        let f = fs::File::open(&path).unwrap();
        let ino = f.metadata().unwrap().ino();
        // SAFETY: a fresh private read-only mapping of an open file, unmapped below.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                f.as_raw_fd(),
                0,
            )
        };
        assert_ne!(addr, libc::MAP_FAILED);
        let text = fs::read_to_string("/proc/self/maps").unwrap();
        // SAFETY: the mapping made above, no references into it remain.
        unsafe { libc::munmap(addr, 4096) };
        let entry = parse_maps(&text)
            .unwrap()
            .into_iter()
            .find(|m| m.ino == ino && m.start == addr as u64)
            .expect("the mapping is listed");
        let shown = entry.path.unwrap();
        assert!(shown.contains("new\nline"), "decoded: {shown:?}");
        assert!(shown.contains('\x1b'), "other controls come raw: {shown:?}");
        // A name really holding `\012` reads as a newline: the kernel's text
        // cannot tell them apart.
        assert_eq!(shown, path.to_str().unwrap().replace("\\012 ", "\n "));
        assert_eq!(entry.path_raw, None);
    }

    #[test]
    fn maps_names_that_are_not_utf8_keep_their_bytes() {
        let line = b"7f00-7f01 r--p 00000000 fe:00 42      /tmp/a\\012\xff b (deleted)\n";
        let e = parse_maps_bytes(line).unwrap().remove(0);
        assert!(e.deleted);
        assert_eq!(e.path_raw.as_deref(), Some(&b"/tmp/a\n\xff b"[..]));
        assert_eq!(e.path.as_deref(), Some("/tmp/a\n\u{fffd} b"));
        assert_eq!((e.ino, e.start), (42, 0x7f00));
    }

    #[test]
    fn maps_empty_and_blank() {
        assert!(parse_maps("").unwrap().is_empty());
        assert_eq!(parse_maps("\n\n").unwrap().len(), 0);
    }

    #[test]
    fn maps_malformed() {
        let bad = [
            "garbage",
            "1000-2000",
            "1000-2000 r-xp",
            "1000-2000 r-xp 0 fe:00",
            "1000 r-xp 00000000 fe:00 1 /x",
            "zz-2000 r-xp 00000000 fe:00 1 /x",
            "2000-1000 r-xp 00000000 fe:00 1 /x",
            "1000-2000 rxp 00000000 fe:00 1 /x",
            "1000-2000 r-xq 00000000 fe:00 1 /x",
            "1000-2000 r-xp 0000g000 fe:00 1 /x",
            "1000-2000 r-xp 00000000 fe00 1 /x",
            "1000-2000 r-xp 00000000 fe:00 -1 /x",
        ];
        for line in bad {
            let err = parse_maps(&format!(
                "{}{line}\n",
                &MAPS[..MAPS.find('\n').unwrap() + 1]
            ))
            .expect_err(line);
            match &err {
                ProcError::Parse { line: l, what } => {
                    assert_eq!(l, line);
                    assert!(what.starts_with("maps line"), "{what}");
                }
                other => panic!("{line}: {other:?}"),
            }
            assert!(err.to_string().contains("cannot parse maps line"));
        }
    }

    const STAT: &str = "1234 (my (weird) prog) S 1 1234 1234 0 -1 4194560 5678 0 42 0 10 20 0 0 20 0 3 0 987654 12345678 300 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 2 0 0 0 0 0\n";

    #[test]
    fn stat_parses_weird_comm() {
        let s = parse_stat(STAT).unwrap();
        assert_eq!(
            s,
            ProcStat {
                pid: 1234,
                comm: "my (weird) prog".into(),
                state: 'S',
                ppid: 1,
                minflt: 5678,
                majflt: 42,
                num_threads: 3,
                starttime: 987654,
            }
        );
        let s = parse_stat("7 () R 0 0 0 0 -1 0 1 0 2 0 0 0 0 0 20 0 1 0 5").unwrap();
        assert_eq!(s.comm, "");
        assert_eq!(
            (s.minflt, s.majflt, s.num_threads, s.starttime),
            (1, 2, 1, 5)
        );
        let s = parse_stat("8 (a) b) Z 2 0 0 0 -1 0 1 0 2 0 0 0 0 0 20 0 1 0 5").unwrap();
        assert_eq!((s.comm.as_str(), s.state), ("a) b", 'Z'));
    }

    #[test]
    fn stat_malformed() {
        let bad = [
            "",
            "1234",
            "1234 (x",
            "x (comm) S 1",
            "1234 (comm) S 1 2 3",
            "1234 (comm) SS 1 1 1 0 -1 0 1 0 2 0 0 0 0 0 20 0 1 0 5",
            "1234 (comm) S -1 1 1 0 -1 0 1 0 2 0 0 0 0 0 20 0 1 0 5",
            "1234 (comm) S 1 1 1 0 -1 0 x 0 2 0 0 0 0 0 20 0 1 0 5",
            "1234 (comm) S 1 1 1 0 -1 0 1 0 2 0 0 0 0 0 20 0 1 0",
        ];
        for text in bad {
            let err = parse_stat(text).expect_err(text);
            assert!(matches!(err, ProcError::Parse { .. }), "{text}: {err:?}");
        }
        let err = parse_stat("1234 (comm) S 1 1 1 0 -1 0 1 0 2").unwrap_err();
        assert!(err.to_string().contains("missing field 20"), "{err}");
    }

    const STATUS: &str = "Name:\tcat\nUmask:\t0022\nState:\tR (running)\nTgid:\t4321\nNgid:\t0\nPid:\t4321\nPPid:\t100\nVmRSS:\t    1920 kB\nRssAnon:\t      96 kB\nRssFile:\t    1824 kB\nRssShmem:\t       0 kB\nThreads:\t1\n";

    #[test]
    fn status_parses() {
        let s = parse_status(STATUS).unwrap();
        assert_eq!(
            s,
            ProcStatus {
                tgid: 4321,
                ppid: 100,
                rss_anon_kib: 96,
                rss_file_kib: 1824,
                rss_shmem_kib: 0,
                vm_rss_kib: 1920,
            }
        );
    }

    #[test]
    fn status_kernel_thread() {
        let s = parse_status(
            "Name:\tkthreadd\nState:\tS (sleeping)\nTgid:\t2\nPid:\t2\nPPid:\t0\nThreads:\t1\n",
        )
        .unwrap();
        assert_eq!((s.tgid, s.ppid, s.vm_rss_kib, s.rss_anon_kib), (2, 0, 0, 0));
    }

    #[test]
    fn status_malformed() {
        assert!(matches!(parse_status(""), Err(ProcError::Parse { .. })));
        let e = parse_status("Tgid:\t1\n").unwrap_err();
        assert!(e.to_string().contains("no PPid"), "{e}");
        let e = parse_status("Tgid:\tx\nPPid:\t0\n").unwrap_err();
        assert!(e.to_string().contains("bad Tgid"), "{e}");
        let e = parse_status("Tgid:\t1\nPPid:\t0\nRssAnon:\tlots kB\n").unwrap_err();
        assert!(e.to_string().contains("bad RssAnon"), "{e}");
    }

    /// Builds a fake procfs tree.
    fn fixture() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let p = root.join("100");
        fs::create_dir_all(p.join("task/100")).unwrap();
        fs::create_dir_all(p.join("task/101")).unwrap();
        fs::create_dir_all(p.join("fd")).unwrap();
        fs::write(p.join("maps"), MAPS).unwrap();
        fs::write(p.join("stat"), STAT).unwrap();
        fs::write(p.join("status"), STATUS).unwrap();
        fs::write(p.join("comm"), "my prog\n").unwrap();
        fs::write(p.join("task/100/stat"), STAT).unwrap();
        fs::write(p.join("task/100/children"), "200 201 ").unwrap();
        fs::write(p.join("task/101/children"), "201 202\n").unwrap();
        fs::create_dir_all(root.join("200/task/200")).unwrap();
        fs::create_dir_all(root.join("self")).unwrap();
        fs::write(root.join("cpuinfo"), "").unwrap();
        // Broken file for parse errors.
        fs::create_dir_all(root.join("300")).unwrap();
        fs::write(root.join("300/maps"), "nonsense\n").unwrap();

        let data = root.join("data");
        fs::create_dir_all(&data).unwrap();
        fs::write(data.join("a file.txt"), "hello").unwrap();
        fs::write(data.join("gone"), "bye").unwrap();
        std::os::unix::fs::symlink(data.join("a file.txt"), p.join("fd/3")).unwrap();
        std::os::unix::fs::symlink(&data, p.join("fd/4")).unwrap(); // a directory
        std::os::unix::fs::symlink(root.join("nowhere"), p.join("fd/5")).unwrap(); // dangling
        std::os::unix::fs::symlink("/dev/null", p.join("fd/0")).unwrap(); // char device
        dir
    }

    #[test]
    fn readers_on_fixture() {
        let dir = fixture();
        let root = dir.path();
        assert_eq!(read_maps(root, 100).unwrap().len(), 10);
        assert_eq!(read_stat(root, 100).unwrap().majflt, 42);
        assert_eq!(read_task_stat(root, 100, 100).unwrap().pid, 1234);
        assert_eq!(read_status(root, 100).unwrap().rss_file_kib, 1824);
        assert_eq!(read_comm(root, 100).unwrap(), "my prog");
        assert_eq!(list_tasks(root, 100).unwrap(), vec![100, 101]);
        assert_eq!(list_pids(root).unwrap(), vec![100, 200, 300]);
        assert!(pid_exists(root, 100));
        assert!(!pid_exists(root, 999));
        assert_eq!(children_of(root, 100), vec![200, 201, 202]);
        assert!(children_of(root, 200).is_empty());
        assert!(children_of(root, 999).is_empty());
    }

    #[test]
    fn fd_files_keep_regular_only() {
        let dir = fixture();
        let root = dir.path();
        let files = read_fd_files(root, 100).unwrap();
        assert_eq!(files.len(), 1, "{files:?}");
        let target = root.join("data/a file.txt");
        let meta = fs::metadata(&target).unwrap();
        assert_eq!(files[0].fd, 3);
        assert_eq!(files[0].path, target.to_str().unwrap());
        assert_eq!(files[0].ino, meta.ino());
        assert_eq!(files[0].dev.to_user(), meta.dev());
    }

    #[test]
    fn missing_pid_is_not_found() {
        let dir = fixture();
        let root = dir.path();
        for err in [
            read_maps(root, 999).unwrap_err(),
            read_stat(root, 999).unwrap_err(),
            read_status(root, 999).unwrap_err(),
            read_comm(root, 999).unwrap_err(),
            list_tasks(root, 999).unwrap_err(),
            read_fd_files(root, 999).unwrap_err(),
            read_task_stat(root, 999, 1).unwrap_err(),
        ] {
            assert!(matches!(err, ProcError::NotFound { pid: 999 }), "{err:?}");
            assert_eq!(
                err.to_string(),
                "process 999 does not exist (it may have exited)"
            );
        }
        let err = read_task_stat(root, 100, 555).unwrap_err();
        assert!(
            matches!(err, ProcError::ThreadNotFound { pid: 100, tid: 555 }),
            "{err:?}"
        );
    }

    #[test]
    fn parse_error_names_file() {
        let dir = fixture();
        let err = read_maps(dir.path(), 300).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("300/maps"), "{msg}");
        assert!(msg.contains("nonsense"), "{msg}");
    }

    #[test]
    fn io_error_names_path() {
        let dir = fixture();
        // A directory where a file is expected: EISDIR, not "not found".
        fs::create_dir_all(dir.path().join("200/stat")).unwrap();
        let err = read_stat(dir.path(), 200).unwrap_err();
        assert!(matches!(err, ProcError::Io { .. }), "{err:?}");
        assert!(err.to_string().contains("200/stat"), "{err}");
        let err = list_pids(&dir.path().join("nope")).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn real_proc_self() {
        let root = Path::new("/proc");
        if !root.join("self/maps").exists() {
            eprintln!("no /proc; skipping");
            return;
        }
        let pid = std::process::id();
        let maps = read_maps(root, pid).unwrap();
        assert!(maps.iter().any(|m| m.exec));
        let stat = read_stat(root, pid).unwrap();
        assert_eq!(stat.pid, pid);
        assert!(stat.num_threads >= 1);
        let status = read_status(root, pid).unwrap();
        assert_eq!(status.tgid, pid);
        assert!(status.vm_rss_kib > 0);
        assert_eq!(read_comm(root, pid).unwrap(), stat.comm);
        let tasks = list_tasks(root, pid).unwrap();
        assert!(tasks.contains(&pid));
        assert!(read_task_stat(root, pid, pid).is_ok());
        assert!(list_pids(root).unwrap().contains(&pid));
        let f = fs::File::open(env!("CARGO_MANIFEST_DIR").to_owned() + "/Cargo.toml").unwrap();
        let files = read_fd_files(root, pid).unwrap();
        assert!(
            files.iter().any(|o| o.path.ends_with("Cargo.toml")),
            "{files:?}"
        );
        drop(f);
        // Our parent is alive and lists us as its child (if CONFIG_PROC_CHILDREN).
        if root.join(format!("{pid}/task/{pid}/children")).exists() {
            assert!(children_of(root, stat.ppid).contains(&pid));
        }
    }
}
