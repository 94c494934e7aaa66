//! Authorization's first half, with the real binary: `bulkfhir client keygen`, `add`, `list`,
//! `remove`, and the registered keys verifying an assertion signed with the generated key.

use std::{path::Path, process::Output};

use bulkfhir_auth::{
    Algorithm,
    assertion::verify_assertion,
    keys::{ClientAssertion, sign_assertion},
};
use bulkfhir_store::ClientStore;

pub(crate) fn bulkfhir(args: &[&str], data_dir: &Path) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_bulkfhir"))
        .args(args)
        .env("BULKFHIR_DATA_DIR", data_dir)
        .output()
        .expect("run bulkfhir")
}

pub(crate) fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_are_registered_durably_and_their_generated_keys_sign_assertions() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let keys = dir.path().join("keys");
    let text = stdout(&bulkfhir(&["client", "keygen", "--out", keys.to_str().unwrap()], &data));
    assert!(text.starts_with("ES384 key "), "{text}");
    let kid = text.lines().next().unwrap().trim_start_matches("ES384 key ").to_owned();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(keys.join("private-key.pem")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "the private key is readable by its owner only");
    }
    // A second keygen into the same folder never overwrites the key.
    assert!(
        !bulkfhir(&["client", "keygen", "--out", keys.to_str().unwrap()], &data).status.success()
    );

    let jwks = keys.join("jwks.json");
    let scope = "system/*.rs system/Observation.rs?category=laboratory";
    let id = stdout(&bulkfhir(
        &["client", "add", "--name", "lab", "--jwks", jwks.to_str().unwrap(), "--scope", scope],
        &data,
    ))
    .trim()
    .to_owned();
    // Refused: a malformed scope, a scope that grants nothing, a private key as the JWKS,
    // plain http off loopback.
    for bad in [
        vec!["--jwks", jwks.to_str().unwrap(), "--scope", "system/Nope.rs"],
        vec!["--jwks", jwks.to_str().unwrap(), "--scope", "openid"],
        vec!["--jwks", keys.join("private-key.pem").to_str().unwrap(), "--scope", "system/*.rs"],
        vec!["--jwks-url", "http://keys.example/jwks.json", "--scope", "system/*.rs"],
        vec!["--jwks-url", "http://127.0.0.1.evil.example/jwks.json", "--scope", "system/*.rs"],
        vec!["--jwks-url", "http://127.0.0.1@evil.example/jwks.json", "--scope", "system/*.rs"],
    ] {
        let mut args = vec!["client", "add", "--name", "bad"];
        args.extend(bad.iter().copied());
        assert!(!bulkfhir(&args, &data).status.success(), "{args:?}");
    }
    let listed = stdout(&bulkfhir(&["client", "list"], &data));
    assert_eq!(listed.lines().count(), 1, "{listed}");
    assert!(listed.contains(&id) && listed.contains("lab") && listed.contains(scope), "{listed}");

    // The stored JWKS verifies an assertion signed with the generated private key.
    let store = bulkfhir_store_embedded::EmbeddedStore::open(&data).unwrap();
    let client = store.client(&id).await.unwrap().expect("registered");
    let set = serde_json::from_str(client.jwks.as_deref().unwrap()).unwrap();
    let pem = std::fs::read_to_string(keys.join("private-key.pem")).unwrap();
    let url = "http://127.0.0.1:8080/fhir/auth/token";
    let assertion = sign_assertion(
        &pem,
        &ClientAssertion {
            alg: Algorithm::ES384,
            kid: Some(&kid),
            client_id: &id,
            token_url: url,
            now: 2_000_000_000,
            seconds: 120,
            jti: "first",
        },
    )
    .unwrap();
    let checked = verify_assertion(&assertion, &id, &set, url, 2_000_000_000).unwrap();
    assert_eq!(checked.client_id, id);
    drop(store);

    assert!(stdout(&bulkfhir(&["client", "remove", &id], &data)).contains("removed"));
    assert_eq!(bulkfhir(&["client", "remove", &id], &data).status.code(), Some(2));
    assert!(stdout(&bulkfhir(&["client", "list"], &data)).contains("no clients"));
}
