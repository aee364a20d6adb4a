//! `domsync doctor`: checks a node's setup from its configuration file, one line per check with
//! what to do: `ok|WARN|FAIL|skip  <check>: <detail>; <what to do>`. Exits 1 when a check
//! fails.
//!
//! Checked: the configuration (parsed and checked as `domsyncd` does), the node's TLS files and
//! its certificate's expiry, each configured peer (a QUIC handshake with the node's own
//! credentials, bounded), the disk space of the state directory, the open-file limit and the
//! permissions of the state directory and key. Clock skew to a peer is what the local daemon
//! measured on the heartbeats of an active it follows (this clock minus the active's, network
//! delay included); a peer it follows no domain of, or a daemon that does not answer, is
//! reported as not measured, never as ok.

use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use domsync_daemon::{Config, DEFAULT_PATH};
use domsync_net::{Credentials, Identity, PeerRole, TlsFiles};

/// A certificate closer than this to its end is warned about.
const CERT_WARN_DAYS: i64 = 14;
/// Free space below which the state directory fails, and below which it is warned about.
const DISK_FAIL_BYTES: u64 = 64 << 20;
const DISK_WARN_BYTES: u64 = 1 << 30;
/// Open-file limits below which the node fails, and below which it is warned about.
const NOFILE_FAIL: u64 = 256;
const NOFILE_WARN: u64 = 4096;

/// `domsync doctor [--config FILE] [--timeout SECS] [--json]`.
#[derive(clap::Args)]
pub struct DoctorArgs {
    /// Configuration file of the node.
    #[arg(long, env = "DOMSYNC_CONFIG", default_value = DEFAULT_PATH)]
    config: PathBuf,
    /// Seconds to wait for each peer's handshake.
    #[arg(long, value_name = "SECS", default_value_t = 3)]
    timeout: u64,
    /// One JSON document (an array of checks) instead of the lines.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Status {
    Ok,
    Warn,
    Fail,
    Skip,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
            Status::Skip => "skip",
        }
    }
}

/// One check's result.
struct Check {
    name: String,
    status: Status,
    detail: String,
    /// What to do (empty when nothing).
    todo: String,
}

fn check(name: impl Into<String>, status: Status, detail: impl Into<String>, todo: &str) -> Check {
    Check {
        name: name.into(),
        status,
        detail: detail.into(),
        todo: todo.to_owned(),
    }
}

/// Runs every check and prints them.
pub fn run(args: &DoctorArgs) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let checks = checks(&args.config, Duration::from_secs(args.timeout.max(1)));
    if args.json {
        let list: Vec<serde_json::Value> = checks
            .iter()
            .map(|c| {
                serde_json::json!({
                    "check": c.name,
                    "status": c.status.label().to_lowercase(),
                    "detail": c.detail,
                    "action": c.todo,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&list)?);
    } else {
        for c in &checks {
            if c.todo.is_empty() {
                println!("{:<4}  {}: {}", c.status.label(), c.name, c.detail);
            } else {
                println!(
                    "{:<4}  {}: {}; {}",
                    c.status.label(),
                    c.name,
                    c.detail,
                    c.todo
                );
            }
        }
    }
    Ok(if checks.iter().any(|c| c.status == Status::Fail) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn checks(path: &Path, timeout: Duration) -> Vec<Check> {
    let mut out = Vec::new();
    let config = match Config::load(path) {
        Ok(c) => {
            out.push(check(
                "configuration",
                Status::Ok,
                format!(
                    "{}: node {}, {} peers, {} domains ({} here)",
                    path.display(),
                    c.node.id,
                    c.peers.len(),
                    c.domains.len(),
                    c.local_domains().count()
                ),
                "",
            ));
            c
        }
        Err(e) => {
            let text = e.to_string().replace('\n', " ");
            out.push(check(
                "configuration",
                Status::Fail,
                format!("{}: {text}", path.display()),
                "fix the file (or pass --config FILE); `domsyncd --check --config FILE` checks it",
            ));
            return out;
        }
    };
    let creds = credentials(&config, &mut out);
    peers(&config, creds.as_ref(), timeout, &mut out);
    clock(&config, timeout, &mut out);
    disk(&config.node.state_dir, &mut out);
    descriptors(&mut out);
    permissions(&config, &mut out);
    out
}

/// The TLS files together (as the daemon loads them) and the certificate's expiry.
fn credentials(config: &Config, out: &mut Vec<Check>) -> Option<Credentials> {
    let files = TlsFiles {
        ca: config.tls.ca.clone(),
        cert: config.tls.cert.clone(),
        key: config.tls.key.clone(),
    };
    let creds = match Credentials::load_with_crl(&files, config.tls.crl.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            out.push(check(
                "certificate",
                Status::Fail,
                format!("{}: {e}", config.tls.cert.display()),
                "issue the node's certificate (`domsync pki issue --role node --id ID`) and set [tls] cert, key, ca",
            ));
            return None;
        }
    };
    let want = Identity::new(PeerRole::Node, config.node.id.as_str()).ok();
    if want.as_ref() != Some(&creds.identity) {
        out.push(check(
            "certificate",
            Status::Fail,
            format!(
                "{} is {}, not the certificate of node {}",
                config.tls.cert.display(),
                creds.identity.uri(),
                config.node.id
            ),
            "point [tls] cert and key at this node's certificate",
        ));
        return Some(creds);
    }
    let info = creds
        .chain
        .first()
        .map(|der| domsync_net::CertificateInfo::from_der(der));
    match info {
        Some(Ok(info)) => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
            let days = (info.not_after - now).div_euclid(86_400);
            let (status, todo) = if info.not_after <= now {
                (Status::Fail, "issue a new certificate and reload (SIGHUP)")
            } else if days < CERT_WARN_DAYS {
                (
                    Status::Warn,
                    "issue a new certificate soon and reload (SIGHUP)",
                )
            } else {
                (Status::Ok, "")
            };
            let detail = if info.not_after <= now {
                format!("{} expired {} days ago", info.identity, -days)
            } else {
                format!(
                    "{} valid for {days} more days (serial {})",
                    info.identity, info.serial
                )
            };
            out.push(check("certificate", status, detail, todo));
        }
        Some(Err(e)) => out.push(check(
            "certificate",
            Status::Fail,
            e,
            "issue the node's certificate again",
        )),
        None => out.push(check(
            "certificate",
            Status::Fail,
            "no certificate in the file",
            "issue the node's certificate again",
        )),
    }
    Some(creds)
}

/// A QUIC handshake with each configured peer, all at once, each bounded by `timeout`.
fn peers(config: &Config, creds: Option<&Credentials>, timeout: Duration, out: &mut Vec<Check>) {
    let peers: Vec<_> = config
        .peers
        .iter()
        .filter(|(id, _)| **id != config.node.id)
        .map(|(id, addr)| (id.clone(), *addr))
        .collect();
    if peers.is_empty() {
        out.push(check("peers", Status::Ok, "none configured", ""));
        return;
    }
    let Some(creds) = creds else {
        for (id, addr) in &peers {
            out.push(check(
                format!("peer {id}"),
                Status::Skip,
                format!("{addr}: not checked without usable credentials"),
                "fix the certificate first",
            ));
        }
        return;
    };
    let results = match handshakes(creds, &peers, timeout) {
        Ok(r) => r,
        Err(e) => {
            out.push(check(
                "peers",
                Status::Fail,
                e,
                "check that this process may open UDP sockets",
            ));
            return;
        }
    };
    for ((id, addr), result) in peers.iter().zip(results) {
        out.push(match result {
            Ok(rtt) => check(
                format!("peer {id}"),
                Status::Ok,
                format!("{addr}: handshake in {} ms", rtt.as_millis()),
                "",
            ),
            Err(e) => check(
                format!("peer {id}"),
                Status::Fail,
                format!("{addr}: {e}"),
                "check that its domsyncd runs, the address and firewall (UDP), and that both certificates come from the same CA",
            ),
        });
    }
}

fn handshakes(
    creds: &Credentials,
    peers: &[(domsync_proto::model::NodeId, std::net::SocketAddr)],
    timeout: Duration,
) -> Result<Vec<Result<Duration, String>>, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime: {e}"))?;
    rt.block_on(async {
        let endpoint = quinn::Endpoint::client("0.0.0.0:0".parse().expect("an address"))
            .map_err(|e| format!("cannot open a UDP socket: {e}"))?;
        let attempts: Vec<_> = peers
            .iter()
            .map(|(id, addr)| {
                let (endpoint, creds, id, addr) =
                    (endpoint.clone(), creds.clone(), id.clone(), *addr);
                tokio::spawn(async move { handshake(&endpoint, &creds, &id, addr, timeout).await })
            })
            .collect();
        let mut results = Vec::with_capacity(attempts.len());
        for a in attempts {
            results.push(
                a.await
                    .unwrap_or_else(|e| Err(format!("check failed: {e}"))),
            );
        }
        // Let the close frames go out.
        tokio::time::timeout(Duration::from_millis(200), endpoint.wait_idle())
            .await
            .ok();
        Ok(results)
    })
}

/// One handshake with node `id` at `addr` as a node (ALPN of replication): its round trip or
/// why it failed (the TLS reason included).
async fn handshake(
    endpoint: &quinn::Endpoint,
    creds: &Credentials,
    id: &domsync_proto::model::NodeId,
    addr: std::net::SocketAddr,
    timeout: Duration,
) -> Result<Duration, String> {
    let expect = Identity::new(PeerRole::Node, id.as_str()).map_err(|e| e.to_string())?;
    let config = domsync_net::client_config_for(creds, domsync_net::ALPN_REPL, Some(&expect))
        .map_err(|e| e.to_string())?;
    let started = std::time::Instant::now();
    let connecting = endpoint
        .connect_with(config, addr, domsync_net::SERVER_NAME)
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok(conn)) => {
            let rtt = started.elapsed();
            conn.close(0u32.into(), b"domsync doctor");
            Ok(rtt)
        }
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no handshake within {} s", timeout.as_secs())),
    }
}

/// Free space of the file system of the state directory.
fn disk(state_dir: &Path, out: &mut Vec<Check>) {
    let name = "disk space";
    let Some(c_path) = std::ffi::CString::new(state_dir.as_os_str().as_encoded_bytes()).ok() else {
        out.push(check(
            name,
            Status::Fail,
            "state_dir has a NUL byte",
            "fix node.state_dir",
        ));
        return;
    };
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and a struct of the right type to fill.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), &mut st) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        out.push(check(
            name,
            Status::Fail,
            format!("{}: {e}", state_dir.display()),
            "create node.state_dir (owned by the service user, mode 0700) or start domsyncd once",
        ));
        return;
    }
    #[allow(clippy::unnecessary_cast)]
    let free = (st.f_bavail as u64).saturating_mul(st.f_frsize as u64);
    #[allow(clippy::unnecessary_cast)]
    let total = (st.f_blocks as u64).saturating_mul(st.f_frsize as u64);
    let detail = format!(
        "{}: {} free of {}",
        state_dir.display(),
        human(free),
        human(total)
    );
    out.push(if free < DISK_FAIL_BYTES {
        check(
            name,
            Status::Fail,
            detail,
            "free space on that file system now: writes fail when it is full",
        )
    } else if free < DISK_WARN_BYTES {
        check(
            name,
            Status::Warn,
            detail,
            "free space on that file system or lower retention_bytes",
        )
    } else {
        check(name, Status::Ok, detail, "")
    });
}

fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// The open-file limit (soft, as a process started from here gets it).
fn descriptors(out: &mut Vec<Check>) {
    let name = "descriptor limit";
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a struct of the right type to fill.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        let e = std::io::Error::last_os_error();
        out.push(check(
            name,
            Status::Warn,
            format!("cannot read: {e}"),
            "check ulimit -n",
        ));
        return;
    }
    #[allow(clippy::unnecessary_cast)]
    let (soft, hard) = (lim.rlim_cur as u64, lim.rlim_max as u64);
    #[allow(clippy::unnecessary_cast)]
    let infinity = libc::RLIM_INFINITY as u64;
    let show = |v: u64| {
        if v == infinity {
            "unlimited".to_owned()
        } else {
            v.to_string()
        }
    };
    let detail = format!(
        "open files {} (hard {}) here; the service gets LimitNOFILE of its unit",
        show(soft),
        show(hard)
    );
    let todo = "raise it: LimitNOFILE=65536 in the unit (systemctl edit domsyncd), or ulimit -n";
    out.push(if soft < NOFILE_FAIL {
        check(name, Status::Fail, detail, todo)
    } else if soft < NOFILE_WARN {
        check(name, Status::Warn, detail, todo)
    } else {
        check(name, Status::Ok, detail, "")
    });
}

/// The state directory and the private key are the owner's only.
fn permissions(config: &Config, out: &mut Vec<Check>) {
    let dir = &config.node.state_dir;
    out.push(match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => check(
            "state permissions",
            Status::Fail,
            format!("{} is not a directory", dir.display()),
            "point node.state_dir at a directory",
        ),
        Ok(m) if m.mode() & 0o077 != 0 => check(
            "state permissions",
            Status::Warn,
            format!(
                "{} is mode {:04o} (owner uid {}): others may read the domains",
                dir.display(),
                m.mode() & 0o7777,
                m.uid()
            ),
            &format!("chmod 0700 {}", dir.display()),
        ),
        Ok(m) => check(
            "state permissions",
            Status::Ok,
            format!(
                "{} is mode {:04o}, owner uid {}",
                dir.display(),
                m.mode() & 0o7777,
                m.uid()
            ),
            "",
        ),
        Err(e) => check(
            "state permissions",
            Status::Fail,
            format!("{}: {e}", dir.display()),
            "create node.state_dir (owned by the service user, mode 0700) or start domsyncd once",
        ),
    });
    let key = &config.tls.key;
    if let Ok(m) = std::fs::metadata(key) {
        out.push(if m.mode() & 0o077 != 0 {
            check(
                "key permissions",
                Status::Warn,
                format!("{} is mode {:04o}", key.display(), m.mode() & 0o7777),
                &format!("chmod 0600 {}", key.display()),
            )
        } else {
            check(
                "key permissions",
                Status::Ok,
                format!("{} is mode {:04o}", key.display(), m.mode() & 0o7777),
                "",
            )
        });
    }
}

/// A skew up to this is fine; up to [`SKEW_FAIL_MS`] it is warned about.
const SKEW_WARN_MS: i64 = 500;
const SKEW_FAIL_MS: i64 = 5_000;

/// Clock skew to each peer, as the local daemon measured it on heartbeats of the actives it
/// follows.
fn clock(config: &Config, timeout: Duration, out: &mut Vec<Check>) {
    use domsync_client::admin::{Session, Target};
    use domsync_proto::admin::{Answer, Request};
    const TODO: &str = "keep every node on NTP (timedatectl show -p NTPSynchronized)";
    let socket = config.node.admin_socket.clone();
    let asked = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|rt| {
            rt.block_on(async {
                tokio::time::timeout(timeout, async {
                    let mut s = Session::open(&Target::Socket(socket.clone())).await?;
                    let answer = s.call(&Request::Status).await;
                    s.close().await;
                    answer
                })
                .await
                .map_err(|_| format!("no answer within {timeout:?}"))?
            })
        });
    let status = match asked {
        Ok(Answer::Status(s)) => s,
        Ok(other) => {
            out.push(check(
                "clock skew",
                Status::Skip,
                format!("not measured: unexpected answer from the daemon: {other:?}"),
                TODO,
            ));
            return;
        }
        Err(e) => {
            out.push(check(
                "clock skew",
                Status::Skip,
                format!(
                    "not measured: the local domsyncd does not answer at {} ({e}); a running daemon measures it",
                    socket.display()
                ),
                TODO,
            ));
            return;
        }
    };
    for peer in config.peers.keys().filter(|p| **p != config.node.id) {
        let worst = status
            .domains
            .iter()
            .filter_map(|d| d.follower.as_ref())
            .filter(|f| f.active == *peer)
            .filter_map(|f| f.clock_skew_ms)
            .max_by_key(|ms| ms.unsigned_abs());
        let name = format!("clock skew to {peer}");
        match worst {
            None => out.push(check(
                name,
                Status::Skip,
                "not measured from here: this node follows no domain whose active it is (run doctor on its standbys)",
                TODO,
            )),
            Some(ms) => {
                let level = match ms.unsigned_abs() {
                    a if a <= SKEW_WARN_MS.unsigned_abs() => Status::Ok,
                    a if a <= SKEW_FAIL_MS.unsigned_abs() => Status::Warn,
                    _ => Status::Fail,
                };
                let todo = if level == Status::Ok { "" } else { TODO };
                out.push(check(
                    name,
                    level,
                    format!("{ms} ms (this clock minus {peer}'s, from its heartbeats, network delay included)"),
                    todo,
                ));
            }
        }
    }
}
