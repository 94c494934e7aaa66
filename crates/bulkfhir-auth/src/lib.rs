//! Authorization for bulkfhir: SMART Backend Services (App Launch 2.2) as a library, with no
//! HTTP and no storage in it.
//!
//! - [`scope`]: SMART v1 and v2 `system/` scopes, granular ones included, as a [`Grant`]; the
//!   granted scope is the intersection of what a client asks for and what it is registered for.
//! - [`assertion`]: checks a client's signed JWT (RS384 or ES384) against its JWKS.
//! - [`token`]: the access tokens the server issues and checks.
//! - [`keys`]: key generation for trying it out, JWKS checks, and signing a client assertion.
//!
//! The server wires these into its token endpoint and request checks; the client registry and
//! the `jti` replay cache live in the store, so that they survive restarts.
#![warn(missing_docs)]

pub mod assertion;
mod error;
pub mod keys;
pub mod scope;
pub mod token;

pub use error::{AuthError, OAuthError};
pub use jsonwebtoken::{Algorithm, jwk::JwkSet};
pub use scope::{
    ADMIN_SCOPE, Action, Actions, Grant, ReadAccess, ScopeError, ScopeRule, TENANTS_SCOPE,
};
pub use token::{AccessToken, MAX_TOKEN_SECONDS, TokenSigner};
