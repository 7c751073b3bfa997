//! KEK rotation: re-wrap every data key under the new KEK while the vault serves, then run
//! without the old KEK and decrypt everything.

use paystream_shared::secret::Secret;
use paystream_vault::client::VaultClient;
use paystream_vault::crypto::Kek;

use crate::{harness, KEK_A, KEK_B, SERVICE_TOKEN};

async fn kek_ids(pool: &sqlx::PgPool) -> Vec<(String, i64)> {
    sqlx::query_as("SELECT kek_id, count(*) FROM vault.data_keys GROUP BY kek_id ORDER BY kek_id")
        .fetch_all(pool)
        .await
        .unwrap()
}

#[tokio::test]
async fn after_rotation_every_number_decrypts_without_the_old_kek() {
    let mut h = harness().await;
    let numbers = [
        "4242424242424242",
        "5555555555554444",
        "4000000000000259",
        "4242424242424242",
        "5555555555554444",
    ];
    let mut refs = Vec::new();
    for n in numbers {
        refs.push(h.stored_card(n).await);
    }
    let fingerprint_before = h.card_token("4242424242424242").await["card"]["fingerprint"].clone();
    let (old, new) = (Kek::new(KEK_A), Kek::new(KEK_B));
    // Five records, one unconsumed token's record, and the fingerprint secret.
    assert_eq!(kek_ids(&h.db.pool).await, vec![(old.id().to_owned(), 7)]);

    // Without the old KEK nothing opens yet: the vault refuses to start, naming what to set,
    // since not even its fingerprint secret unwraps.
    h.stop_vault().await;
    let startup =
        paystream_vault::state(crate::vault_config(&h.db.url, &h.sim.url, &KEK_B, None)).await;
    let err = startup
        .err()
        .expect("no start without the old KEK")
        .to_string();
    assert!(err.contains("PAYSTREAM_VAULT_KEK_PREVIOUS"), "{err}");

    // Rolling to the new KEK with the old one as previous: everything reads, new data keys are
    // wrapped by the new KEK at once.
    h.restart_vault(&KEK_B, Some(&KEK_A)).await;
    let r = h.forward_authorize(&refs[0], "pi_rot_0").await;
    assert_eq!(r.status, 200, "{}", r.text);
    refs.push(h.stored_card("4242424242424242").await);
    assert_eq!(kek_ids(&h.db.pool).await, {
        let mut v = vec![(old.id().to_owned(), 7), (new.id().to_owned(), 1)];
        v.sort();
        v
    });
    let client = VaultClient::new(h.url(), Secret::new(SERVICE_TOKEN.to_owned())).unwrap();
    // A batch of 2 at a time: several committed batches, as on a large table.
    let mut batches = Vec::new();
    let total = client.rotate_kek(2, |p| batches.push(p)).await.unwrap();
    assert_eq!(total, 7);
    assert!(batches.len() >= 4, "{batches:?}");
    assert_eq!(batches.last().unwrap().remaining, 0);
    assert_eq!(kek_ids(&h.db.pool).await, vec![(new.id().to_owned(), 8)]);
    // Running it again finds nothing to do.
    assert_eq!(client.rotate_kek(2, |_| {}).await.unwrap(), 0);

    // The old KEK is gone: every stored number still decrypts, through the forward.
    h.restart_vault(&KEK_B, None).await;
    for (i, vault_ref) in refs.iter().enumerate() {
        let reference = format!("pi_rot_after_{i}");
        let r = h.forward_authorize(vault_ref, &reference).await;
        assert_eq!(r.status, 200, "record {i}: {}", r.text);
        assert_eq!(r.body["status"], "captured");
        assert_eq!(h.sim_charges(&reference).await.len(), 1);
    }
    // The fingerprint secret was re-wrapped too, so fingerprints did not change.
    assert_eq!(
        h.card_token("4242424242424242").await["card"]["fingerprint"],
        fingerprint_before
    );
    // And the records themselves were never rewritten: only data keys were.
    let rewritten: i64 =
        sqlx::query_scalar("SELECT count(*) FROM vault.data_keys WHERE rewrapped_at IS NOT NULL")
            .fetch_one(&h.db.pool)
            .await
            .unwrap();
    assert_eq!(rewritten, 7);
}

#[tokio::test]
async fn a_data_key_under_an_unknown_kek_stops_the_batch_and_names_the_kek() {
    let mut h = harness().await;
    h.stored_card("4242424242424242").await;
    // A data key wrapped by a KEK this vault was never given (a rotation that skipped one).
    sqlx::query(
        "INSERT INTO vault.data_keys (id, purpose, kek_id, wrapped)
         VALUES ('dk_zzzz', 'record', 'deadbeefdeadbeef', '\\x00')",
    )
    .execute(&h.db.pool)
    .await
    .unwrap();
    h.restart_vault(&KEK_B, Some(&KEK_A)).await;
    let client = VaultClient::new(h.url(), Secret::new(SERVICE_TOKEN.to_owned())).unwrap();
    let err = client.rewrap_batch(10).await.unwrap_err().to_string();
    assert!(err.contains("kek_unknown"), "{err}");
    assert!(err.contains("deadbeefdeadbeef"), "{err}");
    // Nothing was half-done: the batch rolled back.
    let a = Kek::new(KEK_A).id().to_owned();
    let mut want = vec![(a, 2), ("deadbeefdeadbeef".to_owned(), 1)];
    want.sort();
    assert_eq!(kek_ids(&h.db.pool).await, want);
    let unauthorized = VaultClient::new(h.url(), Secret::new("wrong_token_0123456789".into()))
        .unwrap()
        .rewrap_batch(10)
        .await
        .unwrap_err()
        .to_string();
    assert!(unauthorized.contains("401"), "{unauthorized}");
}
