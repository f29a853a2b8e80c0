//! mmtrace's entry point: parse the command line, run, map errors to one
//! clear line on stderr and a non-zero status.
use clap::Parser as _;
use mmtrace::cli::{Cli, Sub};

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
    let code = match &cli.sub {
        Some(Sub::Workload(args)) => match mmtrace::workload::run(args) {
            Ok(_) => 0,
            Err(e) => {
                eprintln!("mmtrace workload: {e:#}");
                1
            }
        },
        Some(Sub::DemoWorkload { dir }) => match mmtrace::workload::demo(dir) {
            Ok(()) => 0,
            Err(e) => {
                eprintln!("mmtrace demo: {e:#}");
                1
            }
        },
        None => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            match rt
                .map_err(anyhow::Error::from)
                .and_then(|rt| rt.block_on(mmtrace::session::run(&cli)))
            {
                Ok(code) => code,
                Err(e) => {
                    eprintln!("mmtrace: error: {e:#}");
                    2
                }
            }
        }
    };
    std::process::exit(code);
}
