//! TLS test support: a CA and a server certificate for `127.0.0.1` / `localhost` made by
//! `openssl` for one test, and a child process (a server) killed on drop.
//!
//! Every server a test starts is stopped by a drop guard, so also when the test fails.

#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use idempotency::{Error, Fingerprint, Idempotency, Key, Token};

/// A directory of this test's own, deleted on drop.
pub(crate) struct Scratch(PathBuf);

impl Scratch {
    pub(crate) fn new(what: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "idempotency-{what}-{}-{}",
            std::process::id(),
            Token::random()
        ));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Scratch(dir)
    }

    pub(crate) fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// PEM files: a CA (`ca.pem`), a server certificate it signed for `127.0.0.1` and `localhost`
/// (`server.pem`, key `server.key`), and a second CA that signed nothing here (`other-ca.pem`).
pub(crate) struct Certificates {
    pub(crate) ca: PathBuf,
    pub(crate) other_ca: PathBuf,
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
}

impl Certificates {
    pub(crate) fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(&self.ca).expect("ca.pem")
    }

    pub(crate) fn other_ca_pem(&self) -> Vec<u8> {
        std::fs::read(&self.other_ca).expect("other-ca.pem")
    }
}

/// Makes the certificates in `dir` with `openssl`; `Err` when `openssl` cannot be run.
pub(crate) fn certificates(dir: &Path) -> Result<Certificates, String> {
    let openssl = |args: &[&str]| -> Result<(), String> {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .output()
            .map_err(|error| format!("openssl: {error}"))?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!(
                "openssl {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            ))
        }
    };
    for (name, subject) in [
        ("ca", "/CN=idempotency test CA"),
        ("other-ca", "/CN=untrusted CA"),
    ] {
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            subject,
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ])?;
    }
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ])?;
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .map_err(|error| error.to_string())?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "server.ext",
        "-out",
        "server.pem",
    ])?;
    Ok(Certificates {
        ca: dir.join("ca.pem"),
        other_ca: dir.join("other-ca.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server.key"),
    })
}

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free loopback port")
}

/// A server process this test started; killed (SIGKILL) and reaped on drop.
pub(crate) struct Server {
    child: Option<Child>,
    pub(crate) port: u16,
    log: PathBuf,
}

impl Server {
    /// Spawns `command` (its output into `log`) and waits up to 10 s until `port` accepts
    /// connections; `Ok(None)` if it exited or never listened (a port lost to someone else),
    /// `Err` if it could not be spawned at all.
    pub(crate) fn spawn(
        mut command: Command,
        port: u16,
        log: PathBuf,
    ) -> std::io::Result<Option<Server>> {
        let file = std::fs::File::create(&log)?;
        let child = command
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()?;
        let mut server = Server {
            child: Some(child),
            port,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(child) = server.child.as_mut()
                && let Ok(Some(_exit)) = child.try_wait()
            {
                server.child = None;
                return Ok(None);
            }
            let address = ([127, 0, 0, 1], port).into();
            if TcpStream::connect_timeout(&address, Duration::from_millis(100)).is_ok() {
                return Ok(Some(server));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        server.kill();
        Ok(None)
    }

    /// What the server wrote so far.
    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A first execution or a replay of `order` in `namespace`: the body counts its runs in `runs`
/// and answers `receipt for {order}, run {n}`.
pub(crate) async fn charge(
    idempotency: &Idempotency,
    runs: &Arc<AtomicUsize>,
    namespace: &'static str,
    order: &str,
) -> Result<String, Error> {
    let key = Key::derive(namespace, 1, &order).expect("key");
    let fingerprint = Fingerprint::of(&order).expect("fingerprint");
    let runs = Arc::clone(runs);
    let order = order.to_owned();
    idempotency
        .run(key, fingerprint, || async move {
            let n = runs.fetch_add(1, Ordering::SeqCst) + 1;
            Ok::<_, Error>(format!("receipt for {order}, run {n}"))
        })
        .await
}

/// A connection manager that gives up quickly (a test server that is down fails in seconds).
#[cfg(feature = "redis")]
pub(crate) fn redis_config() -> idempotency::redis::aio::ConnectionManagerConfig {
    let timeout = Duration::from_secs(2);
    idempotency::redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(200))
}
