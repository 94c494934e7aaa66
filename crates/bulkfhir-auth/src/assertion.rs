//! SMART Backend Services client authentication (client-confidential-asymmetric): the client
//! signs a short JWT with its private key, and the server checks it against the client's
//! registered JWKS.
//!
//! Checks, in order: the header's `alg` is RS384 or ES384 (never `none`, never HS*: a public key
//! must not double as an HMAC secret); `iss` names a client ([`peek_client_id`], so the caller
//! can look up its keys); the key is the one its `kid` names (required); the key's type matches
//! `alg`; the signature; `iss` = `sub` =
//! the client id; `aud` = the token endpoint URL; `exp` in the future and at most five minutes
//! ahead; a `jti`. Whether the `jti` was seen before is the caller's check (it needs a store that
//! survives restarts).

use base64::Engine;
use jsonwebtoken::{
    Algorithm, DecodingKey, Validation,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet},
};
use serde::Deserialize;

use crate::{AuthError, OAuthError};

/// The most an assertion's `exp` may lie in the future (SMART: five minutes).
pub const MAX_ASSERTION_SECONDS: u64 = 300;

/// Slack for clocks that disagree, on `exp`.
const CLOCK_SKEW_SECONDS: u64 = 30;

#[derive(Debug, Deserialize)]
struct AssertionClaims {
    iss: String,
    sub: String,
    exp: u64,
    jti: Option<String>,
}

#[derive(Debug, Deserialize)]
struct IssuerOnly {
    iss: Option<String>,
}

/// A checked client assertion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifiedAssertion {
    /// The client it authenticates.
    pub client_id: String,
    /// Its `jti`, to refuse a replay until `expires_at`.
    pub jti: String,
    /// The last moment this server would accept it (its `exp` plus the clock slack; seconds
    /// since the epoch): its `jti` must be remembered until then.
    pub expires_at: u64,
}

fn invalid_client(message: impl Into<String>) -> AuthError {
    AuthError::new(OAuthError::InvalidClient, message)
}

/// The `alg` of an assertion's header, if it is one this server accepts, its `kid` and `jku`.
fn accepted_algorithm(
    assertion: &str,
) -> Result<(Algorithm, Option<String>, Option<String>), AuthError> {
    let header = jsonwebtoken::decode_header(assertion)
        .map_err(|_| invalid_client("client_assertion is not a JWT"))?;
    match header.alg {
        Algorithm::RS384 | Algorithm::ES384 => Ok((header.alg, header.kid, header.jku)),
        other => Err(invalid_client(format!(
            "client_assertion is signed with {other:?}; this server accepts RS384 and ES384"
        ))),
    }
}

/// What an assertion claims before its signature is checked: enough for the caller to find
/// the client's keys. Never trust it until [`verify_assertion`] says so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssertionHeader {
    /// The client it claims to be (`iss`).
    pub client_id: String,
    /// The key it names (`kid`).
    pub kid: Option<String>,
    /// The JWKS URL it names (`jku`): SMART lets a server use it only when it is the URL the
    /// client registered.
    pub jku: Option<String>,
}

/// Reads an assertion's `iss`, `kid` and `jku` (see [`AssertionHeader`]).
pub fn peek(assertion: &str) -> Result<AssertionHeader, AuthError> {
    let (_, kid, jku) = accepted_algorithm(assertion)?;
    let payload = assertion
        .split('.')
        .nth(1)
        .ok_or_else(|| invalid_client("client_assertion is not a JWT"))?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|_| invalid_client("client_assertion is not a JWT"))?;
    let claims: IssuerOnly = serde_json::from_slice(&bytes)
        .map_err(|_| invalid_client("client_assertion's claims are not JSON"))?;
    let client_id = claims
        .iss
        .filter(|iss| !iss.is_empty())
        .ok_or_else(|| invalid_client("client_assertion has no iss"))?;
    Ok(AssertionHeader { client_id, kid, jku })
}

/// The client id an assertion claims (its `iss`); see [`peek`].
pub fn peek_client_id(assertion: &str) -> Result<String, AuthError> {
    peek(assertion).map(|h| h.client_id)
}

/// Whether `jwk` is a key for `alg`: RSA for RS384, EC P-384 for ES384; a key that names its
/// own `alg` must name this one.
fn key_fits(jwk: &Jwk, alg: Algorithm) -> bool {
    let declared = jwk.common.key_algorithm.map(|a| format!("{a:?}"));
    if declared.is_some_and(|d| d != format!("{alg:?}")) {
        return false;
    }
    match (&jwk.algorithm, alg) {
        (AlgorithmParameters::RSA(_), Algorithm::RS384) => true,
        (AlgorithmParameters::EllipticCurve(ec), Algorithm::ES384) => {
            ec.curve == EllipticCurve::P384
        }
        _ => false,
    }
}

/// Checks `assertion` for `client_id` against its `keys`, the token endpoint URL `token_url`,
/// at `now` (seconds since the epoch).
pub fn verify_assertion(
    assertion: &str,
    client_id: &str,
    keys: &JwkSet,
    token_url: &str,
    now: u64,
) -> Result<VerifiedAssertion, AuthError> {
    let (alg, kid, _) = accepted_algorithm(assertion)?;
    // SMART's header table: `kid` is required, and the key is the one "where the kid matches".
    let kid = kid.ok_or_else(|| invalid_client("client_assertion's header has no kid"))?;
    let candidates: Vec<&Jwk> =
        keys.keys.iter().filter(|k| k.common.key_id.as_deref() == Some(kid.as_str())).collect();
    if candidates.is_empty() {
        return Err(invalid_client("no registered key has the assertion's kid"));
    }
    let candidates: Vec<&Jwk> = candidates.into_iter().filter(|k| key_fits(k, alg)).collect();
    if candidates.is_empty() {
        return Err(invalid_client(format!("no registered key of this client is for {alg:?}")));
    }
    let mut validation = Validation::new(alg);
    validation.set_audience(&[token_url]);
    validation.set_issuer(&[client_id]);
    validation.sub = Some(client_id.to_owned());
    validation.set_required_spec_claims(&["exp", "iss", "sub", "aud"]);
    // Expiry is checked below, against the caller's clock.
    validation.validate_exp = false;
    let mut last_error = None;
    for jwk in candidates {
        let Ok(key) = DecodingKey::from_jwk(jwk) else { continue };
        match jsonwebtoken::decode::<AssertionClaims>(assertion, &key, &validation) {
            Ok(data) => return check_claims(data.claims, client_id, now),
            Err(error) => last_error = Some(error),
        }
    }
    use jsonwebtoken::errors::ErrorKind as K;
    Err(match last_error.as_ref().map(|e| e.kind()) {
        Some(K::InvalidAudience) => {
            invalid_client(format!("client_assertion's aud must be the token endpoint {token_url}"))
        }
        Some(K::InvalidIssuer) | Some(K::InvalidSubject) => {
            invalid_client("client_assertion's iss and sub must both be the client id")
        }
        Some(K::MissingRequiredClaim(claim)) => {
            invalid_client(format!("client_assertion has no {claim}"))
        }
        _ => invalid_client("client_assertion's signature does not verify with the client's keys"),
    })
}

fn check_claims(
    claims: AssertionClaims,
    client_id: &str,
    now: u64,
) -> Result<VerifiedAssertion, AuthError> {
    // SMART: "If an error is encountered during the authentication process, the server SHALL
    // respond with an invalid_client error" — expiry and `jti` included.
    let refuse = |message: &str| AuthError::new(OAuthError::InvalidClient, message);
    if claims.iss != client_id || claims.sub != client_id {
        return Err(invalid_client("client_assertion's iss and sub must both be the client id"));
    }
    let accepted_until = claims.exp.saturating_add(CLOCK_SKEW_SECONDS);
    if accepted_until <= now {
        return Err(refuse("client_assertion has expired"));
    }
    if claims.exp > now.saturating_add(MAX_ASSERTION_SECONDS + CLOCK_SKEW_SECONDS) {
        return Err(refuse("client_assertion's exp is more than five minutes ahead"));
    }
    let jti = claims
        .jti
        .filter(|j| !j.is_empty() && j.len() <= 256)
        .ok_or_else(|| refuse("client_assertion needs a jti (at most 256 characters)"))?;
    Ok(VerifiedAssertion { client_id: claims.iss, jti, expires_at: accepted_until })
}

#[cfg(test)]
mod tests {
    use aws_lc_rs::{
        encoding::AsDer,
        rsa::KeySize,
        signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, KeyPair},
    };
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;

    use super::*;

    const URL: &str = "https://fhir.example.org/fhir/auth/token";
    const NOW: u64 = 1_800_000_000;

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    /// An ES384 key: its signing key and its public JWK.
    fn es384(kid: &str) -> (EncodingKey, serde_json::Value) {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &rng).unwrap();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, pkcs8.as_ref()).unwrap();
        let point = pair.public_key().as_ref();
        let jwk = json!({"kty": "EC", "crv": "P-384", "kid": kid, "alg": "ES384",
            "x": b64(&point[1..49]), "y": b64(&point[49..97])});
        (EncodingKey::from_ec_der(pkcs8.as_ref()), jwk)
    }

    /// An RS384 key: its signing key and its public JWK. (jsonwebtoken reads RSA DER as
    /// PKCS#1 only, so the PKCS#8 key goes through PEM.)
    fn rs384(kid: &str) -> (EncodingKey, serde_json::Value) {
        let pair = aws_lc_rs::rsa::KeyPair::generate(KeySize::Rsa2048).unwrap();
        let der = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&pair).unwrap();
        let text = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
        let lines: Vec<&str> =
            text.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            lines.join("\n")
        );
        let public = pair.public_key();
        let jwk = json!({"kty": "RSA", "kid": kid, "alg": "RS384",
            "n": b64(public.modulus().big_endian_without_leading_zero()),
            "e": b64(public.exponent().big_endian_without_leading_zero())});
        (EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(), jwk)
    }

    fn sign(
        alg: Algorithm,
        kid: Option<&str>,
        key: &EncodingKey,
        claims: serde_json::Value,
    ) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_owned);
        jsonwebtoken::encode(&header, &claims, key).unwrap()
    }

    fn claims(client: &str, exp: u64, jti: &str) -> serde_json::Value {
        json!({"iss": client, "sub": client, "aud": URL, "exp": exp, "jti": jti})
    }

    fn set(keys: &[&serde_json::Value]) -> JwkSet {
        serde_json::from_value(json!({"keys": keys})).unwrap()
    }

    #[test]
    fn es384_and_rs384_assertions_verify_and_name_their_client() {
        let (es_key, es_jwk) = es384("es");
        let (rs_key, rs_jwk) = rs384("rs");
        let keys = set(&[&es_jwk, &rs_jwk]);
        for (alg, kid, key) in
            [(Algorithm::ES384, Some("es"), &es_key), (Algorithm::RS384, Some("rs"), &rs_key)]
        {
            let assertion = sign(alg, kid, key, claims("c1", NOW + 240, "j1"));
            assert_eq!(peek_client_id(&assertion).unwrap(), "c1");
            let checked = verify_assertion(&assertion, "c1", &keys, URL, NOW).unwrap();
            assert_eq!(
                checked,
                VerifiedAssertion {
                    client_id: "c1".to_owned(),
                    jti: "j1".to_owned(),
                    expires_at: NOW + 240 + CLOCK_SKEW_SECONDS
                }
            );
        }
    }

    #[test]
    fn every_bad_assertion_is_refused_with_its_reason() {
        let (key, jwk) = es384("k1");
        let (other_key, _) = es384("k1");
        let keys = set(&[&jwk]);
        let good = claims("c1", NOW + 60, "j");
        let refused =
            |assertion: &str| verify_assertion(assertion, "c1", &keys, URL, NOW).unwrap_err();

        // Signed by another key with the same kid.
        let forged = sign(Algorithm::ES384, Some("k1"), &other_key, good.clone());
        assert_eq!(refused(&forged).code, OAuthError::InvalidClient);
        // Unknown kid.
        let unknown = sign(Algorithm::ES384, Some("k2"), &key, good.clone());
        assert!(refused(&unknown).message.contains("kid"));
        // alg none, and HS256 with the public key as the secret.
        let header = b64(br#"{"alg":"none","typ":"JWT"}"#);
        let body = b64(good.to_string().as_bytes());
        assert!(refused(&format!("{header}.{body}.")).code == OAuthError::InvalidClient);
        let hs = sign(
            Algorithm::HS256,
            Some("k1"),
            &EncodingKey::from_secret(jwk.to_string().as_bytes()),
            good.clone(),
        );
        assert!(refused(&hs).message.contains("accepts RS384 and ES384"));
        assert!(peek_client_id(&hs).is_err());
        // RS384 claimed over an EC key.
        let (rs_key, _) = rs384("k1");
        let mismatched = sign(Algorithm::RS384, Some("k1"), &rs_key, good.clone());
        assert!(refused(&mismatched).message.contains("RS384"));
        // Wrong aud, iss, sub; exp past, too far ahead; no jti.
        let mut wrong_aud = good.clone();
        wrong_aud["aud"] = json!("https://elsewhere/token");
        assert!(
            refused(&sign(Algorithm::ES384, Some("k1"), &key, wrong_aud)).message.contains("aud")
        );
        let mut wrong_sub = good.clone();
        wrong_sub["sub"] = json!("c2");
        assert_eq!(
            refused(&sign(Algorithm::ES384, Some("k1"), &key, wrong_sub)).code,
            OAuthError::InvalidClient
        );
        let expired = sign(Algorithm::ES384, Some("k1"), &key, claims("c1", NOW - 60, "j"));
        assert_eq!(refused(&expired).code, OAuthError::InvalidClient);
        // No kid.
        let no_kid = sign(Algorithm::ES384, None, &key, good.clone());
        assert!(refused(&no_kid).message.contains("kid"));
        let far = sign(Algorithm::ES384, Some("k1"), &key, claims("c1", NOW + 3_600, "j"));
        assert!(refused(&far).message.contains("five minutes"));
        let mut no_jti = good.clone();
        no_jti.as_object_mut().unwrap().remove("jti");
        assert!(refused(&sign(Algorithm::ES384, Some("k1"), &key, no_jti)).message.contains("jti"));
        // Another client's assertion checked against this client's keys.
        let other_client = sign(Algorithm::ES384, Some("k1"), &key, claims("c2", NOW + 60, "j"));
        assert_eq!(refused(&other_client).code, OAuthError::InvalidClient);
        // Not a JWT at all.
        assert!(peek_client_id("garbage").is_err());
        assert!(peek_client_id("a.b.c").is_err());
    }
}
