//! `/api/pagemap`: which pages of one traced file are in the page cache
//! now (mmap PROT_READ + mincore, through `residency`), in at most 512
//! bands, with the faults and evictions the raw events (`--events`) saw in
//! each band.
use std::{
    collections::HashMap,
    path::PathBuf,
    time::{Duration, Instant},
};

use serde::Serialize;

use crate::{
    collect::events::{EventKind, RawEvent},
    devnum::Dev,
    model::{FileKind, FileRow},
};

/// Bands of a page map at most.
pub const MAX_BANDS: u64 = 512;
/// Page buckets kept per file for event counts; past it, buckets double in
/// width (counts stay exact per bucket, bands as fine as the buckets).
const MAX_BUCKETS: usize = 4096;
/// Files whose raw events are counted at most (the first seen).
const MAX_EVENT_FILES: usize = 256;
/// Files the page map may be asked for at most (the allow-list).
const MAX_KNOWN: usize = 65_536;
/// How long one answer is reused.
pub const CACHE_FOR: Duration = Duration::from_secs(2);

/// Faults and evictions of one file, counted per bucket of 2^shift pages.
#[derive(Clone, Debug, Default)]
pub struct PageCounts {
    shift: u32,
    buckets: HashMap<u64, (u64, u64)>,
}

impl PageCounts {
    pub fn add(&mut self, page: u64, faults: u64, evictions: u64) {
        let e = self.buckets.entry(page >> self.shift).or_default();
        e.0 += faults;
        e.1 += evictions;
        while self.buckets.len() > MAX_BUCKETS {
            self.shift += 1;
            let old = std::mem::take(&mut self.buckets);
            for (b, (f, v)) in old {
                let e = self.buckets.entry(b >> 1).or_default();
                e.0 += f;
                e.1 += v;
            }
        }
    }

    /// (faults, evictions) in pages `[start, end)`: each bucket counts in
    /// the band its first page falls in.
    fn sum(&self, start: u64, end: u64) -> (u64, u64) {
        self.buckets
            .iter()
            .filter(|(b, _)| {
                let p = **b << self.shift;
                p >= start && p < end
            })
            .fold((0, 0), |a, (_, v)| (a.0 + v.0, a.1 + v.1))
    }
}

/// A file of the trace the page map may be asked for.
#[derive(Clone, Debug)]
pub struct Known {
    pub path: PathBuf,
    pub label: String,
}

/// The allow-list and the per-page event counts.
#[derive(Debug, Default)]
pub struct Files {
    known: HashMap<(Dev, u64), Known>,
    counts: HashMap<(Dev, u64), PageCounts>,
    /// Raw events were asked for: bands carry counts.
    pub counting: bool,
}

impl Files {
    /// Learns the files of a record's rows.
    pub fn learn(&mut self, rows: &[FileRow]) {
        for f in rows {
            let (Some(dev), FileKind::File, true) = (f.dev, f.kind, f.path_known) else {
                continue;
            };
            if f.deleted
                || (self.known.len() >= MAX_KNOWN && !self.known.contains_key(&(dev, f.ino)))
            {
                continue;
            }
            let path = match f.path_bytes_hex.as_deref().and_then(crate::model::unhex) {
                Some(b) => PathBuf::from(
                    <std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(b),
                ),
                None => PathBuf::from(&f.path),
            };
            self.known.insert(
                (dev, f.ino),
                Known {
                    path,
                    label: f.path.clone(),
                },
            );
        }
    }

    pub fn event(&mut self, e: &RawEvent) {
        let (Some(dev), Some(ino), Some(page)) = (e.dev, e.ino, e.offset_pages) else {
            return;
        };
        let (f, v) = match e.kind {
            EventKind::MinorFault | EventKind::MajorFault => (1, 0),
            EventKind::Eviction => (0, e.pages.max(1)),
            _ => return,
        };
        if !self.counts.contains_key(&(dev, ino)) && self.counts.len() >= MAX_EVENT_FILES {
            return;
        }
        self.counts.entry((dev, ino)).or_default().add(page, f, v);
    }

    pub fn by_id(&self, dev: Dev, ino: u64) -> Option<(Dev, u64, Known)> {
        self.known.get(&(dev, ino)).map(|k| (dev, ino, k.clone()))
    }

    pub fn by_path(&self, path: &str) -> Option<(Dev, u64, Known)> {
        self.known
            .iter()
            .find(|(_, k)| k.label == path || k.path.as_os_str() == path)
            .map(|(id, k)| (id.0, id.1, k.clone()))
    }

    pub fn counts(&self, dev: Dev, ino: u64) -> Option<PageCounts> {
        self.counting
            .then(|| self.counts.get(&(dev, ino)).cloned().unwrap_or_default())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Band {
    pub start_page: u64,
    /// Exclusive.
    pub end_page: u64,
    pub resident_pages: u64,
    pub faults: Option<u64>,
    pub evictions: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PageMap {
    pub path: String,
    pub dev: String,
    pub ino: u64,
    pub size_bytes: u64,
    pub page_size: u64,
    pub pages: u64,
    pub resident_pages: u64,
    pub bands: Vec<Band>,
}

/// Pages per band for a file of `pages` pages.
pub fn band_width(pages: u64) -> u64 {
    pages.div_ceil(MAX_BANDS).max(1)
}

/// The bands of a file from its per-page residency.
pub fn bands(resident: &[bool], counts: Option<&PageCounts>) -> Vec<Band> {
    let pages = resident.len() as u64;
    let w = band_width(pages);
    (0..pages.div_ceil(w))
        .map(|b| {
            let (start, end) = (b * w, ((b + 1) * w).min(pages));
            let r = resident[start as usize..end as usize]
                .iter()
                .filter(|x| **x)
                .count() as u64;
            let c = counts.map(|c| c.sum(start, end));
            Band {
                start_page: start,
                end_page: end,
                resident_pages: r,
                faults: c.map(|c| c.0),
                evictions: c.map(|c| c.1),
            }
        })
        .collect()
}

/// Measures one file now. Refuses a path that names another file than the
/// traced one (replaced since).
pub fn measure(
    dev: Dev,
    ino: u64,
    known: &Known,
    counts: Option<&PageCounts>,
    page_size: u64,
) -> Result<PageMap, crate::residency::ResidencyError> {
    let mut resident = Vec::new();
    let size = crate::residency::each_page(&known.path, Some((dev, ino)), |i, r| {
        if i as usize == resident.len() {
            resident.push(r);
        }
    })?;
    let bands = bands(&resident, counts);
    Ok(PageMap {
        path: known.label.clone(),
        dev: dev.to_string(),
        ino,
        size_bytes: size,
        page_size,
        pages: resident.len() as u64,
        resident_pages: resident.iter().filter(|x| **x).count() as u64,
        bands,
    })
}

/// Answers reused for [`CACHE_FOR`].
#[derive(Debug, Default)]
pub struct Cache {
    entries: HashMap<(Dev, u64), (Instant, std::sync::Arc<str>)>,
}

impl Cache {
    pub fn get(&mut self, dev: Dev, ino: u64) -> Option<std::sync::Arc<str>> {
        self.entries.retain(|_, (t, _)| t.elapsed() < CACHE_FOR);
        self.entries.get(&(dev, ino)).map(|(_, v)| v.clone())
    }
    pub fn put(&mut self, dev: Dev, ino: u64, v: std::sync::Arc<str>) {
        self.entries.insert((dev, ino), (Instant::now(), v));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bands_cover_the_file_in_at_most_512() {
        let r: Vec<bool> = (0..1000).map(|i| i < 300).collect();
        let b = bands(&r, None);
        assert_eq!(b.len(), 500);
        assert_eq!(
            (b[0].start_page, b[0].end_page, b[0].resident_pages),
            (0, 2, 2)
        );
        assert_eq!(b.iter().map(|b| b.resident_pages).sum::<u64>(), 300);
        assert_eq!(b.last().unwrap().end_page, 1000);
        assert!(b[0].faults.is_none());
        let r = vec![true; 100_000];
        let b = bands(&r, None);
        assert!(b.len() <= 512, "{}", b.len());
        assert_eq!(b.last().unwrap().end_page, 100_000);
        assert_eq!(
            b.iter().map(|b| b.end_page - b.start_page).sum::<u64>(),
            100_000
        );
        assert!(bands(&[], None).is_empty());
    }

    #[test]
    fn event_counts_land_in_their_band_and_stay_bounded() {
        let mut c = PageCounts::default();
        c.add(0, 1, 0);
        c.add(5, 0, 4);
        c.add(999, 1, 0);
        let r = vec![false; 1000];
        let b = bands(&r, Some(&c));
        assert_eq!(b[0].faults, Some(1));
        assert_eq!(b[2].evictions, Some(4));
        assert_eq!(b.last().unwrap().faults, Some(1));
        for p in 0..100_000 {
            c.add(p, 1, 0);
        }
        assert!(c.buckets.len() <= MAX_BUCKETS);
        let (f, v) = c.sum(0, u64::MAX);
        assert_eq!((f, v), (100_002, 4));
    }

    #[test]
    fn hex_names_decode() {
        assert_eq!(crate::model::unhex("61ff0a"), Some(vec![0x61, 0xff, 0x0a]));
        assert_eq!(crate::model::unhex("6"), None);
        assert_eq!(crate::model::unhex("zz"), None);
    }
}
