#![forbid(unsafe_code)]
//! `webhook-worker`: fans events out to merchants' subscriptions and delivers them, signed.
//! Run as many as you like; they share the two durable consumers.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    paystream_shared::telemetry::init("webhook-worker");
    let config = paystream_shared::config::Config::from_env()?;
    let shutdown = paystream_shared::shutdown::on_signal();
    paystream_workers::webhooks::run_webhook_worker(config, shutdown).await?;
    Ok(())
}
