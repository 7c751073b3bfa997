#![forbid(unsafe_code)]
//! `vault`: reads configuration, migrates its own schema, and serves until SIGTERM or Ctrl-C.

use anyhow::Context;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    paystream_shared::telemetry::init("vault");
    let config = paystream_vault::config::VaultConfig::from_env()?;
    let shutdown = paystream_shared::shutdown::on_signal();
    let listener = std::net::TcpListener::bind(config.addr)
        .with_context(|| format!("binding {}", config.addr))?;
    paystream_vault::run(listener, config, shutdown).await?;
    Ok(())
}
