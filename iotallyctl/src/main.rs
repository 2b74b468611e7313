//! `iotallyctl`: see the crate documentation and `iotallyctl --help`.

use std::process::ExitCode;

use clap::Parser;
use iotallyctl::cli::Cli;

#[cfg(windows)]
mod terminal;

#[cfg(windows)]
fn main() -> ExitCode {
    use std::io::IsTerminal;

    use iotallyctl::cli::{Batch, run};

    let cli = Cli::parse();
    let port = match iotallyctl::windows::WindowsPort::connect() {
        Ok(port) => port,
        Err(error) => {
            eprintln!("iotallyctl: {error}");
            return ExitCode::FAILURE;
        }
    };
    let mut client = iotallyctl::client::Client::new(port);
    let live = matches!(cli.command, iotallyctl::cli::Command::Watch { .. })
        && std::io::stdout().is_terminal()
        && !cli.json;
    let mut stdout = std::io::stdout();
    let outcome = if live {
        match terminal::Terminal::enter() {
            Ok(mut screen) => run(&cli, &mut client, &mut std::io::sink(), &mut screen),
            Err(e) => Err(e.into()),
        }
    } else {
        run(
            &cli,
            &mut client,
            &mut stdout,
            &mut Batch(std::io::stdout()),
        )
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("iotallyctl: {error}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(not(windows))]
fn main() -> ExitCode {
    // Parsed anyway, so that --help and --version work everywhere.
    let _cli = Cli::parse();
    eprintln!(
        "iotallyctl: the iotally driver runs on Windows only; here, `cargo run --example simulate` \
         shows iotallyctl against the simulated driver"
    );
    ExitCode::FAILURE
}
