//! Headless Chromium for the deny page tests, driven over WebDriver
//! (chromedriver, through `fantoccini`), and axe-core to audit a page.
//!
//! Each tool is found the way `envoy.rs` finds Envoy: its environment
//! variable (`CHROMIUM_BIN`, `CHROMEDRIVER_BIN`), else `PATH`, else installed:
//! Debian's `chromium` and `chromium-driver` with apt when running as root,
//! and the npm package `axe-core` into `<target>/axe-core` on first use.
//! A missing tool that cannot be installed fails the test with a message
//! saying how to provide it: these tests are never skipped.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "test code: a failure panics the test"
)]

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Mutex, OnceLock},
};

use fantoccini::{Client, ClientBuilder};

use super::tools::target_dir;
use serde_json::{Value, json};

/// The axe-core major version the audit is written for.
const AXE_CORE: &str = "axe-core@4";

/// A chromedriver process on a free port; killed when dropped.
pub struct Chromedriver {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    child: Child,
}

impl Chromedriver {
    /// Starts chromedriver on a port it picks and waits for its "started"
    /// line, which names the port.
    pub fn start() -> Self {
        let mut child = Command::new(chromedriver_bin())
            .args(["--port=0", "--allowed-ips=127.0.0.1"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", chromedriver_bin().display()));
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let port = lines
            .by_ref()
            .map_while(Result::ok)
            .find_map(|line| {
                let (_, rest) = line.split_once("started successfully on port ")?;
                rest.trim_end_matches('.').trim().parse::<u16>().ok()
            })
            .expect("chromedriver exited before saying which port it listens on");
        // Keep draining its output so it never blocks on a full pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Self {
            url: format!("http://127.0.0.1:{port}"),
            child,
        }
    }

    /// A new headless browser session; `extra` adds `goog:chromeOptions`
    /// keys (`mobileEmulation`) and arguments (`args`).
    pub async fn session(&self, extra_args: &[&str], mobile_width: Option<u32>) -> Client {
        let mut args = vec![
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--window-size=1280,1400",
        ];
        args.extend_from_slice(extra_args);
        let mut options = json!({"binary": chromium_bin(), "args": args});
        if let Some(width) = mobile_width {
            options["mobileEmulation"] =
                json!({"deviceMetrics": {"width": width, "height": 1400, "pixelRatio": 1.0}});
        }
        let mut caps = serde_json::Map::new();
        caps.insert("goog:chromeOptions".to_owned(), options);
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("cannot start a Chromium session: {e}"))
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs axe-core on the page `client` shows and returns its violations as
/// `{id, impact, help, nodes: [html, ...]}`.
pub async fn axe_violations(client: &Client) -> Vec<Value> {
    let source = std::fs::read_to_string(axe_core_js()).unwrap();
    client.execute(&source, vec![]).await.unwrap();
    let script = "const done = arguments[arguments.length - 1];\
        axe.run(document, {resultTypes: ['violations']}).then(r => done(r.violations.map(v => \
        ({id: v.id, impact: v.impact, help: v.help, nodes: v.nodes.map(n => n.html)}))));";
    let result = client.execute_async(script, vec![]).await.unwrap();
    result.as_array().cloned().unwrap_or_default()
}

/// Chromium: `CHROMIUM_BIN`, else `chromium` (or Chrome) on `PATH`, else
/// installed with apt.
pub fn chromium_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        find(
            "CHROMIUM_BIN",
            &["chromium", "chromium-browser", "google-chrome"],
        )
        .unwrap_or_else(|| {
            apt_install();
            find("CHROMIUM_BIN", &["chromium"]).expect("chromium missing after apt-get install")
        })
    })
}

/// chromedriver: `CHROMEDRIVER_BIN`, else on `PATH`, else installed with apt.
pub fn chromedriver_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        find("CHROMEDRIVER_BIN", &["chromedriver"]).unwrap_or_else(|| {
            apt_install();
            find("CHROMEDRIVER_BIN", &["chromedriver"])
                .expect("chromedriver missing after apt-get install")
        })
    })
}

fn find(var: &str, names: &[&str]) -> Option<PathBuf> {
    if let Some(bin) = std::env::var_os(var) {
        return Some(PathBuf::from(bin));
    }
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .flat_map(|dir| names.iter().map(move |n| dir.join(n)))
        .find(|p| p.is_file())
}

/// `apt-get update` then `apt-get install -y chromium chromium-driver`, once
/// per process; as another user, a panic that says how to install them.
fn apt_install() {
    static DONE: Mutex<bool> = Mutex::new(false);
    let mut done = DONE.lock().unwrap_or_else(|e| e.into_inner());
    if *done {
        return;
    }
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0");
    assert!(
        root,
        "Chromium and chromedriver not found: install Debian's `chromium` and \
         `chromium-driver` (apt-get install chromium chromium-driver), or set \
         CHROMIUM_BIN and CHROMEDRIVER_BIN"
    );
    for args in [
        &["update"][..],
        &["install", "-y", "chromium", "chromium-driver"][..],
    ] {
        let out = Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .unwrap_or_else(|e| panic!("cannot run apt-get: {e}"));
        assert!(
            out.status.success(),
            "apt-get {} failed:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    *done = true;
}

/// `axe.min.js`, installed with npm into `<target>/axe-core` on first use
/// (a staging directory renamed into place, so concurrent installs are safe).
pub fn axe_core_js() -> &'static Path {
    static JS: OnceLock<PathBuf> = OnceLock::new();
    JS.get_or_init(|| {
        let dest = target_dir().join("axe-core");
        let js = dest.join("node_modules/axe-core/axe.min.js");
        if js.is_file() {
            return js;
        }
        let staging = target_dir().join(format!("axe-core.staging-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&staging);
        std::fs::create_dir_all(&staging).unwrap();
        let out = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund", "--prefix"])
            .arg(&staging)
            .arg(AXE_CORE)
            .output()
            .unwrap_or_else(|e| {
                panic!("axe-core missing and npm cannot run ({e}): install Node.js and npm")
            });
        assert!(
            out.status.success(),
            "npm install {AXE_CORE} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        if std::fs::rename(&staging, &dest).is_err() {
            let _ = std::fs::remove_dir_all(&staging);
        }
        assert!(js.is_file(), "{} missing after npm install", js.display());
        js
    })
}
