//! Privileged test of the live view: the real binary runs `mmtrace top` in
//! a tmux pane (a real terminal), the screen is read with `capture-pane`
//! and keys are sent with `send-keys`. Needs root and tmux (`cargo xtask
//! setup` installs it).
use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::*;

mod common;

/// A tmux server of its own (a socket named after the test process), with
/// one 160×45 session; killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    /// Runs `script` with sh in a new session; the pane stays after it ends.
    fn start(script: &str) -> Self {
        let t = Self {
            socket: format!("mmtrace-top-test-{}", std::process::id()),
        };
        let out = t
            .cmd()
            .args(["new-session", "-d", "-x", "160", "-y", "45", "-s", "top"])
            .args(["sh", "-c", script])
            .output()
            .expect("running tmux (install it: cargo xtask setup)");
        ok(&out);
        t
    }

    fn cmd(&self) -> Command {
        let mut c = Command::new("tmux");
        c.args(["-L", &self.socket]);
        c
    }

    /// The pane's text with its scrollback.
    fn screen(&self) -> String {
        let out = self
            .cmd()
            .args(["capture-pane", "-p", "-J", "-S", "-", "-t", "top"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &str) {
        ok(&self
            .cmd()
            .args(["send-keys", "-t", "top", keys])
            .output()
            .unwrap());
    }

    /// Waits until the screen shows `what` (or panics with the screen).
    fn wait_for(&self, what: &str, timeout: Duration) -> String {
        let until = Instant::now() + timeout;
        loop {
            let s = self.screen();
            if s.contains(what) {
                return s;
            }
            assert!(
                Instant::now() < until,
                "{what:?} not on the screen after {timeout:?}:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.cmd().arg("kill-server").output();
    }
}

/// The screen has a table row (numbers first) for `name`.
fn has_row(screen: &str, name: &str) -> bool {
    screen.lines().any(|l| {
        let l = l.trim_end();
        l.ends_with(name) && l.trim_start().starts_with(|c: char| c.is_ascii_digit())
    })
}

/// `sh -c` script: runs mmtrace with `args`, then prints its status and
/// keeps the pane open.
fn script(args: &str) -> String {
    format!(
        "'{}' {args}; echo mmtrace-exit=$?; sleep 600",
        env!("CARGO_BIN_EXE_mmtrace")
    )
}

fn reader(file: &Path) -> Child {
    Command::new(env!("CARGO_BIN_EXE_mmtrace"))
        .args(["workload", "--pause-ms", "500", "mmap-read", "--drop-cache"])
        .args(["--pace-mib-s", "2", "--path"])
        .arg(file)
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

#[test]
fn top_shows_the_files_live_and_q_prints_the_final_report() {
    require_root();
    let _g = lock();
    let dir = scratch();
    let f = make_file(dir.path(), "top-live-data.bin", 64 << 20);
    drop_cache(&f);
    let mut w = reader(&f);
    let tmux = Tmux::start(&script(&format!("top --pid {}", w.id())));
    let live = tmux.wait_for("top-live-data.bin", Duration::from_secs(20));
    assert!(has_row(&live, "top-live-data.bin"), "{live}");
    assert!(live.contains("mmtrace top"), "{live}");
    assert!(live.contains("LIVE"), "{live}");
    assert!(live.contains(&format!("pid {}", w.id())), "{live}");
    assert!(live.contains("MINFLT"), "{live}");
    // A sort key redraws the header.
    tmux.keys("M");
    tmux.wait_for("sort: MAJFLT (M)", Duration::from_secs(5));
    tmux.keys("q");
    let after = tmux.wait_for("mmtrace-exit=", Duration::from_secs(20));
    let _ = w.kill();
    let _ = w.wait();
    assert!(after.contains("mmtrace-exit=0"), "{after}");
    // The terminal is back: the view's screen is gone, the final report
    // (with the file) was printed on the normal screen.
    assert!(
        !after.contains("sort: MAJFLT"),
        "the view is still shown:\n{after}"
    );
    let report = after
        .find("final report (")
        .unwrap_or_else(|| panic!("no final report:\n{after}"));
    assert!(
        has_row(&after[report..], "top-live-data.bin"),
        "the file is not in the final report:\n{after}"
    );
    assert!(after[report..].contains("interrupted"), "{after}");
}

#[test]
fn top_of_a_command_that_ends_keeps_the_view_until_q() {
    require_root();
    let _g = lock();
    let dir = scratch();
    let f = make_file(dir.path(), "top-cmd-data.bin", 8 << 20);
    drop_cache(&f);
    let tmux = Tmux::start(&script(&format!(
        "top -- '{}' workload mmap-read --path '{}' --pace-mib-s 4",
        env!("CARGO_BIN_EXE_mmtrace"),
        f.display()
    )));
    let ended = tmux.wait_for("ENDED", Duration::from_secs(30));
    assert!(ended.contains("command exited with status 0"), "{ended}");
    assert!(has_row(&ended, "top-cmd-data.bin"), "{ended}");
    assert!(ended.contains("verdict"), "{ended}");
    assert!(
        !ended.contains("mmtrace-exit="),
        "exited before q:\n{ended}"
    );
    tmux.keys("q");
    let after = tmux.wait_for("mmtrace-exit=", Duration::from_secs(20));
    assert!(after.contains("mmtrace-exit=0"), "{after}");
    assert!(
        !after.contains("ENDED"),
        "the view is still shown:\n{after}"
    );
    let report = after
        .find("final report (")
        .unwrap_or_else(|| panic!("no final report:\n{after}"));
    assert!(has_row(&after[report..], "top-cmd-data.bin"), "{after}");
    // mmtrace's own stderr line, held while the view ran, comes back.
    assert!(after.contains("mmtrace: tracing command"), "{after}");
}

#[test]
fn top_refuses_without_a_terminal() {
    require_root();
    let _g = lock();
    // The refusal comes first, before any privilege is used.
    let out = mmtrace()
        .args(["top", "--", "true"])
        .stdout(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("mmtrace top needs a terminal; use mmtrace -i 1 for a plain table"),
        "{err}"
    );
}
