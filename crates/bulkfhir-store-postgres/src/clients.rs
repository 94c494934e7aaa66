//! [`ClientStore`] on PostgreSQL: tables `auth_client` and `auth_jti`, shared by every node, so
//! a client registered once is known everywhere and an assertion replayed to another node is
//! still refused.

use async_trait::async_trait;
use bulkfhir_model::Instant;
use bulkfhir_store::{ClientRecord, ClientStore, StoreError};
use tokio_postgres::Row;

use crate::{error::pg_error, store::PostgresStore};

const CLIENT_COLUMNS: &str = "id, name, jwks, jwks_url, scope, created";

fn row_to_client(row: &Row) -> ClientRecord {
    ClientRecord {
        id: row.get(0),
        name: row.get(1),
        jwks: row.get(2),
        jwks_url: row.get(3),
        scope: row.get(4),
        created: Instant::from_micros(row.get(5)),
    }
}

#[async_trait]
impl ClientStore for PostgresStore {
    async fn add_client(&self, client: ClientRecord) -> Result<(), StoreError> {
        let db = self.client("register a client").await?;
        let inserted = db
            .execute(
                &format!(
                    "INSERT INTO auth_client ({CLIENT_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6)
                     ON CONFLICT (id) DO NOTHING"
                ),
                &[
                    &client.id,
                    &client.name,
                    &client.jwks,
                    &client.jwks_url,
                    &client.scope,
                    &client.created.as_micros(),
                ],
            )
            .await
            .map_err(|e| pg_error("register a client", e))?;
        if inserted == 0 {
            return Err(StoreError::Invalid(format!(
                "a client with id '{}' is registered already",
                client.id
            )));
        }
        Ok(())
    }

    async fn client(&self, id: &str) -> Result<Option<ClientRecord>, StoreError> {
        let db = self.client("read a client").await?;
        Ok(db
            .query_opt(&format!("SELECT {CLIENT_COLUMNS} FROM auth_client WHERE id = $1"), &[&id])
            .await
            .map_err(|e| pg_error("read a client", e))?
            .map(|row| row_to_client(&row)))
    }

    async fn clients(&self) -> Result<Vec<ClientRecord>, StoreError> {
        let db = self.client("list clients").await?;
        Ok(db
            .query(&format!("SELECT {CLIENT_COLUMNS} FROM auth_client ORDER BY id"), &[])
            .await
            .map_err(|e| pg_error("list clients", e))?
            .iter()
            .map(row_to_client)
            .collect())
    }

    async fn remove_client(&self, id: &str) -> Result<bool, StoreError> {
        let db = self.client("remove a client").await?;
        db.execute("DELETE FROM auth_client WHERE id = $1", &[&id])
            .await
            .map(|n| n > 0)
            .map_err(|e| pg_error("remove a client", e))
    }

    async fn shared_secret(
        &self,
        name: &str,
        candidate: &[u8],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let db = self.client("read a shared secret").await?;
        // Insert-if-absent, then read: two nodes starting together agree on the first one.
        db.execute(
            "INSERT INTO shared_secret (name, value) VALUES ($1, $2) ON CONFLICT (name) DO NOTHING",
            &[&name, &candidate],
        )
        .await
        .map_err(|e| pg_error("store a shared secret", e))?;
        let row = db
            .query_one("SELECT value FROM shared_secret WHERE name = $1", &[&name])
            .await
            .map_err(|e| pg_error("read a shared secret", e))?;
        Ok(Some(row.get(0)))
    }

    async fn use_jti(
        &self,
        client: &str,
        jti: &str,
        expires: Instant,
        now: Instant,
    ) -> Result<bool, StoreError> {
        let sql = |e| pg_error("record an assertion id", e);
        let mut db = self.client("record an assertion id").await?;
        let tx = db.transaction().await.map_err(sql)?;
        tx.execute("DELETE FROM auth_jti WHERE expires < $1", &[&now.as_micros()])
            .await
            .map_err(sql)?;
        let inserted = tx
            .execute(
                "INSERT INTO auth_jti (client, jti, expires) VALUES ($1, $2, $3)
                 ON CONFLICT (client, jti) DO NOTHING",
                &[&client, &jti, &expires.as_micros()],
            )
            .await
            .map_err(sql)?;
        tx.commit().await.map_err(sql)?;
        Ok(inserted == 1)
    }
}
