#![forbid(unsafe_code)]
//! `paystream`: the operator's command. Parsing lives here; every command lives in the library.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = paystream_cli::Cli::parse();
    match paystream_cli::execute(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
