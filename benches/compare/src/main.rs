//! `domsync-compare`: the same workloads against domsync, etcd and Redis in one run, on
//! 127.0.0.1, each system in a temporary directory; a table of each pair with its ratio,
//! optionally JSON, BENCHMARKS.md and a plot. `benches/compare.sh` installs the servers,
//! builds domsync and runs it; see `benches/compare/README.md`.

mod floor;
mod load;
mod procs;
mod report;
mod resp;
mod systems;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;

use load::Run;
use report::{Entry, Group, Report};
use systems::{Bins, Domsync, Etcd, Redis};

/// Every comparison, as named by `--only`.
pub const COMPARISONS: [&str; 8] = [
    "writes",
    "replicated",
    "reads",
    "lag",
    "resync",
    "memory",
    "get",
    "txn",
];

#[derive(Parser, Clone, Debug)]
#[command(about = "Side-by-side benchmarks of domsync against etcd and Redis on this machine")]
pub struct Args {
    /// Short smoke run: 2 s per point, fewer points, a 64 MiB resync.
    #[arg(long)]
    quick: bool,
    /// Seconds measured per point (default 5, or 2 with --quick).
    #[arg(long)]
    secs: Option<f64>,
    /// The repository root (domsync binaries in target/release unless --bin-dir).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../.."))]
    repo: PathBuf,
    /// Directory holding the `domsync`, `domsyncd` and `domsync-bench` binaries (default <repo>/target/release).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    #[arg(long, default_value = "etcd")]
    etcd: PathBuf,
    #[arg(long, default_value = "redis-server")]
    redis: PathBuf,
    /// Where the systems get their temporary directories (default $TMPDIR or /tmp).
    #[arg(long)]
    tmp: Option<PathBuf>,
    /// Comparisons to run, comma-separated: writes,replicated,reads,lag,resync,memory,get,txn.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "writes,replicated,reads,lag,resync,memory,get,txn"
    )]
    only: Vec<String>,
    /// Concurrent clients for the single-node write comparison.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    write_clients: Vec<usize>,
    /// Concurrent clients for the read comparison.
    #[arg(long, value_delimiter = ',', default_value = "1,100")]
    read_clients: Vec<usize>,
    /// Concurrent clients for the application API comparisons (get, txn).
    #[arg(long, value_delimiter = ',', default_value = "16")]
    app_clients: Vec<usize>,
    /// How `domsync-bench get|txn` speaks to the node: `client` (the AppClient library) or
    /// `frames` (domsync-app/1 frames written directly on the local socket).
    #[arg(long, default_value = "client")]
    app_via: String,
    /// Keys preloaded for the get comparison (100 B values).
    #[arg(long, default_value_t = 10_000)]
    get_keys: u64,
    /// Write rates (per second) for the replication-lag comparison; the target is read at 1000.
    #[arg(long, value_delimiter = ',')]
    lag_rates: Option<Vec<f64>>,
    /// Size of the domain for the resync comparison (bytes; suffixes KiB, MiB, GiB).
    #[arg(long)]
    resync_size: Option<String>,
    /// Seconds to let the idle servers settle before reading their memory.
    #[arg(long)]
    settle: Option<f64>,
    /// Print the results as one JSON document instead of the table.
    #[arg(long)]
    json: bool,
    /// Write the report here (default <repo>/BENCHMARKS.md); `-` prints it.
    #[arg(long)]
    markdown: Option<String>,
    /// Write the plot here (default <repo>/benches/compare/plot.png).
    #[arg(long)]
    plot: Option<PathBuf>,
    /// Record a CPU profile of domsyncd (perf) during the 64-client replicated writes, and of
    /// the serving domsyncd during the get and txn comparisons.
    #[arg(long)]
    perf: bool,
    /// The command line shown in the report (set by compare.sh).
    #[arg(long, hide = true)]
    invocation: Option<String>,
}

impl Args {
    fn secs(&self) -> f64 {
        self.secs.unwrap_or(if self.quick { 2.0 } else { 5.0 })
    }
    fn warmup(&self) -> f64 {
        (self.secs() / 5.0).min(1.0)
    }
    fn lag_rates(&self) -> Vec<f64> {
        self.lag_rates.clone().unwrap_or_else(|| {
            if self.quick {
                vec![1000.0]
            } else {
                vec![250.0, 1000.0, 2000.0]
            }
        })
    }
    fn resync_size(&self) -> String {
        self.resync_size
            .clone()
            .unwrap_or_else(|| if self.quick { "64MiB" } else { "1GiB" }.into())
    }
    fn settle(&self) -> f64 {
        self.settle.unwrap_or(if self.quick { 2.0 } else { 5.0 })
    }
    fn runs(&self, what: &str) -> bool {
        self.only.iter().any(|o| o == what)
    }
}

fn main() {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let code = runtime.block_on(async {
        tokio::select! {
            r = run(args) => match r {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("domsync-compare: {e:#}");
                    1
                }
            },
            _ = tokio::signal::ctrl_c() => {
                eprintln!("domsync-compare: interrupted, stopping the servers");
                130
            }
        }
    });
    procs::cleanup_all();
    std::process::exit(code);
}

fn say(msg: &str) {
    eprintln!("[{}] {msg}", chrono_now());
}

fn chrono_now() -> String {
    let s = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format!("{:02}:{:02}:{:02}", (s / 3600) % 24, (s / 60) % 60, s % 60)
}

async fn run(args: Args) -> Result<()> {
    // SIGTERM too (Ctrl-C is handled in main).
    tokio::spawn(async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
            procs::cleanup_all();
            std::process::exit(143);
        }
    });
    let repo = args.repo.canonicalize().context("--repo")?;
    let bin_dir = args
        .bin_dir
        .clone()
        .unwrap_or_else(|| repo.join("target/release"));
    let bins = Bins {
        domsync: bin_dir.join("domsync"),
        domsyncd: bin_dir.join("domsyncd"),
        bench: bin_dir.join("domsync-bench"),
    };
    for b in [&bins.domsync, &bins.domsyncd, &bins.bench] {
        if !b.exists() {
            bail!(
                "{} missing: build with `cargo build --release` or pass --bin-dir",
                b.display()
            );
        }
    }
    let etcd = which(&args.etcd)?;
    let redis = which(&args.redis)?;
    let base = args.tmp.clone().unwrap_or_else(std::env::temp_dir);
    let base = procs::temp_dir(&base, "domsync-compare-")?;
    let mut report = Report::new(&args, &repo, &base, &bins, &etcd, &redis);
    let secs = args.secs();
    let warmup = args.warmup();
    report.load_average("at the start");

    if args.runs("writes") {
        say("1. durable writes on one node: domsync (durability local) vs etcd (one member)");
        let ds = Domsync::start(&bins, &base, 1, &[("w".into(), "local")]).await?;
        let mut et = Etcd::start(&etcd, &base, 1).await?;
        ds.procs()
            .into_iter()
            .chain(et.procs())
            .for_each(|p| report.server(p));
        // Warm-up, not counted: the domain file and etcd's WAL grow past their first pages.
        let mut a = vec!["write".to_owned()];
        a.extend(ds.remote_admin(0));
        a.extend(bench_opts(&[
            ("--domain", "w".into()),
            ("--concurrency", "16".into()),
            ("--duration", warmup.max(0.5).to_string()),
        ]));
        let _ = bench(&ds, &a);
        let _ = systems::etcd_writes(&et.urls[0], 16, 100, 0.0, warmup.max(0.5), &[]).await?;
        for &c in &args.write_clients {
            let mut a = ds.remote_admin(0);
            a.splice(0..0, ["write".to_owned()]);
            a.extend(bench_opts(&[
                ("--domain", "w".into()),
                ("--concurrency", c.to_string()),
                ("--value-size", "100".into()),
                ("--duration", secs.to_string()),
            ]));
            let (run, _) = bench(&ds, &a);
            report.add(Entry::new(Group::Writes, c as f64, "domsync", run));
            let run = systems::etcd_writes(&et.urls[0], c, 100, warmup, secs, &et.procs()).await?;
            et.check()?;
            report.add(Entry::new(Group::Writes, c as f64, "etcd", run));
            if c == 1 {
                let run = floor::floor(&base, 2000)?;
                report.add(Entry::new(Group::Writes, 1.0, "fdatasync+rtt", run));
            }
            say(&report.last_line());
        }
        drop(et);
        drop(ds);
    }

    let need_cluster = ["replicated", "reads", "lag", "resync", "get", "txn"]
        .iter()
        .any(|w| args.runs(w));
    if need_cluster {
        say("starting domsync (3 nodes), etcd (3 members), Redis (master + replica)");
        let ds = Domsync::start(
            &bins,
            &base,
            3,
            &[("repl".into(), "standby"), ("lag".into(), "local")],
        )
        .await?;
        let mut et = Etcd::start(&etcd, &base, 3).await?;
        let leader = et.leader().await?;
        let follower = (leader + 1) % 3;
        let rd = Redis::start(&redis, &base, 1).await?;
        ds.procs()
            .into_iter()
            .chain(et.procs())
            .chain(rd.procs())
            .for_each(|p| report.server(p));

        if args.runs("replicated") {
            say("2. replicated durable writes, 64 clients: domsync standby durability vs etcd x3");
            let mut a = vec!["write".to_owned()];
            a.extend(ds.remote_admin(0));
            a.extend(bench_opts(&[
                ("--domain", "repl".into()),
                ("--concurrency", "64".into()),
                ("--value-size", "100".into()),
                ("--duration", secs.to_string()),
            ]));
            let perf = if args.perf {
                report::perf_start(ds.procs[0].pid(), &base)
            } else {
                None
            };
            let (run, _) = bench(&ds, &a);
            if let Some(p) = perf {
                if let Some(p) = report::perf_finish(p) {
                    report.profiles.push((
                        "the active domsyncd, replicated writes at 64 clients".into(),
                        p,
                    ));
                }
            }
            report.add(Entry::new(Group::Replicated, 64.0, "domsync", run));
            let run =
                systems::etcd_writes(&et.urls[leader], 64, 100, warmup, secs, &et.procs()).await?;
            et.check()?;
            report.add(Entry::new(Group::Replicated, 64.0, "etcd", run));
            say(&report.last_line());
        }

        if args.runs("reads") {
            say("3. reads of a 4 KiB value: domsync gateway on a standby vs etcd follower (serializable) vs Redis replica");
            for &c in &args.read_clients {
                let mut a = vec!["read".to_owned()];
                a.extend(ds.gateway(1));
                a.extend(ds.remote_admin(0));
                a.extend(bench_opts(&[
                    ("--domain", "repl".into()),
                    ("--concurrency", c.to_string()),
                    ("--value-size", "4096".into()),
                    ("--duration", secs.to_string()),
                ]));
                let (run, _) = bench(&ds, &a);
                report.add(Entry::new(Group::Reads, c as f64, "domsync", run));
                let run = systems::etcd_reads(
                    &et.urls[leader],
                    &et.urls[follower],
                    c,
                    4096,
                    warmup,
                    secs,
                    &et.procs(),
                )
                .await?;
                report.add(Entry::new(Group::Reads, c as f64, "etcd", run));
                let run = systems::redis_reads(
                    &rd.addrs[0],
                    &rd.addrs[1],
                    c,
                    4096,
                    warmup,
                    secs,
                    &rd.procs(),
                )
                .await?;
                report.add(Entry::new(Group::Reads, c as f64, "redis", run));
                say(&report.last_line());
            }
        }

        if args.runs("get") {
            say("7. application API reads of 100 B keys: domsync get on a standby (local app socket) vs etcd serializable Range on a follower");
            for &c in &args.app_clients {
                let mut a = vec!["get".to_owned()];
                a.extend(ds.app_socket(1));
                a.extend(ds.remote_admin(0));
                a.extend(bench_opts(&[
                    ("--domain", "repl".into()),
                    ("--concurrency", c.to_string()),
                    ("--keys", args.get_keys.to_string()),
                    ("--app-via", args.app_via.clone()),
                    ("--value-size", "100".into()),
                    ("--duration", secs.to_string()),
                ]));
                let perf = if args.perf {
                    report::perf_start(ds.procs[1].pid(), &base)
                } else {
                    None
                };
                let (run, _) = bench(&ds, &a);
                if let Some(p) = perf.and_then(report::perf_finish) {
                    report
                        .profiles
                        .push((format!("the standby domsyncd serving get, {c} clients"), p));
                }
                report.add(Entry::new(Group::Get, c as f64, "domsync", run));
                let run = systems::etcd_get(
                    &et.urls[leader],
                    &et.urls[follower],
                    c,
                    args.get_keys,
                    100,
                    warmup,
                    secs,
                    &et.procs(),
                )
                .await?;
                report.add(Entry::new(Group::Get, c as f64, "etcd", run));
                say(&report.last_line());
            }
        }

        if args.runs("txn") {
            say("8. application API transactions (condition on the key's version, then put 100 B): domsync txn on the active (local app socket, durability standby) vs etcd Txn on the leader");
            for &c in &args.app_clients {
                let mut a = vec!["txn".to_owned()];
                a.extend(ds.app_socket(0));
                a.extend(bench_opts(&[
                    ("--app-via", args.app_via.clone()),
                    ("--domain", "repl".into()),
                    ("--concurrency", c.to_string()),
                    ("--value-size", "100".into()),
                    ("--duration", secs.to_string()),
                ]));
                let perf = if args.perf {
                    report::perf_start(ds.procs[0].pid(), &base)
                } else {
                    None
                };
                let (run, _) = bench(&ds, &a);
                if let Some(p) = perf.and_then(report::perf_finish) {
                    report
                        .profiles
                        .push((format!("the active domsyncd serving txn, {c} clients"), p));
                }
                report.add(Entry::new(Group::Txn, c as f64, "domsync", run));
                let run =
                    systems::etcd_txn(&et.urls[leader], c, 100, warmup, secs, &et.procs()).await?;
                et.check()?;
                report.add(Entry::new(Group::Txn, c as f64, "etcd", run));
                say(&report.last_line());
            }
        }

        if args.runs("lag") {
            say("4. replication lag at fixed write rates: domsync standby vs Redis replica vs etcd follower");
            for rate in args.lag_rates() {
                // Against the three domsyncd processes: writes to the active's admin socket,
                // each position pushed to a watch on the standby's application socket (see
                // crates/bench/src/pair.rs), as Redis's and etcd's are pushed to a subscriber.
                let mut a = vec![
                    "lag".to_owned(),
                    "--socket".into(),
                    ds.socket(0).display().to_string(),
                    "--standby-socket".into(),
                    ds.socket(1).display().to_string(),
                ];
                a.extend(ds.app_socket(1));
                a.extend(bench_opts(&[
                    ("--domain", "lag".into()),
                    ("--rate", rate.to_string()),
                    ("--value-size", "100".into()),
                    ("--duration", secs.to_string()),
                ]));
                let (run, _) = bench(&ds, &a);
                report.add(Entry::new(Group::Lag, rate, "domsync", run));
                let run =
                    systems::redis_lag(&rd.addrs[0], &rd.addrs[1], rate, secs, &rd.procs()).await?;
                report.add(Entry::new(Group::Lag, rate, "redis", run));
                let run = systems::etcd_lag(
                    &et.urls[leader],
                    &et.urls[follower],
                    rate,
                    secs,
                    &et.procs(),
                )
                .await?;
                report.add(Entry::new(Group::Lag, rate, "etcd", run));
                say(&report.last_line());
            }
        }
        drop(rd);
        drop(et);

        if args.runs("resync") {
            let size = args.resync_size();
            say(&format!(
                "5. full resync of a {size} domain vs cp of its redb file"
            ));
            // `bench resync` runs its own embedded cluster (active + 1 standby); its files are
            // kept in `dir` so the active's redb file can be copied afterwards.
            let dir = base.join("resync");
            let mut a = vec!["resync".to_owned()];
            a.extend(bench_opts(&[
                ("--size", size.clone()),
                ("--dir", dir.display().to_string()),
            ]));
            let (mut run, json) = bench(&ds, &a);
            let file_bytes = json["file_bytes"].as_u64().unwrap_or(0);
            let file = find_redb(&dir, file_bytes)
                .with_context(|| format!("no domain file under {}", dir.display()))?;
            let file_bytes = std::fs::metadata(&file)?.len();
            if run.seconds > 0.0 {
                run.ops_per_sec = file_bytes as f64 / run.seconds;
                run.notes.push(format!(
                    "domain data {} bytes, active's file {} bytes",
                    json["bytes"].as_u64().unwrap_or(0),
                    file_bytes
                ));
            }
            report.add(Entry::new(Group::Resync, file_bytes as f64, "domsync", run));
            let cp = copy_file(&file, &base)?;
            report.add(Entry::new(Group::Resync, file_bytes as f64, "cp", cp));
            say(&report.last_line());
        }
        drop(ds);
    }

    if args.runs("memory") {
        let settle = Duration::from_secs_f64(args.settle());
        say("6. idle memory: domsyncd with 100 domains vs etcd vs Redis");
        let domains: Vec<(String, &str)> = (0..100).map(|i| (format!("t{i}"), "local")).collect();
        let ds = Domsync::start(&bins, &base, 1, &domains).await?;
        let et = Etcd::start(&etcd, &base, 1).await?;
        let rd = Redis::start(&redis, &base, 0).await?;
        ds.procs()
            .into_iter()
            .chain(et.procs())
            .chain(rd.procs())
            .for_each(|p| report.server(p));
        tokio::time::sleep(settle).await;
        for (name, p) in [
            ("domsync", &ds.procs[0]),
            ("etcd", &et.procs[0]),
            ("redis", &rd.procs[0]),
        ] {
            let run = Run {
                rss_mib: p.rss_kib() as f64 / 1024.0,
                notes: vec![format!(
                    "VmRSS after {:.0} s idle{}",
                    settle.as_secs_f64(),
                    if name == "domsync" {
                        ", 100 domains"
                    } else {
                        ", empty"
                    }
                )],
                ..Run::default()
            };
            report.add(Entry::new(Group::Memory, 0.0, name, run));
        }
        say(&report.last_line());
    }

    report.load_average("at the end");
    report.finish(&args, &repo)?;
    Ok(())
}

/// `domsync-bench ARGS`; a failure is recorded in the run (and printed), not fatal.
fn bench(ds: &Domsync, args: &[String]) -> (Run, serde_json::Value) {
    match ds.bench(args) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("  domsync-bench failed: {e:#}");
            let run = Run {
                errors: 1,
                notes: vec![format!("domsync-bench failed: {e:#}")],
                command: Some(format!("domsync-bench {}", args.join(" "))),
                ..Run::default()
            };
            (run, serde_json::Value::Null)
        }
    }
}

fn bench_opts(opts: &[(&str, String)]) -> Vec<String> {
    opts.iter()
        .flat_map(|(k, v)| [k.to_string(), v.clone()])
        .collect()
}

fn which(bin: &Path) -> Result<PathBuf> {
    if bin.components().count() > 1 {
        return Ok(bin.to_owned());
    }
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {}", bin.display()))
        .output()?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if path.is_empty() {
        bail!(
            "{} not found (benches/compare.sh installs it)",
            bin.display()
        );
    }
    Ok(PathBuf::from(path))
}

/// The `.redb` file under `dir` of `bytes` bytes (the active's), else the largest.
fn find_redb(dir: &Path, bytes: u64) -> Option<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).ok()?.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "redb")
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
            {
                let len = e.metadata().map_or(0, |m| m.len());
                found.push((len == bytes, len, p));
            }
        }
    }
    found.sort();
    found.pop().map(|(_, _, p)| p)
}

/// `cp` of the domain's redb file to a new file, then fsync of the copy (`sync FILE`).
fn copy_file(file: &Path, base: &Path) -> Result<Run> {
    let cached = Command::new("fincore")
        .args(["--bytes", "--noheadings", "--output", "RES"])
        .arg(file)
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .parse::<u64>()
                .ok()
        });
    let size = std::fs::metadata(file)?.len();
    let dst = base.join("cp-of-domain.redb");
    let t = Instant::now();
    procs::output(Command::new("cp").arg(file).arg(&dst))?;
    let cp_secs = t.elapsed().as_secs_f64();
    procs::output(Command::new("sync").arg(&dst))?;
    let secs = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&dst);
    let mut notes = vec![format!(
        "cp alone {cp_secs:.2} s, cp + fsync of the copy {secs:.2} s (compared)"
    )];
    notes.push(match cached {
        Some(c) => format!(
            "source in page cache: {:.0}% ({} of {} bytes, fincore)",
            100.0 * c as f64 / size.max(1) as f64,
            c,
            size
        ),
        None => "page-cache state unknown (no fincore)".into(),
    });
    Ok(Run {
        ops: 1,
        seconds: secs,
        ops_per_sec: size as f64 / secs,
        notes,
        command: Some("cp DOMAIN.redb COPY && sync COPY".into()),
        ..Run::default()
    })
}
