//! Data files the demo, the workloads and the tests make: written with
//! non-zero data (every page really backed), fsynced, and dropped from the
//! page cache so a reader faults every page in again. Sizes as people
//! write them (`64K`, `512M`, `1G`).
use std::{
    fs::File,
    io::Write as _,
    os::fd::AsRawFd as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

/// Size of the chunks written.
pub const CHUNK: usize = 1 << 20;

/// Writes `size` bytes of non-zero data to `path` and fsyncs it.
pub fn make_file(path: &Path, size: u64) -> Result<File> {
    let chunk: Vec<u8> = (0..CHUNK).map(|i| (i % 251) as u8 + 1).collect();
    let mut file = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut left = size;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        file.write_all(&chunk[..n])
            .with_context(|| format!("writing {}", path.display()))?;
        left -= n as u64;
    }
    file.sync_all()
        .with_context(|| format!("fsync {}", path.display()))?;
    Ok(file)
}

/// Writes back and then evicts the file's page cache.
pub fn drop_cache(file: &File) -> Result<()> {
    file.sync_data().context("fdatasync")?;
    fadvise_dontneed(file)
}

/// POSIX_FADV_DONTNEED on the whole file.
pub fn fadvise_dontneed(file: &File) -> Result<()> {
    // SAFETY: plain syscall on an open descriptor.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc != 0 {
        return Err(std::io::Error::from_raw_os_error(rc)).context("posix_fadvise(DONTNEED)");
    }
    Ok(())
}

/// Writes `<dir>/mmtrace-demo.dat` with `bytes` of data, out of the page
/// cache (so a reader brings every page in again, charged to its own
/// cgroup), and returns its path.
pub fn demo_file(dir: &Path, bytes: u64) -> Result<PathBuf> {
    let path = dir.join("mmtrace-demo.dat");
    let f = make_file(&path, bytes)?;
    drop_cache(&f).with_context(|| format!("dropping the cache of {}", path.display()))?;
    Ok(path)
}

/// Parses a byte count: a plain number or one with a K/M/G/T suffix
/// (powers of 1024, optionally followed by `iB` or `B`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let digits = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, suffix) = t.split_at(digits);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("`{s}` is not a size (e.g. 4096, 64K, 512M, 1G)"))?;
    let shift = match suffix.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(format!("`{s}`: unknown size suffix (use K, M, G or T)")),
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("`{s}` is too large"))
}

/// A size that fits in 32 bits (map and buffer sizes).
pub fn parse_u32_size(s: &str) -> Result<u32, String> {
    let n = parse_size(s)?;
    u32::try_from(n).map_err(|_| format!("`{s}` is too large (at most 4G - 1)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size(" 1g "), Ok(1 << 30));
        assert!(
            parse_size("1X")
                .unwrap_err()
                .contains("unknown size suffix")
        );
        assert!(parse_size("M").unwrap_err().contains("not a size"));
        assert!(parse_size("99999999T").unwrap_err().contains("too large"));
        assert_eq!(parse_u32_size("4M"), Ok(4 << 20));
        assert!(parse_u32_size("4G").unwrap_err().contains("at most"));
    }

    #[test]
    fn made_files_are_whole_and_uncached() {
        let d = tempfile::tempdir().unwrap();
        let p = demo_file(d.path(), 3 * CHUNK as u64 + 5).unwrap();
        let data = std::fs::read(&p).unwrap();
        assert_eq!(data.len(), 3 * CHUNK + 5);
        assert!(data.iter().all(|&b| b != 0));
    }
}
