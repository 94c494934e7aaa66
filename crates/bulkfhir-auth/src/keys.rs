//! Client keys: an ES384 key pair for people who just want to try authorization
//! (`bulkfhir client keygen`), JWKS checks at registration, and signing a client assertion
//! (what a backend client sends to the token endpoint).

use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header, jwk::JwkSet};
use serde_json::json;

use crate::{AuthError, OAuthError};

/// PKCS#8 DER as PEM.
fn pkcs8_pem(der: &[u8]) -> String {
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|chunk| std::str::from_utf8(chunk).unwrap_or_default())
        .collect();
    format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", lines.join("\n"))
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

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
    let jwks = json!({"keys": [{"kty": "EC", "crv": "P-384", "kid": kid, "alg": "ES384",
        "use": "sig", "key_ops": ["verify"], "x": b64(&point[1..49]), "y": b64(&point[49..97])}]});
    Ok((pkcs8_pem(pkcs8.as_ref()), format!("{jwks:#}\n")))
}

/// A new RS384 key pair (RSA 3072): the private key as PKCS#8 PEM, and a JWKS holding its
/// public key under `kid`.
pub fn generate_rs384(kid: &str) -> Result<(String, String), AuthError> {
    use aws_lc_rs::{
        encoding::{AsDer, Pkcs8V1Der},
        rsa::{KeyPair, KeySize},
        signature::KeyPair as _,
    };
    let failed = || AuthError::new(OAuthError::InvalidRequest, "could not generate a key");
    let pair = KeyPair::generate(KeySize::Rsa3072).map_err(|_| failed())?;
    let der = AsDer::<Pkcs8V1Der>::as_der(&pair).map_err(|_| failed())?;
    let public = pair.public_key();
    let jwks = json!({"keys": [{"kty": "RSA", "kid": kid, "alg": "RS384", "use": "sig",
        "key_ops": ["verify"],
        "n": b64(public.modulus().big_endian_without_leading_zero()),
        "e": b64(public.exponent().big_endian_without_leading_zero())}]});
    Ok((pkcs8_pem(der.as_ref()), format!("{jwks:#}\n")))
}

/// Checks a JWKS offered at registration: valid JSON, no private key material, and at least
/// one key this server can verify assertions with (RSA of at least 2048 bits for RS384, EC
/// P-384 for ES384; not marked `"use": "enc"`). Returns the number of such keys.
pub fn check_jwks(text: &str) -> Result<usize, String> {
    use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, PublicKeyUse};
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
        .filter(|k| k.common.public_key_use != Some(PublicKeyUse::Encryption))
        .filter(|k| match &k.algorithm {
            AlgorithmParameters::RSA(rsa) => {
                let bits = base64::engine::general_purpose::URL_SAFE_NO_PAD
                    .decode(rsa.n.trim_end_matches('='))
                    .map_or(0, |n| n.iter().skip_while(|b| **b == 0).count() * 8);
                bits >= 2048
            }
            AlgorithmParameters::EllipticCurve(ec) => ec.curve == EllipticCurve::P384,
            _ => false,
        })
        .count();
    if usable == 0 {
        return Err(
            "the JWKS has no key for RS384 (RSA, 2048 bits or more) or ES384 (EC P-384)".into()
        );
    }
    Ok(usable)
}

/// Checks a JWKS URL offered at registration or about to be fetched: `https://` without
/// credentials, or plain `http://` on a loopback address (for tests). Returns it normalized.
pub fn check_jwks_url(text: &str) -> Result<String, String> {
    let url = url::Url::parse(text).map_err(|e| format!("the JWKS URL is not a URL: {e}"))?;
    let loopback = match url.host() {
        Some(url::Host::Domain(name)) => name == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => false,
    };
    let allowed = url.scheme() == "https" || (url.scheme() == "http" && loopback);
    if !allowed || !url.username().is_empty() || url.password().is_some() {
        return Err("the JWKS URL must be https:// without credentials (plain http only on \
                    loopback, for tests)"
            .to_owned());
    }
    Ok(url.to_string())
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
    fn a_generated_rs384_key_signs_assertions_its_jwks_verifies() {
        let (pem, jwks) = generate_rs384("r1").unwrap();
        assert_eq!(check_jwks(&jwks), Ok(1));
        let url = "https://fhir.example.org/fhir/auth/token";
        let claims = ClientAssertion {
            alg: Algorithm::RS384,
            kid: Some("r1"),
            client_id: "c1",
            token_url: url,
            now: 1_000,
            seconds: 60,
            jti: "j1",
        };
        let assertion = sign_assertion(&pem, &claims).unwrap();
        let set: JwkSet = serde_json::from_str(&jwks).unwrap();
        assert!(crate::assertion::verify_assertion(&assertion, "c1", &set, url, 1_000).is_ok());
    }

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
        // A P-256 key can never verify an ES384 assertion.
        let p256 = r#"{"keys":[{"kty":"EC","crv":"P-256","x":"MKBCTNIcKUSDii11ySs3526iDZ8AiTo7Tu6KPAqv7D4","y":"4Etl6SRW2YiLUrN5vfvVHuhp7x8PxltmWWlbbM4IFyM"}]}"#;
        assert!(check_jwks(p256).is_err());
        // An encryption key is not a signing key.
        let enc = jwks.replace("\"sig\"", "\"enc\"");
        assert!(check_jwks(&enc).is_err(), "{enc}");
        assert!(
            check_jwks(r#"{"keys":[{"kty":"EC","crv":"P-384","x":"a","y":"b","d":"c"}]}"#)
                .unwrap_err()
                .contains("private")
        );
    }
}
