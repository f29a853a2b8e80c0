//! `cargo xtask`: mmtrace's build, run, test and benchmark entry point (setup of bpf-linker, nightly rust-src and tracefs included).

mod bench;
mod procinfo;
mod setup;
mod stats;
mod util;

use std::ffi::OsString;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};

use crate::util::{Ctx, exit_code, is_root, run, status};

#[derive(Parser, Debug)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Build, run, test and benchmark mmtrace"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Install missing prerequisites: bpf-linker (LLVM 22), nightly rust-src, tracefs
    Setup,
    /// Setup, then `cargo build -p mmtrace` (its build.rs builds the eBPF object)
    Build {
        /// build with the release profile
        #[arg(long)]
        release: bool,
    },
    /// Setup, build release, run target/release/mmtrace ARGS as root (no ARGS: the demo)
    Run {
        /// arguments for mmtrace (after `--`)
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Setup, cargo fmt --check, clippy -D warnings (host + eBPF), cargo test --workspace (as root)
    Test {
        /// extra arguments for `cargo test` (after `--`)
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Tracer cost per page fault, side by side: in-process ABBA chunks (noise, empty-program floor, mmtrace) and tracers attached from outside (bpftrace, perf trace, mmtrace --pid); start-up time, map memory, RSS
    Bench {
        /// ABBA pairs of chunks per in-process row (anonymous storm)
        #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u32).range(1..))]
        pairs: u32,
        /// pairs of the copy-on-write rows (0: skip them)
        #[arg(long, default_value_t = 60)]
        cow_pairs: u32,
        /// pairs of the head-to-head row, mmtrace against the floor
        /// (anonymous; the copy-on-write one gets half): its difference is
        /// the figure the goal is about, so it gets the most pairs
        #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u32).range(1..))]
        h2h_pairs: u32,
        /// MiB per storm chunk
        #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
        chunk_mib: u64,
        /// rounds of the outside method (0: skip it)
        #[arg(long, default_value_t = 6)]
        rounds: u32,
        /// seconds of each traced window (outside method)
        #[arg(long, default_value_t = 3.0)]
        window: f64,
        /// seconds of each untraced window between them
        #[arg(long, default_value_t = 1.5)]
        gap: f64,
        /// seconds between a tracer saying it is attached and its window
        #[arg(long, default_value_t = 0.5)]
        settle: f64,
        /// runs of `mmtrace -- /bin/true` (start-up + teardown)
        #[arg(long, default_value_t = 5)]
        startup_runs: u32,
        /// also an in-process row of mmtrace with --latency
        #[arg(long)]
        latency: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli.cmd) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a subcommand; returns the process exit code.
fn dispatch(cmd: Cmd) -> Result<i32> {
    let ctx = Ctx::new()?;
    match cmd {
        Cmd::Setup => setup::setup(&ctx)?,
        Cmd::Build { release } => {
            setup::setup(&ctx)?;
            build(&ctx, release)?;
        }
        Cmd::Run { args } => {
            setup::setup(&ctx)?;
            build(&ctx, true)?;
            let bin = ctx.target_dir().join("release/mmtrace");
            let mut cmd = ctx.as_root(&bin)?;
            cmd.args(strip_separator(args));
            return Ok(exit_code(status(&mut cmd)?));
        }
        Cmd::Test { args } => return test(&ctx, strip_separator(args)),
        Cmd::Bench {
            pairs,
            cow_pairs,
            h2h_pairs,
            chunk_mib,
            rounds,
            window,
            gap,
            settle,
            startup_runs,
            latency,
        } => {
            setup::setup(&ctx)?;
            build(&ctx, true)?;
            bench::bench(
                &ctx,
                &bench::BenchOpts {
                    pairs,
                    cow_pairs,
                    h2h_pairs,
                    chunk_mib,
                    rounds,
                    window,
                    gap,
                    settle,
                    startup_runs,
                    latency,
                },
            )?;
        }
    }
    Ok(0)
}

/// Drops a leading `--` that reached us (`cargo xtask run -- -- ARGS`).
fn strip_separator(mut args: Vec<OsString>) -> Vec<OsString> {
    if args.first().is_some_and(|a| a == "--") {
        args.remove(0);
    }
    args
}

/// The bpf-target-only crate: host builds (`--workspace`) must leave it out;
/// mmtrace's build.rs builds it for the bpf target.
const EBPF_CRATE: &str = "mmtrace-ebpf";

/// `cargo build -p mmtrace [--release]`
fn build(ctx: &Ctx, release: bool) -> Result<()> {
    let mut cmd = ctx.cargo();
    cmd.args(["build", "-p", "mmtrace"]);
    if release {
        cmd.arg("--release");
    }
    run(&mut cmd)
}

/// One step of `cargo xtask test`.
struct Step {
    name: &'static str,
    ok: bool,
    secs: f64,
    error: Option<String>,
}

/// `cargo xtask test`: every step runs even after an earlier one failed
/// (except after a failed setup), then a summary; non-zero if any failed.
fn test(ctx: &Ctx, args: Vec<OsString>) -> Result<i32> {
    let mut steps: Vec<Step> = Vec::new();
    let mut step = |name: &'static str, f: &mut dyn FnMut() -> Result<()>| {
        eprintln!("\n==> {name}");
        let start = Instant::now();
        let r = f();
        if let Err(e) = &r {
            eprintln!("error: {e:#}");
        }
        steps.push(Step {
            name,
            ok: r.is_ok(),
            secs: start.elapsed().as_secs_f64(),
            error: r.err().map(|e| format!("{e:#}")),
        });
        steps.last().is_some_and(|s| s.ok)
    };

    if step("setup", &mut || setup::setup(ctx)) {
        step("fmt", &mut || {
            run(ctx.cargo().args(["fmt", "--all", "--", "--check"]))
        });
        step("clippy", &mut || {
            run(ctx.cargo().args([
                "clippy",
                "--workspace",
                "--exclude",
                EBPF_CRATE,
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]))
        });
        step("clippy-ebpf", &mut || clippy_ebpf(ctx));
        step("test", &mut || cargo_test(ctx, &args));
    }

    eprintln!("\n==> summary (cargo xtask test)");
    for s in &steps {
        eprintln!(
            "  {:<12} {:<4} {:>7.1}s{}",
            s.name,
            if s.ok { "ok" } else { "FAIL" },
            s.secs,
            s.error
                .as_deref()
                .map(|e| format!("  {}", e.lines().next().unwrap_or("")))
                .unwrap_or_default()
        );
    }
    let failed = steps.iter().filter(|s| !s.ok).count();
    if failed == 0 {
        eprintln!("all {} steps passed", steps.len());
        Ok(0)
    } else {
        eprintln!("{failed} of {} steps failed", steps.len());
        Ok(1)
    }
}

/// Clippy on the eBPF crate for its real target (nightly, `-Z build-std=core`).
fn clippy_ebpf(ctx: &Ctx) -> Result<()> {
    let installed = ctx
        .cmd("rustup")
        .args(["component", "list", "--toolchain", "nightly", "--installed"])
        .output()?;
    let has_clippy = String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.starts_with("clippy"));
    if !has_clippy {
        eprintln!("nightly lacks clippy; adding it");
        run(ctx
            .cmd("rustup")
            .args(["component", "add", "clippy", "--toolchain", "nightly"]))
        .context("run `rustup component add clippy --toolchain nightly` yourself")?;
    }
    let target = if cfg!(target_endian = "big") {
        "bpfeb-unknown-none"
    } else {
        "bpfel-unknown-none"
    };
    run(ctx.cargo().args([
        "+nightly",
        "clippy",
        "-p",
        EBPF_CRATE,
        "--target",
        target,
        "-Z",
        "build-std=core",
        "--",
        "-D",
        "warnings",
    ]))
}

/// `cargo test --workspace ARGS`; as root, since the integration tests load
/// eBPF programs. A non-root user builds the tests first (so target/ stays
/// theirs) and runs them through sudo.
fn cargo_test(ctx: &Ctx, args: &[OsString]) -> Result<()> {
    // `-p`/`--package` narrows the run; cargo ignores it next to --workspace.
    let picks_package = args.iter().take_while(|a| *a != "--").any(|a| {
        let a = a.to_string_lossy();
        a == "-p" || a.starts_with("--package") || (a.starts_with("-p") && a.len() > 2)
    });
    let scope: &[&str] = if picks_package {
        &["test"]
    } else {
        &["test", "--workspace", "--exclude", EBPF_CRATE]
    };
    if is_root() {
        return run(ctx.cargo().args(scope).args(args));
    }
    eprintln!("not root: building the tests as this user, then running them with sudo");
    let cargo_args: Vec<&OsString> = args.iter().take_while(|a| *a != "--").collect();
    run(ctx.cargo().args(scope).arg("--no-run").args(cargo_args))?;
    run(ctx.cargo_as_root()?.args(scope).args(args))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn trailing_args_pass_through() {
        let cli =
            Cli::try_parse_from(["x", "test", "--", "-p", "mmtrace", "--", "--nocapture"]).unwrap();
        let Cmd::Test { args } = cli.cmd else {
            panic!("not test")
        };
        assert_eq!(
            strip_separator(args),
            ["-p", "mmtrace", "--", "--nocapture"]
        );
        let cli = Cli::try_parse_from(["x", "run", "--", "--json", "--", "ls"]).unwrap();
        let Cmd::Run { args } = cli.cmd else {
            panic!("not run")
        };
        assert_eq!(strip_separator(args), ["--json", "--", "ls"]);
        let cli = Cli::try_parse_from(["x", "bench", "--pairs", "3"]).unwrap();
        assert!(matches!(
            cli.cmd,
            Cmd::Bench {
                pairs: 3,
                cow_pairs: 60,
                h2h_pairs: 300,
                rounds: 6,
                ..
            }
        ));
        let cli = Cli::try_parse_from(["x", "bench", "--cow-pairs", "0", "--rounds", "0"]).unwrap();
        assert!(matches!(
            cli.cmd,
            Cmd::Bench {
                cow_pairs: 0,
                rounds: 0,
                ..
            }
        ));
        assert!(Cli::try_parse_from(["x", "bench", "--pairs", "0"]).is_err());
    }
}
