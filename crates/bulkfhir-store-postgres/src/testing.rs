//! A throwaway PostgreSQL cluster for tests: `initdb` into a temporary folder, then `postgres`
//! on a free loopback port, as a child that dies with the test process.
//!
//! The server binaries come from Debian's `postgresql` package (`bash .ci/run` installs it); a
//! missing server fails the test that asked for one, it never skips it. As root (CI), the
//! cluster runs as the `postgres` user, because PostgreSQL refuses to run as root.
//!
//! The cluster serves TLS with a certificate for `localhost` signed by a root made for it (with
//! `openssl`, which `bash .ci/run` installs), and plain connections too: the default
//! `sslmode=prefer` encrypts, and [`TestCluster::root_cert`] lets a test verify the server.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Mutex, OnceLock,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

/// One cluster per test process, started on first use.
#[derive(Debug)]
pub struct TestCluster {
    port: u16,
    root_cert: PathBuf,
}

static CLUSTER: OnceLock<TestCluster> = OnceLock::new();
static DATABASES: AtomicU32 = AtomicU32::new(0);
static CREATING: Mutex<()> = Mutex::new(());

impl TestCluster {
    /// The process's cluster, started on the first call.
    ///
    /// # Panics
    /// When PostgreSQL is not installed or does not start (the message says why).
    pub fn get() -> &'static TestCluster {
        CLUSTER.get_or_init(start)
    }

    /// The URL of a new, empty database of its own.
    ///
    /// # Panics
    /// When the database cannot be created.
    pub fn database(&self) -> String {
        let name = format!("t{}_{}", std::process::id(), DATABASES.fetch_add(1, Ordering::Relaxed));
        // One at a time: CREATE DATABASE copies template1 and fails while another copy runs.
        let _one = CREATING.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let output = Command::new(psql())
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres", "-q"])
            .args(["-d", "postgres", "-c", &format!("CREATE DATABASE {name}")])
            .output()
            .expect("run psql");
        assert!(
            output.status.success(),
            "CREATE DATABASE {name} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        self.url(&name)
    }

    /// The URL of database `name` on this cluster.
    pub fn url(&self, name: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{name}", self.port)
    }

    /// The cluster's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The PEM file of the root that signed the server's certificate (which is for
    /// `localhost` only, not for `127.0.0.1`): what to give as `sslrootcert`.
    pub fn root_cert(&self) -> &Path {
        &self.root_cert
    }
}

/// The folder holding `initdb` and `postgres`: Debian's newest `/usr/lib/postgresql/N/bin`.
fn server_bin() -> PathBuf {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("postgres").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL is not installed (no /usr/lib/postgresql/N/bin/postgres); \
             `bash .ci/run` installs Debian's postgresql package"
        ),
    }
}

fn psql() -> &'static str {
    "psql"
}

/// The uid and gid of the `postgres` user, when this process runs as root.
fn run_as() -> Option<(u32, u32)> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    let line = passwd
        .lines()
        .find(|line| line.starts_with("postgres:"))
        .expect("running as root needs the postgres user (Debian's postgresql package makes it)");
    let fields: Vec<&str> = line.split(':').collect();
    Some((fields[2].parse().expect("uid"), fields[3].parse().expect("gid")))
}

/// A command that runs as `user` (when given) and is killed when this process dies.
fn command(program: &Path, user: Option<(u32, u32)>) -> Command {
    use std::os::unix::process::CommandExt;
    let mut command = Command::new(program);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        command.pre_exec(move || {
            if let Some((uid, gid)) = user
                && (libc::setgid(gid) != 0 || libc::setuid(uid) != 0)
            {
                return Err(std::io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

fn start() -> TestCluster {
    let bin = server_bin();
    let user = run_as();
    // Named after this process (a static is never dropped, so no TempDir would ever be removed):
    // clusters of processes that are gone are removed before this one is made.
    let dir = bulkfhir_store::scratch::process_dir("pg");
    let data = dir.join("data");
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("chown the cluster");
    }
    let output = command(&bin.join("initdb"), user)
        .args(["-D"])
        .arg(&data)
        .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync"])
        .stdout(Stdio::null())
        .output()
        .expect("run initdb");
    assert!(output.status.success(), "initdb failed: {}", String::from_utf8_lossy(&output.stderr));
    let (ca, cert, key) = (dir.join("ca.crt"), dir.join("server.crt"), dir.join("server.key"));
    let openssl = |args: &[&str]| {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("run openssl (bash .ci/run installs it)");
        assert!(
            output.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    // A root of its own, and the server's certificate signed by it, for localhost only.
    openssl(
        &[
            &["req", "-x509"],
            &ec[..],
            &["-days", "3", "-subj", "/CN=bulkfhir test CA"],
            &["-keyout", "ca.key", "-out", "ca.crt"],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"],
            &ec[..],
            &["-subj", "/CN=localhost", "-keyout", "server.key"],
            &["-out", "server.csr"],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost\nbasicConstraints=critical,CA:FALSE\n\
         keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .expect("write the certificate extensions");
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "3",
        "-extfile",
        "server.ext",
        "-out",
        "server.crt",
    ]);
    {
        use std::os::unix::fs::PermissionsExt;
        // PostgreSQL refuses a key others can read.
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    }
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(&key, Some(uid), Some(gid)).expect("chown the key");
    }
    let port = free_port();
    let log = std::fs::File::create(dir.join("postgres.log")).expect("log file");
    if let Some((uid, gid)) = user {
        std::os::unix::fs::chown(dir.join("postgres.log"), Some(uid), Some(gid))
            .expect("chown the log");
    }
    // Spawned from a thread that lives as long as the process: the kernel's parent-death
    // signal fires when the spawning *thread* ends, and a test's thread ends with the test.
    let (bin_dir, data_dir, socket_dir) = (bin.clone(), data.clone(), dir.clone());
    let ssl = [
        "-c".to_owned(),
        "ssl=on".to_owned(),
        "-c".to_owned(),
        format!("ssl_cert_file={}", cert.display()),
        "-c".to_owned(),
        format!("ssl_key_file={}", key.display()),
    ];
    let (spawned, spawned_rx) = std::sync::mpsc::channel();
    std::thread::Builder::new()
        .name("test-postgres".to_owned())
        .spawn(move || {
            let child = command(&bin_dir.join("postgres"), user)
                .arg("-D")
                .arg(&data_dir)
                .args(["-p", &port.to_string(), "-k"])
                .arg(&socket_dir)
                .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"])
                .args(["-c", "synchronous_commit=off", "-c", "full_page_writes=off"])
                .args(["-c", "max_connections=300", "-c", "shared_buffers=256MB"])
                // Dynamic shared memory in the data folder, which the sweep removes, instead of
                // /dev/shm: a cluster killed with its test process left its segments there, and
                // they piled up run after run.
                .args(["-c", "dynamic_shared_memory_type=mmap"])
                .args(&ssl)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn();
            match child {
                Ok(mut child) => {
                    let _ = spawned.send(Ok(()));
                    let _ = child.wait();
                }
                Err(error) => {
                    let _ = spawned.send(Err(error));
                }
            }
        })
        .expect("start the postgres thread");
    spawned_rx.recv().expect("the postgres thread").expect("start postgres");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = Command::new(psql())
            .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres", "-d", "postgres"])
            .args(["-qtAc", "SELECT 1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ready {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "postgres did not start: {}",
            std::fs::read_to_string(dir.join("postgres.log")).unwrap_or_default()
        );
        // Condition polling: there is nothing to wait on but the port.
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(Duration::from_millis(100));
    }
    TestCluster { port, root_cert: ca }
}
