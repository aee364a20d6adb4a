//! Placement through the `domsync` CLI against three real `domsyncd` processes on loopback:
//! `plan` proposes spreading four domains all active on one node, `rebalance` carries it out
//! (one switchover at a time, the remote steps over `domsync-admin/1`), the actives end up
//! spread and every replica of every domain holds the same state; `domain add` creates a
//! domain at runtime that is served and survives a daemon restart (admin-domains.toml);
//! `domain remove` refuses a domain of the configuration file and removes an added one.

use std::collections::BTreeMap;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use domsync::net::{pki, PeerRole};

/// Hang guard only: every wait polls a condition up to this deadline.
const GUARD: Duration = Duration::from_secs(60);

fn free_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A test cluster's files: PKI, one config per node.
struct Cluster {
    dir: tempfile::TempDir,
    ports: BTreeMap<&'static str, u16>,
}

impl Cluster {
    fn new(nodes: &[&'static str]) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let pki_dir = dir.path().join("pki");
        pki::init_ca(&pki_dir).unwrap();
        for n in nodes {
            pki::issue(&pki_dir, PeerRole::Node, n, &pki_dir, 30).unwrap();
        }
        pki::issue(&pki_dir, PeerRole::Gateway, "g", &pki_dir, 30).unwrap();
        pki::issue(&pki_dir, PeerRole::Admin, "ops", &pki_dir, 30).unwrap();
        let ports = nodes.iter().map(|n| (*n, free_port())).collect();
        Cluster { dir, ports }
    }

    fn pki(&self) -> PathBuf {
        self.dir.path().join("pki")
    }

    fn socket(&self, node: &str) -> PathBuf {
        self.dir.path().join(node).join("run/admin.sock")
    }

    /// Writes the configuration of `me`: every domain as `(name, replicas)`.
    fn config(&self, me: &str, domains: &[(&str, &[&str])]) -> PathBuf {
        let pki = self.pki();
        let mut text = format!(
            r#"
[node]
id = "{me}"
state_dir = "{state}"
listen = "127.0.0.1:{port}"
admin_socket = "{socket}"

[tls]
ca = "{pki}/ca.pem"
cert = "{pki}/node-{me}.pem"
key = "{pki}/node-{me}.key"

[limits]
guard_window_ms = 300
"#,
            state = self.dir.path().join(me).join("state").display(),
            port = self.ports[me],
            socket = self.socket(me).display(),
            pki = pki.display(),
        );
        for (peer, port) in &self.ports {
            if *peer != me {
                text.push_str(&format!(
                    "\n[[peers]]\nid = \"{peer}\"\naddress = \"127.0.0.1:{port}\"\n"
                ));
            }
        }
        for (name, replicas) in domains {
            let list = replicas
                .iter()
                .map(|r| format!("\"{r}\""))
                .collect::<Vec<_>>()
                .join(", ");
            text.push_str(&format!(
                "\n[[domains]]\nname = \"{name}\"\nreplicas = [{list}]\ndurability = \"local\"\ngateways = [\"g\"]\n"
            ));
        }
        let path = self.dir.path().join(format!("{me}.toml"));
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Starts `domsyncd` for `me` and waits for READY=1.
    fn start(&self, me: &str, domains: &[(&str, &[&str])]) -> Daemon {
        let config = self.config(me, domains);
        let notify_path = self.dir.path().join(format!("{me}-notify.sock"));
        let _ = std::fs::remove_file(&notify_path);
        let notify = UnixDatagram::bind(&notify_path).unwrap();
        notify.set_read_timeout(Some(GUARD)).unwrap();
        let log = self.dir.path().join(format!("{me}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_domsyncd"))
            .arg("--config")
            .arg(&config)
            .env("NOTIFY_SOCKET", &notify_path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let daemon = Daemon { child, log };
        let deadline = Instant::now() + GUARD;
        let mut buf = vec![0u8; 4096];
        loop {
            assert!(
                Instant::now() < deadline,
                "{me} not ready: {}",
                daemon.log()
            );
            let n = notify
                .recv(&mut buf)
                .unwrap_or_else(|e| panic!("{me} not ready ({e}): {}", daemon.log()));
            if String::from_utf8_lossy(&buf[..n]).contains("READY=1") {
                return daemon;
            }
        }
    }
}

struct Daemon {
    child: Child,
    log: PathBuf,
}

impl Daemon {
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, then waits (bounded) for a clean exit.
    fn stop(&mut self) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success());
        let deadline = Instant::now() + GUARD;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "{status}: {}", self.log());
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no exit after SIGTERM: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill();
    }
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(mut cmd: Command) -> Out {
    let out = cmd.output().unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn domsync_cmd(socket: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_domsync"));
    cmd.arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("DOMSYNC_SOCKET")
        .env_remove("DOMSYNC_REMOTE");
    cmd
}

/// `domsync --socket SOCKET ARGS`.
fn domsync(socket: &Path, args: &[&str]) -> Out {
    run(domsync_cmd(socket, args))
}

fn ok(socket: &Path, args: &[&str]) -> String {
    let out = domsync(socket, args);
    assert_eq!(
        out.code, 0,
        "domsync {args:?}: {}{}",
        out.stdout, out.stderr
    );
    out.stdout
}

/// A minimal JSON reader (the crate has no JSON dependency): enough to check that
/// `status --json` is a well-formed document and to read its fields.
#[derive(Debug, Clone, PartialEq)]
enum Json {
    Null,
    Bool(bool),
    Num(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
}

impl Json {
    fn parse(text: &str) -> Json {
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

    fn get(&self, key: &str) -> &Json {
        match self {
            Json::Obj(f) => &f.iter().find(|(k, _)| k == key).unwrap().1,
            other => panic!("{other:?} is not an object"),
        }
    }

    fn arr(&self) -> &[Json] {
        match self {
            Json::Arr(a) => a,
            other => panic!("{other:?} is not an array"),
        }
    }

    fn str(&self) -> &str {
        match self {
            Json::Str(s) => s,
            other => panic!("{other:?} is not a string"),
        }
    }

    fn num(&self) -> f64 {
        match self {
            Json::Num(n) => *n,
            other => panic!("{other:?} is not a number"),
        }
    }
}

fn status_json(socket: &Path) -> Json {
    Json::parse(&ok(socket, &["status", "--json"]))
}

/// Waits until `check` holds for the JSON status of `socket`.
fn wait_status(socket: &Path, what: &str, check: impl Fn(&Json) -> bool) -> Json {
    let deadline = Instant::now() + GUARD;
    loop {
        let s = status_json(socket);
        if check(&s) {
            return s;
        }
        assert!(Instant::now() < deadline, "{what}: {s:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

const NODES: [&str; 3] = ["a", "b", "c"];

/// Four domains, all with `a` as primary: all start active on `a`.
const DOMAINS: [(&str, &[&str]); 4] = [
    ("t1", &["a", "b", "c"]),
    ("t2", &["a", "c", "b"]),
    ("t3", &["a", "b", "c"]),
    ("t4", &["a", "c", "b"]),
];

fn start_all(c: &Cluster) -> BTreeMap<&'static str, Daemon> {
    NODES.iter().map(|n| (*n, c.start(n, &DOMAINS))).collect()
}

/// Role of `domain` on a node's status (`None`: not listed or not open).
fn role(status: &Json, domain: &str) -> Option<String> {
    let d = status
        .get("domains")
        .arr()
        .iter()
        .find(|d| d.get("domain").str() == domain)?;
    match d.get("role") {
        Json::Str(r) => Some(r.clone()),
        _ => None,
    }
}

/// Waits until every replica of every domain in `domains` is open, exactly one is active and
/// every standby is synchronized with the same lsn and digest as its active. Returns the
/// active of each domain.
fn wait_converged(c: &Cluster, domains: &[&str]) -> BTreeMap<String, String> {
    let deadline = Instant::now() + GUARD;
    loop {
        let statuses: Vec<(&str, Json)> = NODES
            .iter()
            .map(|n| (*n, status_json(&c.socket(n))))
            .collect();
        let mut actives = BTreeMap::new();
        let mut good = true;
        for d in domains {
            let mut states = Vec::new();
            for (node, s) in &statuses {
                let Some(r) = s
                    .get("domains")
                    .arr()
                    .iter()
                    .find(|x| x.get("domain").str() == *d)
                else {
                    good = false;
                    continue;
                };
                if r.get("placement").str() != "serving" || r.get("role") == &Json::Null {
                    good = false;
                    continue;
                }
                if r.get("role").str() == "active" {
                    actives.insert((*d).to_owned(), (*node).to_owned());
                    if r.get("standbys")
                        .arr()
                        .iter()
                        .any(|sb| sb.get("sync_status").get("name").str() != "Synchronized")
                    {
                        good = false;
                    }
                }
                states.push((
                    r.get("role").str().to_owned(),
                    r.get("lsn").num(),
                    r.get("digest").str().to_owned(),
                ));
            }
            let active_count = states.iter().filter(|s| s.0 == "active").count();
            let same = states
                .windows(2)
                .all(|w| w[0].1 == w[1].1 && w[0].2 == w[1].2);
            if states.len() != NODES.len() || active_count != 1 || !same {
                good = false;
            }
        }
        if good {
            return actives;
        }
        assert!(
            Instant::now() < deadline,
            "not converged: {:?}",
            statuses.iter().map(|(n, s)| (n, s)).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn admin_args(c: &Cluster) -> Vec<String> {
    vec![
        "--admin-pki".into(),
        c.pki().display().to_string(),
        "--admin-id".into(),
        "ops".into(),
    ]
}

fn with<'a>(args: &'a [&'a str], extra: &'a [String]) -> Vec<&'a str> {
    args.iter()
        .copied()
        .chain(extra.iter().map(String::as_str))
        .collect()
}

#[test]
fn plan_proposes_spreading_and_rebalance_carries_it_out() {
    let started = Instant::now();
    let c = Cluster::new(&NODES);
    let nodes = start_all(&c);
    let names: Vec<&str> = DOMAINS.iter().map(|d| d.0).collect();
    wait_converged(&c, &names);
    for (i, d) in names.iter().enumerate() {
        let out = ok(&c.socket("a"), &["kv", "put", d, "k", &format!("v{i}")]);
        assert!(out.starts_with("put at lsn 1"), "{out}");
    }
    let actives = wait_converged(&c, &names);
    assert!(actives.values().all(|n| n == "a"), "{actives:?}");

    // The plan, asked of any node, spreads them: 2 / 1 / 1 with two moves off `a`.
    let table = ok(&c.socket("c"), &["plan"]);
    assert!(table.starts_with("plan by node c\n"), "{table}");
    assert!(table.contains("moves (2):"), "{table}");
    let moves: Vec<&str> = table.lines().filter(|l| l.contains(" -> ")).collect();
    assert_eq!(moves.len(), 2, "{table}");
    assert!(moves.iter().all(|m| m.contains(": a -> ")), "{table}");
    let plan = Json::parse(&ok(&c.socket("a"), &["plan", "--json"]));
    assert_eq!(plan.get("node").str(), "a");
    let load: BTreeMap<&str, (f64, f64)> = plan
        .get("nodes")
        .arr()
        .iter()
        .map(|n| {
            (
                n.get("id").str(),
                (n.get("load_now").num(), n.get("load").num()),
            )
        })
        .collect();
    assert_eq!(load["a"], (4.0, 2.0), "{plan:?}");
    assert_eq!(load["b"], (0.0, 1.0), "{plan:?}");
    assert_eq!(load["c"], (0.0, 1.0), "{plan:?}");
    let planned: Vec<(String, String)> = plan
        .get("moves")
        .arr()
        .iter()
        .map(|m| {
            assert_eq!(m.get("from").str(), "a");
            (
                m.get("domain").str().to_owned(),
                m.get("to").str().to_owned(),
            )
        })
        .collect();

    // A dry run prints the steps and moves nothing.
    let admin = admin_args(&c);
    let dry = ok(&c.socket("b"), &with(&["rebalance", "--dry-run"], &admin));
    assert_eq!(dry.matches("(dry run)").count(), 2, "{dry}");
    // Without an admin certificate, a rebalance asked of `b` cannot reach `a`: refused
    // before anything moves.
    let out = domsync(&c.socket("b"), &["rebalance"]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("--admin-id"), "{}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);

    // Asked of `b`, the switchovers go to `a` over remote admin, one at a time.
    let done = ok(&c.socket("b"), &with(&["rebalance"], &admin));
    assert_eq!(done.matches("  done: ").count(), 2, "{done}");
    assert!(done.contains("rebalanced: 2 domains moved"), "{done}");

    // Every node now shows the actives spread as planned, and every replica converged.
    let actives = wait_converged(&c, &names);
    for (d, to) in &planned {
        assert_eq!(&actives[d], to, "{actives:?}");
    }
    let per_node = |n: &str| actives.values().filter(|a| *a == n).count();
    assert_eq!((per_node("a"), per_node("b"), per_node("c")), (2, 1, 1));
    for n in NODES {
        let s = status_json(&c.socket(n));
        for d in &names {
            let want = if actives[*d] == n {
                "active"
            } else {
                "standby"
            };
            assert_eq!(role(&s, d).as_deref(), Some(want), "{d} on {n}");
        }
    }
    // Writes go on at the new actives, and the plan is now balanced.
    for (d, to) in &planned {
        let out = ok(&c.socket(to), &["kv", "put", d, "after", "1"]);
        assert!(out.starts_with("put at lsn"), "{out}");
    }
    wait_converged(&c, &names);
    let table = ok(&c.socket("a"), &["plan"]);
    assert!(table.contains("moves: none (balanced)"), "{table}");
    let again = ok(&c.socket("a"), &with(&["rebalance"], &admin));
    assert!(again.contains("balanced: nothing to move"), "{again}");
    drop(nodes);
    eprintln!("plan and rebalance: {:?}", started.elapsed());
}

#[test]
fn domains_added_at_runtime_are_served_kept_and_removed() {
    let started = Instant::now();
    let c = Cluster::new(&NODES);
    let mut nodes = start_all(&c);
    let names: Vec<&str> = DOMAINS.iter().map(|d| d.0).collect();
    wait_converged(&c, &names);

    // A bad add is refused with one line naming the problem; nothing is written.
    let out = domsync(
        &c.socket("a"),
        &["domain", "add", "t5", "--replicas", "b,zz"],
    );
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("zz"), "{}", out.stderr);
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    // A name of the configuration file is refused too.
    let out = domsync(&c.socket("a"), &["domain", "add", "t1", "--replicas", "a"]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("configuration file"), "{}", out.stderr);

    // `domain add` on every replica's daemon: t5 (primary b) is created and served.
    for n in NODES {
        let out = ok(
            &c.socket(n),
            &[
                "domain",
                "add",
                "t5",
                "--replicas",
                "b,c,a",
                "--durability",
                "local",
                "--gateway",
                "g",
                "--weight",
                "2",
            ],
        );
        assert!(out.contains("added domain t5"), "{out}");
    }
    // With --all, one command reaches every replica (remote admin for the others).
    let admin = admin_args(&c);
    let out = ok(
        &c.socket("a"),
        &with(
            &[
                "domain",
                "add",
                "t6",
                "--replicas",
                "c,a,b",
                "--durability",
                "local",
            ],
            &admin,
        ),
    );
    // (without --all it says to run it on the other replicas)
    assert!(out.contains("added domain t6"), "{out}");
    let out = ok(
        &c.socket("a"),
        &with(
            &[
                "domain",
                "add",
                "t6",
                "--replicas",
                "c,a,b",
                "--durability",
                "local",
                "--all",
            ],
            &admin,
        ),
    );
    assert_eq!(out.matches("added domain t6").count(), 3, "{out}");
    let out = ok(&c.socket("b"), &["kv", "put", "t5", "k", "v"]);
    assert!(out.starts_with("put at lsn 1"), "{out}");
    let out = ok(&c.socket("c"), &["kv", "put", "t6", "k", "v"]);
    assert!(out.starts_with("put at lsn 1"), "{out}");
    let all = ["t1", "t2", "t3", "t4", "t5", "t6"];
    let actives = wait_converged(&c, &all);
    assert_eq!(actives["t5"], "b");
    assert_eq!(actives["t6"], "c");
    let kept = c.dir.path().join("a/state").join("admin-domains.toml");
    let text = std::fs::read_to_string(&kept).unwrap();
    assert!(
        text.contains("name = \"t5\"") && text.contains("weight = 2"),
        "{text}"
    );

    // The plan counts the added domains and their weights.
    let plan = Json::parse(&ok(&c.socket("a"), &["plan", "--json"]));
    assert_eq!(plan.get("domains").arr().len(), 6, "{plan:?}");

    // A restart of `a` (its configuration file still without t5, t6) serves them again.
    if let Some(mut a) = nodes.remove("a") {
        a.stop();
    }
    nodes.insert("a", c.start("a", &DOMAINS));
    let s = wait_status(&c.socket("a"), "t5 and t6 served after restart", |s| {
        role(s, "t5").as_deref() == Some("standby") && role(s, "t6").as_deref() == Some("standby")
    });
    assert_eq!(s.get("domains").arr().len(), 6);
    let out = ok(&c.socket("b"), &["kv", "put", "t5", "k2", "v2"]);
    assert!(out.starts_with("put at lsn 2"), "{out}");
    wait_converged(&c, &all);

    // Removing a domain of the configuration file is refused with one line saying what to do.
    let out = domsync(&c.socket("a"), &["domain", "remove", "t1"]);
    assert_eq!(out.code, 1, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("configuration file") && out.stderr.contains("SIGHUP"),
        "{}",
        out.stderr
    );
    assert_eq!(out.stderr.lines().count(), 1, "{}", out.stderr);
    // An unknown domain: exit 4.
    let out = domsync(&c.socket("a"), &["domain", "remove", "nope"]);
    assert_eq!(out.code, 4, "{}{}", out.stdout, out.stderr);

    // Removing an added one stops serving it; its store file stays.
    for n in NODES {
        let out = ok(&c.socket(n), &["domain", "remove", "t5"]);
        assert!(out.contains("no longer served"), "{out}");
        wait_status(&c.socket(n), "t5 gone", |s| {
            role(s, "t5").is_none()
                && !s
                    .get("domains")
                    .arr()
                    .iter()
                    .any(|d| d.get("domain").str() == "t5")
        });
    }
    let out = ok(
        &c.socket("a"),
        &with(&["domain", "remove", "t6", "--all"], &admin),
    );
    assert_eq!(out.matches("no longer served").count(), 3, "{out}");
    for n in NODES {
        let s = status_json(&c.socket(n));
        assert_eq!(s.get("domains").arr().len(), 4, "{n}: {s:?}");
        let file = c.dir.path().join(n).join("state/domains/t5.redb");
        assert!(file.exists(), "{} is gone", file.display());
    }
    let text = std::fs::read_to_string(&kept).unwrap();
    assert!(!text.contains("t5") && !text.contains("t6"), "{text}");
    // Writes on a removed domain are refused (not served).
    let out = domsync(&c.socket("b"), &["kv", "put", "t5", "k3", "v3"]);
    assert_ne!(out.code, 0, "{}{}", out.stdout, out.stderr);
    drop(nodes);
    eprintln!("domain add/remove: {:?}", started.elapsed());
}
