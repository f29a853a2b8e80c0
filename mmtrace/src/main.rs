//! mmtrace's entry point: parse the command line, run, map errors to one
//! clear line on stderr and a non-zero status.
use clap::Parser as _;
use mmtrace::{
    cli::{Cli, Sub},
    demo::DemoArgs,
};

fn main() {
    let cli = Cli::parse();
    let level = match cli.verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level))
        .format_timestamp(None)
        .init();
    if let Some(Sub::Workload(args)) = &cli.sub {
        let code = match mmtrace::workload::run(args) {
            Ok(_) => 0,
            Err(e) => {
                eprintln!("mmtrace workload: {e:#}");
                1
            }
        };
        std::process::exit(code);
    }
    // No target at all: the built-in demo.
    let demo: Option<DemoArgs> = match &cli.sub {
        Some(Sub::Demo(args)) => Some(args.clone()),
        _ if cli.pids.is_empty() && cli.command.is_empty() && cli.cgroup.is_none() => {
            eprintln!(
                "mmtrace: no target given: running the built-in demo (see `mmtrace --help` for real targets)"
            );
            Some(DemoArgs::default())
        }
        _ => None,
    };
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|rt| match &demo {
            Some(args) => rt.block_on(mmtrace::demo::run(&cli, args)),
            None => rt.block_on(mmtrace::session::run(&cli)),
        });
    let code = match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("mmtrace: error: {e:#}");
            2
        }
    };
    std::process::exit(code);
}
