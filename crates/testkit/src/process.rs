//! Real `domsyncd` processes: where the binaries are, configuration files ([`NodeConfig`]),
//! daemons started with a `NOTIFY_SOCKET` the test listens on ([`Daemon`]), and the files of a
//! cluster of them on loopback ([`Cluster`]).
//!
//! The binaries are found the way `assert_cmd` finds them: next to the running test binary
//! (`target/<profile>/`, one level above the `deps/` directory that holds test binaries), or
//! in `DOMSYNC_BIN_DIR` when set. `cargo test` at the workspace root builds the binaries of the
//! root package before running its integration tests; elsewhere run `cargo build --bins`
//! first.

use std::collections::BTreeMap;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use domsync_net::PeerRole;

use crate::pki::init_pki;
use crate::poll::{free_port, GUARD};

/// The gateway every domain of a [`Cluster`] (and of every [`NodeConfig`]) grants.
pub const GATEWAY: &str = "g";

/// The environment variable naming the directory of the binaries, overriding the search next
/// to the test binary.
pub const BIN_DIR_ENV: &str = "DOMSYNC_BIN_DIR";

/// The path of the binary `name` of this workspace (`domsyncd`, `domsync`, ...): in
/// `$DOMSYNC_BIN_DIR` when set, else in the target directory of the running test binary.
///
/// # Panics
/// When the binary is not there, naming the path looked at.
pub fn binary(name: &str) -> PathBuf {
    let (dir, from) = match std::env::var_os(BIN_DIR_ENV) {
        Some(dir) => (PathBuf::from(dir), BIN_DIR_ENV),
        None => (target_dir(), "the directory of the test binary"),
    };
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    assert!(
        path.is_file(),
        "binary {name} not found at {} (from {from}): run `cargo build --bins` first, or set \
         {BIN_DIR_ENV} to the directory holding it",
        path.display()
    );
    path
}

/// The directory of the running executable, one level up when it is a `deps/` directory
/// (where cargo puts test binaries).
fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the path of the running test binary");
    let mut dir = exe
        .parent()
        .expect("the running test binary has a directory")
        .to_path_buf();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// The text of a `domsyncd` configuration file.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The node's id.
    pub id: String,
    /// Its state directory.
    pub state_dir: PathBuf,
    /// Its QUIC address (`listen`).
    pub listen: String,
    /// Its admin socket.
    pub admin_socket: PathBuf,
    /// The PKI directory: `ca.pem`, `node-<id>.pem` and `.key`.
    pub pki: PathBuf,
    /// The lines of the `[limits]` table (empty: no table).
    pub limits: String,
    /// `(id, address)` of each peer.
    pub peers: Vec<(String, String)>,
    /// `(name, replicas primary first, durability)`, each granted to [`GATEWAY`].
    pub domains: Vec<(String, Vec<String>, String)>,
}

impl NodeConfig {
    /// The configuration file's text.
    pub fn text(&self) -> String {
        let mut text = format!(
            r#"
[node]
id = "{id}"
state_dir = "{state}"
listen = "{listen}"
admin_socket = "{socket}"

[tls]
ca = "{pki}/ca.pem"
cert = "{pki}/node-{id}.pem"
key = "{pki}/node-{id}.key"
"#,
            id = self.id,
            state = self.state_dir.display(),
            listen = self.listen,
            socket = self.admin_socket.display(),
            pki = self.pki.display(),
        );
        if !self.limits.is_empty() {
            text.push_str(&format!("\n[limits]\n{}\n", self.limits));
        }
        for (peer, address) in &self.peers {
            text.push_str(&format!(
                "\n[[peers]]\nid = \"{peer}\"\naddress = \"{address}\"\n"
            ));
        }
        for (name, replicas, durability) in &self.domains {
            let list = replicas
                .iter()
                .map(|r| format!("\"{r}\""))
                .collect::<Vec<_>>()
                .join(", ");
            text.push_str(&format!(
                "\n[[domains]]\nname = \"{name}\"\nreplicas = [{list}]\ndurability = \"{durability}\"\ngateways = [\"{GATEWAY}\"]\n"
            ));
        }
        text
    }

    /// Writes the file at `path`; returns `path`.
    pub fn write(&self, path: PathBuf) -> PathBuf {
        std::fs::write(&path, self.text()).unwrap();
        path
    }
}

/// A running `domsyncd`: its stderr goes to `<dir>/<name>.log` (appended across restarts), its
/// notifications to `<dir>/<name>-notify.sock`. Killed when dropped.
pub struct Daemon {
    /// The name it was spawned with (its node, usually).
    pub name: String,
    /// The process.
    pub child: Child,
    /// Its admin socket, where the starter knows it ([`Cluster::start`] does).
    pub socket: PathBuf,
    log: PathBuf,
    notify: UnixDatagram,
    guard: Duration,
}

impl Daemon {
    /// Spawns `domsyncd --config CONFIG` with `RUST_LOG=info` and the extra `env`; waits for
    /// nothing. Every later wait on it is bounded by `guard`.
    pub fn spawn(
        name: &str,
        dir: &Path,
        config: &Path,
        guard: Duration,
        env: &[(&str, &str)],
    ) -> Daemon {
        Daemon::spawn_wrapped(name, dir, config, guard, env, &[])
    }

    /// Like [`Daemon::spawn`], with the command run through `wrapper` (a program and its
    /// arguments, e.g. `ip netns exec NS`), which must exec `domsyncd` in its own process so
    /// that signals reach the daemon. An empty `wrapper` runs `domsyncd` directly.
    pub fn spawn_wrapped(
        name: &str,
        dir: &Path,
        config: &Path,
        guard: Duration,
        env: &[(&str, &str)],
        wrapper: &[String],
    ) -> Daemon {
        Daemon::spawn_inner(name, dir, config, guard, env, wrapper, Limits::default())
    }

    /// Like [`Daemon::spawn`], with the daemon's file mode creation mask set to `umask` (e.g.
    /// `0o022`, the usual login default) before it starts, whatever the test's own.
    pub fn spawn_with_umask(
        name: &str,
        dir: &Path,
        config: &Path,
        guard: Duration,
        env: &[(&str, &str)],
        umask: u32,
    ) -> Daemon {
        let limits = Limits {
            umask: Some(umask),
            ..Limits::default()
        };
        Daemon::spawn_inner(name, dir, config, guard, env, &[], limits)
    }

    /// Like [`Daemon::spawn`], with the daemon's open-file limit (`RLIMIT_NOFILE`) set to
    /// `soft` and `hard` before it starts, as `LimitNOFILE=SOFT:HARD` of a unit would.
    pub fn spawn_with_nofile(
        name: &str,
        dir: &Path,
        config: &Path,
        guard: Duration,
        env: &[(&str, &str)],
        (soft, hard): (u64, u64),
    ) -> Daemon {
        let limits = Limits {
            nofile: Some((soft, hard)),
            ..Limits::default()
        };
        Daemon::spawn_inner(name, dir, config, guard, env, &[], limits)
    }

    fn spawn_inner(
        name: &str,
        dir: &Path,
        config: &Path,
        guard: Duration,
        env: &[(&str, &str)],
        wrapper: &[String],
        limits: Limits,
    ) -> Daemon {
        let notify_path = dir.join(format!("{name}-notify.sock"));
        let _ = std::fs::remove_file(&notify_path);
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        notify.set_read_timeout(Some(guard)).unwrap();
        let log = dir.join(format!("{name}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let domsyncd = binary("domsyncd");
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(&domsyncd);
                c
            }
            None => Command::new(&domsyncd),
        };
        if let Some(mask) = limits.umask {
            with_umask(&mut command, mask);
        }
        if let Some((soft, hard)) = limits.nofile {
            with_nofile(&mut command, soft, hard);
        }
        let child = command
            .arg("--config")
            .arg(config)
            .env("NOTIFY_SOCKET", &notify_path)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        Daemon {
            name: name.to_owned(),
            child,
            socket: PathBuf::new(),
            log,
            notify,
            guard,
        }
    }

    /// Everything the daemon has logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Reads notifications until one contains `want`; returns it.
    pub fn until(&self, want: &str) -> String {
        let deadline = Instant::now() + self.guard;
        let mut buf = vec![0u8; 4096];
        loop {
            assert!(
                Instant::now() < deadline,
                "{} never sent {want}: {}",
                self.name,
                self.log()
            );
            let n = self.notify.recv(&mut buf).unwrap_or_else(|e| {
                panic!("{} did not send {want} ({e}): {}", self.name, self.log())
            });
            let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
            if msg.contains(want) {
                return msg;
            }
        }
    }

    /// Waits for `READY=1`; returns that notification.
    pub fn ready(&self) -> String {
        self.until("READY=1")
    }

    /// `kill -SIG pid`.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill")
            .args([&format!("-{sig}"), pid.as_str()])
            .status()
            .unwrap();
        assert!(sent.success(), "kill -{sig} {pid}");
    }

    /// Waits (bounded) for the process to exit; its exit status. A daemon that does not exit
    /// in time has every thread's backtrace taken by `gdb` (when installed) before the panic.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + self.guard;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            if Instant::now() >= deadline {
                let backtraces = self.backtraces();
                eprintln!("{} did not exit; its threads:\n{backtraces}", self.name);
                panic!("{} did not exit: {}", self.name, self.log());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every thread's backtrace (`gdb -p PID`), also written next to the log; a note instead
    /// when gdb cannot be run.
    pub fn backtraces(&self) -> String {
        let pid = self.child.id().to_string();
        // Files are read from this mount namespace: a daemon run by `ip netns exec` has its
        // own, where gdb finds neither the program nor libc.
        let out = Command::new("gdb")
            .args([
                "-q",
                "-batch",
                "-iex",
                "set sysroot /",
                "-ex",
                "thread apply all bt",
            ])
            .arg(binary("domsyncd"))
            .arg(&pid)
            .stdin(Stdio::null())
            .output();
        let text = match out {
            Ok(o) => format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => format!("no backtraces: gdb: {e}"),
        };
        let _ = std::fs::write(self.log.with_extension("gdb"), &text);
        text
    }

    /// SIGTERM, then waits (bounded) for a clean exit.
    pub fn stop(&mut self) {
        self.signal("TERM");
        let status = self.wait_exit();
        assert!(status.success(), "{status}: {}", self.log());
    }

    /// SIGKILL, and reaps the process.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `command` with the file mode creation mask `mask` (set in the child between fork and
/// exec; the test process's own mask is left alone).
pub fn with_umask(command: &mut Command, mask: u32) -> &mut Command {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: umask is async-signal-safe, touches no memory and cannot fail.
    unsafe {
        command.pre_exec(move || {
            libc::umask(mask);
            Ok(())
        })
    }
}

/// Sets `command`'s open-file limit (`RLIMIT_NOFILE`) to `soft` and `hard` in the child
/// before it runs; a refusal (a hard limit above the caller's) fails the spawn.
pub fn with_nofile(command: &mut Command, soft: u64, hard: u64) -> &mut Command {
    use std::os::unix::process::CommandExt as _;
    #[allow(clippy::unnecessary_cast)]
    let (soft, hard) = (soft as libc::rlim_t, hard as libc::rlim_t);
    // SAFETY: setrlimit is async-signal-safe and reads only the struct on this stack.
    unsafe {
        command.pre_exec(move || {
            let lim = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    }
}

/// What is set in a daemon's process before it runs.
#[derive(Default)]
struct Limits {
    umask: Option<u32>,
    nofile: Option<(u64, u64)>,
}

/// A test cluster's files: a PKI with a certificate for each node, gateway [`GATEWAY`] and
/// admin `ops`, and one configuration per node (`guard_window_ms = 300`, durability local).
/// Its daemons are the caller's ([`Cluster::start`]).
pub struct Cluster {
    /// The directory of everything: `pki/`, `<node>/state`, `<node>/run/admin.sock`,
    /// `<node>.toml`, the logs. Removed when dropped.
    pub dir: tempfile::TempDir,
    /// The port of each node on loopback.
    pub ports: BTreeMap<&'static str, u16>,
}

impl Cluster {
    /// The directory, a port per node and the PKI.
    pub fn new(nodes: &[&'static str]) -> Cluster {
        let c = Cluster::without_pki(nodes);
        let mut certs: Vec<(PeerRole, &str)> = nodes.iter().map(|n| (PeerRole::Node, *n)).collect();
        certs.push((PeerRole::Gateway, GATEWAY));
        certs.push((PeerRole::Admin, "ops"));
        init_pki(&c.pki(), &certs);
        c
    }

    /// The directory and a port per node; the PKI is the caller's to make.
    pub fn without_pki(nodes: &[&'static str]) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let ports = nodes.iter().map(|n| (*n, free_port())).collect();
        Cluster { dir, ports }
    }

    /// The PKI directory, `<dir>/pki`.
    pub fn pki(&self) -> PathBuf {
        self.dir.path().join("pki")
    }

    /// The admin socket of `node`.
    pub fn socket(&self, node: &str) -> PathBuf {
        self.dir.path().join(node).join("run/admin.sock")
    }

    /// The QUIC address of `node`, `127.0.0.1:<port>`.
    pub fn addr(&self, node: &str) -> String {
        format!("127.0.0.1:{}", self.ports[node])
    }

    /// The configuration of `me` in this cluster, every other node its peer.
    pub fn node_config(
        &self,
        me: &str,
        limits: &str,
        domains: Vec<(String, Vec<String>, String)>,
    ) -> NodeConfig {
        NodeConfig {
            id: me.to_owned(),
            state_dir: self.dir.path().join(me).join("state"),
            listen: self.addr(me),
            admin_socket: self.socket(me),
            pki: self.pki(),
            limits: limits.to_owned(),
            peers: self
                .ports
                .keys()
                .filter(|p| **p != me)
                .map(|p| (p.to_string(), self.addr(p)))
                .collect(),
            domains,
        }
    }

    /// `<dir>/<node>.toml`.
    pub fn config_path(&self, node: &str) -> PathBuf {
        self.dir.path().join(format!("{node}.toml"))
    }

    /// Writes the configuration of `me`: every domain as `(name, replicas)`.
    pub fn config(&self, me: &str, domains: &[(&str, &[&str])]) -> PathBuf {
        let domains = domains
            .iter()
            .map(|(name, replicas)| {
                let replicas = replicas.iter().map(|r| r.to_string()).collect();
                (name.to_string(), replicas, "local".to_owned())
            })
            .collect();
        self.node_config(me, "guard_window_ms = 300", domains)
            .write(self.config_path(me))
    }

    /// Starts `domsyncd` for `me` and waits for READY=1.
    pub fn start(&self, me: &str, domains: &[(&str, &[&str])]) -> Daemon {
        let config = self.config(me, domains);
        let mut daemon = Daemon::spawn(me, self.dir.path(), &config, GUARD, &[]);
        daemon.socket = self.socket(me);
        daemon.ready();
        daemon
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_names_its_peers_and_grants_the_gateway() {
        let c = Cluster::without_pki(&["a", "b"]);
        let text = c
            .node_config(
                "a",
                "guard_window_ms = 300",
                vec![("t1".into(), vec!["a".into(), "b".into()], "local".into())],
            )
            .text();
        assert!(text.contains("id = \"a\""), "{text}");
        assert!(
            text.contains(&format!("address = \"{}\"", c.addr("b"))),
            "{text}"
        );
        assert!(
            !text.contains(&format!("address = \"{}\"", c.addr("a"))),
            "{text}"
        );
        assert!(text.contains("[limits]\nguard_window_ms = 300"), "{text}");
        assert!(text.contains("replicas = [\"a\", \"b\"]"), "{text}");
        assert!(text.contains("gateways = [\"g\"]"), "{text}");
    }

    #[test]
    fn a_missing_binary_is_named_with_the_fix() {
        let err = std::panic::catch_unwind(|| binary("no-such-domsync-binary")).unwrap_err();
        let msg = err.downcast_ref::<String>().cloned().unwrap_or_default();
        assert!(msg.contains("no-such-domsync-binary"), "{msg}");
        assert!(msg.contains("cargo build --bins"), "{msg}");
    }
}
