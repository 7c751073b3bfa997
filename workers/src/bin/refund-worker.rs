#![forbid(unsafe_code)]
//! `refund-worker`: sends pending refunds to the acquirer. Run as many as you like; they share
//! one durable consumer.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    paystream_shared::telemetry::init("refund-worker");
    let config = paystream_shared::config::Config::from_env()?;
    let shutdown = paystream_shared::shutdown::on_signal();
    paystream_workers::runtime::run_refund_worker(config, shutdown).await?;
    Ok(())
}
