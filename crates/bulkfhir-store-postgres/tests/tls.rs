//! TLS to a real PostgreSQL (the test cluster serves a self-signed certificate for
//! `localhost`): each libpq `sslmode` encrypts, verifies and refuses as libpq's does, checked
//! with the server's own view of the connection (`pg_stat_ssl`).

use bulkfhir_model::error_chain;
use bulkfhir_store_postgres::{PostgresStore, testing::TestCluster};

/// Whether the server sees the store's connections as encrypted, through a store opened on `url`
/// (the store runs its migrations on connect, so opening it proves a working connection).
async fn encrypted(url: &str) -> Result<bool, String> {
    let store = PostgresStore::connect(url).await.map_err(|e| error_chain(&e))?;
    store.connection_is_encrypted().await.map_err(|e| error_chain(&e))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_sslmode_encrypts_verifies_and_refuses_as_libpq_does() {
    let cluster = TestCluster::get();
    let url = cluster.database();
    let db = url.rsplit('/').next().unwrap().to_owned();
    let root = cluster.root_cert().display().to_string();
    let port = cluster.port();
    let localhost = format!("postgres://postgres@localhost:{port}/{db}");
    let with = |base: &str, query: &str| format!("{base}?{query}");

    // Encrypted unless asked not to; the default (prefer) and require check nothing.
    assert_eq!(encrypted(&url).await, Ok(true), "the default, prefer");
    assert_eq!(encrypted(&with(&url, "sslmode=disable")).await, Ok(false));
    assert_eq!(encrypted(&with(&url, "sslmode=require")).await, Ok(true));
    // verify-full: the chain and the name. The certificate is for localhost, not 127.0.0.1.
    let full = format!("sslmode=verify-full&sslrootcert={root}");
    assert_eq!(encrypted(&with(&localhost, &full)).await, Ok(true), "verify-full, right name");
    let wrong_name = encrypted(&with(&url, &full)).await.unwrap_err();
    assert!(wrong_name.contains("certificate"), "verify-full on 127.0.0.1: {wrong_name}");
    // verify-ca: the chain only, whatever the name.
    let ca = format!("sslmode=verify-ca&sslrootcert={root}");
    assert_eq!(encrypted(&with(&url, &ca)).await, Ok(true), "verify-ca on 127.0.0.1");
    // Another root: refused by verify-ca, verify-full and by require given that root.
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other.crt");
    let made = std::process::Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"])
        .args(["-nodes", "-days", "1", "-subj", "/CN=localhost", "-keyout"])
        .arg(dir.path().join("other.key"))
        .arg("-out")
        .arg(&other)
        .status()
        .unwrap();
    assert!(made.success());
    let other = other.display();
    for mode in ["verify-ca", "verify-full", "require"] {
        let refused = encrypted(&with(&localhost, &format!("sslmode={mode}&sslrootcert={other}")))
            .await
            .unwrap_err();
        assert!(refused.contains("certificate"), "{mode} with another root: {refused}");
    }
    // Bad settings are refused with a message that names them, before any connection.
    for (query, says) in [
        ("sslmode=allow-all", "sslmode=allow-all"),
        ("sslmode=verify-full&sslrootcert=/nonexistent.pem", "/nonexistent.pem"),
    ] {
        let error = encrypted(&with(&url, query)).await.unwrap_err();
        assert!(error.contains(says), "{query}: {error}");
    }
    // The key=value form reads the same words.
    let key_value = format!(
        "host=localhost port={port} user=postgres dbname={db} sslmode=verify-full sslrootcert={root}"
    );
    assert_eq!(encrypted(&key_value).await, Ok(true), "key=value form");
}
