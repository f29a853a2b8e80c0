//! mmtrace's entry point: parse the command line into a trace spec, run it
//! (or the demo, or print the schema / man page / completions), map errors
//! to one clear line on stderr and a non-zero status.
use std::io::Write as _;

use clap::Parser as _;
use mmtrace::{
    cli::{Cli, Sub},
    demo::DemoArgs,
    spec::{TraceSpec, View},
};

/// The runner of `cargo xtask bench` (the hidden `mmtrace bench-chunks`).
mod bench_chunks;
/// The deterministic workloads the tests, benchmarks and demo run (the
/// hidden `mmtrace workload` subcommand); not part of the library.
mod workload;

fn main() {
    mmtrace::timing::start();
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp(None)
        .init();
    std::process::exit(match dispatch(&cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mmtrace: error: {e:#}");
            2
        }
    });
}

fn dispatch(cli: &Cli) -> anyhow::Result<i32> {
    let mut spec = TraceSpec::from_cli(cli);
    let demo = match &cli.sub {
        Some(Sub::Workload { args }) => return Ok(workload::main(args)),
        Some(Sub::BenchChunks { args }) => return Ok(bench_chunks::main(args)),
        Some(Sub::Schema) => {
            return print(serde_json::to_string_pretty(&mmtrace::record::schema())? + "\n");
        }
        Some(Sub::Man) => return print(String::from_utf8(Cli::man_page()?)?),
        Some(Sub::Completions { shell }) => {
            return print(String::from_utf8(Cli::completions(*shell))?);
        }
        Some(Sub::Demo(args)) => Some(args.clone()),
        Some(Sub::Top(target)) => {
            spec = TraceSpec::from_cli(&Cli {
                target: target.clone(),
                ..cli.clone()
            });
            spec.view = View::Top;
            // The live view redraws from interval records: one a second.
            spec.interval.get_or_insert(1.0);
            (!spec.has_target()).then(DemoArgs::default)
        }
        None if !spec.has_target() => {
            eprintln!(
                "mmtrace: no target given: running the built-in demo (see `mmtrace --help` for real targets)"
            );
            Some(DemoArgs::default())
        }
        None => None,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match &demo {
        Some(args) => rt.block_on(mmtrace::demo::run(spec, args)),
        None => {
            spec.validate()?;
            rt.block_on(mmtrace::session::run(&spec))
        }
    }
}

/// Writes generated text to stdout (a closed pipe is not an error).
fn print(text: String) -> anyhow::Result<i32> {
    match std::io::stdout().write_all(text.as_bytes()) {
        Ok(()) => Ok(0),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(0),
        Err(e) => Err(e.into()),
    }
}
