//! Access tokens: JWTs the server signs (HS256) with a secret of its own, kept in the data
//! directory so that tokens outlive a restart, valid at most [`MAX_TOKEN_SECONDS`].

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::{AuthError, Grant, OAuthError};

/// The longest an access token lives (SMART: five minutes is the recommended maximum).
pub const MAX_TOKEN_SECONDS: u64 = 300;

/// The issuer named in every access token.
const ISSUER: &str = "bulkfhir";

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    scope: String,
    iat: u64,
    exp: u64,
    /// The tenant whose client it was issued to; absent for the default tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tenant: Option<String>,
}

/// What a valid access token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessToken {
    /// The client it was issued to.
    pub client_id: String,
    /// What it allows.
    pub grant: Grant,
    /// When it expires (seconds since the epoch).
    pub expires_at: u64,
    /// The tenant whose client it was issued to (`None`: the default tenant).
    pub tenant: Option<String>,
}

/// Issues and checks access tokens with one secret.
#[derive(Clone)]
pub struct TokenSigner {
    encoding: EncodingKey,
    decoding: DecodingKey,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenSigner { .. }")
    }
}

impl TokenSigner {
    /// The shortest secret accepted (HS256 wants at least its output size).
    pub const MIN_SECRET_BYTES: usize = 32;

    /// A new random secret of [`Self::MIN_SECRET_BYTES`] bytes, from the system's generator.
    pub fn random_secret() -> Result<Vec<u8>, AuthError> {
        use aws_lc_rs::rand::SecureRandom;
        let mut secret = vec![0u8; Self::MIN_SECRET_BYTES];
        aws_lc_rs::rand::SystemRandom::new().fill(&mut secret).map_err(|_| {
            AuthError::new(OAuthError::InvalidRequest, "the system random generator failed")
        })?;
        Ok(secret)
    }

    /// A signer over `secret` (at least [`Self::MIN_SECRET_BYTES`] random bytes).
    pub fn new(secret: &[u8]) -> Result<Self, AuthError> {
        if secret.len() < Self::MIN_SECRET_BYTES {
            return Err(AuthError::new(
                OAuthError::InvalidRequest,
                "the token signing secret is shorter than 32 bytes",
            ));
        }
        Ok(TokenSigner {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
        })
    }

    /// A token for `client_id` with `grant`, valid `seconds` (at most [`MAX_TOKEN_SECONDS`])
    /// from `now` (seconds since the epoch); returns it and its lifetime.
    pub fn issue(
        &self,
        client_id: &str,
        grant: &Grant,
        now: u64,
        seconds: u64,
    ) -> Result<(String, u64), AuthError> {
        self.issue_in(None, client_id, grant, now, seconds)
    }

    /// [`issue`](Self::issue) for a client of `tenant` (`None`: the default tenant): the
    /// token names its tenant, and a server accepts it only there.
    pub fn issue_in(
        &self,
        tenant: Option<&str>,
        client_id: &str,
        grant: &Grant,
        now: u64,
        seconds: u64,
    ) -> Result<(String, u64), AuthError> {
        let lifetime = seconds.clamp(1, MAX_TOKEN_SECONDS);
        let claims = Claims {
            iss: ISSUER.to_owned(),
            sub: client_id.to_owned(),
            scope: grant.to_scope_string(),
            iat: now,
            exp: now + lifetime,
            tenant: tenant.map(str::to_owned),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|_| {
            AuthError::new(OAuthError::InvalidRequest, "could not sign a token")
        })?;
        Ok((token, lifetime))
    }

    /// Checks a bearer token at `now`: this server's signature, not expired.
    pub fn verify(&self, token: &str, now: u64) -> Result<AccessToken, AuthError> {
        let invalid = |message: &str| AuthError::new(OAuthError::InvalidToken, message);
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        // Expiry is checked below against the caller's clock.
        validation.validate_exp = false;
        validation.validate_aud = false;
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &validation)
            .map_err(|_| invalid("the access token is not valid"))?;
        let claims = data.claims;
        if claims.exp <= now {
            return Err(invalid("the access token has expired"));
        }
        let grant =
            Grant::parse(&claims.scope).map_err(|_| invalid("the access token is not valid"))?;
        Ok(AccessToken {
            client_id: claims.sub,
            grant,
            expires_at: claims.exp,
            tenant: claims.tenant,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_carry_their_scope_and_expire() {
        assert!(TokenSigner::new(&[7; 16]).is_err(), "too short a secret");
        let signer = TokenSigner::new(&[7; 32]).unwrap();
        let grant =
            Grant::parse("system/Patient.rs system/Observation.rs?category=laboratory").unwrap();
        let (token, lifetime) = signer.issue("client-1", &grant, 1_000, 10_000).unwrap();
        assert_eq!(lifetime, MAX_TOKEN_SECONDS, "never longer than five minutes");
        let checked = signer.verify(&token, 1_100).unwrap();
        assert_eq!(checked.client_id, "client-1");
        assert_eq!(checked.grant, grant);
        assert_eq!(checked.expires_at, 1_300);
        assert!(signer.verify(&token, 1_300).is_err(), "expired at exp");
        // Another server's secret, a tampered token, garbage: refused.
        let other = TokenSigner::new(&[8; 32]).unwrap().verify(&token, 1_100).unwrap_err();
        assert_eq!(other.code, OAuthError::InvalidToken);
        let mut tampered = token.clone();
        tampered.pop();
        assert!(signer.verify(&tampered, 1_100).is_err());
        assert!(signer.verify("not.a.token", 1_100).is_err());
    }

    #[test]
    fn tokens_name_their_tenant_and_the_default_tenant_by_omission() {
        let signer = TokenSigner::new(&[7; 32]).unwrap();
        let grant = Grant::parse("system/*.rs bulkfhir/tenants").unwrap();
        assert!(grant.crosses_tenants());
        assert_eq!(grant.to_scope_string(), "system/*.rs bulkfhir/tenants");
        let (token, _) = signer.issue_in(Some("north"), "c", &grant, 1_000, 60).unwrap();
        let checked = signer.verify(&token, 1_001).unwrap();
        assert_eq!(checked.tenant.as_deref(), Some("north"));
        let (token, _) = signer.issue("c", &grant, 1_000, 60).unwrap();
        assert_eq!(signer.verify(&token, 1_001).unwrap().tenant, None);
        // Only granted when both asked for and registered.
        let plain = Grant::parse("system/*.rs").unwrap();
        assert!(!Grant::intersect(&grant, &plain).crosses_tenants());
        assert!(!Grant::intersect(&plain, &grant).crosses_tenants());
        assert!(Grant::intersect(&grant, &grant).crosses_tenants());
    }
}
