//! Client keys: an ES384 key pair for people who just want to try authorization
//! (`bulkfhir client keygen`), JWKS checks at registration, and signing a client assertion
//! (what a backend client sends to the token endpoint).

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::JwkSet};
use serde_json::json;

use crate::{AuthError, OAuthError};

/// A new ES384 key pair: the private key as PKCS#8 PEM, and a JWKS holding its public key
/// under `kid`.
pub fn generate_es384(kid: &str) -> Result<(String, String), AuthError> {
    use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    let failed = || AuthError::new(OAuthError::InvalidRequest, "could not generate a key");
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, &rng)
        .map_err(|_| failed())?;
    let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P384_SHA384_FIXED_SIGNING, pkcs8.as_ref())
        .map_err(|_| failed())?;
    // An uncompressed P-384 point: 0x04, then x and y of 48 bytes each.
    let point = pair.public_key().as_ref();
    if point.len() != 97 {
        return Err(failed());
    }
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let jwks = json!({"keys": [{"kty": "EC", "crv": "P-384", "kid": kid, "alg": "ES384",
        "use": "sig", "key_ops": ["verify"], "x": b64(&point[1..49]), "y": b64(&point[49..97])}]});
    let body = base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref());
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|chunk| std::str::from_utf8(chunk).unwrap_or_default())
        .collect();
    let pem =
        format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", lines.join("\n"));
    Ok((pem, format!("{jwks:#}\n")))
}

/// Checks a JWKS offered at registration: valid JSON, at least one public RS384 or ES384 key,
/// and no private key material. Returns the number of usable keys.
pub fn check_jwks(text: &str) -> Result<usize, String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("the JWKS is not JSON: {e}"))?;
    let keys = value["keys"].as_array().ok_or("the JWKS has no 'keys' array")?;
    if keys.iter().any(|k| k.get("d").is_some()) {
        return Err("the JWKS holds a private key ('d'); register the public keys only".into());
    }
    let set: JwkSet =
        serde_json::from_value(value.clone()).map_err(|e| format!("the JWKS is not valid: {e}"))?;
    let usable = set
        .keys
        .iter()
        .filter(|k| {
            matches!(
                &k.algorithm,
                jsonwebtoken::jwk::AlgorithmParameters::RSA(_)
                    | jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_)
            )
        })
        .count();
    if usable == 0 {
        return Err("the JWKS has no RSA or EC public key".into());
    }
    Ok(usable)
}

/// What a client assertion says.
#[derive(Debug, Clone)]
pub struct ClientAssertion<'a> {
    /// ES384 or RS384.
    pub alg: Algorithm,
    /// The key's id in the client's JWKS.
    pub kid: Option<&'a str>,
    /// The client (`iss` and `sub`).
    pub client_id: &'a str,
    /// The token endpoint URL (`aud`).
    pub token_url: &'a str,
    /// Seconds since the epoch.
    pub now: u64,
    /// How long it is valid (at most 300).
    pub seconds: u64,
    /// A value never used before.
    pub jti: &'a str,
}

/// Signs `assertion` with `key_pem` (PKCS#8 PEM).
pub fn sign_assertion(key_pem: &str, assertion: &ClientAssertion<'_>) -> Result<String, AuthError> {
    let ClientAssertion { alg, kid, client_id, token_url, now, seconds, jti } = *assertion;
    let bad_key = || AuthError::new(OAuthError::InvalidRequest, "the private key is not usable");
    let key = match alg {
        Algorithm::ES384 => EncodingKey::from_ec_pem(key_pem.as_bytes()),
        Algorithm::RS384 => EncodingKey::from_rsa_pem(key_pem.as_bytes()),
        _ => return Err(bad_key()),
    }
    .map_err(|_| bad_key())?;
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_owned);
    header.typ = Some("JWT".to_owned());
    let claims = json!({"iss": client_id, "sub": client_id, "aud": token_url,
        "exp": now + seconds, "jti": jti});
    jsonwebtoken::encode(&header, &claims, &key).map_err(|_| bad_key())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_signs_assertions_its_jwks_verifies() {
        let (pem, jwks) = generate_es384("k1").unwrap();
        assert_eq!(check_jwks(&jwks), Ok(1));
        let url = "http://127.0.0.1:8080/fhir/auth/token";
        let claims = ClientAssertion {
            alg: Algorithm::ES384,
            kid: Some("k1"),
            client_id: "c1",
            token_url: url,
            now: 1_000,
            seconds: 240,
            jti: "j1",
        };
        let assertion = sign_assertion(&pem, &claims).unwrap();
        let set: JwkSet = serde_json::from_str(&jwks).unwrap();
        let checked =
            crate::assertion::verify_assertion(&assertion, "c1", &set, url, 1_000).unwrap();
        assert_eq!((checked.client_id.as_str(), checked.jti.as_str()), ("c1", "j1"));
        assert!(check_jwks("{}").is_err());
        assert!(check_jwks(r#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#).is_err());
        assert!(
            check_jwks(r#"{"keys":[{"kty":"EC","crv":"P-384","x":"a","y":"b","d":"c"}]}"#)
                .unwrap_err()
                .contains("private")
        );
    }
}
