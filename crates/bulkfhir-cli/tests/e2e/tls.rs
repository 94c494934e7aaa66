//! `bulkfhir serve --tls-cert --tls-key`: HTTPS from the real binary, with a self-signed
//! certificate made for the test and trusted as the only root.

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// A self-signed certificate for 127.0.0.1 and localhost, written as PEM into `dir`:
/// (certificate file, key file, certificate PEM).
fn self_signed(dir: &Path) -> (PathBuf, PathBuf, String) {
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .unwrap();
    let cert_pem = certified.cert.pem();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, &cert_pem).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    (cert, key, cert_pem)
}

/// `--auth none` when this build's `serve` has an `--auth` option (it may default to requiring
/// tokens, which this test is not about).
fn auth_flags() -> Vec<&'static str> {
    let help = Command::new(env!("CARGO_BIN_EXE_bulkfhir")).args(["serve", "--help"]).output();
    let help = String::from_utf8_lossy(&help.unwrap().stdout).into_owned();
    let has_auth = help.lines().any(|line| {
        let line = line.trim_start();
        line.starts_with("--auth <") || line.starts_with("--auth=") || line.trim_end() == "--auth"
    });
    if has_auth { vec!["--auth", "none"] } else { Vec::new() }
}

fn free_port() -> u16 {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap().port()
}

/// The binary, killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until the child exits (at most `limit`); its status and stderr, or None if it runs on
/// (then it is killed).
async fn exit_within(
    mut child: Child,
    limit: Duration,
) -> Option<(std::process::ExitStatus, String)> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
            return Some((status, stderr));
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_https_with_its_certificate_and_refuses_plain_http() {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key, cert_pem) = self_signed(dir.path());
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_bulkfhir"))
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--data-dir"])
        .arg(dir.path().join("data"))
        .arg("--tls-cert")
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .args(["--header-timeout-secs", "2"])
        .args(auth_flags())
        .env("RUST_LOG", "warn")
        .spawn()
        .expect("start bulkfhir serve");
    let mut server = Server(child);
    let base = format!("https://127.0.0.1:{port}/fhir");
    let client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap()])
        .build()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(response) = client.get(format!("{base}/metadata")).send().await
            && response.status().is_success()
        {
            break;
        }
        if let Some(status) = server.0.try_wait().unwrap() {
            panic!("bulkfhir serve exited with {status}");
        }
        assert!(Instant::now() < deadline, "bulkfhir serve did not come up at {base}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let metadata = client.get(format!("{base}/metadata")).send().await.unwrap();
    assert_eq!(metadata.status().as_u16(), 200);
    let body: serde_json::Value = metadata.json().await.unwrap();
    assert_eq!(body["resourceType"], "CapabilityStatement", "{body}");

    // Absolute URLs the server builds from Host are https ones.
    let kickoff = client
        .get(format!("{base}/$export"))
        .header("accept", "application/fhir+json")
        .header("prefer", "respond-async")
        .send()
        .await
        .unwrap();
    assert_eq!(kickoff.status().as_u16(), 202, "{:?}", kickoff.text().await);
    let location = kickoff.headers()["content-location"].to_str().unwrap().to_owned();
    assert!(location.starts_with(&format!("https://127.0.0.1:{port}/fhir/")), "{location}");

    // A client that does not trust the certificate gets no answer.
    assert!(reqwest::Client::new().get(format!("{base}/metadata")).send().await.is_err());

    // hyper's own parse-error answers still become OperationOutcomes over TLS (431: too many
    // header fields).
    let mut many = client.get(format!("{base}/metadata"));
    for i in 0..150 {
        many = many.header(format!("x-filler-{i}"), "1");
    }
    let refused = many.send().await.unwrap();
    assert_eq!(refused.status().as_u16(), 431);
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["resourceType"], "OperationOutcome", "{body}");

    // Plain HTTP on the TLS port: no HTTP response, and the server serves on.
    let mut plain = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    plain
        .write_all(b"GET /fhir/metadata HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the plain-http connection was neither answered nor closed");
    assert!(
        !answer.starts_with(b"HTTP/"),
        "plain http got an HTTP answer: {}",
        String::from_utf8_lossy(&answer)
    );
    let plain_client = reqwest::Client::new();
    assert!(
        plain_client.get(format!("http://127.0.0.1:{port}/fhir/metadata")).send().await.is_err()
    );
    let again = client.get(format!("{base}/metadata")).send().await.unwrap();
    assert_eq!(again.status().as_u16(), 200);

    // Connections that send nothing (no ClientHello) hold up nobody else, and are closed after
    // the header timeout (2 s here).
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(TcpStream::connect(("127.0.0.1", port)).await.unwrap());
    }
    let started = Instant::now();
    let fresh = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(cert_pem.as_bytes()).unwrap()])
        .build()
        .unwrap();
    let response =
        tokio::time::timeout(Duration::from_secs(5), fresh.get(format!("{base}/metadata")).send())
            .await
            .expect("a silent connection blocked another client")
            .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    for mut stream in silent {
        let mut byte = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte)).await;
        assert!(
            matches!(closed, Ok(Ok(0) | Err(_))),
            "a silent connection was not closed: {closed:?}"
        );
    }
    let last = client.get(format!("{base}/metadata")).send().await.unwrap();
    assert_eq!(last.status().as_u16(), 200);
    assert!(server.0.try_wait().unwrap().is_none(), "the server is still running");
}

#[tokio::test]
async fn unusable_certificate_files_stop_start_up_with_the_file_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let start = |extra: &[&std::ffi::OsStr]| {
        Command::new(env!("CARGO_BIN_EXE_bulkfhir"))
            .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port()), "--data-dir"])
            .arg(dir.path().join("data"))
            .args(extra)
            .args(auth_flags())
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start bulkfhir serve")
    };

    let child =
        start(&["--tls-cert".as_ref(), missing.as_os_str(), "--tls-key".as_ref(), "x".as_ref()]);
    let (status, stderr) = exit_within(child, Duration::from_secs(10))
        .await
        .expect("serve ran with a missing certificate");
    assert!(!status.success());
    assert!(stderr.contains("missing.pem") && stderr.contains("certificate"), "{stderr}");

    // A certificate without its key is refused by the command line.
    let (cert, _, _) = self_signed(dir.path());
    let child = start(&["--tls-cert".as_ref(), cert.as_os_str()]);
    let (status, stderr) =
        exit_within(child, Duration::from_secs(10)).await.expect("serve ran without --tls-key");
    assert!(!status.success());
    assert!(stderr.contains("--tls-key"), "{stderr}");

    // A key that is not the certificate's.
    let other_dir = tempfile::tempdir().unwrap();
    let (_, other_key, _) = self_signed(other_dir.path());
    let child = start(&[
        "--tls-cert".as_ref(),
        cert.as_os_str(),
        "--tls-key".as_ref(),
        other_key.as_os_str(),
    ]);
    let (status, stderr) =
        exit_within(child, Duration::from_secs(10)).await.expect("serve ran with a foreign key");
    assert!(!status.success());
    assert!(stderr.contains("does not belong to the certificate"), "{stderr}");

    // A key file that holds no key (the certificate given twice).
    let child =
        start(&["--tls-cert".as_ref(), cert.as_os_str(), "--tls-key".as_ref(), cert.as_os_str()]);
    let (status, stderr) =
        exit_within(child, Duration::from_secs(10)).await.expect("serve ran without a private key");
    assert!(!status.success());
    assert!(
        stderr.contains("cert.pem") && stderr.contains("no unencrypted PEM private key"),
        "{stderr}"
    );
}
