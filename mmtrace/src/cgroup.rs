//! Control groups: resolving what `--cgroup` names (cgroup v2, a v1 memory
//! controller path, or a name relative to the memory hierarchy), walking the
//! tree, listing its processes, and reading its memory state (usage, limits,
//! `memory.stat`, PSI). Readers take the paths they read, so the parsing is
//! tested on fixture directories.
use std::{
    collections::BTreeMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "cgroup {0} not found (give a path under /sys/fs/cgroup, or a name in the memory hierarchy)"
    )]
    NotFound(String),
    #[error(
        "{path} is in a cgroup v1 hierarchy without the memory controller ({controllers}); give the memory \
         controller's path, e.g. {hint}"
    )]
    NotMemory {
        path: PathBuf,
        controllers: String,
        hint: String,
    },
    #[error("{0} is not a cgroup directory (no cgroup.procs)")]
    NotCgroup(PathBuf),
    #[error("reading {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Version {
    V1,
    V2,
}

/// A mounted cgroup hierarchy (from /proc/self/mountinfo).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub point: PathBuf,
    pub version: Version,
    /// v1 controllers (`memory`, `cpu`, …); empty for v2.
    pub controllers: Vec<String>,
}

/// Parses the cgroup mounts out of /proc/self/mountinfo.
pub fn mounts(mountinfo: &str) -> Vec<Mount> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let point = left.split_whitespace().nth(4)?;
            let mut r = right.split_whitespace();
            let fstype = r.next()?;
            let _source = r.next();
            let opts = r.next().unwrap_or("");
            let point = PathBuf::from(point.replace("\\040", " "));
            match fstype {
                "cgroup2" => Some(Mount {
                    point,
                    version: Version::V2,
                    controllers: vec![],
                }),
                "cgroup" => {
                    let known = [
                        "memory", "cpu", "cpuacct", "cpuset", "blkio", "devices", "freezer", "pids",
                    ];
                    let controllers = opts
                        .split(',')
                        .filter(|o| known.contains(o) || o.starts_with("name="))
                        .map(str::to_string)
                        .collect();
                    Some(Mount {
                        point,
                        version: Version::V1,
                        controllers,
                    })
                }
                _ => None,
            }
        })
        .collect()
}

/// The hierarchy id of a v1 controller (`N` of the `N:controller:` line of
/// /proc/self/cgroup), or of cgroup v2 (0) when `controller` is `None`.
pub fn hierarchy_id(proc_self_cgroup: &str, controller: Option<&str>) -> u32 {
    let Some(controller) = controller else {
        return 0;
    };
    proc_self_cgroup
        .lines()
        .find_map(|l| {
            let mut it = l.splitn(3, ':');
            let (id, ctrl) = (it.next()?, it.next()?);
            ctrl.split(',')
                .any(|c| c == controller)
                .then(|| id.parse().ok())?
        })
        .unwrap_or(0)
}

/// A resolved `--cgroup` target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, schemars::JsonSchema)]
pub struct Cgroup {
    pub path: PathBuf,
    pub version: Version,
    /// `cgroup_root.hierarchy_id` of its hierarchy (0 for v2).
    pub hierarchy: u32,
    /// Whether memory files (limits, memory.stat) are there.
    pub has_memory: bool,
}

/// Resolves `arg` against the mounted hierarchies.
pub fn resolve(arg: &str, mounts: &[Mount], proc_self_cgroup: &str) -> Result<Cgroup, CgroupError> {
    let memory_v1 = mounts
        .iter()
        .find(|m| m.controllers.iter().any(|c| c == "memory"));
    let v2 = mounts.iter().find(|m| m.version == Version::V2);
    let candidates: Vec<PathBuf> = if Path::new(arg).is_absolute() {
        vec![PathBuf::from(arg)]
    } else {
        let rel = arg.trim_start_matches("./");
        [memory_v1, v2]
            .into_iter()
            .flatten()
            .map(|m| m.point.join(rel))
            .collect()
    };
    let path = candidates
        .into_iter()
        .find(|p| p.is_dir())
        .ok_or_else(|| CgroupError::NotFound(arg.to_string()))?;
    if !path.join("cgroup.procs").exists() {
        return Err(CgroupError::NotCgroup(path));
    }
    // The deepest mount containing the path says which hierarchy it is in.
    let mount = mounts
        .iter()
        .filter(|m| path.starts_with(&m.point))
        .max_by_key(|m| m.point.as_os_str().len())
        .ok_or_else(|| CgroupError::NotCgroup(path.clone()))?;
    match mount.version {
        Version::V2 => Ok(Cgroup {
            has_memory: path.join("memory.current").exists(),
            path,
            version: Version::V2,
            hierarchy: 0,
        }),
        Version::V1 => {
            if !mount.controllers.iter().any(|c| c == "memory") {
                let hint = memory_v1
                    .map(|m| m.point.join("…").display().to_string())
                    .unwrap_or_else(|| "/sys/fs/cgroup/memory/…".into());
                return Err(CgroupError::NotMemory {
                    path,
                    controllers: mount.controllers.join(","),
                    hint,
                });
            }
            Ok(Cgroup {
                has_memory: true,
                path,
                version: Version::V1,
                hierarchy: hierarchy_id(proc_self_cgroup, Some("memory")),
            })
        }
    }
}

/// The cgroup and every descendant, with their ids (directory inode numbers:
/// the kernel's `kernfs_node.id`).
pub fn tree(root: &Path) -> Vec<(PathBuf, u64)> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(md) = std::fs::metadata(&dir) else {
            continue;
        };
        out.push((dir.clone(), md.ino()));
        if let Ok(rd) = std::fs::read_dir(&dir) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                }
            }
        }
    }
    out
}

/// Processes in `dirs` (their `cgroup.procs`).
pub fn procs(dirs: &[(PathBuf, u64)]) -> Vec<u32> {
    let mut v: Vec<u32> = dirs
        .iter()
        .filter_map(|(d, _)| std::fs::read_to_string(d.join("cgroup.procs")).ok())
        .flat_map(|t| {
            t.lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Pressure stall information (the `some`/`full` lines of a `*.pressure` file).
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize, schemars::JsonSchema)]
pub struct Psi {
    pub some_avg10: f64,
    pub some_total_us: u64,
    pub full_avg10: f64,
    pub full_total_us: u64,
}

pub fn parse_psi(text: &str) -> Option<Psi> {
    let mut p = Psi::default();
    let mut seen = false;
    for l in text.lines() {
        let mut it = l.split_whitespace();
        let kind = it.next()?;
        let (mut avg10, mut total) = (0.0, 0);
        for kv in it {
            match kv.split_once('=') {
                Some(("avg10", v)) => avg10 = v.parse().ok()?,
                Some(("total", v)) => total = v.parse().ok()?,
                _ => {}
            }
        }
        match kind {
            "some" => (p.some_avg10, p.some_total_us) = (avg10, total),
            "full" => (p.full_avg10, p.full_total_us) = (avg10, total),
            _ => continue,
        }
        seen = true;
    }
    seen.then_some(p)
}

/// The memory cgroup in a `/proc/<pid>/cgroup` text: the v1 line whose
/// controllers include `memory`, else the v2 line (`0::/path`).
pub fn memory_cgroup_of(proc_pid_cgroup: &str) -> Option<String> {
    let mut v2 = None;
    for l in proc_pid_cgroup.lines() {
        let mut it = l.splitn(3, ':');
        let (Some(id), Some(ctrl), Some(path)) = (it.next(), it.next(), it.next()) else {
            continue;
        };
        if ctrl.split(',').any(|c| c == "memory") {
            return Some(path.to_string());
        }
        if id == "0" && ctrl.is_empty() {
            v2 = Some(path.to_string());
        }
    }
    v2
}

/// A cgroup's memory state at one moment, in bytes, normalised across v1
/// and v2 (v1 uses the hierarchical `total_*` counters).
#[derive(Clone, Debug, Default, PartialEq, Serialize, schemars::JsonSchema)]
pub struct MemoryState {
    pub usage_bytes: u64,
    /// The hard limit (v1 `memory.limit_in_bytes`, v2 `memory.max`); null if unlimited.
    pub limit_bytes: Option<u64>,
    /// v2 `memory.high`; null if unlimited or v1.
    pub high_bytes: Option<u64>,
    /// File-backed page cache (v1 `total_cache`, v2 `file`).
    pub file_bytes: u64,
    /// Anonymous memory (v1 `total_rss`, v2 `anon`).
    pub anon_bytes: u64,
    pub shmem_bytes: u64,
    /// Dirty file pages (v1 `total_dirty`, v2 `file_dirty`).
    pub dirty_bytes: u64,
    /// The kernel's refault counter (`workingset_refault_file`), pages.
    pub refault_file: u64,
    /// OOM kills in the cgroup (v1 `memory.oom_control` `oom_kill`, v2
    /// `memory.events` `oom_kill`), cumulative; null if unreadable.
    pub oom_kills: Option<u64>,
    /// Times usage hit the limit (v1 `memory.failcnt`, v2 `memory.events`
    /// `max`), cumulative; null if unreadable.
    pub limit_hits: Option<u64>,
    /// `memory.pressure` (v2) or /proc/pressure/memory (system-wide) when the
    /// cgroup has none.
    pub psi: Option<Psi>,
    pub psi_scope: Option<&'static str>,
}

/// Limits written as "max" or as v1's "unlimited" page-counter value.
fn limit(text: &str) -> Option<u64> {
    let t = text.trim();
    if t == "max" {
        return None;
    }
    let v: u64 = t.parse().ok()?;
    (v < (1 << 62)).then_some(v)
}

fn stat_map(text: &str) -> BTreeMap<String, u64> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(' ')?;
            Some((k.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// Reads the memory state of `cg` (`system_psi`: /proc/pressure/memory).
pub fn memory_state(cg: &Cgroup, system_psi: &Path) -> Result<MemoryState, CgroupError> {
    let read = |name: &str| {
        let p = cg.path.join(name);
        std::fs::read_to_string(&p).map_err(|source| CgroupError::Io { path: p, source })
    };
    let mut m = MemoryState::default();
    match cg.version {
        Version::V1 => {
            m.usage_bytes = read("memory.usage_in_bytes")?.trim().parse().unwrap_or(0);
            m.limit_bytes = limit(&read("memory.limit_in_bytes")?);
            let s = stat_map(&read("memory.stat")?);
            let g = |k: &str| {
                s.get(&format!("total_{k}"))
                    .or_else(|| s.get(k))
                    .copied()
                    .unwrap_or(0)
            };
            (m.file_bytes, m.anon_bytes, m.shmem_bytes, m.dirty_bytes) =
                (g("cache"), g("rss"), g("shmem"), g("dirty"));
            m.refault_file = g("workingset_refault_file");
            m.oom_kills = read("memory.oom_control")
                .ok()
                .and_then(|t| stat_map(&t).get("oom_kill").copied());
            m.limit_hits = read("memory.failcnt")
                .ok()
                .and_then(|t| t.trim().parse().ok());
        }
        Version::V2 => {
            m.usage_bytes = read("memory.current")?.trim().parse().unwrap_or(0);
            m.limit_bytes = limit(&read("memory.max")?);
            m.high_bytes = limit(&read("memory.high")?);
            let s = stat_map(&read("memory.stat")?);
            let g = |k: &str| s.get(k).copied().unwrap_or(0);
            (m.file_bytes, m.anon_bytes, m.shmem_bytes, m.dirty_bytes) =
                (g("file"), g("anon"), g("shmem"), g("file_dirty"));
            m.refault_file = g("workingset_refault_file");
            let ev = read("memory.events").map(|t| stat_map(&t)).ok();
            m.oom_kills = ev.as_ref().and_then(|e| e.get("oom_kill").copied());
            m.limit_hits = ev.as_ref().and_then(|e| e.get("max").copied());
        }
    }
    if let Some(p) = std::fs::read_to_string(cg.path.join("memory.pressure"))
        .ok()
        .and_then(|t| parse_psi(&t))
    {
        (m.psi, m.psi_scope) = (Some(p), Some("cgroup"));
    } else if let Some(p) = std::fs::read_to_string(system_psi)
        .ok()
        .and_then(|t| parse_psi(&t))
    {
        (m.psi, m.psi_scope) = (Some(p), Some("system"));
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
22 1 0:21 / /proc rw,nosuid - proc proc rw
";

    #[test]
    fn mounts_are_parsed_with_their_controllers() {
        let m = mounts(MOUNTINFO);
        assert_eq!(m.len(), 4);
        assert_eq!(m[1].controllers, ["memory"]);
        assert_eq!(m[2].controllers, ["name=systemd"]);
        assert_eq!(m[3].version, Version::V2);
    }

    #[test]
    fn hierarchy_ids_come_from_proc_self_cgroup() {
        let pc = "12:pids:/\n4:memory:/user.slice\n7:cpu,cpuacct:/\n0::/\n";
        assert_eq!(hierarchy_id(pc, Some("memory")), 4);
        assert_eq!(hierarchy_id(pc, Some("cpuacct")), 7);
        assert_eq!(hierarchy_id(pc, None), 0);
    }

    /// A fake /sys/fs/cgroup with a v1 memory and a v2 hierarchy.
    fn fixture() -> (tempfile::TempDir, Vec<Mount>) {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        for (dir, files) in [
            (
                "memory/app",
                vec![
                    ("cgroup.procs", "10\n11\n"),
                    ("memory.usage_in_bytes", "1048576\n"),
                ],
            ),
            ("memory/app/sub", vec![("cgroup.procs", "12\n")]),
            (
                "unified/svc",
                vec![("cgroup.procs", ""), ("memory.current", "4096")],
            ),
            ("cpu/x", vec![("cgroup.procs", "")]),
        ] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
            for (f, t) in files {
                std::fs::write(root.join(dir).join(f), t).unwrap();
            }
        }
        let mi = format!(
            "1 0 0:1 / {r}/memory rw - cgroup cgroup rw,memory\n2 0 0:2 / {r}/unified rw - cgroup2 cgroup2 rw\n\
             3 0 0:3 / {r}/cpu rw - cgroup cgroup rw,cpu\n",
            r = root.display()
        );
        (d, mounts(&mi))
    }

    #[test]
    fn resolves_v1_v2_and_relative_names() {
        let (d, m) = fixture();
        let pc = "4:memory:/\n0::/\n";
        let c = resolve(d.path().join("memory/app").to_str().unwrap(), &m, pc).unwrap();
        assert_eq!(
            (c.version, c.hierarchy, c.has_memory),
            (Version::V1, 4, true)
        );
        let c = resolve("app/sub", &m, pc).unwrap();
        assert_eq!(c.path, d.path().join("memory/app/sub"));
        let c = resolve(d.path().join("unified/svc").to_str().unwrap(), &m, pc).unwrap();
        assert_eq!(
            (c.version, c.hierarchy, c.has_memory),
            (Version::V2, 0, true)
        );
        let c = resolve("svc", &m, pc).unwrap();
        assert_eq!(c.version, Version::V2);
        assert!(matches!(
            resolve("nope", &m, pc),
            Err(CgroupError::NotFound(_))
        ));
        let e = resolve(d.path().join("cpu/x").to_str().unwrap(), &m, pc).unwrap_err();
        assert!(
            e.to_string().contains("without the memory controller"),
            "{e}"
        );
        std::fs::create_dir_all(d.path().join("memory/plain")).unwrap();
        std::fs::remove_file(d.path().join("memory/app/sub/cgroup.procs")).unwrap();
        assert!(matches!(
            resolve("app/sub", &m, pc),
            Err(CgroupError::NotCgroup(_))
        ));
    }

    #[test]
    fn tree_and_procs_cover_descendants() {
        let (d, _) = fixture();
        let t = tree(&d.path().join("memory/app"));
        assert_eq!(t.len(), 2);
        assert_eq!(procs(&t), [10, 11, 12]);
    }

    #[test]
    fn psi_lines() {
        let p = parse_psi("some avg10=1.50 avg60=0.00 avg300=0.00 total=1234\nfull avg10=0.25 avg60=0 avg300=0 total=99\n")
            .unwrap();
        assert_eq!(
            (p.some_avg10, p.some_total_us, p.full_avg10, p.full_total_us),
            (1.5, 1234, 0.25, 99)
        );
        assert_eq!(parse_psi(""), None);
        assert_eq!(parse_psi("garbage avg10=x"), None);
    }

    #[test]
    fn the_memory_cgroup_of_a_process() {
        let v1 = "12:pids:/\n4:memory:/mmt-demo\n7:cpu,cpuacct:/\n0::/user.slice\n";
        assert_eq!(memory_cgroup_of(v1).as_deref(), Some("/mmt-demo"));
        assert_eq!(
            memory_cgroup_of("0::/system.slice/x.service\n").as_deref(),
            Some("/system.slice/x.service")
        );
        assert_eq!(memory_cgroup_of(""), None);
    }

    #[test]
    fn memory_state_v1_and_v2() {
        let d = tempfile::tempdir().unwrap();
        let v1 = d.path().join("v1");
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::write(v1.join("memory.usage_in_bytes"), "300\n").unwrap();
        std::fs::write(v1.join("memory.limit_in_bytes"), "9223372036854771712\n").unwrap();
        std::fs::write(
            v1.join("memory.stat"),
            "cache 1\nrss 2\ntotal_cache 100\ntotal_rss 50\ntotal_shmem 5\ntotal_dirty 7\ntotal_workingset_refault_file 9\n",
        )
        .unwrap();
        let psi = d.path().join("psi");
        std::fs::write(&psi, "some avg10=2.00 avg60=0 avg300=0 total=5\n").unwrap();
        let cg = Cgroup {
            path: v1,
            version: Version::V1,
            hierarchy: 4,
            has_memory: true,
        };
        let m = memory_state(&cg, &psi).unwrap();
        assert_eq!(
            (m.usage_bytes, m.limit_bytes, m.file_bytes, m.anon_bytes),
            (300, None, 100, 50)
        );
        assert_eq!((m.shmem_bytes, m.dirty_bytes, m.refault_file), (5, 7, 9));
        assert_eq!(m.psi_scope, Some("system"));
        assert_eq!(
            (m.oom_kills, m.limit_hits),
            (None, None),
            "unreadable is null"
        );
        std::fs::write(
            cg.path.join("memory.oom_control"),
            "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
        )
        .unwrap();
        std::fs::write(cg.path.join("memory.failcnt"), "17\n").unwrap();
        let m = memory_state(&cg, &psi).unwrap();
        assert_eq!((m.oom_kills, m.limit_hits), (Some(2), Some(17)));

        let v2 = d.path().join("v2");
        std::fs::create_dir_all(&v2).unwrap();
        std::fs::write(v2.join("memory.current"), "4096\n").unwrap();
        std::fs::write(v2.join("memory.max"), "268435456\n").unwrap();
        std::fs::write(v2.join("memory.high"), "max\n").unwrap();
        std::fs::write(
            v2.join("memory.stat"),
            "anon 10\nfile 20\nfile_dirty 3\nshmem 1\nworkingset_refault_file 4\n",
        )
        .unwrap();
        std::fs::write(
            v2.join("memory.pressure"),
            "some avg10=0.00 avg60=0 avg300=0 total=0\nfull avg10=0.00 avg60=0 avg300=0 total=0\n",
        )
        .unwrap();
        let cg = Cgroup {
            path: v2,
            version: Version::V2,
            hierarchy: 0,
            has_memory: true,
        };
        let m = memory_state(&cg, &psi).unwrap();
        assert_eq!(
            (m.usage_bytes, m.limit_bytes, m.high_bytes),
            (4096, Some(268_435_456), None)
        );
        assert_eq!(
            (m.file_bytes, m.anon_bytes, m.dirty_bytes, m.refault_file),
            (20, 10, 3, 4)
        );
        assert_eq!(m.psi_scope, Some("cgroup"));
        std::fs::write(
            cg.path.join("memory.events"),
            "low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\noom_group_kill 0\n",
        )
        .unwrap();
        let m = memory_state(&cg, &psi).unwrap();
        assert_eq!((m.oom_kills, m.limit_hits), (Some(1), Some(5)));
    }
}
