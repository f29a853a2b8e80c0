//! What the bench reads from /proc, parsed from text (unit-tested on
//! synthetic input): the machine (kernel, CPU model, CPUs), a process's
//! peak RSS, and the memory its BPF maps lock (their fdinfo `memlock`).

use std::path::Path;

/// The machine a bench ran on.
#[derive(Clone, Debug, PartialEq)]
pub struct Machine {
    pub kernel: String,
    pub cpu_model: String,
    pub cpus: usize,
}

impl Machine {
    pub fn read() -> Self {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        Self::parse(&read("/proc/sys/kernel/osrelease"), &read("/proc/cpuinfo"))
    }

    pub fn parse(osrelease: &str, cpuinfo: &str) -> Self {
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == "model name").then(|| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        let cpus = cpuinfo
            .lines()
            .filter(|l| {
                l.split_once(':')
                    .is_some_and(|(k, _)| k.trim() == "processor")
            })
            .count();
        Self {
            kernel: osrelease.trim().to_owned(),
            cpu_model,
            cpus,
        }
    }
}

/// A `kB` field of /proc/PID/status (`VmHWM`, `VmRSS`), in bytes.
pub fn status_kb(status: &str, field: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let rest = l.strip_prefix(field)?.strip_prefix(':')?;
        let kb: u64 = rest.split_whitespace().next()?.parse().ok()?;
        Some(kb * 1024)
    })
}

/// `(maps, bytes)`: the BPF maps among fdinfo texts and the sum of their
/// `memlock`.
pub fn maps_memlock<'a>(fdinfos: impl IntoIterator<Item = &'a str>) -> (usize, u64) {
    let mut n = 0;
    let mut bytes = 0;
    for text in fdinfos {
        if !text.lines().any(|l| l.starts_with("map_type:")) {
            continue;
        }
        n += 1;
        bytes += text
            .lines()
            .find_map(|l| l.strip_prefix("memlock:")?.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    (n, bytes)
}

/// What a process holds now: peak RSS, RSS, and its maps' locked memory.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Footprint {
    pub hwm: u64,
    pub rss: u64,
    pub maps: usize,
    pub memlock: u64,
}

impl Footprint {
    pub fn of(pid: u32) -> Option<Self> {
        let dir = Path::new("/proc").join(pid.to_string());
        let status = std::fs::read_to_string(dir.join("status")).ok()?;
        let texts: Vec<String> = std::fs::read_dir(dir.join("fdinfo"))
            .ok()?
            .flatten()
            .filter_map(|e| std::fs::read_to_string(e.path()).ok())
            .collect();
        let (maps, memlock) = maps_memlock(texts.iter().map(String::as_str));
        Some(Self {
            hwm: status_kb(&status, "VmHWM").unwrap_or(0),
            rss: status_kb(&status, "VmRSS").unwrap_or(0),
            maps,
            memlock,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_from_cpuinfo() {
        let cpuinfo = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel Xeon X\n\n\
                       processor\t: 1\nmodel name\t: Intel Xeon X\n";
        let m = Machine::parse("6.18.44\n", cpuinfo);
        assert_eq!(
            m,
            Machine {
                kernel: "6.18.44".into(),
                cpu_model: "Intel Xeon X".into(),
                cpus: 2
            }
        );
        assert_eq!(Machine::parse("", "").cpu_model, "unknown");
    }

    #[test]
    fn status_fields_in_bytes() {
        let s = "Name:\tmmtrace\nVmHWM:\t   27000 kB\nVmRSS:\t   19000 kB\n";
        assert_eq!(status_kb(s, "VmHWM"), Some(27000 * 1024));
        assert_eq!(status_kb(s, "VmRSS"), Some(19000 * 1024));
        assert_eq!(status_kb(s, "VmSwap"), None);
    }

    #[test]
    fn memlock_of_maps_only() {
        let map = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1\nmap_type:\t1\nkey_size:\t4\n\
                   value_size:\t8\nmax_entries:\t1024\nmap_flags:\t0x0\nmap_extra:\t0x0\n\
                   memlock:\t86016\nmap_id:\t7\n";
        let prog = "pos:\t0\nflags:\t02000002\nprog_type:\t7\nprog_jited:\t1\nmemlock:\t4096\n";
        let file = "pos:\t0\nflags:\t0100000\n";
        assert_eq!(maps_memlock([map, prog, file, map]), (2, 2 * 86016));
    }
}
