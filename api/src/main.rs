#![forbid(unsafe_code)]
//! `paystream-api`: reads configuration, connects, and serves until SIGTERM or Ctrl-C. The
//! outbox relay runs beside the server in the same process, so every API replica also drains
//! the outbox (several relays share the work through SKIP LOCKED).

use anyhow::Context;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    paystream_shared::telemetry::init("paystream-api");
    let config = paystream_shared::config::Config::from_env()?;
    let shutdown = paystream_shared::shutdown::on_signal();
    let listener = std::net::TcpListener::bind(config.api_addr)
        .with_context(|| format!("binding {}", config.api_addr))?;
    paystream_api::serve(config, listener, shutdown).await
}
