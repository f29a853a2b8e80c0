//! SIGBUS and SIGSEGV on mappings: the kernel's notice (signal, `si_code`,
//! fault address, the vma the faulting task had there) resolved to a file
//! and page offset, named and explained. Pure: tested on synthetic input.
use mmtrace_common::{SignalNotice, signal_vma};
use serde::Serialize;

use crate::{devnum::Dev, procfs::MapEntry};

/// How many signal records a report lists (the rest are counted).
pub const LISTED: usize = 100;

/// What the fault address fell in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SignalMapping {
    /// A file mapping: `path`, `offset_pages`.
    File,
    /// Anonymous memory (heap, stack, `MAP_ANONYMOUS`).
    Anon,
    /// No mapping at all (e.g. a wild pointer, `SEGV_MAPERR`).
    None,
    /// The lookup failed (mmap lock busy) and /proc had no answer.
    #[default]
    Unknown,
}

/// A traced process got a kernel-generated SIGBUS or SIGSEGV: a
/// `"type":"signal"` record, and a line of the final report.
#[derive(Clone, Debug, Default, PartialEq, Serialize, schemars::JsonSchema)]
pub struct SignalRecord {
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    /// `"SIGBUS"` or `"SIGSEGV"`.
    pub signal: String,
    /// `si_code`.
    pub code: i32,
    /// `"BUS_ADRERR"`, `"SEGV_MAPERR"`, ...
    pub code_name: String,
    /// What the code means (`"access beyond the end of the file"`).
    pub code_meaning: String,
    /// The fault address (`si_addr`).
    pub address: u64,
    pub mapping: SignalMapping,
    /// The mapped file (`mapping` `file`): its path, `[dev:ino]` until the
    /// path is learnt (filled in later when it is).
    pub path: Option<String>,
    /// The mapped file's device and inode (`mapping` `file`).
    pub dev: Option<Dev>,
    pub ino: Option<u64>,
    pub shared: Option<bool>,
    /// The page of the file the address maps (`mapping` `file`).
    pub offset_pages: Option<u64>,
    /// The file's size when the record was made, pages (rounded up).
    pub file_size_pages: Option<u64>,
    /// What most likely happened, in words.
    pub explanation: String,
    /// Seconds since the trace started.
    pub elapsed_s: f64,
}

/// The signal's name.
pub fn signal_name(signo: u32) -> &'static str {
    match signo {
        7 => "SIGBUS",
        11 => "SIGSEGV",
        _ => "other",
    }
}

/// `si_code`'s name and meaning for SIGBUS and SIGSEGV (x86-64 Linux).
pub fn code_name(signo: u32, code: i32) -> (&'static str, &'static str) {
    match (signo, code) {
        (7, 1) => ("BUS_ADRALN", "invalid address alignment"),
        (7, 2) => ("BUS_ADRERR", "access beyond the end of the file"),
        (7, 3) => ("BUS_OBJERR", "object-specific hardware error"),
        (7, 4) => (
            "BUS_MCEERR_AR",
            "hardware memory error consumed: the page is poisoned",
        ),
        (7, 5) => (
            "BUS_MCEERR_AO",
            "hardware memory error detected (action optional)",
        ),
        (11, 1) => ("SEGV_MAPERR", "address not mapped"),
        (11, 2) => (
            "SEGV_ACCERR",
            "access not allowed by the mapping's permissions",
        ),
        (11, 3) => ("SEGV_BNDERR", "bounds check failed"),
        (11, 4) => ("SEGV_PKUERR", "access denied by a memory protection key"),
        (11, 10) => ("SEGV_CPERR", "control protection fault (shadow stack)"),
        (_, 0x80) => (
            "SI_KERNEL",
            "sent by the kernel itself (e.g. a bad signal frame)",
        ),
        _ => ("other", "no description"),
    }
}

/// Where the address falls: the mapping kind, the file (dev, ino), whether
/// shared, and the page of the file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Resolved {
    pub mapping: SignalMapping,
    pub file: Option<(u32, u64)>,
    pub shared: Option<bool>,
    pub offset_pages: Option<u64>,
    /// The path /proc printed, when resolved from the maps.
    pub path: Option<String>,
}

/// From the vma the kernel found in the faulting task (exact, at the
/// signal), else from a `/proc/<pid>/maps` listing.
pub fn resolve(n: &SignalNotice, maps: &[MapEntry], page_size: u64) -> Resolved {
    let ps = page_size.max(1);
    if n.vma & signal_vma::FOUND != 0 {
        let shared = Some(n.vma & signal_vma::SHARED != 0);
        if n.vma & signal_vma::FILE != 0 {
            return Resolved {
                mapping: SignalMapping::File,
                file: Some((n.dev, n.ino)),
                shared,
                offset_pages: Some(n.pgoff + n.addr.saturating_sub(n.vm_start) / ps),
                path: None,
            };
        }
        return Resolved {
            mapping: SignalMapping::Anon,
            shared,
            ..Resolved::default()
        };
    }
    if n.vma & signal_vma::LOOKUP_FAILED == 0 {
        // The kernel looked and found no vma.
        return Resolved {
            mapping: SignalMapping::None,
            ..Resolved::default()
        };
    }
    resolve_in_maps(n.addr, maps, ps)
}

/// The address against a `/proc/<pid>/maps` listing (`Unknown` if empty).
pub fn resolve_in_maps(addr: u64, maps: &[MapEntry], page_size: u64) -> Resolved {
    if maps.is_empty() {
        return Resolved::default();
    }
    let Some(m) = maps.iter().find(|m| m.start <= addr && addr < m.end) else {
        return Resolved {
            mapping: SignalMapping::None,
            ..Resolved::default()
        };
    };
    let shared = Some(m.shared);
    if m.is_file() {
        Resolved {
            mapping: SignalMapping::File,
            file: Some((m.dev.to_kernel(), m.ino)),
            shared,
            offset_pages: Some((m.offset + (addr - m.start)) / page_size.max(1)),
            path: m.path.clone(),
        }
    } else {
        Resolved {
            mapping: SignalMapping::Anon,
            shared,
            ..Resolved::default()
        }
    }
}

/// What most likely happened, from the code and where the address fell.
pub fn explain(r: &SignalRecord) -> String {
    let at = match (&r.path, r.offset_pages) {
        (Some(p), Some(o)) => format!("page {o} of {p}"),
        (None, Some(o)) => format!("page {o} of a mapped file"),
        _ => "the address".into(),
    };
    match (r.signal.as_str(), r.code_name.as_str(), r.mapping) {
        ("SIGBUS", "BUS_ADRERR", SignalMapping::File) => {
            match (r.offset_pages, r.file_size_pages) {
                (Some(o), Some(size)) if o >= size => format!(
                    "{at} is beyond the end of the file ({}): the file was truncated (or never \
                     that long) under the mapping",
                    pages_now(size)
                ),
                (Some(_), Some(size)) => format!(
                    "{at} is inside the file ({}): the page could not be read (I/O error) or \
                     allocated (out of space on tmpfs/hugetlbfs), or the file was truncated \
                     and has grown again since",
                    pages_now(size)
                ),
                _ => format!(
                    "{at} could not be provided: most often the file was truncated under the \
                 mapping (size unknown now)"
                ),
            }
        }
        ("SIGBUS", "BUS_ADRERR", _) => {
            "no page could be provided for the address (e.g. hugetlb or shared memory out of \
             space)"
                .into()
        }
        ("SIGBUS", "BUS_MCEERR_AR" | "BUS_MCEERR_AO", _) => {
            format!("{at}: the memory behind it failed (hardware error)")
        }
        ("SIGSEGV", "SEGV_MAPERR", SignalMapping::None) => {
            "the address is in no mapping (a stray pointer, or a region unmapped while in use)"
                .into()
        }
        ("SIGSEGV", "SEGV_ACCERR", SignalMapping::File) => format!(
            "{at}: the mapping does not allow this access (e.g. a write to a read-only or \
             PROT_NONE mapping)"
        ),
        ("SIGSEGV", "SEGV_ACCERR", _) => {
            "the mapping does not allow this access (e.g. PROT_NONE or a write to read-only \
             memory)"
                .into()
        }
        _ => format!("{}: {}", r.code_name, r.code_meaning),
    }
}

fn pages_now(n: u64) -> String {
    format!("{n} page{} now", if n == 1 { "" } else { "s" })
}

/// The record of a notice, resolved. `path` names a file by (dev, ino);
/// `size_pages` gives its size now.
pub fn record(
    n: &SignalNotice,
    maps: &[MapEntry],
    page_size: u64,
    path: impl Fn((u32, u64)) -> Option<String>,
    size_pages: impl Fn((u32, u64), Option<&str>) -> Option<u64>,
    elapsed_s: f64,
) -> SignalRecord {
    let res = resolve(n, maps, page_size);
    let (code_name, code_meaning) = code_name(n.signo, n.code);
    let path = match (res.file, res.path.clone()) {
        (Some(id), p) => path(id)
            .or(p)
            .or_else(|| Some(format!("[{}:{}]", Dev::from_kernel(id.0), id.1))),
        (None, p) => p,
    };
    let file_size_pages = res.file.and_then(|id| size_pages(id, path.as_deref()));
    let mut r = SignalRecord {
        pid: n.tgid,
        tid: n.tid,
        comm: crate::collect::maps::comm_string(&n.comm),
        signal: signal_name(n.signo).into(),
        code: n.code,
        code_name: code_name.into(),
        code_meaning: code_meaning.into(),
        address: n.addr,
        mapping: res.mapping,
        path,
        dev: res.file.map(|id| Dev::from_kernel(id.0)),
        ino: res.file.map(|id| id.1),
        shared: res.shared,
        offset_pages: res.offset_pages,
        file_size_pages,
        explanation: String::new(),
        elapsed_s,
    };
    r.explanation = explain(&r);
    r
}

/// Names the files of records made before their path was known (the
/// process was gone before its maps could be read), from `path`.
pub fn fill_paths(records: &mut [SignalRecord], path: impl Fn((u32, u64)) -> Option<String>) {
    for r in records.iter_mut() {
        let (Some(dev), Some(ino)) = (r.dev, r.ino) else {
            continue;
        };
        if r.path.as_deref().is_none_or(|p| p.starts_with('['))
            && let Some(p) = path((dev.to_kernel(), ino))
        {
            r.explanation = r
                .explanation
                .replace(r.path.as_deref().unwrap_or("a mapped file"), &p);
            r.path = Some(p);
        }
    }
}

/// The file's size in pages (rounded up), if `path` is still that file.
pub fn file_size_pages(id: (u32, u64), path: Option<&str>, page_size: u64) -> Option<u64> {
    use std::os::unix::fs::MetadataExt as _;
    let md = std::fs::metadata(path?).ok()?;
    if md.ino() != id.1 || Dev::from_user(md.dev()).to_kernel() != id.0 {
        return None;
    }
    Some(md.size().div_ceil(page_size.max(1)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(start: u64, end: u64, offset: u64, path: Option<&str>, ino: u64) -> MapEntry {
        MapEntry {
            start,
            end,
            read: true,
            write: false,
            exec: false,
            shared: true,
            offset,
            dev: Dev::from_kernel(if ino == 0 { 0 } else { (254 << 20) | 1 }),
            ino,
            path: path.map(String::from),
            path_raw: None,
            deleted: false,
        }
    }

    fn maps() -> Vec<MapEntry> {
        vec![
            entry(0x1000_0000, 0x1001_0000, 0x4000, Some("/data/f.bin"), 12),
            entry(0x2000_0000, 0x2010_0000, 0, None, 0),
            entry(0x3000_0000, 0x3000_1000, 0, Some("[heap]"), 0),
        ]
    }

    #[test]
    fn addresses_resolve_to_the_file_page_or_anon_or_none() {
        let m = maps();
        let r = resolve_in_maps(0x1000_3010, &m, 4096);
        assert_eq!(r.mapping, SignalMapping::File);
        // File offset 0x4000 + 0x3010 → page 7.
        assert_eq!(r.offset_pages, Some(7));
        assert_eq!(r.file, Some(((254 << 20) | 1, 12)));
        assert_eq!(r.path.as_deref(), Some("/data/f.bin"));
        assert_eq!(r.shared, Some(true));
        assert_eq!(
            resolve_in_maps(0x2000_0000, &m, 4096).mapping,
            SignalMapping::Anon
        );
        assert_eq!(
            resolve_in_maps(0x3000_0fff, &m, 4096).mapping,
            SignalMapping::Anon
        );
        // End addresses are exclusive.
        assert_eq!(
            resolve_in_maps(0x1001_0000, &m, 4096).mapping,
            SignalMapping::None
        );
        assert_eq!(
            resolve_in_maps(0x10, &[], 4096).mapping,
            SignalMapping::Unknown
        );
    }

    fn bus(vma: u32) -> SignalNotice {
        let mut n = SignalNotice {
            kind: mmtrace_common::notice::SIGNAL,
            tgid: 42,
            tid: 43,
            signo: 7,
            code: 2,
            vma,
            addr: 0x7f00_0000_5123,
            vm_start: 0x7f00_0000_0000,
            vm_end: 0x7f00_0001_0000,
            pgoff: 10,
            ino: 99,
            dev: 8 << 20,
            ..Default::default()
        };
        n.comm[..4].copy_from_slice(b"prog");
        n
    }

    #[test]
    fn the_kernels_vma_wins_and_a_failed_lookup_falls_back_to_proc() {
        let n = bus(signal_vma::FOUND | signal_vma::FILE | signal_vma::SHARED);
        let r = resolve(&n, &maps(), 4096);
        assert_eq!(r.offset_pages, Some(15));
        assert_eq!(r.file, Some((8 << 20, 99)));
        // No vma in the task: no mapping, whatever /proc said earlier.
        let r = resolve(&bus(0), &maps(), 4096);
        assert_eq!(r.mapping, SignalMapping::None);
        let mut n = bus(signal_vma::LOOKUP_FAILED);
        n.addr = 0x1000_0000;
        let r = resolve(&n, &maps(), 4096);
        assert_eq!((r.mapping, r.offset_pages), (SignalMapping::File, Some(4)));
        assert_eq!(
            resolve(&bus(signal_vma::FOUND), &[], 4096).mapping,
            SignalMapping::Anon
        );
    }

    #[test]
    fn a_sigbus_beyond_the_end_says_the_file_was_truncated() {
        let n = bus(signal_vma::FOUND | signal_vma::FILE | signal_vma::SHARED);
        let r = record(
            &n,
            &[],
            4096,
            |id| (id == (8 << 20, 99)).then(|| "/data/t.bin".to_string()),
            |_, p| p.map(|_| 4),
            1.5,
        );
        assert_eq!(
            (r.pid, r.tid, r.comm.as_str(), r.signal.as_str()),
            (42, 43, "prog", "SIGBUS")
        );
        assert_eq!(r.code_name, "BUS_ADRERR");
        assert_eq!(r.code_meaning, "access beyond the end of the file");
        assert_eq!(r.path.as_deref(), Some("/data/t.bin"));
        assert_eq!((r.offset_pages, r.file_size_pages), (Some(15), Some(4)));
        assert!(
            r.explanation.contains("page 15 of /data/t.bin"),
            "{}",
            r.explanation
        );
        assert!(r.explanation.contains("truncated"), "{}", r.explanation);
        // Inside the file: not a truncation.
        let r = record(&n, &[], 4096, |_| None, |_, _| Some(100), 0.0);
        assert_eq!(r.path.as_deref(), Some("[8:0:99]"));
        assert!(
            r.explanation.contains("inside the file"),
            "{}",
            r.explanation
        );
        assert_eq!((r.dev.unwrap().to_kernel(), r.ino), (8 << 20, Some(99)));
        let mut v = vec![r.clone()];
        fill_paths(&mut v, |id| {
            (id == (8 << 20, 99)).then(|| "/late/name".to_string())
        });
        assert_eq!(v[0].path.as_deref(), Some("/late/name"));
        assert!(
            v[0].explanation.contains("page 15 of /late/name"),
            "{}",
            v[0].explanation
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["mapping"], "file");
        assert_eq!(json["signal"], "SIGBUS");
    }

    #[test]
    fn segv_codes_are_named() {
        assert_eq!(code_name(11, 1).0, "SEGV_MAPERR");
        assert_eq!(code_name(11, 2).0, "SEGV_ACCERR");
        assert_eq!(code_name(11, 4).0, "SEGV_PKUERR");
        assert_eq!(code_name(7, 2).0, "BUS_ADRERR");
        let mut n = bus(0);
        n.signo = 11;
        n.code = 1;
        let r = record(&n, &[], 4096, |_| None, |_, _| None, 0.0);
        assert_eq!(
            (r.signal.as_str(), r.mapping),
            ("SIGSEGV", SignalMapping::None)
        );
        assert!(r.explanation.contains("no mapping"));
    }
}
