//! `domsync-bench <scenario>`: a load generator in the manner of redis-benchmark or pgbench,
//! against a running cluster (admin API for writes, gateway protocol for reads, the
//! application API for get and txn) or an
//! embedded one it starts itself (daemons in this process on loopback, in a temporary
//! directory: an active and two standbys, or one node with `--nodes 1`).
//!
//! Output: a table on stdout, or with `--json` exactly one JSON object ([`Report`]); a
//! progress line on stderr about once a second when stderr is a terminal or with
//! `--progress`. Every run reports the generator's own CPU use (getrusage of this process
//! over the run): for an embedded cluster the nodes share the process and are included.

mod app;
mod pair;
mod reads;
mod repl;
mod roles;
mod stats;
mod target;
mod write;

use std::net::SocketAddr;

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use domsync_proto::model::DomainId;
use domsync_proto::repl::Durability;
use serde_json::{json, Map, Value};

use domsync_client::admin::Target;
use stats::{Errors, Histogram, Summary};
use target::{durability_name, Embedded, EmbeddedOptions};

/// Errors of the bench: one line for the operator.
pub type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The load to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scenario {
    /// Writes of --value-size bytes over --keys keys through the admin API, --concurrency
    /// clients each with its own connection.
    Write,
    /// Policy fetches of a --value-size package through the gateway protocol.
    Read,
    /// Commit on the active to visible on a standby, at a fixed --rate (embedded only).
    Lag,
    /// Commit of a policy package to the push reaching a gateway watching a standby.
    Watch,
    /// A fresh standby of a domain of --size bytes: time to full sync (embedded only).
    Resync,
    /// Promotion of a standby to its first accepted write, --runs times (embedded only).
    Failover,
    /// Longest write pause under load during a switchover, --runs times (embedded only).
    Switchover,
    /// Application API reads (`AppClient::get`) of random keys out of --keys preloaded ones,
    /// from a standby (--role), --concurrency clients each with its own connection.
    Get,
    /// Application API transactions on the active: each client changes its own keys with a
    /// `Version` condition then a `Put` of --value-size bytes; conflicts counted apart.
    Txn,
    /// Install of a --value-size policy package on the active to the standby's applied
    /// position reaching it, --runs times (running pair: --socket and --standby-socket).
    Install,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::Write => "write",
            Scenario::Read => "read",
            Scenario::Lag => "lag",
            Scenario::Watch => "watch",
            Scenario::Resync => "resync",
            Scenario::Failover => "failover",
            Scenario::Switchover => "switchover",
            Scenario::Get => "get",
            Scenario::Txn => "txn",
            Scenario::Install => "install",
        }
    }
}

/// Durability of the embedded cluster's domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DurabilityArg {
    /// Acknowledged once durable on the active.
    Local,
    /// And on one standby.
    Standby,
    /// And on every standby.
    All,
}

impl From<DurabilityArg> for Durability {
    fn from(d: DurabilityArg) -> Durability {
        match d {
            DurabilityArg::Local => Durability::Local,
            DurabilityArg::Standby => Durability::Standby,
            DurabilityArg::All => Durability::All,
        }
    }
}

/// How get and txn speak to the node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AppVia {
    /// The client library, `domsync_client::app::AppClient`.
    Client,
    /// `domsync-app/1` frames written directly on the local application socket (no client
    /// library), as `bench read` speaks the gateway protocol.
    Frames,
}

impl AppVia {
    /// For notes.
    pub fn describe(self) -> &'static str {
        match self {
            AppVia::Client => "through AppClient",
            AppVia::Frames => "domsync-app/1 frames written directly, no client library",
        }
    }
}

/// The role of the embedded node that serves reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoleArg {
    /// The domain's active.
    Active,
    /// A standby.
    Standby,
}

/// `domsync-bench <scenario> [options]`.
///
/// Without --socket, --remote or --node it starts an embedded cluster in this process (an
/// active and two standbys on loopback, in a temporary directory). With them it loads a
/// running cluster: writes through the admin API of the domain's active (--socket PATH, or
/// --remote ID=ADDR --admin-pki DIR --admin-id ID, one connection per client), reads and
/// watches through the gateway protocol (--node ID=ADDR --pki DIR --gateway-id ID).
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// The scenario.
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// Clients, each with its own connection (write, read; writers of switchover).
    #[arg(long, short = 'c')]
    pub concurrency: Option<usize>,
    /// Bytes per value (write, lag; default 100) or package (read, watch; default 4096);
    /// suffixes KiB, MiB, GiB accepted.
    #[arg(long, value_parser = parse_size)]
    pub value_size: Option<u64>,
    /// Durability of the embedded cluster's domain (a running cluster's domain keeps its own).
    #[arg(long, value_enum, default_value = "local")]
    pub durability: DurabilityArg,
    /// Seconds of load (default 10 unless --ops is given).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Operations in all (stops at the first of --ops and --duration).
    #[arg(long)]
    pub ops: Option<u64>,
    /// Distinct keys written.
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,
    /// Writes per second (lag).
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Domain size for resync (suffixes KiB, MiB, GiB).
    #[arg(long, value_parser = parse_size, default_value = "64MiB")]
    pub size: u64,
    /// Role changes measured (failover, switchover).
    #[arg(long, default_value_t = 5)]
    pub runs: usize,
    /// Embedded: the node serving reads (read, get).
    #[arg(long, value_enum, default_value = "standby")]
    pub role: RoleArg,
    /// Embedded: nodes holding the domain, 1 to 3 (default 3; resync 2).
    #[arg(long)]
    pub nodes: Option<usize>,
    /// The domain.
    #[arg(long, default_value = "bench")]
    pub domain: String,
    /// Running cluster: the package read or watched (installed first when an admin target is
    /// given; default `bench-<value-size>`).
    #[arg(long)]
    pub package: Option<String>,
    /// Running cluster: the node gateways read from, as ID=ADDRESS (read, watch).
    // The id `node` shadows the global `--node` of local mode, as in `domsync gateway`.
    #[arg(long = "node", id = "node", value_name = "ID=ADDR")]
    pub gateway_node: Option<String>,
    /// Running cluster: directory with ca.pem and `gateway-<id>.pem`/`.key`.
    #[arg(long, default_value = "./pki")]
    pub pki: PathBuf,
    /// Running cluster: the gateway's id (certificate `domsync://gateway/<id>`).
    #[arg(long)]
    pub gateway_id: Option<String>,
    /// get, txn: through the client library or the protocol's frames directly (local socket).
    #[arg(long, value_enum, default_value = "client")]
    pub app_via: AppVia,
    /// Running cluster: the application socket (`[apps] socket`) of the node loaded by get
    /// (a standby) or txn (the active).
    #[arg(long, value_name = "PATH", conflicts_with = "app_remote")]
    pub app_socket: Option<PathBuf>,
    /// Running cluster: the node loaded by get / txn over QUIC, as ID=ADDR (with --app-pki,
    /// --app-id).
    #[arg(long, value_name = "ID=ADDR")]
    pub app_remote: Option<String>,
    /// Running cluster: directory with ca.pem and `app-<id>.pem`/`.key`, for --app-remote.
    #[arg(long, default_value = "./pki")]
    pub app_pki: PathBuf,
    /// Running cluster: the application's id (certificate `domsync://app/<id>`), for
    /// --app-remote.
    #[arg(long)]
    pub app_id: Option<String>,
    /// Running pair: the admin socket of the standby observed (install; lag and resync
    /// against a running active given by --socket).
    #[arg(long, value_name = "PATH")]
    pub standby_socket: Option<PathBuf>,
    /// Running pair, resync: created once the active is filled; start the empty standby then.
    #[arg(long, value_name = "PATH")]
    pub go_file: Option<PathBuf>,
    /// Embedded: keep the cluster's files here (cleared first) instead of a temporary directory.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// One JSON object on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Show the progress line even when stderr is not a terminal.
    #[arg(long)]
    pub progress: bool,
}

/// Parses a byte count: `4096`, `4KiB`, `64MiB`, `1GiB` (also K, M, G and KB, MB, GB).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a size: use e.g. 4096, 4KiB, 64MiB, 1GiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit {unit:?}; use KiB, MiB or GiB"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// Everything a scenario needs: its options, and the running cluster when one is named.
pub struct Ctx {
    /// The options.
    pub args: BenchArgs,
    /// The domain.
    pub domain: DomainId,
    /// The daemon writes go to (running cluster), from --socket / --remote.
    pub admin: Option<Target>,
    /// Show the progress line.
    pub progress: bool,
}

impl Ctx {
    /// True when loading a running cluster.
    pub fn running(&self) -> bool {
        self.admin.is_some()
            || self.gateway_node().is_some()
            || self.args.app_socket.is_some()
            || self.args.app_remote.is_some()
    }

    /// The application target of a running cluster, from --app-socket or --app-remote.
    ///
    /// # Errors
    /// One line when --app-remote is malformed or lacks --app-id.
    pub fn app_target(&self) -> BenchResult<Option<domsync_client::app::AppTarget>> {
        use domsync_client::app::AppTarget;
        let a = &self.args;
        if let Some(p) = &a.app_socket {
            return Ok(Some(AppTarget::Socket(p.clone())));
        }
        let Some(remote) = &a.app_remote else {
            return Ok(None);
        };
        let node = domsync_client::admin::parse_remote("--app-remote", remote)?;
        let id = a.app_id.clone().ok_or(
            "--app-remote needs --app-id ID (the application certificate domsync://app/<ID> in --app-pki)",
        )?;
        Ok(Some(AppTarget::Remote {
            nodes: vec![node],
            pki: a.app_pki.clone(),
            id,
        }))
    }

    /// `--node ID=ADDR`, when given. A value without `=` is the global `--node` of local
    /// mode (default `local`, or `DOMSYNC_NODE`) that this option shadows: not a node address.
    pub fn gateway_node(&self) -> Option<&str> {
        self.args
            .gateway_node
            .as_deref()
            .filter(|n| n.contains('='))
    }

    /// Bytes per value or package.
    pub fn value_size(&self) -> u64 {
        self.args.value_size.unwrap_or(match self.args.scenario {
            Scenario::Read | Scenario::Watch => 4096,
            _ => 100,
        })
    }

    /// Clients.
    pub fn concurrency(&self) -> usize {
        self.args
            .concurrency
            .unwrap_or(match self.args.scenario {
                Scenario::Switchover | Scenario::Get | Scenario::Txn => 16,
                _ => 1,
            })
            .max(1)
    }

    /// Nodes of the embedded cluster.
    pub fn nodes(&self) -> usize {
        self.args.nodes.unwrap_or(match self.args.scenario {
            Scenario::Resync => 2,
            _ => 3,
        })
    }

    /// The embedded cluster's settings for this run.
    pub fn embedded_options(&self) -> EmbeddedOptions {
        EmbeddedOptions {
            nodes: self.nodes(),
            durability: self.args.durability.into(),
            retention_bytes: None,
            dir: self.args.dir.clone(),
            guard_window: Duration::from_millis(5000),
        }
    }

    /// Starts the embedded cluster.
    pub async fn embedded(&self, o: &EmbeddedOptions) -> BenchResult<Embedded> {
        if !self.args.json {
            eprintln!(
                "domsync-bench: starting an embedded cluster of {} node{} (durability {})",
                o.nodes,
                if o.nodes == 1 { "" } else { "s" },
                durability_name(o.durability)
            );
        }
        Embedded::start(&self.domain, o).await
    }

    /// When the load stops: `--ops`, `--duration` (default 10 s).
    pub fn budget(&self, default_secs: f64) -> Budget {
        let secs = match (self.args.duration, self.args.ops) {
            (Some(s), _) => Some(s),
            (None, Some(_)) => None,
            (None, None) => Some(default_secs),
        };
        Budget {
            deadline: secs.map(|s| Instant::now() + Duration::from_secs_f64(s.max(0.0))),
            left: self.args.ops.map(AtomicU64::new),
        }
    }
}

/// How much load is left: a deadline, a count of operations, or both.
pub struct Budget {
    deadline: Option<Instant>,
    left: Option<AtomicU64>,
}

impl Budget {
    /// Takes one operation; false once the budget is spent.
    pub fn take(&self) -> bool {
        if self.deadline.is_some_and(|d| Instant::now() >= d) {
            return false;
        }
        self.left.as_ref().is_none_or(|l| {
            l.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1))
                .is_ok()
        })
    }
}

/// What a scenario measured.
#[derive(Default)]
pub struct Outcome {
    /// Operations done (writes, fetches, pushes, runs...).
    pub ops: u64,
    /// Errors counted, with the first distinct messages.
    pub errors: Errors,
    /// Wall time of the measured part.
    pub seconds: f64,
    /// Payload bytes moved in that time.
    pub bytes: u64,
    /// Latencies (or lags, pauses) of the scenario.
    pub latency: Histogram,
    /// The generator's CPU, percent of one core.
    pub cpu_percent: f64,
    /// Remarks for the reader.
    pub notes: Vec<String>,
    /// Extra parameters resolved by the scenario (e.g. the durability used).
    pub params: Map<String, Value>,
    /// Resync: bytes of the domain, and its file on disk.
    pub resync: Option<(u64, u64)>,
}

/// The one JSON object `--json` prints. The comparison tool parses it: keep it stable.
#[derive(serde::Serialize)]
pub struct Report {
    /// Scenario name.
    pub scenario: &'static str,
    /// `embedded` or `running`.
    pub target: &'static str,
    /// Every option, resolved.
    pub params: Map<String, Value>,
    /// Operations done.
    pub ops: u64,
    /// Errors.
    pub errors: u64,
    /// Seconds measured.
    pub seconds: f64,
    /// ops / seconds.
    pub ops_per_sec: f64,
    /// Payload bytes / seconds.
    pub bytes_per_sec: f64,
    /// Latency (or lag, pause) percentiles in milliseconds.
    pub latency_ms: Summary,
    /// The generator's CPU (getrusage of this process over the run), percent of one core.
    pub generator_cpu_percent: f64,
    /// Remarks, including the first distinct error messages.
    pub notes: Vec<String>,
    /// Resync: bytes of the domain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// Resync: the domain's file size on disk.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_bytes: Option<u64>,
}

fn params(ctx: &Ctx) -> Map<String, Value> {
    let a = &ctx.args;
    let mut p = Map::new();
    let mut put = |k: &str, v: Value| {
        p.insert(k.to_owned(), v);
    };
    put("domain", json!(a.domain));
    put("concurrency", json!(ctx.concurrency()));
    put("value_size", json!(ctx.value_size()));
    put("duration", json!(a.duration));
    put("ops", json!(a.ops));
    match a.scenario {
        Scenario::Write | Scenario::Get => put("keys", json!(a.keys)),
        Scenario::Lag => put("rate", json!(a.rate)),
        Scenario::Resync => put("size", json!(a.size)),
        Scenario::Failover | Scenario::Switchover | Scenario::Install => put("runs", json!(a.runs)),
        Scenario::Read | Scenario::Watch | Scenario::Txn => {}
    }
    if ctx.running() {
        if let Some(t) = &ctx.admin {
            put("admin", json!(t.to_string()));
        }
        if let Some(n) = ctx.gateway_node() {
            put("node", json!(n));
        }
    } else {
        put("nodes", json!(ctx.nodes()));
        put("durability", json!(durability_name(a.durability.into())));
        if matches!(a.scenario, Scenario::Read | Scenario::Get) {
            put(
                "role",
                json!(match a.role {
                    RoleArg::Active => "active",
                    RoleArg::Standby => "standby",
                }),
            );
        }
    }
    p
}

/// Builds the report of a finished scenario.
fn report(ctx: &Ctx, mut o: Outcome) -> Report {
    let mut p = params(ctx);
    p.append(&mut o.params);
    let secs = o.seconds.max(f64::MIN_POSITIVE);
    let mut notes = o.notes;
    if ctx.running() {
        notes.push("generator CPU is this bench process alone".into());
    } else {
        notes.push(
            "embedded cluster: the nodes run in this process, so generator CPU includes them"
                .into(),
        );
    }
    for m in &o.errors.first {
        notes.push(format!("error: {m}"));
    }
    Report {
        scenario: ctx.args.scenario.name(),
        target: if ctx.running() { "running" } else { "embedded" },
        params: p,
        ops: o.ops,
        errors: o.errors.count,
        seconds: o.seconds,
        ops_per_sec: o.ops as f64 / secs,
        bytes_per_sec: o.bytes as f64 / secs,
        latency_ms: o.latency.summary(),
        generator_cpu_percent: o.cpu_percent,
        notes,
        bytes: o.resync.map(|r| r.0),
        file_bytes: o.resync.map(|r| r.1),
    }
}

/// What the latency figures measure, for the table.
fn latency_label(s: Scenario) -> &'static str {
    match s {
        Scenario::Write => "write latency",
        Scenario::Read => "fetch latency",
        Scenario::Lag => "commit -> visible on standby",
        Scenario::Watch => "commit -> push to gateway",
        Scenario::Resync => "time to full sync",
        Scenario::Failover => "promote -> first write",
        Scenario::Switchover => "longest write pause",
        Scenario::Get => "get latency",
        Scenario::Txn => "txn commit latency",
        Scenario::Install => "install start -> applied on standby",
    }
}

/// The human-readable table.
fn table(r: &Report, s: Scenario) -> String {
    use std::fmt::Write as _;
    let mut t = String::new();
    let params: Vec<String> = r
        .params
        .iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| match v {
            Value::String(s) => format!("{k}={s}"),
            other => format!("{k}={other}"),
        })
        .collect();
    let _ = writeln!(t, "scenario     {} ({})", r.scenario, r.target);
    let _ = writeln!(t, "params       {}", params.join(" "));
    let _ = writeln!(t, "ops          {}", r.ops);
    let _ = writeln!(t, "errors       {}", r.errors);
    let _ = writeln!(t, "seconds      {:.3}", r.seconds);
    let _ = writeln!(t, "ops/s        {:.1}", r.ops_per_sec);
    let _ = writeln!(t, "MB/s         {:.3}", r.bytes_per_sec / 1e6);
    if let Some(b) = r.bytes {
        let _ = writeln!(
            t,
            "bytes        {b} ({:.1} MiB)",
            b as f64 / (1u64 << 20) as f64
        );
    }
    if let Some(b) = r.file_bytes {
        let _ = writeln!(
            t,
            "file bytes   {b} ({:.1} MiB on disk)",
            b as f64 / (1u64 << 20) as f64
        );
    }
    let l = &r.latency_ms;
    let _ = writeln!(t, "{} (ms):", latency_label(s));
    let _ = writeln!(
        t,
        "  {:>10} {:>10} {:>10} {:>10} {:>10}",
        "p50", "p90", "p99", "max", "mean"
    );
    let _ = writeln!(
        t,
        "  {:>10.3} {:>10.3} {:>10.3} {:>10.3} {:>10.3}",
        l.p50, l.p90, l.p99, l.max, l.mean
    );
    let _ = writeln!(
        t,
        "generator CPU {:.1} % of one core",
        r.generator_cpu_percent
    );
    for n in &r.notes {
        let _ = writeln!(t, "note: {n}");
    }
    t
}

async fn dispatch(ctx: &Ctx) -> BenchResult<Outcome> {
    match ctx.args.scenario {
        Scenario::Write => write::run(ctx).await,
        Scenario::Read => reads::read(ctx).await,
        Scenario::Watch => reads::watch(ctx).await,
        Scenario::Lag if pair::wanted(ctx) => pair::lag(ctx).await,
        Scenario::Resync if pair::wanted(ctx) => pair::resync(ctx).await,
        Scenario::Install => pair::install(ctx).await,
        Scenario::Lag => repl::lag(ctx).await,
        Scenario::Resync => repl::resync(ctx).await,
        Scenario::Failover => roles::failover(ctx).await,
        Scenario::Switchover => roles::switchover(ctx).await,
        Scenario::Get => app::get(ctx).await,
        Scenario::Txn => app::txn(ctx).await,
    }
}

/// Checks option combinations before anything starts.
fn check(ctx: &Ctx) -> BenchResult<()> {
    let a = &ctx.args;
    if !(1..=3).contains(&ctx.nodes()) {
        return Err("--nodes takes 1, 2 or 3".into());
    }
    if a.duration.is_some_and(|d| !(d > 0.0 && d.is_finite())) {
        return Err("--duration takes a positive number of seconds".into());
    }
    if !(a.rate > 0.0 && a.rate.is_finite()) {
        return Err("--rate takes a positive number of writes per second".into());
    }
    if a.keys == 0 || a.runs == 0 {
        return Err("--keys and --runs take a positive count".into());
    }
    let embedded_only = matches!(
        a.scenario,
        Scenario::Lag | Scenario::Resync | Scenario::Failover | Scenario::Switchover
    );
    let pair_mode = matches!(
        a.scenario,
        Scenario::Lag | Scenario::Resync | Scenario::Install
    );
    if pair_mode && (pair::wanted(ctx) || a.scenario == Scenario::Install) {
        return if ctx.admin.is_some() && pair::wanted(ctx) {
            Ok(())
        } else {
            Err(format!(
                "bench {} against a running pair needs --socket PATH (the active's admin socket) and --standby-socket PATH (the standby's)",
                a.scenario.name()
            )
            .into())
        };
    }
    if ctx.running() && embedded_only {
        return Err(format!(
            "bench {} runs against the embedded cluster only (it observes the standbys in process or restarts nodes): drop --socket/--remote/--node",
            a.scenario.name()
        )
        .into());
    }
    if !ctx.running() {
        let d: Durability = a.durability.into();
        if d != Durability::Local && ctx.nodes() < 2 {
            return Err("--durability standby|all needs --nodes 2 or 3".into());
        }
        let needs_standby = matches!(
            a.scenario,
            Scenario::Lag
                | Scenario::Watch
                | Scenario::Resync
                | Scenario::Failover
                | Scenario::Switchover
        ) || (matches!(a.scenario, Scenario::Read | Scenario::Get)
            && a.role == RoleArg::Standby);
        if needs_standby && ctx.nodes() < 2 {
            return Err(format!(
                "bench {} needs a standby: --nodes 2 or 3",
                a.scenario.name()
            )
            .into());
        }
    }
    Ok(())
}

/// Runs one scenario.
///
/// # Errors
/// One line when the options do not fit or the target cannot be reached.
fn run(args: BenchArgs, admin: Option<Target>) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
    let domain: DomainId = args.domain.parse()?;
    let progress = args.progress || std::io::stderr().is_terminal();
    let ctx = Ctx {
        args,
        domain,
        admin,
        progress,
    };
    check(&ctx).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Runtime::new()?;
    let outcome = runtime
        .block_on(dispatch(&ctx))
        .map_err(|e| e.to_string())?;
    // Let the nodes' last tasks end before the runtime goes.
    runtime.shutdown_timeout(Duration::from_secs(2));
    let r = report(&ctx, outcome);
    if ctx.args.json {
        println!("{}", serde_json::to_string(&r)?);
    } else {
        print!("{}", table(&r, ctx.args.scenario));
    }
    Ok(if r.errors > 0 && r.ops == 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// The load generator of domsync, in the manner of redis-benchmark or pgbench. It ships
/// outside the appliance binaries.
#[derive(clap::Parser)]
#[command(name = "domsync-bench", version, about, long_about)]
struct Cli {
    #[command(flatten)]
    args: BenchArgs,
    /// Admin socket of a running domsyncd (writes of a running cluster).
    #[arg(long, env = "DOMSYNC_SOCKET", value_name = "PATH")]
    socket: Option<PathBuf>,
    /// A running node for remote admin over QUIC, ID=ADDR (with --admin-pki, --admin-id);
    /// the server must hold the certificate domsync://node/<ID>.
    #[arg(
        long,
        env = "DOMSYNC_REMOTE",
        value_name = "ID=ADDR",
        value_parser = parse_remote,
        conflicts_with = "socket"
    )]
    remote: Option<(domsync_proto::model::NodeId, SocketAddr)>,
    /// Directory with ca.pem and `admin-<id>.pem`/`.key`, for --remote.
    #[arg(long, env = "DOMSYNC_ADMIN_PKI", default_value = "./pki")]
    admin_pki: PathBuf,
    /// The admin's id (certificate `domsync://admin/<id>`), for --remote.
    #[arg(long, env = "DOMSYNC_ADMIN_ID", value_name = "ID")]
    admin_id: Option<String>,
}

/// `--remote ID=ADDR`.
fn parse_remote(text: &str) -> Result<(domsync_proto::model::NodeId, SocketAddr), String> {
    domsync_client::admin::parse_remote("--remote", text)
}

fn main() -> ExitCode {
    use clap::Parser as _;
    let cli = Cli::parse();
    let admin = match (cli.remote, cli.socket) {
        (Some((node, addr)), _) => match cli.admin_id {
            Some(id) => Some(Target::Remote {
                node,
                addr,
                pki: cli.admin_pki,
                id,
            }),
            None => {
                eprintln!("domsync-bench: error: --remote needs --admin-id ID (the admin certificate domsync://admin/<ID> in --admin-pki)");
                return ExitCode::from(2);
            }
        },
        (None, Some(path)) => Some(Target::Socket(path)),
        (None, None) => None,
    };
    match run(cli.args, admin) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("domsync-bench: error: {e}");
            ExitCode::from(1)
        }
    }
}
