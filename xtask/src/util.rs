//! Shared helpers of the xtask commands: workspace paths, the environment of child processes, running and echoing commands.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};

use anyhow::{Context as _, Result, bail};

/// Where the xtask runs: the workspace and the `PATH` its children get.
pub struct Ctx {
    /// The workspace root (parent of `xtask/`).
    pub root: PathBuf,
    /// `PATH` with cargo's bin directory (`~/.cargo/bin`) in it, so a freshly
    /// installed `bpf-linker` is found by the eBPF build.
    pub path: OsString,
    /// `$CARGO_HOME` or `~/.cargo`, if known.
    pub cargo_home: Option<PathBuf>,
    /// `$RUSTUP_HOME` or `~/.rustup`, if known.
    pub rustup_home: Option<PathBuf>,
}

impl Ctx {
    pub fn new() -> Result<Ctx> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("xtask has no parent directory")?
            .to_path_buf();
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let cargo_home = std::env::var_os("CARGO_HOME")
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".cargo")));
        let rustup_home = std::env::var_os("RUSTUP_HOME")
            .map(PathBuf::from)
            .or_else(|| home.as_ref().map(|h| h.join(".rustup")));
        let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect())
            .unwrap_or_default();
        if let Some(bin) = cargo_home.as_ref().map(|c| c.join("bin"))
            && !dirs.contains(&bin)
        {
            dirs.insert(0, bin);
        }
        let path = std::env::join_paths(dirs).context("PATH contains a ':' in a directory name")?;
        Ok(Ctx {
            root,
            path,
            cargo_home,
            rustup_home,
        })
    }

    /// A command run in the workspace root with the augmented `PATH`.
    pub fn cmd(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.current_dir(&self.root).env("PATH", &self.path);
        cmd
    }

    /// `cargo` (the rustup proxy on `PATH`, so toolchain overrides apply).
    pub fn cargo(&self) -> Command {
        self.cmd("cargo")
    }

    /// `program` as root: directly when already root, else through `sudo -E`.
    pub fn as_root(&self, program: impl AsRef<OsStr>) -> Result<Command> {
        if is_root() {
            return Ok(self.cmd(program));
        }
        if self.which("sudo").is_none() {
            bail!(
                "this step needs root and `sudo` is not installed: run the command as root (e.g. `su -c 'cargo xtask ...'`)"
            );
        }
        let mut cmd = self.cmd("sudo");
        cmd.arg("-E").arg(program);
        Ok(cmd)
    }

    /// `cargo ARGS` as root: `sudo -E env PATH=.. [CARGO_HOME=..] [RUSTUP_HOME=..] cargo` when not root.
    pub fn cargo_as_root(&self) -> Result<Command> {
        if is_root() {
            return Ok(self.cargo());
        }
        let mut cmd = self.as_root("env")?;
        let mut kv = |k: &str, v: &OsStr| {
            let mut s = OsString::from(k);
            s.push("=");
            s.push(v);
            cmd.arg(s);
        };
        kv("PATH", &self.path);
        if let Some(h) = &self.cargo_home {
            kv("CARGO_HOME", h.as_os_str());
        }
        if let Some(h) = &self.rustup_home {
            kv("RUSTUP_HOME", h.as_os_str());
        }
        cmd.arg("cargo");
        Ok(cmd)
    }

    /// Finds an executable on the augmented `PATH`.
    pub fn which(&self, name: &str) -> Option<PathBuf> {
        which::which_in(name, Some(&self.path), &self.root).ok()
    }

    /// cargo's target directory (honours `CARGO_TARGET_DIR` and config).
    pub fn target_dir(&self) -> PathBuf {
        let meta = self
            .cargo()
            .args([
                "metadata",
                "--format-version",
                "1",
                "--no-deps",
                "--offline",
            ])
            .stderr(std::process::Stdio::null())
            .output();
        meta.ok()
            .filter(|o| o.status.success())
            .and_then(|o| serde_json::from_slice::<serde_json::Value>(&o.stdout).ok())
            .and_then(|v| v["target_directory"].as_str().map(PathBuf::from))
            .unwrap_or_else(|| self.root.join("target"))
    }
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The command line, shell-like, with the environment it sets (except PATH).
pub fn describe(cmd: &Command) -> String {
    let mut parts: Vec<String> = cmd
        .get_envs()
        .filter(|(k, _)| *k != "PATH")
        .filter_map(|(k, v)| Some(format!("{}={}", k.to_string_lossy(), quote(v?))))
        .collect();
    parts.push(quote(cmd.get_program()));
    parts.extend(cmd.get_args().map(|a| {
        let s = a.to_string_lossy();
        // Keep `env PATH=<long PATH>` readable.
        if s.starts_with("PATH=") {
            "PATH=$PATH".to_owned()
        } else {
            quote(a)
        }
    }));
    parts.join(" ")
}

fn quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c));
    if plain {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Echoes the command to stderr and runs it with inherited stdio.
pub fn status(cmd: &mut Command) -> Result<ExitStatus> {
    eprintln!("$ {}", describe(cmd));
    cmd.status().with_context(|| {
        format!(
            "could not start `{}`: is it installed and on PATH?",
            cmd.get_program().to_string_lossy()
        )
    })
}

/// Like [`status`], but a non-zero exit is an error.
pub fn run(cmd: &mut Command) -> Result<()> {
    let st = status(cmd)?;
    if !st.success() {
        bail!("`{}` failed ({st})", describe(cmd));
    }
    Ok(())
}

/// The exit code to propagate for a child's status (128 + signal when killed).
pub fn exit_code(st: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    st.code()
        .or_else(|| st.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

/// Median of a non-empty sample (mean of the two middle values for even sizes).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The locks apt and dpkg take, in the order apt-get takes them: another
/// apt or dpkg run (often unattended-upgrades on a fresh machine) holding one
/// makes apt-get fail at once with exit status 100.
pub const APT_LOCKS: [&str; 4] = [
    "/var/lib/dpkg/lock-frontend",
    "/var/lib/dpkg/lock",
    "/var/lib/apt/lists/lock",
    "/var/cache/apt/archives/lock",
];

/// How long an apt-get run waits for the package manager's locks, seconds.
pub const APT_LOCK_TIMEOUT_S: u64 = 600;

/// The command line (after `env`) of a non-interactive `apt-get ARGS` that
/// waits up to [`APT_LOCK_TIMEOUT_S`] for dpkg's locks. apt ≥ 1.9.11 waits
/// for `lock-frontend` and `lock` itself (older versions ignore the option);
/// it does not wait for the lists lock of `apt-get update`, which is why
/// callers also wait with [`apt_lock_holder`] first.
pub fn apt_get_args(args: &[&str]) -> Vec<String> {
    let mut v = vec![
        "DEBIAN_FRONTEND=noninteractive".to_owned(),
        "apt-get".to_owned(),
        "-o".to_owned(),
        format!("DPkg::Lock::Timeout={APT_LOCK_TIMEOUT_S}"),
    ];
    v.extend(args.iter().map(|a| a.to_string()));
    v
}

/// Who holds a lock file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LockHolder {
    pub lock: PathBuf,
    /// Unknown for open-file-description locks and holders in another pid
    /// namespace.
    pub pid: Option<u32>,
    /// `/proc/<pid>/comm` (15 characters: "unattended-upgr").
    pub comm: Option<String>,
}

impl LockHolder {
    /// "pid 812 (unattended-upgr)", or "another process".
    pub fn who(&self) -> String {
        match (self.pid, &self.comm) {
            (Some(pid), Some(comm)) => format!("pid {pid} ({comm})"),
            (Some(pid), None) => format!("pid {pid}"),
            (None, _) => "another process".to_owned(),
        }
    }
}

/// The line printed while waiting for a package manager lock.
pub fn lock_wait_message(h: &LockHolder, waited_s: u64, limit_s: u64) -> String {
    format!(
        "waiting for the package manager lock held by {} on {} ({waited_s} s so far, giving up after {limit_s} s)",
        h.who(),
        h.lock.display(),
    )
}

/// The error when a package manager lock stayed held too long.
pub fn lock_timeout_message(h: &LockHolder, limit_s: u64) -> String {
    let check = match h.pid {
        Some(pid) => format!(" (see `ps -fp {pid}`)"),
        None => String::new(),
    };
    format!(
        "the package manager lock {} is still held by {} after {limit_s} s: let that run finish{check} \
         and re-run `cargo xtask setup` (do not delete the lock file)",
        h.lock.display(),
        h.who(),
    )
}

/// The first of [`APT_LOCKS`] another process holds, if any.
pub fn apt_lock_holder() -> Option<LockHolder> {
    APT_LOCKS.iter().find_map(|p| lock_holder(Path::new(p)))
}

/// Who holds a POSIX (fcntl) or OFD lock on `path`, if anyone does: asked
/// with `F_GETLK` as apt does, or, when the file cannot be opened (it is
/// root's, mode 0640), looked up in `/proc/locks`. A missing file is not
/// locked.
pub fn lock_holder(path: &Path) -> Option<LockHolder> {
    let pid = match getlk(path) {
        Ok(held) => held?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(_) => {
            use std::os::unix::fs::MetadataExt as _;
            let m = std::fs::metadata(path).ok()?;
            let locks = std::fs::read_to_string("/proc/locks").ok()?;
            let dev = (libc::major(m.dev()), libc::minor(m.dev()));
            *proc_locks_holders(&locks, dev, m.ino()).first()?
        }
    };
    let comm = pid
        .and_then(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).ok())
        .map(|c| c.trim_end().chars().filter(|c| !c.is_control()).collect());
    Some(LockHolder {
        lock: path.to_owned(),
        pid,
        comm,
    })
}

/// `F_GETLK` for a write lock on the whole file: `None` if it could be had,
/// else the holder's pid if known.
fn getlk(path: &Path) -> std::io::Result<Option<Option<u32>>> {
    use std::os::fd::AsRawFd as _;
    // Read-only is enough to ask; no O_CREAT: a missing lock file is not held.
    let f = std::fs::File::open(path)?;
    // SAFETY: flock is plain data; all-zero is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: a valid descriptor and a valid flock out-pointer.
    if unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GETLK, &mut fl) } == -1 {
        return Err(std::io::Error::last_os_error());
    }
    if fl.l_type == libc::F_UNLCK as libc::c_short {
        return Ok(None);
    }
    Ok(Some(u32::try_from(fl.l_pid).ok().filter(|p| *p > 0)))
}

/// Holders of locks on the file (`dev` as (major, minor), `ino`) in the text
/// of `/proc/locks`, one entry per lock: its pid, `None` when the kernel
/// shows none (-1 for OFD locks). Waiters (`->` lines) are not holders.
///
/// ```text
/// 1: POSIX  ADVISORY  WRITE 3702 fe:00:382079 0 EOF
/// 1: -> POSIX  ADVISORY  WRITE 3800 fe:00:382079 0 EOF
/// 2: OFDLCK ADVISORY  WRITE -1 103:02:77 0 EOF
/// ```
pub fn proc_locks_holders(text: &str, dev: (u32, u32), ino: u64) -> Vec<Option<u32>> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.get(1) == Some(&"->") {
                return None;
            }
            // The pid precedes the "MAJ:MIN:INODE" field (major and minor in hex).
            let at = f.iter().position(|s| s.matches(':').count() == 2)?;
            let mut parts = f[at].split(':');
            let major = u32::from_str_radix(parts.next()?, 16).ok()?;
            let minor = u32::from_str_radix(parts.next()?, 16).ok()?;
            let i: u64 = parts.next()?.parse().ok()?;
            if (major, minor, i) != (dev.0, dev.1, ino) {
                return None;
            }
            let pid: i64 = f.get(at.checked_sub(1)?)?.parse().ok()?;
            Some(u32::try_from(pid).ok().filter(|p| *p > 0))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn describe_quotes_and_hides_path() {
        let mut cmd = Command::new("cargo");
        cmd.env("LLVM_PREFIX", "/usr/lib/llvm-22")
            .env("PATH", "/x")
            .args(["install", "a b"]);
        assert_eq!(
            describe(&cmd),
            "LLVM_PREFIX=/usr/lib/llvm-22 cargo install 'a b'"
        );
    }

    #[test]
    fn ctx_path_has_cargo_bin() {
        let ctx = Ctx::new().unwrap();
        assert!(ctx.root.join("Cargo.toml").exists());
        if let Some(home) = &ctx.cargo_home {
            assert!(std::env::split_paths(&ctx.path).any(|p| p == home.join("bin")));
        }
    }

    #[test]
    fn apt_get_waits_for_the_dpkg_lock() {
        assert_eq!(
            apt_get_args(&["install", "-y", "tmux"]),
            [
                "DEBIAN_FRONTEND=noninteractive",
                "apt-get",
                "-o",
                "DPkg::Lock::Timeout=600",
                "install",
                "-y",
                "tmux"
            ]
        );
    }

    #[test]
    fn proc_locks_names_the_holders_not_the_waiters() {
        let text = "\
1: POSIX  ADVISORY  WRITE 3702 fe:00:382079 0 EOF
1: -> POSIX  ADVISORY  WRITE 3800 fe:00:382079 0 EOF
2: POSIX  ADVISORY  WRITE 3729 fe:00:382078 0 EOF
3: OFDLCK ADVISORY  WRITE -1 103:02:77 0 EOF
4: FLOCK  ADVISORY  WRITE 55 fe:00:9 0 EOF
5: LEASE  ACTIVE    READ  0 fe:00:10 0 EOF
garbage
";
        assert_eq!(proc_locks_holders(text, (0xfe, 0), 382079), [Some(3702)]);
        assert_eq!(proc_locks_holders(text, (0xfe, 0), 382078), [Some(3729)]);
        assert_eq!(proc_locks_holders(text, (0x103, 2), 77), [None]);
        assert_eq!(proc_locks_holders(text, (0xfe, 0), 9), [Some(55)]);
        assert_eq!(proc_locks_holders(text, (0xfe, 0), 10), [None]);
        assert!(proc_locks_holders(text, (0xfe, 1), 382079).is_empty());
        assert!(proc_locks_holders("", (0xfe, 0), 382079).is_empty());
    }

    #[test]
    fn lock_messages_say_who_and_what_to_do() {
        let h = LockHolder {
            lock: "/var/lib/dpkg/lock-frontend".into(),
            pid: Some(812),
            comm: Some("unattended-upgr".into()),
        };
        assert_eq!(
            lock_wait_message(&h, 10, 600),
            "waiting for the package manager lock held by pid 812 (unattended-upgr) on \
             /var/lib/dpkg/lock-frontend (10 s so far, giving up after 600 s)"
        );
        let msg = lock_timeout_message(&h, 600);
        assert!(
            msg.contains("still held by pid 812 (unattended-upgr) after 600 s"),
            "{msg}"
        );
        assert!(
            msg.contains("`ps -fp 812`") && msg.contains("do not delete"),
            "{msg}"
        );
        let anon = LockHolder {
            pid: None,
            comm: None,
            ..h
        };
        assert!(lock_wait_message(&anon, 0, 600).contains("held by another process on"));
        assert!(!lock_timeout_message(&anon, 600).contains("ps -fp"));
    }

    /// A lock taken by another process is seen, with its pid and name, both
    /// through F_GETLK and through /proc/locks; a missing file is not locked.
    #[test]
    fn a_lock_held_by_another_process_is_seen() {
        use std::io::BufRead as _;
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile_dir();
        let lock = dir.join("lock");
        std::fs::write(&lock, "").unwrap();
        assert_eq!(lock_holder(&lock), None);
        assert_eq!(lock_holder(&dir.join("missing")), None);
        let hold = "import fcntl, sys, time\n\
                    f = open(sys.argv[1], 'w')\n\
                    fcntl.lockf(f, fcntl.LOCK_EX)\n\
                    print('locked', flush=True)\n\
                    time.sleep(60)";
        let Ok(mut child) = Command::new("python3")
            .args(["-c", hold])
            .arg(&lock)
            .stdout(std::process::Stdio::piped())
            .spawn()
        else {
            eprintln!("python3 not found: skipped");
            return;
        };
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let got = lock_holder(&lock);
        let m = std::fs::metadata(&lock).unwrap();
        let locks = std::fs::read_to_string("/proc/locks").unwrap();
        let via_proc = proc_locks_holders(
            &locks,
            (libc::major(m.dev()), libc::minor(m.dev())),
            m.ino(),
        );
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(line.trim(), "locked");
        let got = got.expect("the lock is seen");
        assert_eq!(got.pid, Some(child.id()));
        assert_eq!(got.comm.as_deref(), Some("python3"));
        assert_eq!(via_proc, [Some(child.id())]);
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("xtask-lock-test-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
