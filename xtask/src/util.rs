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

/// Whether `path` is on tmpfs (whose pages cannot be evicted to disk).
pub fn is_tmpfs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt as _;
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: statfs only writes into the zero-initialised struct.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid C string and out-pointer.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    #[allow(clippy::unnecessary_cast)] // f_type's type differs between targets
    let fs_type = st.f_type as i64;
    rc == 0 && fs_type == TMPFS_MAGIC
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
}
