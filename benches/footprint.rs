//! Footprint of `domsyncd`: binary sizes, idle resident memory and idle CPU with 100 domains.
//!
//! Starts the daemon (built with this profile) on a generated configuration of one node with
//! 100 domains, waits for `READY=1` on a `NOTIFY_SOCKET` it listens on, lets it settle, then
//! reads its resident set (`VmRSS`, `VmHWM`) and the CPU time it used over an idle window from
//! `/proc`. Targets: binary under 15 MB stripped, idle RSS under 64 MiB with 100 domains, no busy
//! polling. `cargo bench --bench footprint` (`DOMSYNC_FOOTPRINT_DOMAINS`, default 100;
//! `DOMSYNC_FOOTPRINT_IDLE_SECS`, default 10).

use std::path::Path;
use std::time::{Duration, Instant};

use domsync_net::PeerRole;
use domsync_testkit::pki::init_pki;
use domsync_testkit::poll::free_port;
use domsync_testkit::process::{Daemon, NodeConfig};

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn proc_status(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of stat; `rest` starts at field 3.
    field(11) + field(12)
}

fn size_mib(path: &Path) -> f64 {
    std::fs::metadata(path).map_or(0.0, |m| m.len() as f64 / (1 << 20) as f64)
}

fn main() {
    let domains = env_or("DOMSYNC_FOOTPRINT_DOMAINS", 100);
    let idle = Duration::from_secs(env_or("DOMSYNC_FOOTPRINT_IDLE_SECS", 10));
    let daemon = Path::new(env!("CARGO_BIN_EXE_domsyncd"));
    let cli = Path::new(env!("CARGO_BIN_EXE_domsync"));
    println!(
        "binaries (profile {}): domsyncd {:.1} MiB, domsync {:.1} MiB (target < 15 MB stripped)",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release, stripped"
        },
        size_mib(daemon),
        size_mib(cli)
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let pki_dir = dir.path().join("pki");
    init_pki(&pki_dir, &[(PeerRole::Node, "a")]);
    let state = dir.path().join("state");
    let config = NodeConfig {
        id: "a".into(),
        admin_socket: state.join("admin.sock"),
        state_dir: state,
        listen: format!("127.0.0.1:{}", free_port()),
        pki: pki_dir,
        limits: String::new(),
        peers: Vec::new(),
        domains: (0..domains)
            .map(|i| (format!("tenant-{i}"), vec!["a".into()], "local".into()))
            .collect(),
    }
    .write(dir.path().join("domsync.toml"));

    let started = Instant::now();
    let mut daemon = Daemon::spawn(
        "a",
        dir.path(),
        &config,
        Duration::from_secs(60),
        &[("RUST_LOG", "warn")],
    );
    daemon.ready();
    let pid = daemon.child.id();
    let ready = started.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let before = cpu_ticks(pid);
    let t = Instant::now();
    std::thread::sleep(idle);
    let used = cpu_ticks(pid).saturating_sub(before);
    let window = t.elapsed();
    let rss = proc_status(pid, "VmRSS:");
    let hwm = proc_status(pid, "VmHWM:");
    // Clock ticks are 1/100 s on Linux.
    let cpu_ms = used * 10;
    println!(
        "{domains} domains: ready in {:.0} ms; idle RSS {:.1} MiB (peak {:.1} MiB, target < 64 MiB); idle CPU {cpu_ms} ms over {:.1} s ({:.2} %)",
        ready.as_secs_f64() * 1e3,
        rss as f64 / 1024.0,
        hwm as f64 / 1024.0,
        window.as_secs_f64(),
        cpu_ms as f64 / window.as_secs_f64() / 10.0
    );
    daemon.stop();
}
