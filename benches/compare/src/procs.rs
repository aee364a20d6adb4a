//! Child processes, temporary directories, free ports and CPU accounting.
//!
//! Every server the comparison starts is registered here, so that a normal end, an error or
//! Ctrl-C stops it (SIGTERM, then SIGKILL) and removes its temporary directory.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

static PIDS: Mutex<Vec<u32>> = Mutex::new(Vec::new());
static DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
static PORTS: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A fresh temporary directory under `base`, removed by [`cleanup_all`].
pub fn temp_dir(base: &Path, prefix: &str) -> Result<PathBuf> {
    let dir = tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(base)
        .context("temporary directory")?
        .keep();
    DIRS.lock().unwrap().push(dir.clone());
    Ok(dir)
}

/// A port free on 127.0.0.1 for both TCP and UDP right now, never handed out twice in a run.
pub fn free_port() -> Result<u16> {
    for _ in 0..200 {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let port = udp.local_addr()?.port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        let mut used = PORTS.lock().unwrap();
        if used.get_or_insert_with(HashSet::new).insert(port) {
            return Ok(port);
        }
    }
    bail!("no free port on 127.0.0.1")
}

/// A server process: stderr and stdout go to `log`. Stopped when dropped.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
    /// The command line, for the report.
    pub cmdline: String,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf) -> Result<Proc> {
        let out = std::fs::File::create(&log).with_context(|| format!("{}", log.display()))?;
        let err = out.try_clone()?;
        let cmdline = std::iter::once(cmd.get_program())
            .chain(cmd.get_args())
            .map(|a| {
                let a = a.to_string_lossy();
                if a.is_empty() {
                    "\"\"".to_owned()
                } else {
                    a.into_owned()
                }
            })
            .collect::<Vec<_>>()
            .join(" ");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting {name}: {cmdline}"))?;
        PIDS.lock().unwrap().push(child.id());
        Ok(Proc {
            name: name.to_owned(),
            child,
            log,
            cmdline,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails with the tail of the log if the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited ({status}): {}", self.name, self.log_tail());
        }
        Ok(())
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(8)..].join("\n")
    }

    /// Resident memory now (VmRSS), in KiB.
    pub fn rss_kib(&self) -> u64 {
        proc_status(self.pid(), "VmRSS:")
    }

    pub fn cpu(&self) -> Duration {
        proc_cpu(self.pid())
    }

    pub fn stop(&mut self) {
        let pid = self.pid();
        if self.child.try_wait().ok().flatten().is_none() {
            unsafe { libc::kill(pid as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if self.child.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        PIDS.lock().unwrap().retain(|p| *p != pid);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Kills every registered process and removes every temporary directory (Ctrl-C, errors).
pub fn cleanup_all() {
    let pids: Vec<u32> = std::mem::take(&mut *PIDS.lock().unwrap());
    for pid in &pids {
        unsafe { libc::kill(*pid as i32, libc::SIGTERM) };
    }
    if !pids.is_empty() {
        std::thread::sleep(Duration::from_millis(300));
    }
    for pid in &pids {
        unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
    }
    for dir in std::mem::take(&mut *DIRS.lock().unwrap()) {
        let _ = std::fs::remove_dir_all(dir);
    }
}

pub fn proc_status(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// utime + stime of a process (and its reaped children: none here).
pub fn proc_cpu(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let ticks = field(11) + field(12);
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_micros(ticks * 1_000_000 / hz)
}

/// CPU time (user + system) of this process so far.
pub fn self_cpu() -> Duration {
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(usage.ru_utime) + tv(usage.ru_stime)
}

/// CPU used by a set of processes over a window: start with [`CpuWindow::start`].
pub struct CpuWindow {
    start: Instant,
    procs: Vec<(String, u32, Duration)>,
}

impl CpuWindow {
    pub fn start(procs: &[&Proc]) -> CpuWindow {
        CpuWindow {
            start: Instant::now(),
            procs: procs
                .iter()
                .map(|p| (p.name.clone(), p.pid(), p.cpu()))
                .collect(),
        }
    }

    /// Percent of one core used by each process since the start.
    pub fn finish(&self) -> Vec<(String, f64)> {
        let wall = self.start.elapsed().as_secs_f64().max(1e-9);
        self.procs
            .iter()
            .map(|(name, pid, before)| {
                let used = proc_cpu(*pid).saturating_sub(*before).as_secs_f64();
                (name.clone(), 100.0 * used / wall)
            })
            .collect()
    }
}

/// Runs a command to its end (registered, so Ctrl-C stops it too); its stdout, or an error
/// naming it with its stderr.
pub fn output(cmd: &mut Command) -> Result<String> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    let pid = child.id();
    PIDS.lock().unwrap().push(pid);
    let out = child.wait_with_output();
    PIDS.lock().unwrap().retain(|p| *p != pid);
    let out = out?;
    if !out.status.success() {
        bail!(
            "{:?} {:?} failed ({}): {}",
            cmd.get_program(),
            cmd.get_args().collect::<Vec<_>>(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Polls `attempt` every 50 ms until it gives `Ok(true)`; fails after `limit` with `what`.
pub async fn wait_until<F, Fut>(what: &str, limit: Duration, mut attempt: F) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let deadline = Instant::now() + limit;
    let mut last = String::new();
    loop {
        match attempt().await {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last = format!(": {e:#}"),
        }
        if Instant::now() > deadline {
            bail!("timed out waiting for {what}{last}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
