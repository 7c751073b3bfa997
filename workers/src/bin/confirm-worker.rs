#![forbid(unsafe_code)]
//! `confirm-worker`: drives confirmed payment intents through the acquirer. Run as many as
//! you like; they share one durable consumer.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    paystream_shared::telemetry::init("confirm-worker");
    let config = paystream_shared::config::Config::from_env()?;
    let shutdown = paystream_shared::shutdown::on_signal();
    paystream_workers::runtime::run_confirm_worker(config, shutdown).await?;
    Ok(())
}
