//! Test support shared by every crate's integration tests (feature `testing`, enabled only as
//! a dev-dependency): a migrated database of its own per test, dropped with its guard.

use sqlx::PgPool;

/// The PostgreSQL server of `DATABASE_URL` (its default if unset), without a database name.
pub fn database_server_url() -> String {
    let url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| crate::config::DEFAULT_DATABASE_URL.to_owned());
    let url = url.split('?').next().unwrap_or_default().to_owned();
    match url.rfind('/') {
        Some(i) if i > "postgres://".len() => url[..i].to_owned(),
        _ => url,
    }
}

/// A database of its own for one test, migrated, dropped when the guard goes.
pub struct TestDb {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let db = Self::empty().await;
        crate::db::migrate(&db.pool)
            .await
            .expect("migrate test database");
        db
    }

    /// A database with only the migrations older than `version` applied, to test a migration
    /// against the data the ones before it left; [`crate::db::migrate`] applies the rest.
    pub async fn migrated_before(version: i64) -> TestDb {
        let db = Self::empty().await;
        let older = sqlx::migrate::Migrator {
            migrations: crate::db::MIGRATOR
                .iter()
                .filter(|m| m.version < version)
                .cloned()
                .collect(),
            ..sqlx::migrate::Migrator::DEFAULT
        };
        older.run(&db.pool).await.expect("migrate test database");
        db
    }

    async fn empty() -> TestDb {
        let name = format!("paystream_test_{}", uuid::Uuid::new_v4().simple());
        let url = format!("{}/{}", database_server_url(), name);
        crate::db::ensure_database(&url)
            .await
            .expect("PostgreSQL must run at DATABASE_URL's server");
        let pool = crate::db::connect(&url, 10)
            .await
            .expect("connect test database");
        TestDb { name, url, pool }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let admin = format!("{}/postgres", database_server_url());
        // Drop may run on the test's runtime thread, which this must not block on: clean up on
        // a thread and runtime of our own. No `pool.close()`: it would wait for connections
        // whose return needs the blocked runtime; FORCE ends them instead.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(pool) = crate::db::connect(&admin, 1).await {
                    let _ =
                        sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                            .execute(&pool)
                            .await;
                    pool.close().await;
                }
            });
        })
        .join();
    }
}
