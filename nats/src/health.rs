//! Whether NATS can take paystream's work: connected, and JetStream answering. A client can
//! be connected to a node of a cluster that has lost its JetStream quorum (two of three nodes
//! down): publishes then time out and nothing flows, so "connected" alone is not ready.

use std::time::Duration;

/// How long one JetStream probe may take. A healthy cluster answers in milliseconds; a
/// leader election takes a few seconds.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(1_000);
/// The pause between the two probes.
pub const PROBE_PAUSE: Duration = Duration::from_millis(500);

/// Connected and JetStream answers its account-info request, within [`PROBE_TIMEOUT`].
///
/// A failed probe is asked once more after [`PROBE_PAUSE`], and only two failures in a row
/// count: a single reconnect or a stream leader moving must not take the process out of a
/// load balancer's rotation (that would make a routine election an outage). Without quorum
/// the account info request has no meta leader to answer it, so both probes fail.
pub async fn jetstream_ready(client: &async_nats::Client) -> bool {
    if probe(client).await {
        return true;
    }
    tokio::time::sleep(PROBE_PAUSE).await;
    probe(client).await
}

async fn probe(client: &async_nats::Client) -> bool {
    if client.connection_state() != async_nats::connection::State::Connected {
        return false;
    }
    account_info(client, PROBE_TIMEOUT).await
}

/// JetStream's account info answered without an error within `timeout`. Asked as raw JSON:
/// the typed answer of this client differs from what a 2.9 server sends, and all this needs
/// is that JetStream answers for the account.
pub async fn account_info(client: &async_nats::Client, timeout: Duration) -> bool {
    let request = client.request("$JS.API.INFO", bytes::Bytes::new());
    match tokio::time::timeout(timeout, request).await {
        Ok(Ok(msg)) => serde_json::from_slice::<serde_json::Value>(&msg.payload)
            .is_ok_and(|v| v.get("error").is_none()),
        _ => false,
    }
}
