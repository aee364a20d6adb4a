//! Pairs and ratios, the table, JSON, BENCHMARKS.md, the plot, and the optional perf profile.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::load::Run;
use crate::procs::Proc;
use crate::systems::Bins;
use crate::Args;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Group {
    Writes,
    Replicated,
    Reads,
    Lag,
    Resync,
    Memory,
    /// Application API reads (`AppClient::get` vs etcd serializable Range).
    Get,
    /// Application API transactions (`AppClient::txn` vs etcd Txn).
    Txn,
}

impl Group {
    fn number(self) -> u8 {
        self as u8 + 1
    }
    fn title(self) -> &'static str {
        match self {
            Group::Writes => "durable writes, one node, 100 B values",
            Group::Replicated => "replicated durable writes, 3 nodes, 100 B values",
            Group::Reads => "reads of a 4 KiB value from a standby / follower / replica",
            Group::Lag => "replication lag at a fixed write rate",
            Group::Resync => "full resync of a domain vs cp of its redb file",
            Group::Memory => "idle resident memory",
            Group::Get => "application API reads of random 100 B keys from a standby / follower",
            Group::Txn => "application API transactions (version condition, then put 100 B) on the active / leader",
        }
    }
    /// What the point's x is.
    fn x_label(self, x: f64) -> String {
        match self {
            Group::Writes | Group::Replicated | Group::Reads | Group::Get | Group::Txn => {
                format!("{x} client{}", if x == 1.0 { "" } else { "s" })
            }
            Group::Lag => format!("{x}/s"),
            Group::Resync => format!("{:.0} MiB file", x / (1 << 20) as f64),
            Group::Memory => "idle".into(),
        }
    }
    fn metric(self) -> &'static str {
        match self {
            Group::Writes | Group::Replicated | Group::Reads | Group::Get => "ops/s",
            Group::Txn => "committed txn/s",
            Group::Lag => "lag p99 ms",
            Group::Resync => "seconds",
            Group::Memory => "RSS MiB",
        }
    }
    fn higher_is_better(self) -> bool {
        matches!(
            self,
            Group::Writes | Group::Replicated | Group::Reads | Group::Get | Group::Txn
        )
    }
    fn value(self, r: &Run) -> f64 {
        match self {
            Group::Writes | Group::Replicated | Group::Reads | Group::Get | Group::Txn => {
                r.ops_per_sec
            }
            Group::Lag => r.latency_ms.p99,
            Group::Resync => r.seconds,
            Group::Memory => r.rss_mib,
        }
    }
    fn detail(self, r: &Run) -> String {
        match self {
            Group::Writes | Group::Replicated | Group::Reads | Group::Get | Group::Txn => format!(
                "p50 {} / p99 {} ms",
                num(r.latency_ms.p50),
                num(r.latency_ms.p99)
            ),
            Group::Lag => format!("p50 {} ms", num(r.latency_ms.p50)),
            Group::Resync => format!("{:.0} MiB/s of file", r.ops_per_sec / (1 << 20) as f64),
            Group::Memory => String::new(),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Entry {
    pub group: Group,
    pub x: f64,
    pub system: String,
    pub run: Run,
}

impl Entry {
    pub fn new(group: Group, x: f64, system: &str, run: Run) -> Entry {
        Entry {
            group,
            x,
            system: system.into(),
            run,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Pair {
    pub comparison: String,
    pub group: Group,
    pub x: f64,
    pub metric: String,
    pub domsync: f64,
    pub other: String,
    pub other_value: f64,
    /// domsync ÷ other.
    pub ratio: f64,
    pub better: String,
    pub target: Option<Target>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Target {
    pub text: String,
    /// None: a side of the pair failed to run.
    pub met: Option<bool>,
}

fn verdict(met: Option<bool>) -> &'static str {
    match met {
        Some(true) => "met",
        Some(false) => "missed",
        None => "no data (a run failed)",
    }
}

pub struct Report {
    pub entries: Vec<Entry>,
    /// perf profiles: (what was profiled, the report).
    pub profiles: Vec<(String, String)>,
    machine: Vec<(String, String)>,
    versions: Vec<(String, String)>,
    servers: Vec<String>,
    base: PathBuf,
    repo: PathBuf,
    invocation: String,
}

fn num(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn first_line(cmd: &mut Command) -> String {
    cmd.output()
        .ok()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_owned()
        })
        .unwrap_or_else(|| "?".into())
}

impl Report {
    pub fn new(
        args: &Args,
        repo: &Path,
        base: &Path,
        bins: &Bins,
        etcd: &Path,
        redis: &Path,
    ) -> Report {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|l| l.trim_start_matches([' ', '\t', ':']).to_owned())
            .unwrap_or_else(|| "?".into());
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let mem = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or("?".into(), |kb| format!("{:.1} GiB", kb / 1024.0 / 1024.0));
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim()
            .to_owned();
        let fs = first_line(
            Command::new("df")
                .args(["--output=fstype,source"])
                .arg(base)
                .arg("--no-sync"),
        )
        .to_string();
        let fs = Command::new("df")
            .args(["--output=fstype,source"])
            .arg(base)
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .nth(1)
                    .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" on "))
            })
            .unwrap_or(fs);
        let rev = first_line(Command::new("git").arg("-C").arg(repo).args([
            "rev-parse",
            "--short=12",
            "HEAD",
        ]));
        let dirty = Command::new("git")
            .arg("-C")
            .arg(repo)
            .args(["status", "--porcelain", "--untracked-files=no"])
            .output()
            .map(|o| !o.stdout.is_empty())
            .unwrap_or(false);
        let machine = vec![
            ("CPU".into(), model),
            ("cores".into(), cores.to_string()),
            ("RAM".into(), mem),
            ("kernel".into(), kernel),
            (
                "temp dir filesystem".into(),
                format!("{fs} ({})", base.parent().unwrap_or(base).display()),
            ),
        ];
        let versions = vec![
            (
                "domsync".into(),
                format!(
                    "git {rev}{}",
                    if dirty {
                        " (with uncommitted changes)"
                    } else {
                        ""
                    }
                ),
            ),
            (
                "etcd".into(),
                first_line(Command::new(etcd).arg("--version")),
            ),
            (
                "redis".into(),
                first_line(Command::new(redis).arg("--version")),
            ),
            (
                "rustc".into(),
                first_line(Command::new("rustc").arg("--version")),
            ),
        ];
        let _ = bins;
        Report {
            entries: Vec::new(),
            profiles: Vec::new(),
            machine,
            versions,
            servers: Vec::new(),
            base: base.to_owned(),
            repo: repo.to_owned(),
            invocation: args
                .invocation
                .clone()
                .unwrap_or_else(|| std::env::args().collect::<Vec<_>>().join(" ")),
        }
    }

    /// Paths made readable: the run's temporary directory is `$TMP`, the repository `.`.
    fn scrub(&self, text: &str) -> String {
        text.replace(&self.base.display().to_string(), "$TMP")
            .replace(&self.repo.display().to_string(), ".")
    }

    /// Records the load average (other work on the machine) at this moment.
    pub fn load_average(&mut self, when: &str) {
        let l = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let l: Vec<&str> = l.split_whitespace().take(3).collect();
        self.machine
            .push((format!("load average (1, 5, 15 min) {when}"), l.join(", ")));
    }

    pub fn add(&mut self, e: Entry) {
        for n in &e.run.notes {
            if n.contains("first error") {
                eprintln!("  {} {}: {n}", e.system, e.group.x_label(e.x));
            }
        }
        self.entries.push(e);
    }

    /// Remembers how a server was started (for the report).
    pub fn server(&mut self, p: &Proc) {
        let line = self.scrub(&p.cmdline);
        if !self.servers.iter().any(|s| s == &line) {
            self.servers.push(line);
        }
    }

    /// One line about the latest point, for progress.
    pub fn last_line(&self) -> String {
        let Some(last) = self.entries.last() else {
            return String::new();
        };
        self.entries
            .iter()
            .filter(|e| e.group == last.group && e.x == last.x)
            .map(|e| {
                format!(
                    "{} {} {} ({}; gen CPU {:.0}%)",
                    e.system,
                    num(e.group.value(&e.run)),
                    e.group.metric(),
                    e.group.detail(&e.run),
                    e.run.generator_cpu_percent
                )
            })
            .collect::<Vec<_>>()
            .join(" | ")
    }

    pub fn pairs(&self) -> Vec<Pair> {
        let mut out = Vec::new();
        for d in self.entries.iter().filter(|e| e.system == "domsync") {
            for o in self
                .entries
                .iter()
                .filter(|e| e.group == d.group && e.x == d.x && e.system != "domsync")
            {
                let g = d.group;
                let (dv, ov) = (g.value(&d.run), g.value(&o.run));
                let ratio = if ov > 0.0 { dv / ov } else { f64::NAN };
                let target = match (g, o.system.as_str()) {
                    (Group::Writes, "etcd") if d.x == 64.0 => Some(("≥ 3x etcd", ratio >= 3.0)),
                    (Group::Replicated, "etcd") => Some(("≥ 3x the etcd cluster", ratio >= 3.0)),
                    (Group::Reads, "etcd") => {
                        Some(("≥ 1.5x etcd serializable reads", ratio >= 1.5))
                    }
                    (Group::Lag, "redis") if d.x == 1000.0 => {
                        Some(("p99 ≤ 2x Redis's", ratio <= 2.0))
                    }
                    (Group::Resync, "cp") => Some(("≤ 1.2x cp", ratio <= 1.2)),
                    (Group::Writes, "fdatasync+rtt") => Some((
                        "p50 within 1.5x of one fdatasync + one loopback round trip",
                        d.run.latency_ms.p50 <= 1.5 * o.run.latency_ms.p50,
                    )),
                    (Group::Get, "etcd") => {
                        Some(("≥ 3x etcd serializable Range on a follower", ratio >= 3.0))
                    }
                    (Group::Txn, "etcd") => Some(("≥ 3x etcd Txn on the leader", ratio >= 3.0)),
                    _ => None,
                };
                // A failed run is no evidence either way.
                let failed = |r: &Run| r.errors > 0 && g.value(r) == 0.0;
                let target = target.map(|(t, met)| {
                    if failed(&d.run) || failed(&o.run) {
                        (t, None)
                    } else {
                        (t, Some(met))
                    }
                });
                out.push(Pair {
                    comparison: format!("{}. {}", g.number(), g.x_label(d.x)),
                    group: g,
                    x: d.x,
                    metric: g.metric().into(),
                    domsync: dv,
                    other: o.system.clone(),
                    other_value: ov,
                    ratio,
                    better: if g.higher_is_better() {
                        "higher is better"
                    } else {
                        "lower is better"
                    }
                    .into(),
                    target: target.map(|(t, met)| Target {
                        text: t.into(),
                        met,
                    }),
                });
            }
        }
        out
    }

    fn cpu_cell(r: &Run) -> String {
        if r.embedded {
            return format!("{:.0}% (with its embedded nodes)", r.generator_cpu_percent);
        }
        let flag = if r.generator_cpu_percent > 90.0 {
            " ⚠ generator-bound"
        } else {
            ""
        };
        format!("{:.0}%{flag}", r.generator_cpu_percent)
    }

    fn entry(&self, g: Group, x: f64, system: &str) -> Option<&Entry> {
        self.entries
            .iter()
            .find(|e| e.group == g && e.x == x && e.system == system)
    }

    /// The results table (Markdown, readable as plain text too).
    pub fn table(&self) -> String {
        let mut t = String::new();
        t.push_str("| # | point | metric | domsync | vs | other | ratio domsync ÷ other | better | gen CPU domsync / other | target |\n");
        t.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
        for p in self.pairs() {
            let d = self.entry(p.group, p.x, "domsync").unwrap();
            let o = self.entry(p.group, p.x, &p.other).unwrap();
            let detail = |e: &Entry| {
                let s = p.group.detail(&e.run);
                if s.is_empty() {
                    String::new()
                } else {
                    format!(" ({s})")
                }
            };
            let target = p.target.as_ref().map_or("".into(), |t| {
                format!("{} — **{}**", t.text, verdict(t.met))
            });
            let cpu = if matches!(p.group, Group::Memory | Group::Resync) {
                "–".into()
            } else {
                format!("{} / {}", Self::cpu_cell(&d.run), Self::cpu_cell(&o.run))
            };
            let _ = writeln!(
                t,
                "| {} | {} | {} | {}{} | {} | {}{} | **{:.2}x** | {} | {} | {} |",
                p.group.number(),
                p.group.x_label(p.x),
                p.metric,
                num(p.domsync),
                detail(d),
                p.other,
                num(p.other_value),
                detail(o),
                p.ratio,
                p.better,
                cpu,
                target
            );
        }
        t
    }

    /// Per point: every system's server CPU, errors and notes.
    fn details(&self) -> String {
        let mut t = String::new();
        t.push_str("| # | point | system | ops | errors | server CPU (% of one core) | generator CPU | machine total | notes |\n");
        t.push_str("|---|---|---|---|---|---|---|---|---|\n");
        for e in &self.entries {
            let cpu = e
                .run
                .server_cpu_percent
                .iter()
                .map(|(n, c)| format!("{n} {c:.0}%"))
                .collect::<Vec<_>>()
                .join(", ");
            let total: f64 = e.run.server_cpu_percent.iter().map(|(_, c)| c).sum::<f64>()
                + e.run.generator_cpu_percent;
            let cores = 100.0 * std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
            let total = if e.run.server_cpu_percent.is_empty() && !e.run.embedded {
                "–".to_owned()
            } else if total > 0.9 * cores {
                format!("{total:.0}% (CPU-saturated)")
            } else {
                format!("{total:.0}%")
            };
            let _ = writeln!(
                t,
                "| {} | {} | {} | {} | {} | {} | {:.0}% | {} | {} |",
                e.group.number(),
                e.group.x_label(e.x),
                e.system,
                e.run.ops,
                e.run.errors,
                cpu,
                e.run.generator_cpu_percent,
                total,
                e.run.notes.join("; ").replace('|', "/").replace('\n', " ")
            );
        }
        t
    }

    pub fn finish(&mut self, args: &Args, repo: &Path) -> Result<()> {
        if args.json {
            let doc = serde_json::json!({
                "machine": self.machine,
                "versions": self.versions,
                "pairs": self.pairs(),
                "entries": self.entries,
            });
            println!("{}", serde_json::to_string_pretty(&doc)?);
        } else {
            println!("\n{}", self.table());
            for e in &self.entries {
                if e.run.generator_cpu_percent > 90.0 && !e.run.embedded {
                    println!(
                        "WARNING: {} {} {}: the load generator used {:.0}% of a core; it may be the bottleneck",
                        e.group.number(),
                        e.group.x_label(e.x),
                        e.system,
                        e.run.generator_cpu_percent
                    );
                }
            }
        }
        // A partial run (`--only` a subset) into the default BENCHMARKS.md keeps the full
        // run's figures and plot: its report becomes a section of its own (see `splice`).
        let default_md = args.markdown.is_none();
        let partial = !crate::COMPARISONS.iter().all(|c| args.runs(c));
        let splice_into = repo.join("BENCHMARKS.md");
        let splice = partial && default_md && splice_into.exists();
        let plotted = if splice && args.plot.is_none() {
            None
        } else {
            let plot = args
                .plot
                .clone()
                .unwrap_or_else(|| repo.join("benches/compare/plot.png"));
            match crate::report::plot(self, &plot) {
                Ok(()) => Some(plot),
                Err(e) => {
                    eprintln!("no plot: {e:#}");
                    None
                }
            }
        };
        if splice {
            let old = std::fs::read_to_string(&splice_into)
                .with_context(|| format!("{}", splice_into.display()))?;
            let md = self.splice(&old, args, repo, plotted.as_deref());
            std::fs::write(&splice_into, md)
                .with_context(|| format!("{}", splice_into.display()))?;
            eprintln!(
                "updated {} (section of this --only {} run; the other figures are kept)",
                splice_into.display(),
                args.only.join(",")
            );
            return Ok(());
        }
        let md = self.markdown(args, repo, plotted.as_deref(), true);
        match args.markdown.as_deref() {
            Some("-") => println!("{md}"),
            other => {
                let path = other.map_or_else(|| repo.join("BENCHMARKS.md"), PathBuf::from);
                std::fs::write(&path, md).with_context(|| format!("{}", path.display()))?;
                eprintln!("wrote {}", path.display());
            }
        }
        Ok(())
    }

    /// `old` (a BENCHMARKS.md) with this partial run's report as the section of its
    /// comparisons: headings one level down, between markers naming the comparisons (an
    /// earlier section of the same comparisons is replaced), placed before the hand-written
    /// analysis, which is refreshed from `benches/compare/ANALYSIS.md`.
    fn splice(&self, old: &str, args: &Args, repo: &Path, plot: Option<&Path>) -> String {
        let key = args.only.join(",");
        let begin = format!("<!-- BEGIN run of --only {key} -->");
        let end = format!("<!-- END run of --only {key} -->");
        let body = self.markdown(args, repo, plot, false);
        let mut section = format!(
            "{begin}\n## Comparisons {key}: a later run of these alone\n\n\
             Generated by `{}`; only the comparisons {key} ran, on the same machine, each pair \
             back to back; the figures above this section come from the full run and were kept.\n\n",
            self.invocation
        );
        for line in body.lines().skip_while(|l| !l.starts_with("## ")) {
            if line.starts_with('#') {
                section.push('#');
            }
            section.push_str(line);
            section.push('\n');
        }
        section.push_str(&end);
        section.push('\n');
        // Without the earlier section of the same comparisons, if any.
        let mut rest = old.to_owned();
        if let (Some(b), Some(e)) = (rest.find(&begin), rest.find(&end)) {
            if b < e {
                let mut after = e + end.len();
                if rest[after..].starts_with('\n') {
                    after += 1;
                }
                rest.replace_range(b..after, "");
            }
        }
        let analysis = std::fs::read_to_string(repo.join("benches/compare/ANALYSIS.md")).ok();
        let cut = analysis
            .as_deref()
            .and_then(|a| a.lines().next())
            .and_then(|first| rest.find(first))
            .unwrap_or(rest.len());
        let mut out = rest[..cut].trim_end().to_owned();
        out.push_str("\n\n");
        out.push_str(&section);
        if let Some(a) = analysis {
            out.push('\n');
            out.push_str(&a);
        } else {
            out.push_str(&rest[cut..]);
        }
        out
    }

    fn markdown(&self, args: &Args, repo: &Path, plot: Option<&Path>, analysis: bool) -> String {
        let mut m = String::new();
        m.push_str("# Benchmarks: domsync side by side with etcd and Redis\n\n");
        m.push_str("Generated by `benches/compare.sh` (crate `benches/compare/`, see its README). \
            Every system runs on this one machine, on 127.0.0.1, in temporary directories, \
            with the load generator in the same run; servers and generator share the same cores.\n\n");
        m.push_str("## Machine\n\n");
        for (k, v) in &self.machine {
            let _ = writeln!(m, "- {k}: {v}");
        }
        m.push_str("\n## Versions\n\n");
        for (k, v) in &self.versions {
            let _ = writeln!(m, "- {k}: {v}");
        }
        let _ = write!(
            m,
            "\n## Commands\n\n```sh\n{}\n```\n\n{} s measured per point ({} s warm-up for etcd and Redis), lag rates {:?}/s, resync size {}.\n\n",
            self.invocation,
            args.secs(),
            args.warmup(),
            args.lag_rates(),
            args.resync_size()
        );
        m.push_str("domsync side (`domsync-bench`, one process per point; `$TMP` is the run's temporary directory):\n\n```sh\n");
        for e in &self.entries {
            if let Some(c) = &e.run.command {
                let c = self.scrub(c);
                let _ = writeln!(m, "{c}");
            }
        }
        m.push_str("```\n\nServers:\n\n```sh\n");
        for s in &self.servers {
            let _ = writeln!(m, "{s}");
        }
        m.push_str("```\n\n");
        m.push_str("## Results\n\nComparisons: ");
        let groups = [
            Group::Writes,
            Group::Replicated,
            Group::Reads,
            Group::Lag,
            Group::Resync,
            Group::Memory,
            Group::Get,
            Group::Txn,
        ];
        let list: Vec<String> = groups
            .iter()
            .filter(|g| self.entries.iter().any(|e| e.group == **g))
            .map(|g| format!("{}. {}", g.number(), g.title()))
            .collect();
        m.push_str(&list.join("; "));
        m.push_str(".\n\n");
        m.push_str("Ratio = domsync ÷ other for the metric of the row; the `better` column says which direction wins. \
            `gen CPU` is the load generator's own CPU (percent of one core): above 90% it may be the bottleneck and is flagged.\n\n");
        m.push_str(&self.table());
        if let Some(p) = plot {
            let rel = p.strip_prefix(repo).unwrap_or(p);
            let _ = write!(
                m,
                "\n![commit latency and replication lag against load]({})\n",
                rel.display()
            );
        }
        m.push_str("\n## Targets\n\n");
        let pairs = self.pairs();
        for p in pairs.iter().filter(|p| p.target.is_some()) {
            let t = p.target.as_ref().unwrap();
            let _ = writeln!(
                m,
                "- {}: {} ({} {} vs {} {}, ratio {:.2}x) — **{}**",
                p.comparison,
                t.text,
                p.metric,
                num(p.domsync),
                p.other,
                num(p.other_value),
                p.ratio,
                verdict(t.met)
            );
        }
        m.push_str("\n## Details per point\n\n");
        m.push_str(&self.details());
        for (what, p) in &self.profiles {
            let _ = write!(m, "\n## CPU profile of {what} (perf)\n\n```\n{p}\n```\n");
        }
        let path = repo.join("benches/compare/ANALYSIS.md");
        if let (true, Ok(text)) = (analysis, std::fs::read_to_string(&path)) {
            m.push('\n');
            m.push_str(&text);
        }
        m
    }
}

/// `perf record` of `pid` until [`perf_finish`].
pub fn perf_start(pid: u32, base: &Path) -> Option<(Proc, PathBuf)> {
    let data = base.join("perf.data");
    let mut cmd = Command::new("perf");
    cmd.args(["record", "-F", "499", "-g", "-o"])
        .arg(&data)
        .args(["-p", &pid.to_string()]);
    let p = Proc::spawn("perf", cmd, base.join("perf.log")).ok()?;
    std::thread::sleep(std::time::Duration::from_millis(300));
    Some((p, data))
}

/// Stops the recording; the top of `perf report` by DSO and symbol.
pub fn perf_finish((mut p, data): (Proc, PathBuf)) -> Option<String> {
    unsafe { libc::kill(p.pid() as i32, libc::SIGINT) };
    let _ = p.child.wait();
    p.stop();
    let report = |sort: &str, limit: &str| -> String {
        let out = Command::new("perf")
            .args([
                "report",
                "--stdio",
                "--no-children",
                "-g",
                "none",
                "--sort",
                sort,
            ])
            .args(["--percent-limit", limit, "-i"])
            .arg(&data)
            .output();
        let Ok(out) = out else {
            return String::new();
        };
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .take(25)
            .collect::<Vec<_>>()
            .join("\n")
    };
    let by_dso = report("dso", "0.5");
    let by_sym = report("dso,sym", "1");
    (!by_dso.is_empty()).then(|| {
        format!(
            "by object (the release build is stripped: domsyncd's own code is one line):\n{by_dso}\n\nby symbol:\n{by_sym}"
        )
    })
}

const FONTS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// Commit latency against concurrency (writes) and replication lag against rate.
pub fn plot(report: &Report, path: &Path) -> Result<()> {
    use plotters::prelude::*;
    let font = FONTS
        .iter()
        .find_map(|f| std::fs::read(f).ok())
        .context("no DejaVuSans.ttf (apt-get install fonts-dejavu-core)")?;
    let font: &'static [u8] = Box::leak(font.into_boxed_slice());
    plotters::style::register_font("sans-serif", FontStyle::Normal, font)
        .map_err(|_| anyhow::anyhow!("bad font file"))?;
    let series = |g: Group, system: &str, p99: bool| -> Vec<(f64, f64)> {
        report
            .entries
            .iter()
            .filter(|e| e.group == g && e.system == system)
            .map(|e| {
                (
                    e.x,
                    if p99 {
                        e.run.latency_ms.p99
                    } else {
                        e.run.latency_ms.p50
                    },
                )
            })
            .filter(|(_, v)| *v > 0.0)
            .collect()
    };
    let root = BitMapBackend::new(path, (1400, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let (left, right) = root.split_horizontally(700);
    let colors = [
        ("domsync", RGBColor(0, 114, 178)),
        ("etcd", RGBColor(213, 94, 0)),
        ("redis", RGBColor(0, 158, 115)),
    ];
    let color = |s: &str| {
        colors
            .iter()
            .find(|(n, _)| *n == s)
            .map_or(BLACK, |(_, c)| *c)
    };

    // Left: commit latency against clients.
    let lat_groups = [Group::Writes, Group::Replicated];
    let all: Vec<f64> = report
        .entries
        .iter()
        .filter(|e| lat_groups.contains(&e.group))
        .flat_map(|e| [e.run.latency_ms.p50, e.run.latency_ms.p99])
        .filter(|v| *v > 0.0)
        .collect();
    let (lo, hi) = bounds(&all);
    let mut chart = ChartBuilder::on(&left)
        .caption(
            "durable write (commit) latency vs concurrent clients",
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((0.8f64..100f64).log_scale(), (lo..hi).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("concurrent clients")
        .y_desc("latency, ms (log)")
        .label_style(("sans-serif", 14))
        .draw()?;
    for system in ["domsync", "etcd"] {
        for (p99, dash) in [(false, false), (true, true)] {
            let pts = series(Group::Writes, system, p99);
            if pts.is_empty() {
                continue;
            }
            let c = color(system);
            let label = format!("{system} 1 node {}", if p99 { "p99" } else { "p50" });
            let style = if dash {
                c.stroke_width(1)
            } else {
                c.stroke_width(3)
            };
            chart
                .draw_series(LineSeries::new(pts.clone(), style))?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            chart.draw_series(pts.iter().map(|p| Circle::new(*p, 4, c.filled())))?;
        }
        for p99 in [false, true] {
            let pts = series(Group::Replicated, system, p99);
            if pts.is_empty() {
                continue;
            }
            let c = color(system);
            // p50 filled, p99 hollow.
            let style = if p99 { c.stroke_width(2) } else { c.filled() };
            chart
                .draw_series(pts.iter().map(|p| TriangleMarker::new(*p, 8, style)))?
                .label(format!(
                    "{system} 3 nodes {}",
                    if p99 { "p99" } else { "p50" }
                ))
                .legend(move |(x, y)| TriangleMarker::new((x + 10, y), 6, style));
        }
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 13))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;

    // Right: replication lag against write rate.
    let all: Vec<f64> = report
        .entries
        .iter()
        .filter(|e| e.group == Group::Lag)
        .flat_map(|e| [e.run.latency_ms.p50, e.run.latency_ms.p99])
        .filter(|v| *v > 0.0)
        .collect();
    let rates: Vec<f64> = report
        .entries
        .iter()
        .filter(|e| e.group == Group::Lag)
        .map(|e| e.x)
        .collect();
    let rmin = rates
        .iter()
        .cloned()
        .fold(f64::INFINITY, f64::min)
        .min(1000.0)
        * 0.7;
    let rmax = rates.iter().cloned().fold(0.0, f64::max).max(1000.0) * 1.4;
    let (lo, hi) = bounds(&all);
    let mut chart = ChartBuilder::on(&right)
        .caption("replication lag vs write rate", ("sans-serif", 20))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d((rmin..rmax).log_scale(), (lo..hi).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("writes per second")
        .y_desc("commit/send to visible on the standby, ms (log)")
        .label_style(("sans-serif", 14))
        .draw()?;
    for system in ["domsync", "redis", "etcd"] {
        for p99 in [false, true] {
            let pts = series(Group::Lag, system, p99);
            if pts.is_empty() {
                continue;
            }
            let c = color(system);
            let style = if p99 {
                c.stroke_width(1)
            } else {
                c.stroke_width(3)
            };
            chart
                .draw_series(LineSeries::new(pts.clone(), style))?
                .label(format!("{system} {}", if p99 { "p99" } else { "p50" }))
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            chart.draw_series(pts.iter().map(|p| Circle::new(*p, 4, c.filled())))?;
        }
    }
    chart
        .configure_series_labels()
        .label_font(("sans-serif", 13))
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}

fn bounds(v: &[f64]) -> (f64, f64) {
    let lo = v.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = v.iter().cloned().fold(0.0, f64::max);
    if !lo.is_finite() || hi <= 0.0 {
        return (0.01, 10.0);
    }
    (lo / 2.0, hi * 3.0)
}
