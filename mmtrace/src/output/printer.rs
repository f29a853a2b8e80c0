//! The human sink: each record of the stream as text — an interval as the
//! table, an OOM kill as a line when it happens, the verdicts under the
//! final table, the BPF cost table last.
use std::io::Write;

use anyhow::Result;

use super::table::{self, TableOptions};
use crate::{
    collect::loader::ProgramStats,
    record::{CgroupRecord, CgroupRow, Record},
    verdict::Verdict,
};

/// Where the text goes: stdout, or stderr when stdout carries JSON.
pub struct Printer {
    out: Box<dyn Write + Send>,
    opts: TableOptions,
    /// Verdict records arrive before the summary; they print under it.
    verdicts: Vec<String>,
    /// `--bpf-stats` table, printed on stderr (diagnostics).
    stats_to: Box<dyn Write + Send>,
    /// The column legend prints under the first table only.
    legend_shown: bool,
    /// Only the final report (the live view shows the rest): interval
    /// tables are skipped, OOM kill lines wait for the final report.
    final_only: bool,
    held: Vec<String>,
}

const MIB: f64 = 1024.0 * 1024.0;

impl Printer {
    pub fn new(out: Box<dyn Write + Send>, opts: TableOptions) -> Self {
        Self {
            out,
            opts,
            verdicts: Vec::new(),
            stats_to: Box::new(std::io::stderr()),
            legend_shown: false,
            final_only: false,
            held: Vec::new(),
        }
    }

    /// Prints the final report only (under `mmtrace top`, once the terminal
    /// is back); OOM kill lines come just before it.
    pub fn final_only(mut self) -> Self {
        self.final_only = true;
        self
    }

    /// Write faults are told apart on this kernel (x86): their columns show.
    pub fn set_write_faults(&mut self, on: bool) {
        self.opts.write_faults = on;
    }

    pub fn record(&mut self, r: &Record) -> Result<()> {
        let text = match r {
            Record::Meta(_) | Record::Event(_) => return Ok(()),
            Record::Interval(_) if self.final_only => return Ok(()),
            Record::OomKill(k) if self.final_only => {
                self.held.push(format!("{}\n", oom_line(k)));
                return Ok(());
            }
            Record::Interval(i) => {
                let title = format!("interval {} (+{:.1} s)", i.seq, i.elapsed_s);
                self.tables(title, &i.report, &i.cgroups, i.cgroup.as_ref())
            }
            Record::OomKill(k) => format!("{}\n", oom_line(k)),
            Record::Signal(g) if self.final_only => {
                self.held.push(format!("{}\n", signal_line(g)));
                return Ok(());
            }
            Record::Signal(g) => format!("{}\n", signal_line(g)),
            Record::Verdict(v) => {
                self.verdicts.push(verdict_line(v));
                return Ok(());
            }
            Record::Summary(s) => {
                let mut t: String = self.held.drain(..).collect();
                t += &self.tables(s.title(), &s.report, &s.cgroups, s.cgroup.as_ref());
                t.push('\n');
                for line in super::cost::summary(&s.report) {
                    t.push_str(&line);
                    t.push('\n');
                }
                t += &super::stall_table::render(&s.report, self.opts.top);
                for v in self.verdicts.drain(..) {
                    t.push_str(&v);
                    t.push('\n');
                }
                if let Some(stats) = &s.bpf_stats {
                    let _ = self.stats_to.write_all(stats_table(stats).as_bytes());
                }
                t
            }
        };
        self.out.write_all(text.as_bytes())?;
        self.out.flush()?;
        Ok(())
    }

    fn tables(
        &mut self,
        title: String,
        report: &crate::model::Report,
        cgroups: &[CgroupRow],
        cgroup: Option<&CgroupRecord>,
    ) -> String {
        self.opts.title = title;
        let mut t = table::render_table(report, &self.opts, !self.legend_shown);
        self.legend_shown = true;
        if !cgroups.is_empty() {
            t.push_str(&cgroups_table(cgroups, self.opts.page_size, self.opts.top));
        }
        if let Some(c) = cgroup {
            t.push_str(&cgroup_line(c));
            t.push('\n');
        }
        t
    }
}

/// The line an OOM kill prints when it happens.
pub fn oom_line(k: &crate::model::OomKill) -> String {
    let mib = |b: u64| b as f64 / MIB;
    format!(
        "mmtrace: the OOM killer ended pid {} ({}) at +{:.1} s: anon {:.0} MiB, file {:.0} MiB, shmem {:.0} MiB at the kill{}",
        k.pid,
        super::escape::display_path(&k.comm),
        k.elapsed_s,
        mib(k.anon_rss_bytes),
        mib(k.file_rss_bytes),
        mib(k.shmem_rss_bytes),
        k.cgroup
            .as_deref()
            .map(|c| format!(" (cgroup {c})"))
            .unwrap_or_default()
    )
}

/// The line a SIGBUS/SIGSEGV prints when it happens.
pub fn signal_line(g: &crate::signals::SignalRecord) -> String {
    format!(
        "mmtrace: pid {} ({}) got {} {} at 0x{:x} (+{:.1} s): {}",
        g.pid,
        super::escape::display_path(&g.comm),
        g.signal,
        g.code_name,
        g.address,
        g.elapsed_s,
        super::escape::display_path(&g.explanation)
    )
}

pub fn verdict_line(v: &Verdict) -> String {
    let whom = match (v.pid, v.scope) {
        (Some(pid), _) => format!("pid {pid}"),
        (None, "host") => "the host".into(),
        (None, _) => "the cgroup".into(),
    };
    format!("verdict ({whom}): {}", v.message)
}

/// The pressure line under each table: the cgroup's usage against its
/// limit, its file/anon split, refaults, PSI, and the reclaim seen.
pub fn cgroup_line(c: &CgroupRecord) -> String {
    let mib = |b: u64| b as f64 / MIB;
    let mut s = format!(
        "cgroup {}",
        super::escape::display_path(&c.path.to_string_lossy())
    );
    if let Some(m) = &c.memory {
        let limit = m.limit_bytes.or(m.high_bytes);
        s.push_str(&format!(": usage {:.0}", mib(m.usage_bytes)));
        match limit {
            Some(l) => s.push_str(&format!(
                "/{:.0} MiB ({:.0}%)",
                mib(l),
                100.0 * m.usage_bytes as f64 / l.max(1) as f64
            )),
            None => s.push_str(" MiB (no limit)"),
        }
        s.push_str(&format!(
            ", file {:.0} MiB, anon {:.0} MiB",
            mib(m.file_bytes),
            mib(m.anon_bytes)
        ));
        if let Some(r) = c.kernel_refault_pages {
            s.push_str(&format!(", refaults {r}"));
        }
        if let (Some(p), Some(scope)) = (&m.psi, m.psi_scope) {
            s.push_str(&format!(", PSI some {:.1}% ({scope})", p.some_avg10));
        }
    }
    let r = &c.reclaim;
    let episodes = r.memcg_episodes + r.direct_episodes;
    if episodes > 0 {
        s.push_str(&format!(
            "\n  reclaim: {episodes} episodes, {:.0} MiB reclaimed in {:.2} s",
            mib((r.memcg_reclaimed_pages + r.direct_reclaimed_pages) * c.page_size),
            r.memcg_seconds + r.direct_seconds
        ));
    }
    s
}

/// Processes by cgroup (`--all`), busiest first; the rest in one row.
pub fn cgroups_table(rows: &[CgroupRow], page_size: u64, top: usize) -> String {
    let mib = |pages: u64| (pages * page_size) as f64 / MIB;
    let mut s = format!(
        "{:>6} {:>6} {:>10} {:>8} {:>9} {:>9}  CGROUP\n",
        "PROCS", "ALIVE", "MINFLT", "MAJFLT", "FILE MiB", "ANON MiB"
    );
    for r in rows.iter().take(top) {
        s.push_str(&format!(
            "{:>6} {:>6} {:>10} {:>8} {:>9.0} {:>9.0}  {}\n",
            r.processes,
            r.alive,
            r.minor_faults,
            r.major_faults,
            mib(r.rss_file_pages),
            mib(r.rss_anon_pages),
            super::escape::display_path(&r.cgroup)
        ));
    }
    if rows.len() > top {
        s.push_str(&format!("  … {} more cgroups\n", rows.len() - top));
    }
    s
}

fn stats_table(stats: &[ProgramStats]) -> String {
    let mut s = format!(
        "{:<22} {:>12} {:>14} {:>10}\n",
        "BPF PROGRAM", "RUNS", "TOTAL ns", "ns/RUN"
    );
    for p in stats {
        let per = p
            .ns_per_run
            .map(|n| format!("{n:.0}"))
            .unwrap_or_else(|| "-".into());
        s.push_str(&format!(
            "{:<22} {:>12} {:>14} {:>10}\n",
            p.program, p.run_count, p.run_time_ns, per
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        cgroup::{MemoryState, Version},
        record::ReclaimRecord,
    };

    fn cg() -> CgroupRecord {
        CgroupRecord {
            path: "/sys/fs/cgroup/memory/app".into(),
            version: Version::V1,
            memory: Some(MemoryState {
                usage_bytes: 48 << 20,
                limit_bytes: Some(64 << 20),
                file_bytes: 40 << 20,
                anon_bytes: 8 << 20,
                ..Default::default()
            }),
            peak: None,
            kernel_refault_pages: Some(12),
            usage_history: vec![],
            reclaim: ReclaimRecord {
                memcg_episodes: 3,
                memcg_reclaimed_pages: 256,
                memcg_seconds: 0.5,
                ..Default::default()
            },
            page_size: 4096,
        }
    }

    #[test]
    fn cgroup_line_shows_usage_against_the_limit_and_reclaim() {
        let l = cgroup_line(&cg());
        assert!(
            l.starts_with(
                "cgroup /sys/fs/cgroup/memory/app: usage 48/64 MiB (75%), file 40 MiB, anon 8 MiB, refaults 12"
            ),
            "{l}"
        );
        assert!(
            l.contains("reclaim: 3 episodes, 1 MiB reclaimed in 0.50 s"),
            "{l}"
        );
    }

    #[derive(Clone, Default)]
    struct Buf(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);
    impl Write for Buf {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn verdicts_print_under_the_final_table() {
        let b = Buf::default();
        let mut p = Printer::new(
            Box::new(b.clone()),
            TableOptions {
                page_size: 4096,
                top: 5,
                ..Default::default()
            },
        );
        let v = crate::verdict::judge(&crate::verdict::Evidence {
            pid: Some(9),
            page_size: 4096,
            ..Default::default()
        });
        p.record(&Record::Verdict(v)).unwrap();
        assert!(b.0.lock().unwrap().is_empty(), "verdict printed early");
        let s = crate::record::Summary {
            elapsed_s: 2.0,
            end_reason: crate::record::EndReason::Interrupted,
            error: None,
            report: Default::default(),
            cgroups: vec![],
            cgroup: Some(cg()),
            command: None,
            bpf_stats: None,
            verdicts: vec![],
            oom_kills: vec![],
            events_dropped: None,
        };
        p.record(&Record::Summary(s)).unwrap();
        let out = String::from_utf8(b.0.lock().unwrap().clone()).unwrap();
        let (t, c, v) = (
            out.find("final report (2.0 s, interrupted)").unwrap(),
            out.find("cgroup /sys/fs/cgroup/memory/app").unwrap(),
            out.find("verdict (pid 9): ").unwrap(),
        );
        assert!(t < c && c < v, "{out}");
    }

    #[test]
    fn the_legend_prints_once() {
        let b = Buf::default();
        let mut p = Printer::new(
            Box::new(b.clone()),
            TableOptions {
                page_size: 4096,
                top: 5,
                ..Default::default()
            },
        );
        for seq in 1..=3 {
            p.record(&Record::Interval(crate::record::Interval {
                seq,
                elapsed_s: seq as f64,
                report: Default::default(),
                cgroups: vec![],
                cgroup: None,
                events_dropped: None,
            }))
            .unwrap();
        }
        let out = String::from_utf8(b.0.lock().unwrap().clone()).unwrap();
        assert_eq!(out.matches("interval ").count(), 3, "{out}");
        assert_eq!(
            out.matches("MINFLT/MAJFLT: faults traced").count(),
            1,
            "{out}"
        );
    }

    #[test]
    fn cgroups_table_bounds_its_rows() {
        let rows: Vec<CgroupRow> = (0..5)
            .map(|i| CgroupRow {
                cgroup: format!("/svc{i}"),
                processes: 1,
                ..Default::default()
            })
            .collect();
        let t = cgroups_table(&rows, 4096, 3);
        assert!(t.contains("/svc2") && !t.contains("/svc3"), "{t}");
        assert!(t.contains("2 more cgroups"), "{t}");
    }
}
