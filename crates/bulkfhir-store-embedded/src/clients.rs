//! [`ClientStore`] on SQLite: tables `auth_client` and `auth_jti`.

use async_trait::async_trait;
use bulkfhir_model::Instant;
use bulkfhir_store::{ClientRecord, ClientStore, StoreError};
use rusqlite::{OptionalExtension, params};

use crate::sqlite::{EmbeddedStore, sql_error};

const CLIENT_COLUMNS: &str = "id, name, jwks, jwks_url, scope, created";

fn row_to_client(row: &rusqlite::Row<'_>) -> rusqlite::Result<ClientRecord> {
    Ok(ClientRecord {
        id: row.get(0)?,
        name: row.get(1)?,
        jwks: row.get(2)?,
        jwks_url: row.get(3)?,
        scope: row.get(4)?,
        created: Instant::from_micros(row.get(5)?),
    })
}

#[async_trait]
impl ClientStore for EmbeddedStore {
    async fn add_client(&self, client: ClientRecord) -> Result<(), StoreError> {
        self.with_writer("register a client", move |conn| {
            let inserted = conn
                .execute(
                    &format!(
                        "INSERT INTO auth_client ({CLIENT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                         ON CONFLICT (id) DO NOTHING"
                    ),
                    params![
                        client.id,
                        client.name,
                        client.jwks,
                        client.jwks_url,
                        client.scope,
                        client.created.as_micros()
                    ],
                )
                .map_err(|e| sql_error("register a client", e))?;
            if inserted == 0 {
                return Err(StoreError::Invalid(format!(
                    "a client with id '{}' is registered already",
                    client.id
                )));
            }
            Ok(())
        })
        .await
    }

    async fn client(&self, id: &str) -> Result<Option<ClientRecord>, StoreError> {
        let id = id.to_owned();
        self.with_reader("read a client", move |conn| {
            conn.prepare_cached(&format!("SELECT {CLIENT_COLUMNS} FROM auth_client WHERE id = ?1"))
                .and_then(|mut statement| statement.query_row([id], row_to_client).optional())
                .map_err(|e| sql_error("read a client", e))
        })
        .await
    }

    async fn clients(&self) -> Result<Vec<ClientRecord>, StoreError> {
        self.with_reader("list clients", move |conn| {
            let sql = |e| sql_error("list clients", e);
            let mut statement = conn
                .prepare_cached(&format!("SELECT {CLIENT_COLUMNS} FROM auth_client ORDER BY id"))
                .map_err(sql)?;
            statement
                .query_map([], row_to_client)
                .map_err(sql)?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(sql)
        })
        .await
    }

    async fn remove_client(&self, id: &str) -> Result<bool, StoreError> {
        let id = id.to_owned();
        self.with_writer("remove a client", move |conn| {
            conn.execute("DELETE FROM auth_client WHERE id = ?1", [id])
                .map(|n| n > 0)
                .map_err(|e| sql_error("remove a client", e))
        })
        .await
    }

    async fn use_jti(
        &self,
        client: &str,
        jti: &str,
        expires: Instant,
        now: Instant,
    ) -> Result<bool, StoreError> {
        let (client, jti) = (client.to_owned(), jti.to_owned());
        self.with_writer("record an assertion id", move |conn| {
            let sql = |e| sql_error("record an assertion id", e);
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(sql)?;
            tx.execute("DELETE FROM auth_jti WHERE expires < ?1", [now.as_micros()])
                .map_err(sql)?;
            let inserted = tx
                .execute(
                    "INSERT INTO auth_jti (client, jti, expires) VALUES (?1, ?2, ?3)
                     ON CONFLICT (client, jti) DO NOTHING",
                    params![client, jti, expires.as_micros()],
                )
                .map_err(sql)?;
            tx.commit().map_err(sql)?;
            Ok(inserted == 1)
        })
        .await
    }
}
