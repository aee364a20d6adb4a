//! The harness shared by the tests that run real `domsyncd` processes and the `domsync` CLI:
//! PKI and configuration files, daemons started with a `NOTIFY_SOCKET` the test listens on,
//! CLI runs with their exit code and output, bounded polling, and a minimal JSON reader for
//! `status --json`.
//!
//! Every test binary compiles this module on its own and uses only part of it.
#![allow(dead_code)]

use std::borrow::BorrowMut;
use std::collections::BTreeMap;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use domsync_net::{pki, Credentials, Identity, PeerRole, TlsFiles};
use domsync_proto::model::NodeId;

/// Hang guard only: every wait polls a condition up to a deadline this far away.
pub const GUARD: Duration = Duration::from_secs(60);

/// The gateway every domain of a [`Cluster`] grants.
pub const GATEWAY: &str = "g";

/// A UDP port free on loopback right now.
pub fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn nid(s: &str) -> NodeId {
    NodeId::new(s).unwrap()
}

/// A CA in `dir` and a certificate (30 days) for each `(role, name)`.
pub fn init_pki(dir: &Path, certs: &[(PeerRole, &str)]) {
    pki::init_ca(dir).unwrap();
    for (role, name) in certs {
        pki::issue(dir, *role, name, dir, 30).unwrap();
    }
}

/// The credentials of `name` in `role` from the PKI directory `pki_dir`.
pub fn creds(pki_dir: &Path, role: PeerRole, name: &str) -> Credentials {
    TlsFiles::in_dir(pki_dir, &Identity::new(role, name).unwrap())
        .load()
        .unwrap()
}

/// Calls `attempt` every `every` until it gives `Ok`; past `guard`, panics with its last `Err`.
pub fn poll<T>(
    guard: Duration,
    every: Duration,
    mut attempt: impl FnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + guard;
    loop {
        match attempt() {
            Ok(v) => return v,
            Err(why) => assert!(Instant::now() < deadline, "{why}"),
        }
        std::thread::sleep(every);
    }
}

/// The text of a `domsyncd` configuration file.
pub struct NodeConfig {
    pub id: String,
    pub state_dir: PathBuf,
    pub listen: String,
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
    pub name: String,
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
        let mut command = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(env!("CARGO_BIN_EXE_domsyncd"));
                c
            }
            None => Command::new(env!("CARGO_BIN_EXE_domsyncd")),
        };
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
            .arg(env!("CARGO_BIN_EXE_domsyncd"))
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

/// A test cluster's files: a PKI with a certificate for each node, gateway [`GATEWAY`] and
/// admin `ops`, and one configuration per node (`guard_window_ms = 300`, durability local).
pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub ports: BTreeMap<&'static str, u16>,
}

impl Cluster {
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

    pub fn pki(&self) -> PathBuf {
        self.dir.path().join("pki")
    }

    pub fn socket(&self, node: &str) -> PathBuf {
        self.dir.path().join(node).join("run/admin.sock")
    }

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

/// What a CLI run left: exit code (-1 for a signal), stdout, stderr.
pub struct Out {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\nstdout: {}\nstderr: {}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `cmd` to its end.
pub fn run(mut cmd: impl BorrowMut<Command>) -> Out {
    let out = cmd.borrow_mut().output().unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `domsync ARGS` with no daemon or state directory named by the environment.
pub fn domsync_cmd<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_domsync"));
    cmd.args(args)
        .env_remove("DOMSYNC_SOCKET")
        .env_remove("DOMSYNC_REMOTE")
        .env_remove("DOMSYNC_DATA");
    cmd
}

/// `domsync --socket SOCKET ARGS`, not run yet.
pub fn socket_cmd(socket: &Path, args: &[&str]) -> Command {
    let mut cmd = domsync_cmd(&["--socket"]);
    cmd.arg(socket).args(args);
    cmd
}

/// `domsync --socket SOCKET ARGS`.
pub fn domsync(socket: &Path, args: &[&str]) -> Out {
    run(socket_cmd(socket, args))
}

/// Like [`domsync`], asserting exit 0; returns stdout.
pub fn ok(socket: &Path, args: &[&str]) -> String {
    let out = domsync(socket, args);
    assert_eq!(
        out.code,
        0,
        "domsync {args:?} on {}: {out}",
        socket.display()
    );
    out.stdout
}

/// `domsync --socket SOCKET status --json`.
pub fn status_json(socket: &Path) -> Json {
    Json::parse(&ok(socket, &["status", "--json"]))
}

/// Waits until `check` holds for the JSON status of `socket`.
pub fn wait_status(socket: &Path, what: &str, check: impl Fn(&Json) -> bool) -> Json {
    poll(GUARD, Duration::from_millis(50), || {
        let s = status_json(socket);
        if check(&s) {
            Ok(s)
        } else {
            Err(format!("{what}: {s:?}"))
        }
    })
}

/// One domain as a node's `status --json` reports it.
pub fn report<'a>(status: &'a Json, domain: &str) -> Option<&'a Json> {
    status
        .get("domains")
        .arr()
        .iter()
        .find(|d| d.get("domain").str() == domain)
}

/// Like [`report`], panicking when the domain is not listed.
pub fn domain_of<'a>(status: &'a Json, domain: &str) -> &'a Json {
    report(status, domain).unwrap_or_else(|| panic!("{domain} not in {status:?}"))
}

/// A minimal JSON reader (the crate has no JSON dependency): enough to check that
/// `status --json` is a well-formed document and to read its fields.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    pub fn parse(text: &str) -> Json {
        let b = text.trim().as_bytes();
        let (v, rest) = Json::value(b);
        assert!(rest.is_empty(), "trailing bytes after the JSON document");
        v
    }

    fn ws(mut b: &[u8]) -> &[u8] {
        while let [c, rest @ ..] = b {
            if !c.is_ascii_whitespace() {
                break;
            }
            b = rest;
        }
        b
    }

    fn value(b: &[u8]) -> (Json, &[u8]) {
        let b = Json::ws(b);
        match b.first() {
            Some(b'n') if b.starts_with(b"null") => (Json::Null, &b[4..]),
            Some(b't') if b.starts_with(b"true") => (Json::Bool(true), &b[4..]),
            Some(b'f') if b.starts_with(b"false") => (Json::Bool(false), &b[5..]),
            Some(b'"') => {
                let (s, rest) = Json::string(b);
                (Json::Str(s), rest)
            }
            Some(b'[') => {
                let mut items = Vec::new();
                let mut b = Json::ws(&b[1..]);
                if let Some(rest) = b.strip_prefix(b"]") {
                    return (Json::Arr(items), rest);
                }
                loop {
                    let (v, rest) = Json::value(b);
                    items.push(v);
                    let rest = Json::ws(rest);
                    match rest.first() {
                        Some(b',') => b = &rest[1..],
                        Some(b']') => return (Json::Arr(items), &rest[1..]),
                        _ => panic!("bad JSON array"),
                    }
                }
            }
            Some(b'{') => {
                let mut fields = Vec::new();
                let mut b = Json::ws(&b[1..]);
                if let Some(rest) = b.strip_prefix(b"}") {
                    return (Json::Obj(fields), rest);
                }
                loop {
                    let (k, rest) = Json::string(Json::ws(b));
                    let rest = Json::ws(rest);
                    assert_eq!(rest.first(), Some(&b':'), "bad JSON object");
                    let (v, rest) = Json::value(&rest[1..]);
                    fields.push((k, v));
                    let rest = Json::ws(rest);
                    match rest.first() {
                        Some(b',') => b = &rest[1..],
                        Some(b'}') => return (Json::Obj(fields), &rest[1..]),
                        _ => panic!("bad JSON object"),
                    }
                }
            }
            _ => {
                let end = b
                    .iter()
                    .position(|c| !(c.is_ascii_digit() || b"-+.eE".contains(c)))
                    .unwrap_or(b.len());
                assert!(end > 0, "bad JSON value");
                let n = std::str::from_utf8(&b[..end]).unwrap().parse().unwrap();
                (Json::Num(n), &b[end..])
            }
        }
    }

    fn string(b: &[u8]) -> (String, &[u8]) {
        assert_eq!(b.first(), Some(&b'"'), "expected a JSON string");
        let mut out = Vec::new();
        let mut i = 1;
        loop {
            match b[i] {
                b'"' => return (String::from_utf8(out).unwrap(), &b[i + 1..]),
                b'\\' => {
                    i += 1;
                    match b[i] {
                        b'n' => out.push(b'\n'),
                        b't' => out.push(b'\t'),
                        b'r' => out.push(b'\r'),
                        b'u' => {
                            let hex = std::str::from_utf8(&b[i + 1..i + 5]).unwrap();
                            let c = char::from_u32(u32::from_str_radix(hex, 16).unwrap()).unwrap();
                            out.extend_from_slice(c.to_string().as_bytes());
                            i += 4;
                        }
                        c => out.push(c),
                    }
                }
                c => out.push(c),
            }
            i += 1;
        }
    }

    /// The field `key` of an object.
    pub fn get(&self, key: &str) -> &Json {
        match self {
            Json::Obj(f) => f
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v)
                .unwrap_or_else(|| panic!("no {key} in {self:?}")),
            other => panic!("{other:?} is not an object"),
        }
    }

    pub fn arr(&self) -> &[Json] {
        match self {
            Json::Arr(a) => a,
            other => panic!("{other:?} is not an array"),
        }
    }

    pub fn str(&self) -> &str {
        match self {
            Json::Str(s) => s,
            other => panic!("{other:?} is not a string"),
        }
    }

    pub fn num(&self) -> f64 {
        match self {
            Json::Num(n) => *n,
            other => panic!("{other:?} is not a number"),
        }
    }
}
