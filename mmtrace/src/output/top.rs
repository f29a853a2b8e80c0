//! The live view (`mmtrace top`): a full-screen sink of the record stream.
//! The terminal belongs to a thread of its own, fed the records over a
//! channel; it redraws on every interval record and on every key. The view
//! shows the same per-file and per-process rows as the plain table (built
//! by [`super::table`], names escaped there), sorted by the column a key
//! picks, the traced cgroup's usage against its limit with a sparkline of
//! its recent samples, OOM kills, and the verdicts once the trace ends.
//!
//! `q` (or Ctrl-C: raw mode turns it into a key) asks the trace to stop
//! through the session's stop channel; the session then emits its final
//! records, the view gives the terminal back and the plain printer prints
//! the final report on the restored screen. When the trace ends by itself
//! (the command exited, `--duration`, the cgroup went away) the view stays
//! on its last frame marked "ended", with the verdicts, until `q` — as top
//! users expect the screen not to vanish under them; the final report
//! follows it.
//!
//! While the view owns the screen, anything written to stderr (mmtrace's
//! diagnostics, the traced command's output) would tear it: stderr is
//! redirected to a pipe ([`StderrCapture`]), its last line shown in the
//! view, and its lines written to the real stderr once the terminal is
//! restored. The terminal is restored on every exit path: the sink closed
//! after the final record, the sink dropped (an error before or during
//! the trace), a failing draw or read, and a panic (a panic hook). SIGINT or
//! SIGTERM from elsewhere end an "ended" view still waiting for `q`.
use std::{
    collections::VecDeque,
    io::{self, BufRead as _, Write as _},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        Arc, Mutex, Once,
        atomic::{AtomicBool, AtomicI32, Ordering},
        mpsc as std_mpsc,
    },
    thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context as _, Result, anyhow};
use ratatui::{
    Frame, Terminal,
    backend::{Backend, CrosstermBackend},
    crossterm::{
        cursor, event,
        event::{Event, KeyCode, KeyEventKind, KeyModifiers},
        execute,
        terminal::{self, EnterAlternateScreen, LeaveAlternateScreen},
    },
    layout::{Constraint, Layout},
    style::{Modifier, Style},
    text::{Line, Span},
    widgets::{Paragraph, Sparkline, Wrap},
};
use tokio::sync::mpsc;

use super::{
    escape::display_path,
    printer::{cgroup_line, cgroups_table, oom_line, verdict_line},
    table::{self, TableOptions},
};
use crate::{
    model::{FileKind, FileRow},
    record::{CgroupRecord, EndReason, Interval, Meta, Record, Summary},
};

/// The column the file table is sorted by (descending), and its key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SortKey {
    /// The report's own order: busiest first (faults and cache traffic).
    Busiest,
    Minor,
    Major,
    Write,
    Cow,
    Mapped,
    Added,
    Evicted,
    Refaults,
    Resident,
}

impl SortKey {
    const ALL: [SortKey; 10] = [
        Self::Busiest,
        Self::Minor,
        Self::Major,
        Self::Write,
        Self::Cow,
        Self::Mapped,
        Self::Added,
        Self::Evicted,
        Self::Refaults,
        Self::Resident,
    ];

    pub fn key(self) -> char {
        match self {
            Self::Busiest => 'b',
            Self::Minor => 'm',
            Self::Major => 'M',
            Self::Write => 'w',
            Self::Cow => 'c',
            Self::Mapped => 'p',
            Self::Added => 'a',
            Self::Evicted => 'e',
            Self::Refaults => 'f',
            Self::Resident => 'r',
        }
    }

    pub fn from_key(c: char) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.key() == c)
    }

    /// The column's label in [`table::file_header`] (none: no column).
    pub fn column(self) -> Option<&'static str> {
        Some(match self {
            Self::Busiest => return None,
            Self::Minor => "MINFLT",
            Self::Major => "MAJFLT",
            Self::Write => "WRITE",
            Self::Cow => "COW",
            Self::Mapped => "MAPPED",
            Self::Added => "ADDED",
            Self::Evicted => "EVICTED",
            Self::Refaults => "REFLT~",
            Self::Resident => "RES MiB",
        })
    }

    fn value(self, f: &FileRow) -> u64 {
        match self {
            Self::Busiest => 0,
            Self::Minor => f.minor_faults,
            Self::Major => f.major_faults,
            Self::Write => f.write_faults,
            Self::Cow => f.cow_faults,
            Self::Mapped => f.pages_mapped,
            Self::Added => f.pages_added,
            Self::Evicted => f.pages_evicted,
            Self::Refaults => f.refault_pages,
            Self::Resident => f.resident_pages.unwrap_or(0),
        }
    }

    fn describe(self) -> String {
        match self.column() {
            Some(c) => format!("{c} ({})", self.key()),
            None => "busiest (b)".into(),
        }
    }
}

/// Rows of the per-cgroup pane (`--all`).
const CGROUP_ROWS: usize = 5;

/// What a key asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    None,
    Redraw,
    Quit,
}

/// The state the view draws: the last records seen. Pure (no terminal):
/// the unit tests draw it on ratatui's `TestBackend`.
pub struct TopView {
    page_size: u64,
    write_faults: bool,
    scope: String,
    kernel: String,
    /// Interval between reports (for the header).
    interval_s: Option<f64>,
    last: Option<Interval>,
    summary: Option<Summary>,
    verdicts: Vec<String>,
    ooms: Vec<String>,
    pub sort: SortKey,
    /// `q` was pressed: the trace is asked to stop.
    pub quitting: bool,
    /// Columns the tables are scrolled right (←/→): the names come after
    /// 80 columns of numbers.
    pub hscroll: u16,
}

/// Columns one ←/→ scrolls.
const HSCROLL_STEP: u16 = 8;

impl TopView {
    pub fn new(page_size: u64) -> Self {
        Self {
            page_size,
            write_faults: true,
            scope: String::new(),
            kernel: String::new(),
            interval_s: None,
            last: None,
            summary: None,
            verdicts: Vec::new(),
            ooms: Vec::new(),
            sort: SortKey::Busiest,
            quitting: false,
            hscroll: 0,
        }
    }

    pub fn apply(&mut self, r: &Record) {
        match r {
            Record::Meta(m) => {
                self.scope = scope_text(m);
                self.kernel = m.kernel.clone();
                self.page_size = m.page_size;
                self.write_faults = m.features.write_faults;
                self.interval_s = m.interval_s;
            }
            Record::Interval(i) => self.last = Some(i.clone()),
            Record::OomKill(k) => self.ooms.push(oom_line(k)),
            Record::Signal(g) => self.ooms.push(super::printer::signal_line(g)),
            Record::Verdict(v) => self.verdicts.push(verdict_line(v)),
            Record::Summary(s) => self.summary = Some(s.clone()),
            Record::Event(_) => {}
        }
    }

    /// The trace is over (the final record came).
    pub fn ended(&self) -> bool {
        self.summary.is_some()
    }

    /// The trace ended without the user asking (the view then waits for
    /// `q`).
    pub fn ended_by_itself(&self) -> bool {
        self.summary
            .as_ref()
            .is_some_and(|s| s.end_reason != EndReason::Interrupted)
    }

    pub fn key(&mut self, code: KeyCode, mods: KeyModifiers) -> Action {
        match code {
            KeyCode::Char('c') if mods.contains(KeyModifiers::CONTROL) => Action::Quit,
            KeyCode::Char('q') => Action::Quit,
            KeyCode::Right => {
                self.hscroll = (self.hscroll + HSCROLL_STEP).min(HSCROLL_STEP * 50);
                Action::Redraw
            }
            KeyCode::Left => {
                self.hscroll = self.hscroll.saturating_sub(HSCROLL_STEP);
                Action::Redraw
            }
            KeyCode::Home => {
                self.hscroll = 0;
                Action::Redraw
            }
            KeyCode::Char(c) => match SortKey::from_key(c) {
                Some(k) => {
                    self.sort = k;
                    Action::Redraw
                }
                None => Action::None,
            },
            _ => Action::None,
        }
    }

    /// The report, cgroup and elapsed time to show: the final ones once the
    /// trace ended, else the last interval's.
    fn current(&self) -> Option<(&crate::model::Report, Option<&CgroupRecord>, f64)> {
        if let Some(s) = &self.summary {
            return Some((&s.report, s.cgroup.as_ref(), s.elapsed_s));
        }
        self.last
            .as_ref()
            .map(|i| (&i.report, i.cgroup.as_ref(), i.elapsed_s))
    }

    fn header(&self) -> Vec<Line<'static>> {
        let elapsed = self.current().map(|c| c.2).unwrap_or(0.0);
        let state = match (&self.summary, self.quitting) {
            (Some(s), _) => format!("ENDED: {}", s.title()),
            (None, true) => "stopping…".into(),
            (None, false) => "LIVE".into(),
        };
        let every = self
            .interval_s
            .map(|i| format!(", every {i} s"))
            .unwrap_or_default();
        let bold = Style::default().add_modifier(Modifier::BOLD);
        let keys = if self.ended_by_itself() {
            "q: quit and print the final report"
        } else {
            "q: stop and print the final report"
        };
        vec![
            Line::from(vec![
                Span::styled("mmtrace top", bold),
                Span::raw(format!(" — {}", self.scope)),
            ]),
            Line::from(vec![
                Span::raw(format!(
                    "kernel {}  +{elapsed:.0} s{every}  ",
                    display_path(&self.kernel)
                )),
                Span::styled(state, bold.add_modifier(Modifier::REVERSED)),
            ]),
            // `q` first: a narrow terminal cuts the end of the line.
            Line::from(format!(
                "{keys}  sort: {}{}  keys m M w c p a e f r: by MINFLT MAJFLT WRITE COW MAPPED ADDED EVICTED REFLT~ RES, b: busiest, ←/→: scroll",
                self.sort.describe(),
                match self.hscroll {
                    0 => String::new(),
                    n => format!("  scrolled +{n} (Home: back)"),
                }
            )),
        ]
    }

    /// The file table's heading (the sort column reversed) and rows, at
    /// most `rows` lines in all.
    fn file_table(&self, rows: usize) -> Vec<Line<'static>> {
        let head = table::file_header();
        let mut out = vec![match self
            .sort
            .column()
            .and_then(|c| head.find(c).map(|i| (i, c)))
        {
            Some((at, c)) => Line::from(vec![
                Span::raw(head[..at].to_string()),
                Span::styled(
                    c.to_string(),
                    Style::default().add_modifier(Modifier::REVERSED | Modifier::BOLD),
                ),
                Span::raw(head[at + c.len()..].to_string()),
            ]),
            None => Line::from(head.clone()),
        }];
        let Some((report, _, _)) = self.current() else {
            out.push(Line::from("  (waiting for the first interval)"));
            return out;
        };
        let mut files: Vec<FileRow> = report.files.clone();
        if self.sort != SortKey::Busiest {
            files.sort_by_key(|f| std::cmp::Reverse(self.sort.value(f)));
        }
        let special = files.iter().filter(|f| f.kind != FileKind::File).count();
        let opts = TableOptions {
            page_size: self.page_size,
            // The heading, the "more files" line and the special rows fit.
            top: rows.saturating_sub(2 + special).max(1),
            mappings: false,
            title: String::new(),
            write_faults: self.write_faults,
        };
        out.extend(table::file_lines(&files, &opts).into_iter().map(Line::from));
        out.truncate(rows.max(1));
        out
    }

    fn process_table(&self, rows: usize) -> Vec<Line<'static>> {
        let mut out = vec![Line::from(table::process_header())];
        if let Some((report, _, _)) = self.current() {
            out.extend(
                table::process_table(&report.processes, self.page_size)
                    .into_iter()
                    .map(Line::from),
            );
        }
        out.truncate(rows.max(1));
        out
    }

    /// The cgroup pane's text: usage against the limit (or "no cgroup").
    fn cgroup_lines(&self) -> Vec<Line<'static>> {
        match self.current().and_then(|c| c.1) {
            Some(c) => cgroup_line(c)
                .lines()
                .map(|l| Line::from(l.to_string()))
                .collect(),
            None => vec![Line::from(
                "no cgroup (usage against a limit shows with --cgroup)",
            )],
        }
    }

    /// Processes by cgroup (`--all`): the busiest few.
    fn cgroups_lines(&self) -> Vec<Line<'static>> {
        let rows = match (&self.summary, &self.last) {
            (Some(s), _) => &s.cgroups,
            (None, Some(i)) => &i.cgroups,
            (None, None) => return Vec::new(),
        };
        if rows.is_empty() {
            return Vec::new();
        }
        cgroups_table(rows, self.page_size, CGROUP_ROWS)
            .lines()
            .map(|l| Line::from(l.to_string()))
            .collect()
    }

    fn history(&self) -> Option<(Vec<u64>, Option<u64>)> {
        let c = self.current()?.1?;
        let limit = c
            .memory
            .as_ref()
            .and_then(|m| m.limit_bytes.or(m.high_bytes));
        Some((c.usage_history.clone(), limit))
    }

    fn bottom_lines(&self) -> Vec<Line<'static>> {
        let mut out: Vec<Line<'static>> = self
            .ooms
            .iter()
            .rev()
            .take(2)
            .map(|l| Line::from(display_path(l).into_owned()))
            .collect();
        if self.verdicts.is_empty() {
            out.push(Line::from(if self.ended() {
                "verdict: none".to_string()
            } else {
                "verdict: when the trace ends".to_string()
            }));
        } else {
            out.extend(
                self.verdicts
                    .iter()
                    .map(|v| Line::from(display_path(v).into_owned())),
            );
        }
        out
    }

    /// Draws the whole view; `messages` is the last line written to
    /// stderr meanwhile.
    pub fn render(&self, f: &mut Frame, messages: Option<&str>) {
        let area = f.area();
        let header = self.header();
        let cgroup = self.cgroup_lines();
        let history = self.history();
        let bottom = self.bottom_lines();
        // One row, cut: a command's output can be long.
        let stderr = messages.map(|m| Line::from(format!("stderr: {}", display_path(m))));
        let procs = self
            .current()
            .map(|c| table::process_table(&c.0.processes, self.page_size).len())
            .unwrap_or(0);
        let spark_h = if history.as_ref().is_some_and(|h| !h.0.is_empty()) {
            2
        } else {
            0
        };
        let cgroups = self.cgroups_lines();
        // The verdicts are long: wrapped, each on the rows it needs.
        let width = usize::from(area.width.max(1));
        let bottom_h: usize = bottom
            .iter()
            .map(|l| l.width().div_ceil(width).max(1))
            .sum();
        let [
            head_a,
            files_a,
            cg_a,
            spark_a,
            cgs_a,
            proc_a,
            bottom_a,
            stderr_a,
        ] = Layout::vertical([
            Constraint::Length(header.len() as u16),
            Constraint::Min(4),
            Constraint::Length(cgroup.len() as u16),
            Constraint::Length(spark_h),
            Constraint::Length(cgroups.len() as u16),
            Constraint::Length((procs as u16 + 1).min(9)),
            Constraint::Length(bottom_h.min(8) as u16),
            Constraint::Length(u16::from(stderr.is_some())),
        ])
        .areas(area);
        f.render_widget(Paragraph::new(header), head_a);
        f.render_widget(
            Paragraph::new(self.file_table(files_a.height as usize)).scroll((0, self.hscroll)),
            files_a,
        );
        f.render_widget(Paragraph::new(cgroup), cg_a);
        if let Some((h, limit)) = &history
            && spark_h > 0
        {
            let [label, spark] =
                Layout::horizontal([Constraint::Length(18), Constraint::Min(1)]).areas(spark_a);
            let max = limit.unwrap_or_else(|| h.iter().copied().max().unwrap_or(1));
            f.render_widget(
                Paragraph::new(vec![
                    Line::from("usage history"),
                    Line::from(if limit.is_some() {
                        "(top: the limit)"
                    } else {
                        "(top: the peak)"
                    }),
                ]),
                label,
            );
            let shown: Vec<u64> = h
                .iter()
                .rev()
                .take(spark.width as usize)
                .rev()
                .copied()
                .collect();
            f.render_widget(Sparkline::default().data(&shown).max(max.max(1)), spark);
        }
        f.render_widget(
            Paragraph::new(self.process_table(proc_a.height as usize)).scroll((0, self.hscroll)),
            proc_a,
        );
        f.render_widget(Paragraph::new(cgroups).scroll((0, self.hscroll)), cgs_a);
        f.render_widget(Paragraph::new(bottom).wrap(Wrap { trim: false }), bottom_a);
        if let Some(l) = stderr {
            f.render_widget(Paragraph::new(l), stderr_a);
        }
    }
}

/// What was traced, escaped, for the header.
fn scope_text(m: &Meta) -> String {
    let s = &m.scope;
    let mut parts = Vec::new();
    if s.all {
        parts.push("every process on the host".to_string());
    }
    if let Some(c) = &s.cgroup {
        parts.push(format!("cgroup {}", display_path(&c.to_string_lossy())));
    }
    if !s.pids.is_empty() {
        let pids: Vec<String> = s.pids.iter().map(u32::to_string).collect();
        parts.push(format!("pid {}", pids.join(", ")));
    }
    if let Some(c) = &s.command {
        parts.push(format!("command {}", display_path(&c.join(" "))));
    }
    parts.join(", ")
}

// ---------------------------------------------------------------------
// The terminal and stderr, restored on every path.

/// The terminal is in raw mode on the alternate screen.
static TERMINAL_TAKEN: AtomicBool = AtomicBool::new(false);
/// The real stderr while it is captured (-1: not captured).
static SAVED_STDERR: AtomicI32 = AtomicI32::new(-1);
static PANIC_HOOK: Once = Once::new();

/// Gives the terminal back: raw mode off, main screen, cursor shown. Does
/// nothing if it was not taken (or already given back).
fn restore_terminal() {
    if TERMINAL_TAKEN.swap(false, Ordering::SeqCst) {
        let _ = terminal::disable_raw_mode();
        let _ = execute!(io::stdout(), LeaveAlternateScreen, cursor::Show);
    }
}

/// Points fd 2 back at the real stderr.
fn restore_stderr_fd() {
    let fd = SAVED_STDERR.swap(-1, Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: `fd` is the duplicate of the original stderr this module
        // made and owns; dup2 onto 2 and close it are plain syscalls.
        unsafe {
            libc::dup2(fd, 2);
            libc::close(fd);
        }
    }
}

/// A panic anywhere restores the terminal and stderr before the message
/// is printed (installed once, kept: it does nothing when nothing is taken).
fn install_panic_hook() {
    PANIC_HOOK.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore_terminal();
            restore_stderr_fd();
            previous(info);
        }));
    });
}

/// Lines written to stderr while the view runs.
#[derive(Default)]
struct Captured {
    lines: VecDeque<String>,
    dropped: usize,
    /// Once the terminal is back: where lines go straight to.
    forward: Option<std::fs::File>,
}

/// Lines kept for after the view (the oldest go first).
const CAPTURE_LINES: usize = 2000;

/// stderr (fd 2) redirected to a pipe a thread drains.
struct StderrCapture {
    state: Arc<Mutex<Captured>>,
}

impl StderrCapture {
    fn start() -> Result<Self> {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 writes.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error()).context("creating the stderr pipe");
        }
        // SAFETY: pipe2 just returned these descriptors; each is owned once.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // SAFETY: dup of fd 2 (a new descriptor this module owns); dup2 of
        // the pipe's write end onto 2 (without CLOEXEC: the traced command
        // inherits it, so its output does not tear the view either).
        let saved = unsafe { libc::fcntl(2, libc::F_DUPFD_CLOEXEC, 3) };
        if saved < 0 {
            return Err(io::Error::last_os_error()).context("duplicating stderr");
        }
        // SAFETY: as above.
        if unsafe { libc::dup2(w.as_raw_fd(), 2) } < 0 {
            // SAFETY: `saved` is ours.
            unsafe { libc::close(saved) };
            return Err(io::Error::last_os_error()).context("redirecting stderr");
        }
        drop(w);
        SAVED_STDERR.store(saved, Ordering::SeqCst);
        install_panic_hook();
        let state = Arc::new(Mutex::new(Captured::default()));
        let s = state.clone();
        std::thread::Builder::new()
            .name("top-stderr".into())
            .spawn(move || {
                let reader = io::BufReader::new(std::fs::File::from(r));
                for line in reader.split(b'\n') {
                    let Ok(line) = line else { break };
                    let text = String::from_utf8_lossy(&line).into_owned();
                    let mut c = s.lock().unwrap_or_else(|e| e.into_inner());
                    if let Some(f) = &mut c.forward {
                        let _ = writeln!(f, "{text}");
                        continue;
                    }
                    if c.lines.len() == CAPTURE_LINES {
                        c.lines.pop_front();
                        c.dropped += 1;
                    }
                    c.lines.push_back(text);
                }
            })
            .context("starting the stderr reader")?;
        Ok(Self { state })
    }

    fn last_line(&self) -> Option<String> {
        let c = self.state.lock().unwrap_or_else(|e| e.into_inner());
        c.lines.back().cloned()
    }

    /// Puts stderr back and writes what was captured to it; later lines
    /// (a command still writing) go straight through.
    fn finish(&self) {
        let mut c = self.state.lock().unwrap_or_else(|e| e.into_inner());
        restore_stderr_fd();
        let mut err = io::stderr().lock();
        if c.dropped > 0 {
            let _ = writeln!(
                err,
                "mmtrace: ({} earlier lines of stderr dropped)",
                c.dropped
            );
        }
        for l in c.lines.drain(..) {
            let _ = writeln!(err, "{l}");
        }
        // SAFETY: dup of fd 2 (now the real stderr) into a new descriptor
        // the File owns.
        let fd = unsafe { libc::fcntl(2, libc::F_DUPFD_CLOEXEC, 3) };
        if fd >= 0 {
            // SAFETY: `fd` was just created and is owned by the File only.
            c.forward = Some(unsafe { std::fs::File::from_raw_fd(fd) });
        }
    }
}

/// Asks the trace to stop when dropped.
struct StopOnDrop(mpsc::Sender<()>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = self.0.try_send(());
    }
}

/// The live view as a sink.
pub struct TopSink {
    page_size: u64,
    stop: mpsc::Sender<()>,
    capture: Option<Arc<StderrCapture>>,
    tx: Option<std_mpsc::Sender<Record>>,
    ui: Option<JoinHandle<Result<()>>>,
    /// The final record went to the view.
    ended: bool,
    /// Tells the view to end now (a signal, or the sink dropped).
    quit: Arc<AtomicBool>,
}

impl TopSink {
    /// Checks that stdout is a terminal and captures stderr; the screen is
    /// taken when the trace starts (its `meta` record), so an error before
    /// that prints on the normal screen.
    pub fn open(stop: mpsc::Sender<()>, page_size: u64) -> Result<Self> {
        use std::io::IsTerminal as _;
        if !io::stdout().is_terminal() {
            anyhow::bail!("mmtrace top needs a terminal; use mmtrace -i 1 for a plain table");
        }
        Ok(Self {
            page_size,
            stop,
            capture: Some(Arc::new(StderrCapture::start()?)),
            tx: None,
            ui: None,
            ended: false,
            quit: Arc::new(AtomicBool::new(false)),
        })
    }

    pub fn record(&mut self, r: &Record) -> Result<()> {
        if self.ui.is_none() && matches!(r, Record::Meta(_)) {
            self.start_ui()?;
        }
        if let Some(tx) = &self.tx {
            // A UI that ended already reports why when joined.
            let _ = tx.send(r.clone());
        }
        if matches!(r, Record::Summary(_)) {
            self.ended = true;
        }
        Ok(())
    }

    /// After the final record: waits for the view to end — at once if the
    /// user quit or the trace was interrupted, else at `q`. SIGINT or
    /// SIGTERM end it too (the view has raw mode, so those come from
    /// elsewhere: `kill`, a supervisor).
    pub async fn wait(&mut self) {
        use tokio::signal::unix::{SignalKind, signal};
        if !self.ended {
            return;
        }
        let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) else {
            return;
        };
        while self.ui.as_ref().is_some_and(|u| !u.is_finished()) {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = int.recv() => self.quit.store(true, Ordering::SeqCst),
                _ = term.recv() => self.quit.store(true, Ordering::SeqCst),
            }
        }
    }

    fn start_ui(&mut self) -> Result<()> {
        install_panic_hook();
        terminal::enable_raw_mode().context("putting the terminal in raw mode")?;
        TERMINAL_TAKEN.store(true, Ordering::SeqCst);
        if let Err(e) = execute!(io::stdout(), EnterAlternateScreen) {
            restore_terminal();
            return Err(e).context("switching to the alternate screen");
        }
        let terminal = match Terminal::new(CrosstermBackend::new(io::stdout())) {
            Ok(t) => t,
            Err(e) => {
                restore_terminal();
                return Err(e).context("opening the terminal");
            }
        };
        let (tx, rx) = std_mpsc::channel();
        let stop = self.stop.clone();
        let capture = self.capture.clone();
        let quit = self.quit.clone();
        let page_size = self.page_size;
        let ui = std::thread::Builder::new()
            .name("top".into())
            .spawn(move || {
                // However the view ends (an error, a panic), the trace must
                // not run on unseen: ask it to stop (a no-op once it has).
                let _stop = StopOnDrop(stop.clone());
                let r = run_ui(terminal, rx, stop, capture, &quit, page_size);
                restore_terminal();
                r
            })
            .context("starting the live view")?;
        self.tx = Some(tx);
        self.ui = Some(ui);
        Ok(())
    }

    /// Ends the view now (after [`TopSink::wait`], it has ended already),
    /// gives the terminal and stderr back.
    pub fn close(&mut self) -> Result<()> {
        self.quit.store(true, Ordering::SeqCst);
        self.tx = None;
        let r = match self.ui.take() {
            Some(ui) => ui
                .join()
                .unwrap_or_else(|_| Err(anyhow!("the live view panicked"))),
            None => Ok(()),
        };
        restore_terminal();
        if let Some(c) = self.capture.take() {
            c.finish();
        }
        r
    }
}

impl Drop for TopSink {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

/// The view's loop: records in, keys in, frames out.
fn run_ui<B: Backend>(
    mut terminal: Terminal<B>,
    rx: std_mpsc::Receiver<Record>,
    stop: mpsc::Sender<()>,
    capture: Option<Arc<StderrCapture>>,
    quit: &AtomicBool,
    page_size: u64,
) -> Result<()>
where
    B::Error: Send + Sync + 'static,
{
    let mut view = TopView::new(page_size);
    let mut dirty = true;
    let mut open = true;
    loop {
        while open {
            match rx.try_recv() {
                Ok(r) => {
                    view.apply(&r);
                    dirty = true;
                }
                Err(std_mpsc::TryRecvError::Empty) => break,
                // After the final record: the view stays until `q`.
                Err(std_mpsc::TryRecvError::Disconnected) if view.ended() => open = false,
                // The sink was closed without a final record (an error).
                Err(std_mpsc::TryRecvError::Disconnected) => return Ok(()),
            }
        }
        if quit.load(Ordering::SeqCst) || view.ended() && (!view.ended_by_itself() || view.quitting)
        {
            return Ok(());
        }
        if dirty {
            let msg = capture.as_ref().and_then(|c| c.last_line());
            terminal
                .draw(|f| view.render(f, msg.as_deref()))
                .context("drawing the live view")?;
            dirty = false;
        }
        if !event::poll(Duration::from_millis(100)).context("reading the terminal")? {
            continue;
        }
        match event::read().context("reading the terminal")? {
            Event::Key(k) if k.kind != KeyEventKind::Release => match view.key(k.code, k.modifiers)
            {
                Action::Quit => {
                    if view.ended() {
                        return Ok(());
                    }
                    view.quitting = true;
                    let _ = stop.try_send(());
                    dirty = true;
                }
                Action::Redraw => dirty = true,
                Action::None => {}
            },
            Event::Resize(..) => dirty = true,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use ratatui::backend::TestBackend;

    use super::*;
    use crate::{
        cgroup::{MemoryState, Version},
        model::{ProcessRow, Report},
        record::{ReclaimRecord, Scope},
    };

    fn file(path: &str, minor: u64, major: u64, added: u64) -> FileRow {
        FileRow {
            path: path.into(),
            path_known: true,
            minor_faults: minor,
            major_faults: major,
            pages_added: added,
            resident_pages: Some(added),
            ..FileRow::default()
        }
    }

    fn meta() -> Record {
        Record::Meta(Meta {
            schema_version: 2,
            mmtrace_version: "0".into(),
            kernel: "6.18.0-test".into(),
            start_time_unix_ms: 0,
            page_size: 4096,
            interval_s: Some(1.0),
            scope: Scope {
                command: Some(vec!["./tool".into(), "--x".into()]),
                ..Scope::default()
            },
            features: Default::default(),
            probes: vec![],
        })
    }

    fn interval(cgroup: Option<CgroupRecord>) -> Record {
        Record::Interval(Interval {
            seq: 3,
            elapsed_s: 3.0,
            report: Report {
                files: vec![
                    // The report's order: busiest first.
                    file("/data/busy.bin", 9000, 1, 100),
                    file("/data/cold.bin", 10, 500, 20),
                    file("/tmp/evil\x1b[2Jname", 5, 0, 7000),
                ],
                processes: vec![ProcessRow {
                    pid: 4242,
                    comm: "tool".into(),
                    alive: true,
                    minor_faults: 9015,
                    ..ProcessRow::default()
                }],
                ..Report::default()
            },
            cgroups: vec![],
            cgroup,
            events_dropped: None,
        })
    }

    fn cgroup() -> CgroupRecord {
        CgroupRecord {
            path: "/sys/fs/cgroup/app".into(),
            version: Version::V2,
            memory: Some(MemoryState {
                usage_bytes: 48 << 20,
                limit_bytes: Some(64 << 20),
                file_bytes: 40 << 20,
                anon_bytes: 8 << 20,
                ..Default::default()
            }),
            peak: None,
            kernel_refault_pages: None,
            usage_history: vec![10 << 20, 20 << 20, 30 << 20, 48 << 20],
            reclaim: ReclaimRecord::default(),
            page_size: 4096,
        }
    }

    /// The view drawn on a 160×45 test terminal, as lines of text.
    fn screen(v: &TopView) -> Vec<String> {
        screen_of(v, 160, 45)
    }

    fn screen_of(v: &TopView, w: u16, h: u16) -> Vec<String> {
        let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
        t.draw(|f| v.render(f, Some("mmtrace: tracing command")))
            .unwrap();
        let buf = t.backend().buffer();
        (0..buf.area.height)
            .map(|y| {
                (0..buf.area.width)
                    .map(|x| buf[(x, y)].symbol())
                    .collect::<String>()
                    .trim_end()
                    .to_string()
            })
            .collect()
    }

    fn row_of(s: &[String], name: &str) -> usize {
        s.iter()
            .position(|l| l.ends_with(name))
            .unwrap_or_else(|| panic!("{name} not shown:\n{}", s.join("\n")))
    }

    #[test]
    fn shows_the_files_escaped_with_the_table_columns_and_header() {
        let mut v = TopView::new(4096);
        v.apply(&meta());
        v.apply(&interval(None));
        let s = screen(&v);
        let text = s.join("\n");
        assert!(text.contains("command ./tool --x"), "{text}");
        assert!(text.contains("kernel 6.18.0-test"), "{text}");
        assert!(text.contains("LIVE"), "{text}");
        assert!(text.contains("sort: busiest (b)"), "{text}");
        assert!(s.iter().any(|l| *l == table::file_header()), "{text}");
        assert!(s.iter().any(|l| *l == table::process_header()), "{text}");
        row_of(&s, "/data/busy.bin");
        row_of(&s, r"/tmp/evil\x1b[2Jname");
        assert!(!text.contains('\x1b'), "a raw escape reached the screen");
        assert!(row_of(&s, "  tool") > row_of(&s, "/data/cold.bin"));
        assert!(text.contains("no cgroup"), "{text}");
        assert!(text.contains("verdict: when the trace ends"), "{text}");
        assert!(text.contains("stderr: mmtrace: tracing command"), "{text}");
    }

    #[test]
    fn sort_keys_reorder_the_files_and_show_in_the_header() {
        let mut v = TopView::new(4096);
        v.apply(&meta());
        v.apply(&interval(None));
        let s = screen(&v);
        assert!(row_of(&s, "/data/busy.bin") < row_of(&s, "/data/cold.bin"));
        assert_eq!(
            v.key(KeyCode::Char('M'), KeyModifiers::SHIFT),
            Action::Redraw
        );
        let s = screen(&v);
        assert!(s.iter().any(|l| l.contains("sort: MAJFLT (M)")), "{s:?}");
        assert!(row_of(&s, "/data/cold.bin") < row_of(&s, "/data/busy.bin"));
        v.key(KeyCode::Char('a'), KeyModifiers::NONE);
        let s = screen(&v);
        assert!(s.iter().any(|l| l.contains("sort: ADDED (a)")));
        let evil = row_of(&s, r"/tmp/evil\x1b[2Jname");
        assert!(evil < row_of(&s, "/data/busy.bin"));
        assert!(row_of(&s, "/data/busy.bin") < row_of(&s, "/data/cold.bin"));
        assert_eq!(v.key(KeyCode::Char('z'), KeyModifiers::NONE), Action::None);
        assert_eq!(v.key(KeyCode::Char('q'), KeyModifiers::NONE), Action::Quit);
        assert_eq!(
            v.key(KeyCode::Char('c'), KeyModifiers::CONTROL),
            Action::Quit
        );
    }

    #[test]
    fn the_cgroup_shows_usage_against_its_limit_with_a_sparkline() {
        let mut v = TopView::new(4096);
        v.apply(&meta());
        v.apply(&interval(Some(cgroup())));
        let s = screen(&v);
        let text = s.join("\n");
        assert!(
            text.contains("cgroup /sys/fs/cgroup/app: usage 48/64 MiB (75%)"),
            "{text}"
        );
        assert!(!text.contains("no cgroup"));
        let spark = s
            .iter()
            .find(|l| l.starts_with("usage history"))
            .unwrap_or_else(|| panic!("no sparkline:\n{text}"));
        let bars: String = spark.chars().skip(18).collect();
        assert!(
            bars.chars().any(|c| ('▁'..='█').contains(&c)),
            "no bars in {spark:?}"
        );
    }

    #[test]
    fn the_end_shows_the_verdict_and_the_final_numbers() {
        let mut v = TopView::new(4096);
        v.apply(&meta());
        v.apply(&interval(None));
        let verdict = crate::verdict::judge(&crate::verdict::Evidence {
            pid: Some(4242),
            page_size: 4096,
            ..Default::default()
        });
        let line = verdict_line(&verdict);
        v.apply(&Record::Verdict(verdict));
        let mut report = Report::default();
        report.files.push(file("/data/final.bin", 1, 1, 1));
        v.apply(&Record::Summary(Summary {
            elapsed_s: 4.0,
            end_reason: EndReason::TargetExited,
            error: None,
            report,
            cgroups: vec![],
            cgroup: None,
            command: Some(crate::record::CommandExit {
                exit_code: Some(0),
                ..Default::default()
            }),
            bpf_stats: None,
            verdicts: vec![],
            oom_kills: vec![],
            events_dropped: None,
        }));
        assert!(v.ended_by_itself());
        let s = screen(&v);
        let text = s.join("\n");
        assert!(
            text.contains("ENDED: final report (4.0 s, command exited with status 0)"),
            "{text}"
        );
        assert!(text.contains(&line), "{line} missing:\n{text}");
        assert!(
            text.contains("q: quit and print the final report"),
            "{text}"
        );
        row_of(&s, "/data/final.bin");
        assert!(!text.contains("/data/busy.bin"));
    }

    #[test]
    fn all_shows_processes_by_cgroup_and_long_verdicts_wrap() {
        let mut v = TopView::new(4096);
        v.apply(&meta());
        let Record::Interval(mut i) = interval(None) else {
            unreachable!()
        };
        i.cgroups = (0..8)
            .map(|n| crate::record::CgroupRow {
                cgroup: format!("/system.slice/svc{n}.service"),
                processes: 2,
                alive: 1,
                minor_faults: 100 - n,
                ..Default::default()
            })
            .collect();
        v.apply(&Record::Interval(i));
        let mut verdict = crate::verdict::judge(&crate::verdict::Evidence {
            pid: Some(4242),
            page_size: 4096,
            ..Default::default()
        });
        verdict.message = format!("{} END-OF-VERDICT", "long words ".repeat(30));
        v.apply(&Record::Verdict(verdict));
        let s = screen(&v);
        let text = s.join("\n");
        assert!(text.contains("CGROUP"), "{text}");
        row_of(&s, "/system.slice/svc4.service");
        assert!(!text.contains("svc5.service"), "{text}");
        assert!(text.contains("3 more cgroups"), "{text}");
        assert!(
            text.contains("END-OF-VERDICT"),
            "the verdict is cut:\n{text}"
        );
    }

    #[test]
    fn arrows_scroll_the_tables_to_the_names_on_a_narrow_terminal() {
        let mut v = TopView::new(4096);
        v.apply(&meta());
        v.apply(&interval(None));
        let s = screen_of(&v, 80, 30);
        assert!(!s.iter().any(|l| l.ends_with("/data/busy.bin")), "{s:?}");
        for _ in 0..3 {
            assert_eq!(v.key(KeyCode::Right, KeyModifiers::NONE), Action::Redraw);
        }
        let s = screen_of(&v, 80, 30);
        let text = s.join("\n");
        assert!(text.contains("scrolled +24"), "{text}");
        let row = row_of(&s, "/data/busy.bin");
        // The numbers moved left by 24 columns with the names.
        assert!(s[row].chars().count() < 80, "{}", s[row]);
        row_of(&s, "  tool");
        v.key(KeyCode::Home, KeyModifiers::NONE);
        assert_eq!(v.hscroll, 0);
        v.key(KeyCode::Left, KeyModifiers::NONE);
        assert_eq!(v.hscroll, 0);
    }

    #[test]
    fn a_small_terminal_still_draws() {
        let mut v = TopView::new(4096);
        v.apply(&meta());
        v.apply(&interval(Some(cgroup())));
        for (w, h) in [(20, 5), (80, 12), (1, 1)] {
            let mut t = Terminal::new(TestBackend::new(w, h)).unwrap();
            t.draw(|f| v.render(f, None)).unwrap();
        }
    }
}
