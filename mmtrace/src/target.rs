//! Targets: resolving and starting the command to trace (held at a gate until
//! the tracer is attached, so it is traced from its first instruction), and
//! waiting for it.
use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::{ffi::OsStrExt, fs::PermissionsExt},
    },
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("command not found: {0} (not a file, and not in PATH)")]
    NotFound(String),
    #[error("{0} is not executable (check its permissions: chmod +x)")]
    NotExecutable(PathBuf),
    #[error("{0} is a directory, not a command")]
    IsDirectory(PathBuf),
    #[error("could not start {path}: {source}")]
    Exec { path: PathBuf, source: io::Error },
    #[error("{what}: {source}")]
    Os {
        what: &'static str,
        source: io::Error,
    },
}

/// Finds `cmd` like execvp(3) would: a name with a '/' is a path, anything
/// else is looked up in `path_var`.
pub fn resolve_command(
    cmd: impl AsRef<std::ffi::OsStr>,
    path_var: Option<&str>,
) -> Result<PathBuf, TargetError> {
    let cmd = cmd.as_ref();
    let shown = || cmd.to_string_lossy().into_owned();
    let check = |p: &Path| -> Result<Option<PathBuf>, TargetError> {
        match std::fs::metadata(p) {
            Ok(m) if m.is_dir() => Err(TargetError::IsDirectory(p.to_path_buf())),
            Ok(m) if m.permissions().mode() & 0o111 == 0 => {
                Err(TargetError::NotExecutable(p.to_path_buf()))
            }
            Ok(_) => Ok(Some(p.to_path_buf())),
            Err(_) => Ok(None),
        }
    };
    if cmd.is_empty() {
        return Err(TargetError::NotFound(shown()));
    }
    if cmd.as_bytes().contains(&b'/') {
        return check(Path::new(cmd))?.ok_or_else(|| TargetError::NotFound(shown()));
    }
    let mut first_err = None;
    for dir in path_var
        .unwrap_or("/usr/local/bin:/usr/bin:/bin")
        .split(':')
    {
        let dir = if dir.is_empty() { "." } else { dir };
        match check(&Path::new(dir).join(cmd)) {
            Ok(Some(p)) => return Ok(p),
            Ok(None) => {}
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    Err(first_err.unwrap_or_else(|| TargetError::NotFound(shown())))
}

/// A forked child waiting at the gate, not yet running the command.
pub struct GatedChild {
    pub pid: u32,
    gate: OwnedFd,
    errors: OwnedFd,
    path: PathBuf,
}

fn pipe_cloexec() -> Result<(OwnedFd, OwnedFd), TargetError> {
    let mut fds = [0; 2];
    // SAFETY: plain syscall on a local array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(TargetError::Os {
            what: "pipe2",
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Where the command's standard streams go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChildIo {
    /// mmtrace's own.
    Inherit,
    /// stdout to mmtrace's stderr (keeps JSON on stdout clean).
    StdoutToStderr,
    /// stdin from /dev/null, stdout to mmtrace's stderr: the live view
    /// owns the terminal (its keys, its screen).
    Detached,
}

/// Forks a child that waits for [`GatedChild::release`] and then execs
/// `path` with `argv`, its streams set up as `io` says.
pub fn spawn_gated(
    path: &Path,
    argv: &[std::ffi::OsString],
    io: ChildIo,
) -> Result<GatedChild, TargetError> {
    let c_path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| TargetError::NotFound(path.display().to_string()))?;
    let c_args: Vec<CString> = argv
        .iter()
        .map(|a| {
            CString::new(a.as_bytes())
                .map_err(|_| TargetError::NotFound(a.to_string_lossy().into_owned()))
        })
        .collect::<Result<_, _>>()?;
    let mut c_argv: Vec<*const libc::c_char> = c_args.iter().map(|a| a.as_ptr()).collect();
    c_argv.push(std::ptr::null());
    let dev_null = c"/dev/null";
    let (gate_r, gate_w) = pipe_cloexec()?;
    let (err_r, err_w) = pipe_cloexec()?;

    // SAFETY: after fork the child only calls async-signal-safe functions
    // (read, dup2, open, close, execv, write, _exit) on data prepared before the fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(TargetError::Os {
            what: "fork",
            source: io::Error::last_os_error(),
        });
    }
    if pid == 0 {
        // SAFETY: the forked child: async-signal-safe calls only (above).
        unsafe {
            // Our copies of the parent's ends: without closing them the gate
            // read would never see EOF if the parent gives up.
            libc::close(gate_w.as_raw_fd());
            libc::close(err_r.as_raw_fd());
            let mut b = 0u8;
            let n = libc::read(gate_r.as_raw_fd(), (&mut b as *mut u8).cast(), 1);
            if n != 1 {
                libc::_exit(125); // the tracer went away: never run untraced
            }
            if io != ChildIo::Inherit {
                libc::dup2(2, 1);
            }
            if io == ChildIo::Detached {
                let fd = libc::open(dev_null.as_ptr(), libc::O_RDONLY);
                if fd > 0 {
                    libc::dup2(fd, 0);
                    libc::close(fd);
                }
            }
            libc::execv(c_path.as_ptr(), c_argv.as_ptr());
            let errno = *libc::__errno_location();
            let bytes = errno.to_ne_bytes();
            libc::write(err_w.as_raw_fd(), bytes.as_ptr().cast(), bytes.len());
            libc::_exit(127);
        }
    }
    drop(gate_r);
    drop(err_w);
    Ok(GatedChild {
        pid: pid as u32,
        gate: gate_w,
        errors: err_r,
        path: path.to_path_buf(),
    })
}

impl GatedChild {
    /// Opens the gate; returns once the child has exec'd the command (or
    /// reports why it could not).
    pub fn release(self) -> Result<u32, TargetError> {
        let b = 1u8;
        // SAFETY: writing one byte from a local.
        unsafe { libc::write(self.gate.as_raw_fd(), (&b as *const u8).cast(), 1) };
        drop(self.gate);
        let mut buf = [0u8; 4];
        // SAFETY: reading into a local buffer; EOF means exec succeeded (CLOEXEC).
        let n = unsafe { libc::read(self.errors.as_raw_fd(), buf.as_mut_ptr().cast(), 4) };
        if n == 4 {
            let _ = wait(self.pid, true);
            return Err(TargetError::Exec {
                path: self.path,
                source: io::Error::from_raw_os_error(i32::from_ne_bytes(buf)),
            });
        }
        Ok(self.pid)
    }

    /// Abandons the child (the tracer failed to start): it exits without
    /// running the command.
    pub fn abort(self) {
        let pid = self.pid;
        drop(self.gate);
        let _ = wait(pid, true);
    }
}

/// How a reaped child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Exited {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub minflt: u64,
    pub majflt: u64,
}

impl Exited {
    /// The status a shell would report: the code, or 128 + signal.
    pub fn shell_status(&self) -> i32 {
        match (self.exit_code, self.signal) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            _ => 1,
        }
    }
}

/// wait4(2) on `pid`; `None` if it is still running (non-blocking mode).
pub fn wait(pid: u32, block: bool) -> io::Result<Option<Exited>> {
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid out-parameter.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    let flags = if block { 0 } else { libc::WNOHANG };
    loop {
        // SAFETY: plain syscall with valid out-pointers.
        let r = unsafe { libc::wait4(pid as i32, &mut status, flags, &mut ru) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EINTR) {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            return Ok(None);
        }
        let (exit_code, signal) = if libc::WIFEXITED(status) {
            (Some(libc::WEXITSTATUS(status)), None)
        } else if libc::WIFSIGNALED(status) {
            (None, Some(libc::WTERMSIG(status)))
        } else {
            continue; // stopped/continued: keep waiting
        };
        return Ok(Some(Exited {
            exit_code,
            signal,
            minflt: ru.ru_minflt as u64,
            majflt: ru.ru_majflt as u64,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolves_like_execvp() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("tool");
        std::fs::write(&exe, "#!/bin/sh\nexit 3\n").unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        let plain = dir.path().join("data");
        std::fs::write(&plain, "x").unwrap();
        let pv = format!("/nonexistent:{}", dir.path().display());
        assert_eq!(resolve_command("tool", Some(&pv)).unwrap(), exe);
        assert!(matches!(
            resolve_command("nope-not-here", Some(&pv)),
            Err(TargetError::NotFound(_))
        ));
        assert!(matches!(
            resolve_command(plain.to_str().unwrap(), None),
            Err(TargetError::NotExecutable(_))
        ));
        assert!(matches!(
            resolve_command("data", Some(&pv)),
            Err(TargetError::NotExecutable(_))
        ));
        assert!(matches!(
            resolve_command(dir.path().to_str().unwrap(), None),
            Err(TargetError::IsDirectory(_))
        ));
        assert!(matches!(
            resolve_command("", None),
            Err(TargetError::NotFound(_))
        ));
    }

    #[test]
    fn gated_child_runs_only_after_release_and_reports_status() {
        let sh = resolve_command("sh", std::env::var("PATH").ok().as_deref()).unwrap();
        let c = spawn_gated(
            &sh,
            &["sh".into(), "-c".into(), "exit 7".into()],
            ChildIo::Inherit,
        )
        .unwrap();
        let pid = c.pid;
        assert_eq!(wait(pid, false).unwrap(), None, "still at the gate");
        c.release().unwrap();
        let e = wait(pid, true).unwrap().unwrap();
        assert_eq!(e.exit_code, Some(7));
        assert_eq!(e.shell_status(), 7);
    }

    #[test]
    fn aborted_child_never_runs_the_command() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let sh = resolve_command("sh", std::env::var("PATH").ok().as_deref()).unwrap();
        let c = spawn_gated(
            &sh,
            &[
                "sh".into(),
                "-c".into(),
                format!("touch {}", marker.display()).into(),
            ],
            ChildIo::Inherit,
        )
        .unwrap();
        c.abort();
        assert!(!marker.exists());
    }

    #[test]
    fn exec_failure_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad");
        std::fs::write(&bad, [0u8, 1, 2, 3]).unwrap();
        std::fs::set_permissions(&bad, std::fs::Permissions::from_mode(0o755)).unwrap();
        let c = spawn_gated(&bad, &["bad".into()], ChildIo::Inherit).unwrap();
        assert!(matches!(c.release(), Err(TargetError::Exec { .. })));
    }

    #[test]
    fn signal_status_maps_to_128_plus() {
        let e = Exited {
            exit_code: None,
            signal: Some(9),
            minflt: 0,
            majflt: 0,
        };
        assert_eq!(e.shell_status(), 137);
    }
}
