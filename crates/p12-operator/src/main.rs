//! `p12-operator`: parses the command line and dispatches.

use clap::Parser;
use p12_operator::cli::{Cli, Command, termination_log_path};
use p12_operator::{api, commands, inspect, probe, reconciler, telemetry};

fn main() {
    let cli = Cli::parse();
    if let Err(e) = telemetry::init(&cli.log_format, &cli.log_level) {
        eprintln!("error: {e}");
        std::process::exit(2);
    }
    let code = match cli.command {
        Command::Crd(args) => args
            .names()
            .iter()
            .map(|plural| api::crd_yaml(plural))
            .collect::<Result<Vec<_>, _>>()
            .map(|docs| {
                print!("{}", docs.concat());
                0
            })
            .map_err(Into::into),
        Command::Run(args) => runtime().block_on(reconciler::run(args)).map(|()| 0),
        Command::Probe(args) => runtime().block_on(probe::main(args)),
        Command::Inspect(args) => runtime().block_on(inspect::main(args)),
        Command::Status(args) => runtime().block_on(commands::status(args)),
        Command::Renew(args) => runtime().block_on(commands::renew(args)),
        Command::ProbeNow(args) => runtime().block_on(commands::probe_now(args)),
        Command::Ca(args) => runtime().block_on(commands::ca(args)),
        Command::Completion(args) => commands::completion(args),
    };
    match code {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            let msg = format!("{e:#}");
            tracing::error!(error = %msg, "exiting");
            eprintln!("error: {msg}");
            // Best effort: only inside a container is this file there to be written.
            let _ = std::fs::OpenOptions::new()
                .write(true)
                .open(termination_log_path())
                .and_then(|mut f| std::io::Write::write_all(&mut f, msg.as_bytes()));
            std::process::exit(1);
        }
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap_or_else(|e| {
            eprintln!("error: failed to start the async runtime: {e}");
            std::process::exit(1)
        })
}
