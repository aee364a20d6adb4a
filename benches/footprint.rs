//! Footprint of `domsyncd`: binary sizes, idle resident memory and idle CPU with 100 domains.
//!
//! Starts the daemon (built with this profile) on a generated configuration of one node with
//! 100 domains, waits for `READY=1` on a `NOTIFY_SOCKET` it listens on, lets it settle, then
//! reads its resident set (`VmRSS`, `VmHWM`) and the CPU time it used over an idle window from
//! `/proc`. Targets: binary under 15 MB stripped, idle RSS under 64 MiB with 100 domains, no busy
//! polling. `cargo bench --bench footprint` (`DOMSYNC_FOOTPRINT_DOMAINS`, default 100;
//! `DOMSYNC_FOOTPRINT_IDLE_SECS`, default 10).

use std::fmt::Write as _;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use domsync_net::{pki, PeerRole};

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
    pki::init_ca(&pki_dir).expect("ca");
    pki::issue(&pki_dir, PeerRole::Node, "a", &pki_dir, 30).expect("cert");
    let port = std::net::UdpSocket::bind("127.0.0.1:0")
        .and_then(|s| s.local_addr())
        .expect("port")
        .port();
    let mut config = format!(
        "[node]\nid = \"a\"\nstate_dir = \"{state}\"\nlisten = \"127.0.0.1:{port}\"\nadmin_socket = \"{state}/admin.sock\"\n\n[tls]\nca = \"{p}/ca.pem\"\ncert = \"{p}/node-a.pem\"\nkey = \"{p}/node-a.key\"\n",
        state = dir.path().join("state").display(),
        p = pki_dir.display()
    );
    for i in 0..domains {
        let _ = write!(
            config,
            "\n[[domains]]\nname = \"tenant-{i}\"\nreplicas = [\"a\"]\ndurability = \"local\"\ngateways = [\"g\"]\n"
        );
    }
    let config_path = dir.path().join("domsync.toml");
    std::fs::write(&config_path, config).expect("config");
    let notify_path = dir.path().join("notify.sock");
    let notify = UnixDatagram::bind(&notify_path).expect("notify socket");
    notify
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");

    let started = Instant::now();
    let mut child = Command::new(daemon)
        .arg("--config")
        .arg(&config_path)
        .env("NOTIFY_SOCKET", &notify_path)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("domsyncd");
    let pid = child.id();
    let mut buf = [0u8; 4096];
    loop {
        let n = notify.recv(&mut buf).expect("READY within 60 s");
        if String::from_utf8_lossy(&buf[..n]).contains("READY=1") {
            break;
        }
    }
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
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
    let _ = child.wait();
}
