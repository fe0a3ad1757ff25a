//! moto's standalone S3 server from PyPI (`moto[server]` in requirements.txt, in .venv
//! after `make deps`): a real S3-compatible server on a loopback port. It accepts unsigned
//! requests, so tests create buckets and objects with plain HTTP PUTs.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::repo_root;

/// moto's S3 server; killed when dropped.
pub struct Moto {
    child: Child,
    pub url: String,
}

impl Moto {
    /// Starts moto on a free loopback port; `None` (a loud skip) when it is not installed
    /// outside CI.
    pub fn start() -> Option<Moto> {
        let binary = repo_root().join(".venv/bin/moto_server");
        if !binary.is_file() {
            let message = format!("{} is missing: run `make deps`", binary.display());
            if std::env::var_os("CI").is_some() {
                panic!("{message}");
            }
            eprintln!("\n*** SKIPPED S3 tests (not in CI): {message} ***\n");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new(&binary)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let moto = Moto {
            child,
            url: format!("http://127.0.0.1:{port}"),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "moto_server did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        Some(moto)
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
