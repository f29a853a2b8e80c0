//! Current names of files, also after a rename or after the process that
//! mapped them exited: a file handle (`name_to_handle_at(2)`) is taken when
//! a path is first learned through `/proc/<pid>/{map_files,fd}`, and at
//! report time `open_by_handle_at(2)` + the `/proc/self/fd` link give the
//! name the file has *now* (or tell that it was deleted). A handle pins
//! nothing: deleting the file frees it as usual. Where no handle can be had
//! (another mount namespace, a filesystem without export support), the
//! learned path is checked with stat(2) against the (dev, ino).
use std::{
    collections::HashMap,
    ffi::CString,
    os::{
        fd::{FromRawFd as _, OwnedFd},
        unix::ffi::OsStrExt as _,
    },
    path::{Path, PathBuf},
};

use crate::{
    devnum::Dev,
    model::{FileId, PathInfo},
};

/// `MAX_HANDLE_SZ` (include/linux/exportfs.h).
const MAX_HANDLE: usize = 128;

/// A file handle and the mount it belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Handle {
    mount_id: i32,
    /// `struct file_handle`: handle_bytes (u32), handle_type (i32), f_handle.
    raw: Vec<u8>,
}

/// Takes the handle of the file `path` leads to (following the last link,
/// so `/proc/<pid>/fd/<n>` names the open file itself).
pub fn handle_of(path: &Path) -> Option<Handle> {
    let c = CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut raw = vec![0u8; 8 + MAX_HANDLE];
    raw[..4].copy_from_slice(&(MAX_HANDLE as u32).to_ne_bytes());
    let mut mount_id: i32 = 0;
    // SAFETY: `raw` is a file_handle with MAX_HANDLE bytes of room.
    let r = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            libc::AT_FDCWD,
            c.as_ptr(),
            raw.as_mut_ptr(),
            &mut mount_id as *mut i32,
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    if r != 0 {
        return None;
    }
    let len = u32::from_ne_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize;
    raw.truncate(8 + len.min(MAX_HANDLE));
    Some(Handle { mount_id, raw })
}

/// Mount points by mount id (`/proc/self/mountinfo`, first and fifth
/// fields; octal escapes decoded).
pub fn mount_points(mountinfo: &str) -> HashMap<i32, PathBuf> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            Some((f.first()?.parse().ok()?, PathBuf::from(unescape(f.get(4)?))))
        })
        .collect()
}

fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What a `/proc/self/fd` link says: the path, and whether the file was
/// deleted (the kernel appends " (deleted)").
pub fn parse_link(link: &[u8]) -> PathInfo {
    let (bytes, deleted) = match link.strip_suffix(b" (deleted)") {
        Some(p) => (p, true),
        None => (link, false),
    };
    let (path, raw) = crate::procfs::name_from_bytes(bytes);
    PathInfo { path, raw, deleted }
}

/// Handles of the files whose paths are known, and the mounts to open them.
#[derive(Debug, Default)]
pub struct Names {
    handles: HashMap<FileId, Option<Handle>>,
    mounts: HashMap<i32, OwnedFd>,
}

impl Names {
    /// Takes a handle for `id` through `link` (a `/proc/<pid>/fd/<n>` or
    /// `/proc/<pid>/map_files/<range>` link) unless one was tried already.
    pub fn learn(&mut self, id: FileId, link: &Path) {
        if !self.handles.get(&id).is_some_and(Option::is_some) {
            let h = handle_of(link);
            if h.is_none() {
                log::debug!("no file handle through {}", link.display());
            }
            self.handles.insert(id, h);
        }
    }

    /// Whether `id` has a handle.
    pub fn tried(&self, id: FileId) -> bool {
        self.handles.get(&id).is_some_and(Option::is_some)
    }

    /// The name of `id` now: through its handle, else `known` checked
    /// with stat(2) (a mismatch means the name no longer leads to it).
    ///
    /// A name that still leads to the file wins over the handle's: a file
    /// with several hard links (perf's build-id cache links every binary
    /// it has seen under ~/.debug) keeps the name its process used.
    pub fn current(&mut self, id: FileId, known: &PathInfo) -> PathInfo {
        let same = !known.deleted
            && std::fs::metadata(known.fs_path()).is_ok_and(|m| {
                use std::os::unix::fs::MetadataExt as _;
                Dev::from_user(m.dev()).to_kernel() == id.0 && m.ino() == id.1
            });
        if same {
            return known.clone();
        }
        if let Some(Some(h)) = self.handles.get(&id).cloned()
            && let Some(now) = self.resolve(&h, id)
        {
            return now;
        }
        PathInfo {
            deleted: true,
            ..known.clone()
        }
    }

    fn resolve(&mut self, h: &Handle, id: FileId) -> Option<PathInfo> {
        let mfd = self.mount_fd(h.mount_id)?;
        // SAFETY: `h.raw` is a file_handle as name_to_handle_at wrote it.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_open_by_handle_at,
                mfd,
                h.raw.as_ptr(),
                libc::O_PATH | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            log::debug!(
                "open_by_handle_at on mount {}: {}",
                h.mount_id,
                std::io::Error::last_os_error()
            );
            // ESTALE: the inode is gone, the file was deleted.
            return (std::io::Error::last_os_error().raw_os_error() == Some(libc::ESTALE)).then(
                || PathInfo {
                    path: String::new(),
                    raw: None,
                    deleted: true,
                },
            );
        }
        // SAFETY: a fresh fd we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        use std::os::fd::AsRawFd as _;
        let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).ok()?;
        let info = parse_link(std::os::unix::ffi::OsStrExt::as_bytes(link.as_os_str()));
        // A disconnected dentry (evicted from the dcache) has no full path:
        // accept the name only if it leads back to the same file.
        if !info.deleted {
            use std::os::unix::fs::MetadataExt as _;
            let m = std::fs::metadata(info.fs_path()).ok()?;
            if Dev::from_user(m.dev()).to_kernel() != id.0 || m.ino() != id.1 {
                return None;
            }
        }
        Some(info)
    }

    fn mount_fd(&mut self, mount_id: i32) -> Option<i32> {
        use std::os::fd::AsRawFd as _;
        if let Some(fd) = self.mounts.get(&mount_id) {
            return Some(fd.as_raw_fd());
        }
        let mi = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        let dir = mount_points(&mi).remove(&mount_id)?;
        let c = CString::new(dir.as_os_str().as_bytes()).ok()?;
        // SAFETY: plain open(2) of a directory.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return None;
        }
        // SAFETY: a fresh fd we own.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        let raw = owned.as_raw_fd();
        self.mounts.insert(mount_id, owned);
        Some(raw)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_by_id_with_escapes() {
        let mi = "22 1 0:21 / /proc rw - proc proc rw\n\
                  31 23 254:0 / /mnt/with\\040space rw - ext4 /dev/vda rw\n";
        let m = mount_points(mi);
        assert_eq!(m[&22], PathBuf::from("/proc"));
        assert_eq!(m[&31], PathBuf::from("/mnt/with space"));
    }

    #[test]
    fn links_say_deleted() {
        assert_eq!(
            parse_link(b"/tmp/a (deleted)"),
            PathInfo {
                path: "/tmp/a".into(),
                raw: None,
                deleted: true
            }
        );
        assert!(!parse_link(b"/memfd:x").deleted);
        let odd = parse_link(b"/tmp/\xff");
        assert_eq!(odd.raw.as_deref(), Some(&b"/tmp/\xff"[..]));
        assert_eq!(odd.path, "/tmp/\u{fffd}");
    }

    #[test]
    fn a_renamed_file_is_named_by_its_handle() {
        let d = tempfile::tempdir().unwrap();
        let tmp = d.path().join("data.tmp.1");
        let fin = d.path().join("data");
        std::fs::write(&tmp, b"x").unwrap();
        use std::os::unix::fs::MetadataExt as _;
        let m = std::fs::metadata(&tmp).unwrap();
        let id = (Dev::from_user(m.dev()).to_kernel(), m.ino());
        let mut n = Names::default();
        n.learn(id, &tmp);
        std::fs::rename(&tmp, &fin).unwrap();
        let old = PathInfo {
            path: tmp.display().to_string(),
            raw: None,
            deleted: false,
        };
        let now = n.current(id, &old);
        if n.handles[&id].is_some() {
            // root (CAP_DAC_READ_SEARCH) on a filesystem with handles
            assert_eq!(now.path, fin.display().to_string());
            assert!(!now.deleted);
        } else {
            assert!(now.deleted, "without a handle a stale name is marked");
        }
        std::fs::remove_file(&fin).unwrap();
        let gone = n.current(id, &old);
        assert!(gone.deleted);
    }

    #[test]
    fn a_hard_linked_file_keeps_the_name_its_process_used() {
        let d = tempfile::tempdir().unwrap();
        let used = d.path().join("libc.so.6");
        std::fs::write(&used, b"x").unwrap();
        // perf's build-id cache links binaries like this.
        std::fs::create_dir(d.path().join("cache")).unwrap();
        std::fs::hard_link(&used, d.path().join("cache/elf")).unwrap();
        use std::os::unix::fs::MetadataExt as _;
        let m = std::fs::metadata(&used).unwrap();
        let id = (Dev::from_user(m.dev()).to_kernel(), m.ino());
        let mut n = Names::default();
        n.learn(id, &d.path().join("cache/elf"));
        let known = PathInfo {
            path: used.display().to_string(),
            raw: None,
            deleted: false,
        };
        assert_eq!(n.current(id, &known), known);
    }
}
