//! Page-cache residency of one file: how many of its pages are cached (and
//! dirty) right now, via cachestat(2) or, where that is missing, mmap +
//! mincore(2). Never reads file contents, so measuring does not change what
//! is measured.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd as _, AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd};
use std::os::unix::ffi::OsStrExt as _;
use std::path::Path;

use crate::devnum::Dev;

/// Residency of one file, in pages of the system page size.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct Residency {
    pub total_pages: u64,
    pub cached_pages: u64,
    /// Always 0 with [`Method::Mincore`], which cannot tell.
    pub dirty_pages: u64,
    /// Pages under writeback now; always 0 with [`Method::Mincore`].
    pub writeback_pages: u64,
    pub method: Method,
}

/// How residency was measured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    #[default]
    Cachestat,
    Mincore,
}

/// Errors from measuring residency. `what` names the file (path or fd).
#[derive(Debug, thiserror::Error)]
pub enum ResidencyError {
    #[error("cannot open {what}: {source}")]
    Open { what: String, source: io::Error },
    #[error("cannot stat {what}: {source}")]
    Stat { what: String, source: io::Error },
    #[error(
        "{what} was replaced: it is now device {found_dev} inode {found_ino}, not device {expected_dev} inode {expected_ino}"
    )]
    Replaced {
        what: String,
        expected_dev: Dev,
        expected_ino: u64,
        found_dev: Dev,
        found_ino: u64,
    },
    #[error("{what} is not a regular file")]
    NotRegular { what: String },
    #[error("cachestat failed on {what}: {source}")]
    Cachestat { what: String, source: io::Error },
    #[error("cannot mmap {what} to check residency: {source}")]
    Mmap { what: String, source: io::Error },
    #[error("mincore failed on {what}: {source}")]
    Mincore { what: String, source: io::Error },
}

/// The cachestat(2) syscall number: 451 on every architecture Rust
/// targets (syscalls from 424 on share one numbering). A kernel without it
/// answers ENOSYS and mincore(2) takes over.
const SYS_CACHESTAT: Option<libc::c_long> = Some(451);

#[repr(C)]
struct CachestatRange {
    off: u64,
    /// 0 = to end of file.
    len: u64,
}

#[repr(C)]
#[derive(Default)]
struct Cachestat {
    nr_cache: u64,
    nr_dirty: u64,
    nr_writeback: u64,
    nr_evicted: u64,
    nr_recently_evicted: u64,
}

/// Bytes mapped at once by the mincore fallback, bounding address space and
/// the vector's size for huge files.
const MINCORE_WINDOW: u64 = 1 << 30;

fn page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if n > 0 { n as u64 } else { 4096 }
}

fn open_readonly(path: &Path) -> io::Result<OwnedFd> {
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    // O_NONBLOCK so a FIFO at `path` cannot block the open (fstat then
    // rejects it); it does nothing for regular files.
    let base = libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NONBLOCK | libc::O_NOCTTY;
    // O_NOATIME needs ownership or CAP_FOWNER; retry without on EPERM.
    for flags in [base | libc::O_NOATIME, base] {
        // SAFETY: `c` is a valid NUL-terminated string.
        let fd = unsafe { libc::open(c.as_ptr(), flags) };
        if fd >= 0 {
            // SAFETY: `fd` is a freshly opened descriptor we own.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EPERM) || flags == base {
            return Err(err);
        }
    }
    unreachable!("the loop returns on its last iteration")
}

fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is a valid out-pointer for a struct stat.
    let rc = unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) };
    if rc == 0 {
        // SAFETY: fstat succeeded and filled `st`.
        Ok(unsafe { st.assume_init() })
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Residency of the file at `path`. If `expect` is given as (device in
/// userspace encoding, inode) and the path now names another file, returns
/// [`ResidencyError::Replaced`].
pub fn file_residency(
    path: &Path,
    expect: Option<(Dev, u64)>,
) -> Result<Residency, ResidencyError> {
    let what = path.display().to_string();
    let fd = open_readonly(path).map_err(|source| ResidencyError::Open {
        what: what.clone(),
        source,
    })?;
    measure(fd.as_fd(), &what, expect, None)
}

/// Residency of an open file.
pub fn fd_residency(fd: BorrowedFd<'_>) -> Result<Residency, ResidencyError> {
    let what = format!("fd {}", fd.as_raw_fd());
    measure(fd, &what, None, None)
}

/// Like [`fd_residency`] but with the method forced (tests, comparisons).
#[cfg_attr(not(test), allow(dead_code, reason = "only tests force the method"))]
pub(crate) fn fd_residency_with(
    fd: BorrowedFd<'_>,
    method: Method,
) -> Result<Residency, ResidencyError> {
    let what = format!("fd {}", fd.as_raw_fd());
    measure(fd, &what, None, Some(method))
}

fn measure(
    fd: BorrowedFd<'_>,
    what: &str,
    expect: Option<(Dev, u64)>,
    force: Option<Method>,
) -> Result<Residency, ResidencyError> {
    let st = fstat(fd).map_err(|source| ResidencyError::Stat {
        what: what.to_owned(),
        source,
    })?;
    #[allow(
        clippy::unnecessary_cast,
        reason = "dev_t and ino_t are u64 on 64-bit Linux but not everywhere"
    )]
    let (found_dev, found_ino) = (Dev::from_user(st.st_dev as u64), st.st_ino as u64);
    if let Some((expected_dev, expected_ino)) = expect
        && (expected_dev, expected_ino) != (found_dev, found_ino)
    {
        return Err(ResidencyError::Replaced {
            what: what.to_owned(),
            expected_dev,
            expected_ino,
            found_dev,
            found_ino,
        });
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(ResidencyError::NotRegular {
            what: what.to_owned(),
        });
    }
    let size = st.st_size.max(0) as u64;
    let page = page_size();
    let total_pages = size.div_ceil(page);

    if force != Some(Method::Mincore) {
        match cachestat(fd) {
            Ok(cs) => {
                return Ok(Residency {
                    total_pages,
                    cached_pages: cs.nr_cache,
                    dirty_pages: cs.nr_dirty,
                    writeback_pages: cs.nr_writeback,
                    method: Method::Cachestat,
                });
            }
            Err(e) if force.is_none() && cachestat_unavailable(&e) => {
                log::debug!("cachestat unavailable on {what} ({e}); using mincore");
            }
            Err(source) => {
                return Err(ResidencyError::Cachestat {
                    what: what.to_owned(),
                    source,
                });
            }
        }
    }
    let cached_pages = if size == 0 {
        0
    } else {
        mincore_count(fd, size, page, what)?
    };
    Ok(Residency {
        total_pages,
        cached_pages,
        dirty_pages: 0,
        writeback_pages: 0,
        method: Method::Mincore,
    })
}

fn cachestat_unavailable(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOSYS | libc::EPERM | libc::EOPNOTSUPP)
    )
}

fn cachestat(fd: BorrowedFd<'_>) -> io::Result<Cachestat> {
    let Some(nr) = SYS_CACHESTAT else {
        return Err(io::Error::from_raw_os_error(libc::ENOSYS));
    };
    let range = CachestatRange { off: 0, len: 0 };
    let mut cs = Cachestat::default();
    // SAFETY: the pointers are valid for the structs the syscall reads and
    // writes; flags must be 0.
    let rc = unsafe {
        libc::syscall(
            nr,
            fd.as_raw_fd(),
            &range as *const CachestatRange,
            &mut cs as *mut Cachestat,
            0 as libc::c_uint,
        )
    };
    if rc == 0 {
        Ok(cs)
    } else {
        Err(io::Error::last_os_error())
    }
}

/// An mmap'ed window, unmapped on drop.
struct Mapping {
    addr: *mut libc::c_void,
    len: usize,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `addr`/`len` came from a successful mmap and are unmapped once.
        unsafe { libc::munmap(self.addr, self.len) };
    }
}

fn mincore_count(
    fd: BorrowedFd<'_>,
    size: u64,
    page: u64,
    what: &str,
) -> Result<u64, ResidencyError> {
    let mut cached = 0;
    mincore_each(fd, size, page, what, |_, resident| {
        cached += resident as u64
    })?;
    Ok(cached)
}

/// The file at `path`, page by page: `each(page_index, resident)` for every
/// page of it (mmap PROT_READ + mincore, never reading the contents). If
/// `expect` (device, inode) is given and the path now names another file,
/// returns [`ResidencyError::Replaced`]. Returns the file's size in bytes.
pub fn each_page(
    path: &Path,
    expect: Option<(Dev, u64)>,
    each: impl FnMut(u64, bool),
) -> Result<u64, ResidencyError> {
    let what = path.display().to_string();
    let fd = open_readonly(path).map_err(|source| ResidencyError::Open {
        what: what.clone(),
        source,
    })?;
    let st = fstat(fd.as_fd()).map_err(|source| ResidencyError::Stat {
        what: what.clone(),
        source,
    })?;
    #[allow(
        clippy::unnecessary_cast,
        reason = "dev_t and ino_t are u64 on 64-bit Linux but not everywhere"
    )]
    let (found_dev, found_ino) = (Dev::from_user(st.st_dev as u64), st.st_ino as u64);
    if let Some((expected_dev, expected_ino)) = expect
        && (expected_dev, expected_ino) != (found_dev, found_ino)
    {
        return Err(ResidencyError::Replaced {
            what,
            expected_dev,
            expected_ino,
            found_dev,
            found_ino,
        });
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(ResidencyError::NotRegular { what });
    }
    let size = st.st_size.max(0) as u64;
    if size > 0 {
        mincore_each(fd.as_fd(), size, page_size(), &what, each)?;
    }
    Ok(size)
}

fn mincore_each(
    fd: BorrowedFd<'_>,
    size: u64,
    page: u64,
    what: &str,
    mut each: impl FnMut(u64, bool),
) -> Result<(), ResidencyError> {
    let window = MINCORE_WINDOW.max(page) / page * page;
    let mut off = 0;
    let mut vec = Vec::new();
    while off < size {
        let len = (size - off).min(window) as usize;
        // SAFETY: mapping a file read-only at a page-aligned offset; the
        // mapping is never dereferenced, only passed to mincore.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                off as libc::off_t,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(ResidencyError::Mmap {
                what: what.to_owned(),
                source: io::Error::last_os_error(),
            });
        }
        let map = Mapping { addr, len };
        let pages = (len as u64).div_ceil(page) as usize;
        vec.clear();
        vec.resize(pages, 0u8);
        // SAFETY: `map` is a live mapping of `len` bytes and `vec` holds one
        // byte per page of it.
        let rc = unsafe { libc::mincore(map.addr, map.len, vec.as_mut_ptr()) };
        if rc != 0 {
            return Err(ResidencyError::Mincore {
                what: what.to_owned(),
                source: io::Error::last_os_error(),
            });
        }
        let first = off / page;
        for (i, b) in vec.iter().enumerate() {
            each(first + i as u64, b & 1 != 0);
        }
        off += len as u64;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::{self, File};
    use std::io::Write as _;
    use std::os::unix::fs::MetadataExt as _;
    use std::path::PathBuf;

    const TMPFS_MAGIC: i64 = 0x0102_1994;

    fn is_tmpfs(dir: &Path) -> bool {
        let Ok(c) = CString::new(dir.as_os_str().as_bytes()) else {
            return false;
        };
        let mut sfs = std::mem::MaybeUninit::<libc::statfs>::uninit();
        // SAFETY: valid path and out-pointer.
        if unsafe { libc::statfs(c.as_ptr(), sfs.as_mut_ptr()) } != 0 {
            return false;
        }
        // SAFETY: statfs succeeded.
        let f_type = unsafe { sfs.assume_init() }.f_type;
        #[allow(clippy::unnecessary_cast, reason = "__fsword_t differs across targets")]
        let f_type = f_type as i64;
        f_type == TMPFS_MAGIC
    }

    /// A temp dir on a filesystem whose page cache can be dropped, if any;
    /// the bool says whether it is tmpfs.
    fn scratch_dir() -> (tempfile::TempDir, bool) {
        let mut candidates: Vec<PathBuf> = Vec::new();
        if let Some(d) = option_env!("CARGO_TARGET_TMPDIR") {
            candidates.push(d.into());
        }
        if let Ok(d) = std::env::var("CARGO_TARGET_TMPDIR") {
            candidates.push(d.into());
        }
        candidates.push(std::env::temp_dir());
        candidates.push(env!("CARGO_MANIFEST_DIR").into());
        for c in &candidates {
            if c.is_dir()
                && !is_tmpfs(c)
                && let Ok(d) = tempfile::tempdir_in(c)
            {
                return (d, false);
            }
        }
        (tempfile::tempdir().unwrap(), true)
    }

    fn write_file(dir: &Path, name: &str, len: usize) -> PathBuf {
        let path = dir.join(name);
        let mut f = File::create(&path).unwrap();
        let chunk = vec![0xa5u8; 64 * 1024];
        let mut left = len;
        while left > 0 {
            let n = left.min(chunk.len());
            f.write_all(&chunk[..n]).unwrap();
            left -= n;
        }
        f.sync_all().unwrap();
        path
    }

    fn drop_cache(path: &Path) {
        let f = File::open(path).unwrap();
        // SAFETY: valid fd; advice only.
        let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        assert_eq!(rc, 0);
    }

    #[test]
    fn written_file_is_measured() {
        let (dir, _) = scratch_dir();
        let len = 1 << 20;
        let path = write_file(dir.path(), "f", len + 100);
        let r = file_residency(&path, None).unwrap();
        assert_eq!(r.total_pages, (len as u64 + 100).div_ceil(page_size()));
        assert!(r.cached_pages <= r.total_pages, "{r:?}");
        assert!(r.dirty_pages <= r.cached_pages, "{r:?}");
        eprintln!("residency after write: {r:?}");
    }

    #[test]
    fn dontneed_drops_cached_pages() {
        let (dir, tmpfs) = scratch_dir();
        let path = write_file(dir.path(), "f", 1 << 20);
        let before = file_residency(&path, None).unwrap();
        drop_cache(&path);
        let after = file_residency(&path, None).unwrap();
        eprintln!("before {before:?} after {after:?}");
        if tmpfs {
            eprintln!("note: scratch dir is tmpfs, whose pages cannot be dropped; not asserting");
        } else if before.cached_pages > 0 {
            assert!(
                after.cached_pages < before.cached_pages,
                "{before:?} -> {after:?}"
            );
        }
        // Measuring must not bring pages back in.
        assert_eq!(
            file_residency(&path, None).unwrap().cached_pages,
            after.cached_pages
        );
    }

    #[test]
    fn methods_agree() {
        let (dir, _) = scratch_dir();
        let path = write_file(dir.path(), "f", 3 * 1024 * 1024 + 1);
        let f = File::open(&path).unwrap();
        let m = fd_residency_with(f.as_fd(), Method::Mincore).unwrap();
        assert_eq!(m.method, Method::Mincore);
        assert_eq!(m.dirty_pages, 0);
        match fd_residency_with(f.as_fd(), Method::Cachestat) {
            Ok(c) => {
                assert_eq!(c.method, Method::Cachestat);
                assert_eq!(c.total_pages, m.total_pages);
                assert_eq!(
                    c.cached_pages, m.cached_pages,
                    "cachestat {c:?} mincore {m:?}"
                );
            }
            Err(e) => eprintln!("cachestat unavailable ({e}); only mincore checked"),
        }
        let auto = fd_residency(f.as_fd()).unwrap();
        assert_eq!(auto.cached_pages, m.cached_pages);
    }

    #[test]
    fn empty_file_is_zero() {
        let (dir, _) = scratch_dir();
        let path = dir.path().join("empty");
        File::create(&path).unwrap();
        let r = file_residency(&path, None).unwrap();
        assert_eq!((r.total_pages, r.cached_pages, r.dirty_pages), (0, 0, 0));
        let f = File::open(&path).unwrap();
        let m = fd_residency_with(f.as_fd(), Method::Mincore).unwrap();
        assert_eq!(
            m,
            Residency {
                method: Method::Mincore,
                ..Residency::default()
            }
        );
    }

    #[test]
    fn each_page_walks_every_page_and_agrees_with_the_count() {
        let (dir, tmpfs) = scratch_dir();
        let path = write_file(dir.path(), "f", (1 << 20) + 100);
        let meta = fs::metadata(&path).unwrap();
        let id = (Dev::from_user(meta.dev()), meta.ino());
        if !tmpfs {
            drop_cache(&path);
        }
        let mut seen = Vec::new();
        let size = each_page(&path, Some(id), |i, r| seen.push((i, r))).unwrap();
        assert_eq!(size, (1 << 20) + 100);
        let pages = size.div_ceil(page_size());
        assert_eq!(seen.len() as u64, pages);
        assert!(seen.iter().enumerate().all(|(n, (i, _))| n as u64 == *i));
        let resident = seen.iter().filter(|(_, r)| *r).count() as u64;
        let f = File::open(&path).unwrap();
        let counted = fd_residency_with(f.as_fd(), Method::Mincore).unwrap();
        assert_eq!(resident, counted.cached_pages);
        let e = each_page(&path, Some((Dev::new(12345, 6), id.1)), |_, _| {}).unwrap_err();
        assert!(matches!(e, ResidencyError::Replaced { .. }), "{e:?}");
    }

    #[test]
    fn replaced_file_is_detected() {
        let (dir, _) = scratch_dir();
        let path = write_file(dir.path(), "f", 4096);
        let meta = fs::metadata(&path).unwrap();
        let id = (Dev::from_user(meta.dev()), meta.ino());
        assert!(file_residency(&path, Some(id)).is_ok());

        // Replace the file by renaming another one over it; keep the old one
        // alive so its inode number is not reused.
        let _keep = File::open(&path).unwrap();
        let other = write_file(dir.path(), "g", 4096);
        fs::rename(&other, &path).unwrap();
        let e = file_residency(&path, Some(id)).unwrap_err();
        assert!(matches!(e, ResidencyError::Replaced { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains("was replaced") && msg.contains(&path.display().to_string()),
            "{msg}"
        );

        let e = file_residency(&path, Some((Dev::new(12345, 6), id.1))).unwrap_err();
        assert!(matches!(e, ResidencyError::Replaced { .. }), "{e:?}");
    }

    #[test]
    fn errors_name_the_file() {
        let (dir, _) = scratch_dir();
        let missing = dir.path().join("missing");
        let e = file_residency(&missing, None).unwrap_err();
        assert!(matches!(e, ResidencyError::Open { .. }), "{e:?}");
        assert!(e.to_string().contains("missing"), "{e}");

        let e = file_residency(dir.path(), None).unwrap_err();
        assert!(matches!(e, ResidencyError::NotRegular { .. }), "{e:?}");

        // A FIFO must be refused without blocking in open().
        let fifo = dir.path().join("fifo");
        let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let e = file_residency(&fifo, None).unwrap_err();
        assert!(matches!(e, ResidencyError::NotRegular { .. }), "{e:?}");

        let null = File::open("/dev/null").unwrap();
        let e = fd_residency(null.as_fd()).unwrap_err();
        assert!(e.to_string().starts_with("fd "), "{e}");
    }

    #[test]
    fn serializes_snake_case() {
        let r = Residency {
            total_pages: 3,
            cached_pages: 2,
            dirty_pages: 1,
            writeback_pages: 0,
            method: Method::Mincore,
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"total_pages":3,"cached_pages":2,"dirty_pages":1,"writeback_pages":0,"method":"mincore"}"#
        );
    }
}
