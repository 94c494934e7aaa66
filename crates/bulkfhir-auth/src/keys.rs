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

/// The algorithm of a PEM private key: RS384 for an RSA key, ES384 for an EC key, from the
/// PEM label (`RSA PRIVATE KEY`, `EC PRIVATE KEY`) or, for PKCS#8 (`PRIVATE KEY`), from the
/// algorithm identifier inside; `None` when it is neither or not a PEM key.
pub fn pem_algorithm(pem: &str) -> Option<Algorithm> {
    // DER of the OIDs rsaEncryption (1.2.840.113549.1.1.1) and id-ecPublicKey (1.2.840.10045.2.1).
    const RSA: &[u8] = &[0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    const EC: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    let begin = pem.lines().map(str::trim).find(|l| l.starts_with("-----BEGIN "))?;
    match begin {
        "-----BEGIN RSA PRIVATE KEY-----" => return Some(Algorithm::RS384),
        "-----BEGIN EC PRIVATE KEY-----" => return Some(Algorithm::ES384),
        "-----BEGIN PRIVATE KEY-----" => {}
        _ => return None,
    }
    let body: String = pem
        .lines()
        .map(str::trim)
        .skip_while(|l| !l.starts_with("-----BEGIN "))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END "))
        .collect();
    let der = base64::engine::general_purpose::STANDARD.decode(body).ok()?;
    // The algorithm identifier comes first, near the start of the document.
    let head = &der[..der.len().min(64)];
    if head.windows(RSA.len()).any(|w| w == RSA) {
        Some(Algorithm::RS384)
    } else if head.windows(EC.len()).any(|w| w == EC) {
        Some(Algorithm::ES384)
    } else {
        None
    }
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

/// A client's private key given as a JWK (or a JWKS holding one private key), as PKCS#8 PEM,
/// with the key's algorithm and its `kid`: what [`sign_assertion`] takes. EC keys on P-384
/// (ES384) and RSA keys with all CRT parameters (RS384).
pub fn private_jwk_to_pem(
    text: &str,
) -> Result<(String, crate::Algorithm, Option<String>), AuthError> {
    let bad = |why: &str| AuthError::new(OAuthError::InvalidRequest, why);
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|_| bad("the key file is not JSON"))?;
    let jwk = match value["keys"].as_array() {
        Some(keys) => keys
            .iter()
            .find(|k| k.get("d").is_some())
            .ok_or_else(|| bad("the JWKS holds no private key ('d')"))?,
        None => &value,
    };
    let field = |name: &str| -> Result<Vec<u8>, AuthError> {
        let text = jwk[name].as_str().ok_or_else(|| bad("the JWK lacks a parameter"))?;
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(text.trim_end_matches('='))
            .map_err(|_| bad("a JWK parameter is not base64url"))
    };
    let kid = jwk["kid"].as_str().map(str::to_owned);
    match jwk["kty"].as_str() {
        Some("EC") => {
            use aws_lc_rs::signature::{ECDSA_P384_SHA384_FIXED_SIGNING, EcdsaKeyPair};
            if jwk["crv"] != "P-384" {
                return Err(bad("only EC keys on P-384 (ES384) are supported"));
            }
            let mut point = vec![0x04];
            point.extend(field("x")?);
            point.extend(field("y")?);
            let pair = EcdsaKeyPair::from_private_key_and_public_key(
                &ECDSA_P384_SHA384_FIXED_SIGNING,
                &field("d")?,
                &point,
            )
            .map_err(|_| bad("the EC key's d, x and y do not make a P-384 key pair"))?;
            let der = pair.to_pkcs8v1().map_err(|_| bad("the EC key cannot be encoded"))?;
            Ok((pkcs8_pem(der.as_ref()), crate::Algorithm::ES384, kid))
        }
        Some("RSA") => {
            use aws_lc_rs::{
                encoding::{AsDer, Pkcs8V1Der},
                rsa::KeyPair,
            };
            // PKCS#1 RSAPrivateKey: SEQUENCE { 0, n, e, d, p, q, dp, dq, qi }.
            let mut body = der_integer(&[0]);
            for name in ["n", "e", "d", "p", "q", "dp", "dq", "qi"] {
                body.extend(der_integer(&field(name)?));
            }
            let pkcs1 = der_tagged(0x30, &body);
            let pair = KeyPair::from_der(&pkcs1)
                .map_err(|_| bad("the RSA key's parameters do not make a key pair"))?;
            let der = AsDer::<Pkcs8V1Der>::as_der(&pair)
                .map_err(|_| bad("the RSA key cannot be encoded"))?;
            Ok((pkcs8_pem(der.as_ref()), crate::Algorithm::RS384, kid))
        }
        _ => Err(bad("the JWK's kty must be EC or RSA")),
    }
}

/// A DER element: `tag`, its length, `content`.
fn der_tagged(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(u8::try_from(len).unwrap_or(0));
    } else {
        let bytes: Vec<u8> = len.to_be_bytes().iter().copied().skip_while(|b| *b == 0).collect();
        out.push(0x80 | u8::try_from(bytes.len()).unwrap_or(0));
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

/// A DER INTEGER of the unsigned big-endian `value`.
fn der_integer(value: &[u8]) -> Vec<u8> {
    let trimmed: Vec<u8> = value.iter().copied().skip_while(|b| *b == 0).collect();
    let mut content = if trimmed.is_empty() { vec![0] } else { trimmed };
    if content[0] & 0x80 != 0 {
        content.insert(0, 0);
    }
    der_tagged(0x02, &content)
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
    fn a_pem_key_says_its_algorithm_whatever_its_base64_spells() {
        for _ in 0..50 {
            let (es, _) = generate_es384("k").unwrap();
            assert_eq!(pem_algorithm(&es), Some(Algorithm::ES384));
        }
        let (rs, _) = generate_rs384("k").unwrap();
        assert_eq!(pem_algorithm(&rs), Some(Algorithm::RS384));
        // The text "RSA" inside an EC key's base64 says nothing.
        let (es, _) = generate_es384("k").unwrap();
        let lines: Vec<&str> = es.lines().collect();
        let doctored = format!("{}\n{}\nRSA\n", lines[0], lines[1..].join("\n"));
        assert_ne!(pem_algorithm(&doctored), Some(Algorithm::RS384));
        assert_eq!(
            pem_algorithm("-----BEGIN RSA PRIVATE KEY-----\nAAAA\n-----END RSA PRIVATE KEY-----"),
            Some(Algorithm::RS384)
        );
        assert_eq!(pem_algorithm("not a key"), None);
    }

    /// The DER elements inside `der` (one level): (tag, content).
    fn der_children(mut der: &[u8]) -> Vec<(u8, Vec<u8>)> {
        let mut out = Vec::new();
        while der.len() >= 2 {
            let tag = der[0];
            let (len, header) = if der[1] < 0x80 {
                (usize::from(der[1]), 2)
            } else {
                let n = usize::from(der[1] & 0x7f);
                (der[2..2 + n].iter().fold(0, |acc, b| acc * 256 + usize::from(*b)), 2 + n)
            };
            out.push((tag, der[header..header + len].to_vec()));
            der = &der[header + len..];
        }
        out
    }

    /// The private key structure inside a PKCS#8 PEM (PKCS#1 for RSA, RFC 5915 for EC).
    fn inner_key(pem: &str) -> Vec<(u8, Vec<u8>)> {
        let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = base64::engine::general_purpose::STANDARD.decode(body).unwrap();
        let pkcs8 = der_children(&der_children(&der)[0].1);
        der_children(&der_children(&pkcs8[2].1)[0].1)
    }

    fn unsigned(bytes: &[u8]) -> String {
        b64(&bytes.iter().copied().skip_while(|b| *b == 0).collect::<Vec<_>>())
    }

    #[test]
    fn private_jwks_become_the_same_keys_as_pem() {
        // EC: d from the generated PKCS#8, x and y from its JWKS.
        let (pem, jwks) = generate_es384("e1").unwrap();
        let public: serde_json::Value = serde_json::from_str(&jwks).unwrap();
        let d = &inner_key(&pem)[1].1;
        let mut jwk = public["keys"][0].clone();
        jwk["d"] = json!(b64(d));
        let (converted, alg, kid) = private_jwk_to_pem(&jwk.to_string()).unwrap();
        assert_eq!((alg, kid.as_deref()), (crate::Algorithm::ES384, Some("e1")));
        assert_eq!(&inner_key(&converted)[1].1, d, "the same private scalar");
        // RSA: every PKCS#1 parameter of a generated key, as a JWK inside a JWKS.
        let (pem, _) = generate_rs384("r1").unwrap();
        let parts = inner_key(&pem);
        let names = ["n", "e", "d", "p", "q", "dp", "dq", "qi"];
        let mut jwk = json!({"kty": "RSA", "kid": "r1"});
        for (name, (_, value)) in names.iter().zip(&parts[1..]) {
            jwk[*name] = json!(unsigned(value));
        }
        let (converted, alg, _) = private_jwk_to_pem(&json!({"keys": [jwk]}).to_string()).unwrap();
        assert_eq!(alg, crate::Algorithm::RS384);
        let again = inner_key(&converted);
        for (index, name) in names.iter().enumerate() {
            assert_eq!(unsigned(&again[index + 1].1), unsigned(&parts[index + 1].1), "{name}");
        }
        // What is not a usable private key says why.
        for (text, why) in [
            ("{}", "kty"),
            (r#"{"keys":[{"kty":"EC"}]}"#, "no private key"),
            (r#"{"kty":"EC","crv":"P-256","d":"AA"}"#, "P-384"),
            (r#"{"kty":"RSA","n":"AQAB"}"#, "lacks"),
        ] {
            let error = private_jwk_to_pem(text).unwrap_err().to_string();
            assert!(error.contains(why), "{text}: {error}");
        }
    }

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
