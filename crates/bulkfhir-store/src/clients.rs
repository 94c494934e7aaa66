//! The registry of SMART backend clients and the replay cache of their assertions: state that
//! authorization needs to survive a restart, kept by the store backend (never a config file).

use async_trait::async_trait;
use bulkfhir_model::Instant;

use crate::StoreError;

/// A registered backend client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientRecord {
    /// Its id (the `iss` and `sub` of its assertions), assigned at registration.
    pub id: String,
    /// A name for people.
    pub name: String,
    /// Its public keys as a JWKS document, when registered inline.
    pub jwks: Option<String>,
    /// Where its JWKS is published (HTTPS), when registered by URL.
    pub jwks_url: Option<String>,
    /// The scopes it may be granted, space-separated.
    pub scope: String,
    /// When it was registered.
    pub created: Instant,
}

/// Clients and the `jti` replay cache.
#[async_trait]
pub trait ClientStore: Send + Sync + std::fmt::Debug {
    /// Registers a client (`AlreadyExists`-like `Invalid` when the id is taken).
    async fn add_client(&self, client: ClientRecord) -> Result<(), StoreError>;

    /// The client with this id, if registered.
    async fn client(&self, id: &str) -> Result<Option<ClientRecord>, StoreError>;

    /// Every registered client, by id.
    async fn clients(&self) -> Result<Vec<ClientRecord>, StoreError>;

    /// Removes a client; whether it was there.
    async fn remove_client(&self, id: &str) -> Result<bool, StoreError>;

    /// The secret named `name` that every node sharing this store must use (the key that
    /// signs access tokens): stored as `candidate` by the first node that asks, the stored one
    /// for every later call. `None` from a store that one node owns alone (the embedded one):
    /// the node keeps the secret in its data directory instead.
    async fn shared_secret(
        &self,
        name: &str,
        candidate: &[u8],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let _ = (name, candidate);
        Ok(None)
    }

    /// Records that `client` used `jti`, valid until `expires`: true the first time, false for a
    /// replay of a `jti` still remembered. Entries that expired before `now` are forgotten.
    async fn use_jti(
        &self,
        client: &str,
        jti: &str,
        expires: Instant,
        now: Instant,
    ) -> Result<bool, StoreError>;
}
