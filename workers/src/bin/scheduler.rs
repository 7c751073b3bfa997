#![forbid(unsafe_code)]
//! `scheduler`: reconciliation with the acquirer and clean-up jobs, led by one process at a
//! time; run more as standbys.

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    paystream_shared::telemetry::init("scheduler");
    let config = paystream_shared::config::Config::from_env()?;
    let shutdown = paystream_shared::shutdown::on_signal();
    paystream_workers::scheduler::run_scheduler(config, shutdown).await?;
    Ok(())
}
