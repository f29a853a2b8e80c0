//! Raw events (`--events`): single faults, page-cache additions and
//! evictions read from the kernel's `EVENTS` ring buffer, and OOM kills
//! (from the notices), turned into `"type":"event"` records. The kinds asked
//! for are parsed here; the kernel copies only those.
use mmtrace_common::{Event, event, event_mask, reason};
use schemars::JsonSchema;
use serde::Serialize;

use crate::devnum::Dev;

/// What a raw event is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    MinorFault,
    MajorFault,
    /// Pages added to the page cache (read, readahead, write).
    CacheAdd,
    /// Pages removed from the page cache.
    Eviction,
    /// The OOM killer chose a traced process.
    OomKill,
}

/// One raw event (`"type":"event"`).
#[derive(Clone, Debug, PartialEq, Serialize, JsonSchema)]
pub struct RawEvent {
    pub kind: EventKind,
    /// Seconds since the trace started (kernel monotonic clock).
    pub time_s: f64,
    /// The process that caused it (an eviction's may be kswapd or another
    /// process than the file's user).
    pub pid: u32,
    pub tid: u32,
    /// The process's command, when known.
    pub comm: Option<String>,
    /// The file (`null` for anonymous memory).
    pub dev: Option<Dev>,
    pub ino: Option<u64>,
    /// Its path, when learnt already.
    pub path: Option<String>,
    /// The path's exact bytes in hex, only when it is not UTF-8.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_bytes_hex: Option<String>,
    /// Page index in the file (faults: of the faulting address).
    pub offset_pages: Option<u64>,
    /// Cache events: pages of the folio; faults: pages mapped (fault-around).
    pub pages: u64,
    /// Faults: the faulting address.
    pub addr: Option<u64>,
    /// Faults: a write (x86 only; null where the kernel does not say).
    pub write: Option<bool>,
    /// Faults: a private write to a file (copy-on-write).
    pub cow: Option<bool>,
    /// Evictions: why (`memcg`, `kswapd`, `fadvise`, ... as in `evicted_by`).
    pub reason: Option<String>,
    /// Evictions: the page was charged to the traced cgroup.
    pub owned: Option<bool>,
    /// Faults: microseconds from the fault's entry to its accounting (x86,
    /// where the entry tracepoint exists).
    pub latency_us: Option<f64>,
}

/// The event kinds asked for with `--events`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Kinds {
    /// [`event_mask`] bits for the kernel.
    pub mask: u32,
    pub oom: bool,
}

impl Kinds {
    pub const NAMES: &[&str] = &[
        "faults",
        "minor",
        "major",
        "adds",
        "evictions",
        "oom",
        "all",
    ];

    /// Parses the names given to `--events`.
    pub fn parse(names: &[String]) -> Result<Self, String> {
        let mut k = Self::default();
        for n in names {
            match n.trim() {
                "faults" => k.mask |= event_mask::FAULTS,
                "minor" => k.mask |= event_mask::MINOR_FAULTS,
                "major" => k.mask |= event_mask::MAJOR_FAULTS,
                "adds" => k.mask |= event_mask::ADDS,
                "evictions" => k.mask |= event_mask::EVICTIONS,
                "oom" => k.oom = true,
                "all" => {
                    k.mask |= event_mask::FAULTS | event_mask::ADDS | event_mask::EVICTIONS;
                    k.oom = true;
                }
                other => {
                    return Err(format!(
                        "unknown event kind `{other}` (use {})",
                        Self::NAMES.join(", ")
                    ));
                }
            }
        }
        Ok(k)
    }

    pub fn any(self) -> bool {
        self.mask != 0 || self.oom
    }
}

/// Reads one ring-buffer item as an [`Event`] (`None`: too short).
pub fn decode(bytes: &[u8]) -> Option<Event> {
    (bytes.len() >= std::mem::size_of::<Event>())
        // SAFETY: the kernel wrote an Event; read_unaligned copes with alignment.
        .then(|| unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) })
}

/// What the record needs besides the event: the trace's clock origin, the
/// page size, whether write faults are told apart, and name lookups.
pub struct Context<'a> {
    /// `CLOCK_MONOTONIC` (ns) when the trace started.
    pub start_ns: u64,
    pub page_size: u64,
    pub write_faults: bool,
    /// (text, hex of the bytes when not UTF-8) of a file's path.
    pub path: &'a dyn Fn(u32, u64) -> Option<(String, Option<String>)>,
    pub comm: &'a dyn Fn(u32) -> Option<String>,
}

/// The record of a kernel event (`None`: a kind this version does not know).
pub fn record(e: &Event, cx: &Context) -> Option<RawEvent> {
    let kind = match e.kind {
        event::MINOR_FAULT => EventKind::MinorFault,
        event::MAJOR_FAULT => EventKind::MajorFault,
        event::CACHE_ADD => EventKind::CacheAdd,
        event::EVICTION => EventKind::Eviction,
        _ => return None,
    };
    let fault = matches!(kind, EventKind::MinorFault | EventKind::MajorFault);
    let (path, path_bytes_hex) =
        match (fault && e.flags & event::FILE == 0, (cx.path)(e.dev, e.ino)) {
            (false, Some((p, h))) => (Some(p), h),
            _ => (None, None),
        };
    let has_file = if fault {
        e.flags & event::FILE != 0
    } else {
        true
    };
    let offset = match (fault, has_file) {
        (true, true) => Some(e.index + e.addr.saturating_sub(e.vm_start) / cx.page_size.max(1)),
        (true, false) => None,
        (false, _) => Some(e.index),
    };
    let flag = |bit| fault.then_some(e.flags & bit != 0);
    Some(RawEvent {
        kind,
        time_s: e.ktime_ns.saturating_sub(cx.start_ns) as f64 / 1e9,
        pid: e.tgid,
        tid: e.tid,
        comm: (cx.comm)(e.tgid),
        dev: has_file.then(|| Dev::from_kernel(e.dev)),
        ino: has_file.then_some(e.ino),
        path,
        path_bytes_hex,
        offset_pages: offset,
        pages: e.pages,
        addr: fault.then_some(e.addr),
        write: if cx.write_faults {
            flag(event::WRITE)
        } else {
            None
        },
        cow: if cx.write_faults {
            flag(event::COW)
        } else {
            None
        },
        reason: (kind == EventKind::Eviction)
            .then(|| reason::NAMES.get(e.reason as usize).map(|s| s.to_string()))
            .flatten(),
        owned: (kind == EventKind::Eviction).then_some(e.flags & event::OWNED != 0),
        latency_us: (fault && e.latency_ns != 0).then(|| e.latency_ns as f64 / 1e3),
    })
}

/// An OOM kill as a raw event.
pub fn oom_event(k: &crate::model::OomKill) -> RawEvent {
    RawEvent {
        kind: EventKind::OomKill,
        time_s: k.elapsed_s,
        pid: k.pid,
        tid: k.pid,
        comm: Some(k.comm.clone()),
        dev: None,
        ino: None,
        path: None,
        path_bytes_hex: None,
        offset_pages: None,
        pages: 0,
        addr: None,
        write: None,
        cow: None,
        reason: None,
        owned: None,
        latency_us: None,
    }
}

/// `CLOCK_MONOTONIC` now, in ns (the clock of `bpf_ktime_get_ns`).
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn kinds_parse_and_unknown_ones_are_named() {
        let k = Kinds::parse(&names(&["faults", "evictions"])).unwrap();
        assert_eq!(k.mask, event_mask::FAULTS | event_mask::EVICTIONS);
        assert!(!k.oom);
        let k = Kinds::parse(&names(&["major", "oom"])).unwrap();
        assert_eq!(k.mask, event_mask::MAJOR_FAULTS);
        assert!(k.oom && k.any());
        let k = Kinds::parse(&names(&["all"])).unwrap();
        assert_eq!(
            k.mask,
            event_mask::FAULTS | event_mask::ADDS | event_mask::EVICTIONS
        );
        let e = Kinds::parse(&names(&["faults", "swap"])).unwrap_err();
        assert!(e.contains("`swap`") && e.contains("evictions"), "{e}");
        assert!(!Kinds::parse(&[]).unwrap().any());
    }

    fn cx<'a>(
        path: &'a dyn Fn(u32, u64) -> Option<(String, Option<String>)>,
        comm: &'a dyn Fn(u32) -> Option<String>,
    ) -> Context<'a> {
        Context {
            start_ns: 1_000_000_000,
            page_size: 4096,
            write_faults: true,
            path,
            comm,
        }
    }

    #[test]
    fn a_file_fault_gets_its_file_offset_path_and_latency() {
        let path = |dev, ino| (dev == 5 && ino == 9).then(|| ("/data/x".to_string(), None));
        let comm = |pid| (pid == 7).then(|| "python3".to_string());
        let e = Event {
            kind: event::MAJOR_FAULT,
            tgid: 7,
            tid: 8,
            dev: 5,
            ino: 9,
            index: 10,
            pages: 16,
            addr: 0x7000_3000,
            vm_start: 0x7000_0000,
            ktime_ns: 1_500_000_000,
            latency_ns: 2_500,
            flags: event::FILE | event::WRITE | event::COW,
            ..Event::default()
        };
        let r = record(&e, &cx(&path, &comm)).unwrap();
        assert_eq!(r.kind, EventKind::MajorFault);
        assert_eq!(r.offset_pages, Some(13));
        assert_eq!(r.path.as_deref(), Some("/data/x"));
        assert_eq!(r.comm.as_deref(), Some("python3"));
        assert_eq!((r.write, r.cow), (Some(true), Some(true)));
        assert_eq!(r.latency_us, Some(2.5));
        assert!((r.time_s - 0.5).abs() < 1e-9);
        assert_eq!(r.reason, None);
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["kind"], "major_fault");
        assert_eq!(v["dev"], "0:5");
    }

    #[test]
    fn anonymous_faults_and_evictions() {
        let none2 = |_, _| None;
        let none1 = |_| None;
        let anon = Event {
            kind: event::MINOR_FAULT,
            addr: 0x1000,
            ..Event::default()
        };
        let r = record(&anon, &cx(&none2, &none1)).unwrap();
        assert_eq!((r.dev, r.ino, r.offset_pages), (None, None, None));
        assert_eq!(r.latency_us, None);
        let ev = Event {
            kind: event::EVICTION,
            ino: 3,
            index: 64,
            pages: 4,
            reason: reason::MEMCG as u32,
            flags: event::OWNED,
            ..Event::default()
        };
        let r = record(&ev, &cx(&none2, &none1)).unwrap();
        assert_eq!(r.reason.as_deref(), Some(reason::NAMES[reason::MEMCG]));
        assert_eq!(
            (r.offset_pages, r.pages, r.owned),
            (Some(64), 4, Some(true))
        );
        assert_eq!((r.addr, r.write), (None, None));
        let unknown = Event {
            kind: 99,
            ..Event::default()
        };
        assert!(record(&unknown, &cx(&none2, &none1)).is_none());
        assert!(decode(&[0; 8]).is_none());
        let bytes = [0u8; std::mem::size_of::<Event>()];
        assert_eq!(decode(&bytes), Some(Event::default()));
    }
}
