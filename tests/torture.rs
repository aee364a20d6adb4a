//! The torture suite: real `domsyncd` processes under crash cycles and network partitions,
//! with a continuous write load over the admin socket and gateways reading all along.
//!
//! * `crash_cycles`: three daemons, two domains active on different nodes, durability
//!   `standby`. Each cycle SIGKILLs the active of a domain or a standby; a lost active is
//!   replaced by promoting the most advanced standby as an operator would (unforced; forced
//!   only when the guard still refuses long after the dead peer's window), the writers are
//!   retargeted, and the killed node restarts (it rejoins as standby).
//! * `partitions`: the same cluster with every node in its own network namespace joined by
//!   veth pairs (links cut, slowed, lossy, one-way), or, when namespaces are not allowed or
//!   `DOMSYNC_TORTURE_NETNS=0`, on loopback behind fault-injecting UDP proxies; standbys are
//!   promoted by force during partitions while writers keep writing to whichever node they
//!   believe active; every round ends with a heal.
//!
//! After every cycle or heal, with the writers paused: the replicas converge (polled up to a
//! deadline) to one active per domain and equal epoch, position and digest; every
//! acknowledged write is on the active with its value (read from a copy of the active's store
//! file taken at that quiescent point, checked against the live position and digest; the
//! admin protocol has no key read) — or, in `partitions`, in a collision archive (admin
//! `Collisions` / `CollisionShow`); no gateway saw a package version go back or a content no
//! writer sent.
//!
//! `DOMSYNC_TORTURE=short|long` (30 cycles and 12 rounds, or 300 and 100),
//! `DOMSYNC_TORTURE_SEED=<u64>` replays the random choices of a run (timing still varies).

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

mod torture_support;

use domsync_proto::admin::{Answer, NodeStatus};
use domsync_proto::model::Role;
use domsync_testkit::poll::free_port;
use domsync_testkit::rng::Rng;
use torture_support::{
    check_acked, first_install, lock, pause, promote, Fault, Ledger, Netns, Proxies, Reader, Rig,
    Settings, Shared, Topology, Writer, CONVERGE, NODES, ONE_AT_A_TIME,
};

const DOMAINS: [(&str, [&str; 3]); 2] = [("t1", ["a", "b", "c"]), ("t2", ["b", "c", "a"])];

const LIMITS: &str = "guard_window_ms = 300\nconfirm_timeout_ms = 2000";

#[derive(Debug, Default)]
struct Counts {
    cycles: usize,
    promotions: usize,
    forced: usize,
    /// Promotions without --force tried in the partitions test: refused and allowed.
    unforced_refused: usize,
    unforced_allowed: usize,
    collisions: u64,
    kills_active: usize,
    kills_standby: usize,
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn report(test: &str, s: &Settings, c: &Counts, ledger: &Shared, started: Instant) {
    let l = lock(ledger);
    let acked: usize = l.acked.values().map(Vec::len).sum();
    eprintln!(
        "torture {test}: mode={} seed={} cycles={} writes_acked={acked} writes_unknown={} gateway_reads={} promotions={} (forced {}; unforced refused {} allowed {}) collisions_archived={} kills: active {} standby {} elapsed={:?}",
        s.mode,
        s.seed,
        c.cycles,
        l.maybe,
        l.reads,
        c.promotions,
        c.forced,
        c.unforced_refused,
        c.unforced_allowed,
        c.collisions,
        c.kills_active,
        c.kills_standby,
        started.elapsed()
    );
}

fn collisions(statuses: &BTreeMap<String, NodeStatus>) -> u64 {
    statuses
        .values()
        .flat_map(|s| s.domains.iter().map(|d| d.collisions))
        .sum()
}

/// What excuses an acknowledged write that is not on the active: per domain, the keys found
/// only in a collision archive at a check that followed a forced promotion of that domain.
/// Only `--force` may move an acknowledged write to an archive (invariant 2): a key that
/// shows up there after unforced promotions only is a violation.
type Excused = std::collections::HashMap<String, HashSet<String>>;

/// What the partitions test checks archives with: the cache of archive reads, the keys
/// excused so far, and the domains force-promoted since the last check.
type Archives<'a> = (
    &'a mut std::collections::HashMap<(String, u64), Vec<String>>,
    &'a mut Excused,
    &'a HashSet<String>,
);

/// Checks (1) and (3) after convergence: every acknowledged write on the active (or, with
/// `archives`, in a collision archive when a forced promotion of its domain since the last
/// check, listed in `forced`, can explain it), no gateway violation.
async fn check_round(
    rig: &Rig,
    actives: &BTreeMap<String, String>,
    ledger: &Shared,
    archives: Option<Archives<'_>>,
) -> Result<String, String> {
    let mut summary = Vec::new();
    let mut archives = archives;
    for d in rig.domain_names() {
        let active = &actives[&d];
        let kv = rig.read_replica(active, &d).await?;
        let acked = lock(ledger).acked.get(&d).cloned().unwrap_or_default();
        let (checked, archived) = match archives.as_mut() {
            Some((cache, excused, forced)) => {
                let (keys, _) = rig.archived(&d, cache).await?;
                let excused = excused.entry(d.clone()).or_default();
                if forced.contains(&d) {
                    excused.extend(keys);
                }
                check_acked(&d, active, &kv, &acked, Some(excused))?
            }
            None => check_acked(&d, active, &kv, &acked, None)?,
        };
        summary.push(format!(
            "{d}@{active} {checked} acked ok ({archived} archived)"
        ));
    }
    let violations = std::mem::take(&mut lock(ledger).violations);
    if !violations.is_empty() {
        return Err(violations.join("\n"));
    }
    Ok(summary.join(", "))
}

// ---------------------------------------------------------------------------------------------

#[test]
fn crash_cycles() {
    let _one = lock(&ONE_AT_A_TIME);
    let s = Settings::from_env("crash_cycles");
    runtime().block_on(crash(s));
}

async fn crash(s: Settings) {
    let started = Instant::now();
    let seed = s.seed;
    let mut rng = Rng::from_state(seed);
    let ports: BTreeMap<String, u16> = NODES.iter().map(|n| (n.to_string(), free_port())).collect();
    let mut rig = Rig::new(Topology::loopback(&ports), &DOMAINS, LIMITS);
    rig.start(&NODES);
    let fail = |cycle: usize, what: String| -> ! {
        panic!("torture crash_cycles seed={seed} cycle={cycle}: {what}")
    };
    let (mut actives, _) = match rig.converge(CONVERGE).await {
        Ok(a) => a,
        Err(e) => fail(0, e),
    };
    let ledger = Shared::default();
    for (d, _) in DOMAINS {
        first_install(&rig, &actives[d], d, &ledger).await;
    }
    let mut writers: Vec<Writer> = DOMAINS
        .iter()
        .map(|(d, _)| Writer::spawn(d, &actives[*d], rig.sockets(), ledger.clone(), rng.next()))
        .collect();
    let mut readers: Vec<Reader> = DOMAINS
        .iter()
        .map(|(d, _)| Reader::spawn(d, rig.gateway_client(d), ledger.clone()))
        .collect();
    let mut c = Counts::default();
    report("crash_cycles (start)", &s, &c, &ledger, started);

    for cycle in 1..=s.cycles {
        let t0 = Instant::now();
        // Load runs for a while (timing only: no check depends on it).
        tokio::time::sleep(Duration::from_millis(rng.range(150, 600))).await;
        let kill_active = rng.percent(50);
        let victim = if kill_active {
            let (d, _) = rng.pick(&DOMAINS).expect("a domain");
            actives[d].clone()
        } else {
            let idle: Vec<&str> = NODES
                .iter()
                .copied()
                .filter(|n| !actives.values().any(|a| a == n))
                .collect();
            rng.pick(&idle).expect("an idle node").to_string()
        };
        let lost: Vec<String> = actives
            .iter()
            .filter(|(_, a)| **a == victim)
            .map(|(d, _)| d.clone())
            .collect();
        if lost.is_empty() {
            c.kills_standby += 1;
        } else {
            c.kills_active += 1;
        }
        rig.kill(&victim);

        // Failover of each domain whose active died, as an operator would.
        // Both domains at once when both died (each probe of the dead node waits its timeout).
        let mut promoted = Vec::new();
        let seeds: Vec<u64> = lost.iter().map(|_| rng.next()).collect();
        let results = match lost.as_slice() {
            [d] => vec![failover(&rig, d, &victim, seeds[0]).await],
            [d, e] => {
                let (x, y) = tokio::join!(
                    failover(&rig, d, &victim, seeds[0]),
                    failover(&rig, e, &victim, seeds[1])
                );
                vec![x, y]
            }
            _ => Vec::new(),
        };
        for (d, result) in lost.iter().zip(results) {
            let (node, forced) = match result {
                Ok(x) => x,
                Err(e) => fail(cycle, e),
            };
            c.promotions += 1;
            c.forced += usize::from(forced);
            for w in &writers {
                if w.domain == *d {
                    w.retarget(&node);
                }
            }
            actives.insert(d.clone(), node.clone());
            promoted.push(format!(
                "{d}->{node}{}",
                if forced { " (forced)" } else { "" }
            ));
        }
        let t_failover = t0.elapsed();
        rig.start(&[victim.as_str()]);
        let t_restart = t0.elapsed();

        // Checks, with the load paused.
        let paused = pause(&writers).await;
        let (now, statuses) = match rig.converge(CONVERGE).await {
            Ok(x) => x,
            Err(e) => fail(cycle, e),
        };
        let t_converged = t0.elapsed();
        if now != actives {
            fail(
                cycle,
                format!("actives are {now:?}, the promotions made {actives:?}"),
            );
        }
        let summary = match check_round(&rig, &actives, &ledger, None).await {
            Ok(x) => x,
            Err(e) => fail(cycle, e),
        };
        c.collisions = collisions(&statuses);
        c.cycles = cycle;
        drop(paused);
        eprintln!(
            "cycle {cycle}: killed {victim} ({}) {} restarted; {summary}; collisions {}; failover by {t_failover:?}, restarted by {t_restart:?}, converged by {t_converged:?}, checked by {:?}",
            if lost.is_empty() { "standby" } else { "active" },
            if promoted.is_empty() {
                String::new()
            } else {
                format!("promoted {};", promoted.join(" "))
            },
            c.collisions,
            t0.elapsed()
        );
    }

    for w in &mut writers {
        w.stop().await;
    }
    for r in &mut readers {
        r.stop().await;
    }
    eprintln!("load stopped at {:?}", started.elapsed());
    let (now, statuses) = match rig.converge(CONVERGE).await {
        Ok(x) => x,
        Err(e) => fail(s.cycles, e),
    };
    if let Err(e) = check_round(&rig, &now, &ledger, None).await {
        fail(s.cycles, e);
    }
    c.collisions = collisions(&statuses);
    assert!(
        lock(&ledger).acked.values().all(|a| !a.is_empty()),
        "seed={seed}: a domain got no acknowledged write"
    );
    assert!(lock(&ledger).reads > 0, "seed={seed}: no gateway read");
    if let Err(e) = rig.stop_all() {
        fail(s.cycles, e);
    }
    report("crash_cycles", &s, &c, &ledger, started);
}

/// Promotes the most advanced surviving standby of `domain` (unforced, retried while the
/// guard still sees the dead active within its window; forced only after 20 s of refusals).
/// The new active and whether it was forced.
async fn failover(
    rig: &Rig,
    domain: &str,
    dead: &str,
    seed: u64,
) -> Result<(String, bool), String> {
    let mut rng = Rng::from_state(seed);
    let survivors: Vec<&str> = NODES.iter().copied().filter(|n| *n != dead).collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut avoid: Option<String> = None;
    let mut refusals = Vec::new();
    loop {
        // The most advanced standby (positions are final: their active is dead).
        let mut best: Vec<(u64, &str)> = Vec::new();
        for n in &survivors {
            let st = rig.status(n).await?;
            let r = st
                .domains
                .iter()
                .find(|d| d.domain.as_str() == domain)
                .and_then(|d| d.replica.clone())
                .ok_or_else(|| format!("{domain} has no replica on {n}"))?;
            if r.role != Role::Standby {
                return Err(format!(
                    "{domain} on {n} is {:?} before any promotion",
                    r.role
                ));
            }
            best.push((r.position.lsn.0, n));
        }
        let top = best.iter().map(|b| b.0).max().unwrap();
        let mut candidates: Vec<&str> = best.iter().filter(|b| b.0 == top).map(|b| b.1).collect();
        if candidates.len() > 1 {
            if let Some(a) = &avoid {
                candidates.retain(|c| c != a);
            }
        }
        let pick = rng.pick(&candidates).expect("a candidate").to_string();
        let force = Instant::now() > deadline;
        match promote(rig, &pick, domain, force).await {
            Ok(Answer::Promoted { behind_records, .. }) => {
                if !force && behind_records != 0 {
                    return Err(format!(
                        "unforced promotion of {domain} on {pick} reports {behind_records} records behind"
                    ));
                }
                if force {
                    eprintln!(
                        "forced promotion of {domain} on {pick} after refusals: {refusals:?}"
                    );
                } else if !refusals.is_empty() {
                    eprintln!(
                        "  promoted {domain} on {pick} after {} refusals, the last: {}",
                        refusals.len(),
                        refusals.last().unwrap()
                    );
                }
                return Ok((pick, force));
            }
            Ok(other) => return Err(format!("promote {domain} on {pick}: {other:?}")),
            Err(why) if !force => {
                if why.contains("records behind") {
                    avoid = Some(pick.clone());
                }
                refusals.push(why);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(why) => return Err(format!("forced promotion of {domain} on {pick}: {why}")),
        }
    }
}

// ---------------------------------------------------------------------------------------------

#[test]
fn partitions() {
    let _one = lock(&ONE_AT_A_TIME);
    let s = Settings::from_env("partitions");
    runtime().block_on(partition(s));
}

/// How the network is broken.
enum Path {
    Netns(Netns),
    Proxies(Proxies),
}

impl Path {
    fn apply(&self, f: &Fault) -> Result<(), String> {
        match self {
            Path::Netns(n) => n.apply(f),
            Path::Proxies(p) => {
                p.apply(f);
                Ok(())
            }
        }
    }

    fn heal(&self) -> Result<(), String> {
        match self {
            Path::Netns(n) => n.heal(),
            Path::Proxies(p) => {
                p.heal();
                Ok(())
            }
        }
    }
}

async fn partition(s: Settings) {
    let started = Instant::now();
    let seed = s.seed;
    let mut rng = Rng::from_state(seed);
    let fail = |round: usize, what: String| -> ! {
        panic!("torture partitions seed={seed} round={round}: {what}")
    };
    let wanted = std::env::var("DOMSYNC_TORTURE_NETNS").as_deref() != Ok("0");
    let netns = if wanted {
        match Netns::setup() {
            Ok(n) => Ok(n),
            Err(e) => Err(format!("network namespaces unavailable ({e})")),
        }
    } else {
        Err("DOMSYNC_TORTURE_NETNS=0".to_owned())
    };
    // `path` is declared before `rig`, so the daemons die before their namespaces go.
    let (path, topo) = match netns {
        Ok(n) => {
            eprintln!(
                "partitions: path = network namespaces {}n0..2 with veth pairs; {}",
                n.prefix,
                if n.netem {
                    "delay and loss by tc netem"
                } else {
                    "tc netem is not available in this kernel: one-way loss by a tbf that drops every packet, delay by a slow tbf link, loss by a throttled tbf link"
                }
            );
            let port = 7400;
            let mut t = Topology {
                listen: BTreeMap::new(),
                peer: BTreeMap::new(),
                gateway: BTreeMap::new(),
                wrap: BTreeMap::new(),
            };
            for (i, x) in NODES.iter().enumerate() {
                t.listen.insert(x.to_string(), format!("0.0.0.0:{port}"));
                t.gateway.insert(
                    x.to_string(),
                    format!("{}:{port}", n.gateway_addr(i)).parse().unwrap(),
                );
                t.wrap.insert(x.to_string(), n.wrap(i));
                for (j, y) in NODES.iter().enumerate() {
                    if i != j {
                        t.peer.insert(
                            (x.to_string(), y.to_string()),
                            format!("{}:{port}", n.addr_on(j, i)),
                        );
                    }
                }
            }
            (Path::Netns(n), t)
        }
        Err(why) => {
            eprintln!("partitions: path = fault-injecting UDP proxies on loopback ({why})");
            let ports: BTreeMap<String, u16> =
                NODES.iter().map(|n| (n.to_string(), free_port())).collect();
            let targets = NODES
                .iter()
                .enumerate()
                .map(|(i, n)| (i, format!("127.0.0.1:{}", ports[*n]).parse().unwrap()))
                .collect();
            let proxies = Proxies::start(&targets, seed).await;
            let mut t = Topology::loopback(&ports);
            for (i, x) in NODES.iter().enumerate() {
                for (j, y) in NODES.iter().enumerate() {
                    if i != j {
                        t.peer.insert(
                            (x.to_string(), y.to_string()),
                            proxies.listen[&(i, j)].to_string(),
                        );
                    }
                }
            }
            (Path::Proxies(proxies), t)
        }
    };
    let mut rig = Rig::new(topo, &DOMAINS, LIMITS);
    rig.start(&NODES);
    let (mut actives, _) = match rig.converge(CONVERGE).await {
        Ok(a) => a,
        Err(e) => fail(0, e),
    };
    let ledger: Shared = std::sync::Arc::new(std::sync::Mutex::new(Ledger::default()));
    for (d, _) in DOMAINS {
        first_install(&rig, &actives[d], d, &ledger).await;
    }
    let mut writers: Vec<Writer> = DOMAINS
        .iter()
        .map(|(d, _)| Writer::spawn(d, &actives[*d], rig.sockets(), ledger.clone(), rng.next()))
        .collect();
    let mut readers: Vec<Reader> = DOMAINS
        .iter()
        .map(|(d, _)| Reader::spawn(d, rig.gateway_client(d), ledger.clone()))
        .collect();
    let mut c = Counts::default();
    let mut cache = std::collections::HashMap::new();
    let mut excused = Excused::new();
    report("partitions (start)", &s, &c, &ledger, started);

    for round in 1..=s.rounds {
        let t0 = Instant::now();
        let idx = |n: &str| NODES.iter().position(|x| *x == n).unwrap();
        let mut faults = Vec::new();
        let mut isolated = None;
        let mut cut_standby = None;
        let pair = |rng: &mut Rng| {
            let i = rng.below(3) as usize;
            let j = (i + 1 + rng.below(2) as usize) % 3;
            (i, j)
        };
        match rng.below(6) {
            5 => {
                // Isolate a standby of a domain from both other replicas: its promotion
                // without --force must be refused (the other standby is out of its reach).
                let (d, _) = rng.pick(&DOMAINS).expect("a domain");
                let others: Vec<usize> = (0..3).filter(|y| NODES[*y] != actives[d]).collect();
                let x = rng.pick(&others).expect("a standby");
                cut_standby = Some((d, x));
                for y in (0..3).filter(|y| *y != x) {
                    faults.push(Fault::Cut(x, y));
                }
            }
            0 => {
                // Isolate the active of a domain from both peers.
                let (d, _) = rng.pick(&DOMAINS).expect("a domain");
                let x = idx(&actives[d]);
                isolated = Some(x);
                for y in (0..3).filter(|y| *y != x) {
                    faults.push(Fault::Cut(x, y));
                }
            }
            1 => {
                let (i, j) = pair(&mut rng);
                faults.push(Fault::Cut(i, j));
            }
            2 => {
                let (i, j) = pair(&mut rng);
                faults.push(Fault::OneWay(i, j));
            }
            3 => {
                let (i, j) = pair(&mut rng);
                faults.push(Fault::Delay(i, j, rng.range(20, 200) as u32));
            }
            _ => {
                let (i, j) = pair(&mut rng);
                faults.push(Fault::Loss(i, j, rng.range(10, 60) as u8));
            }
        }
        if rng.percent(30) {
            let (i, j) = pair(&mut rng);
            faults.push(match rng.below(3) {
                0 => Fault::OneWay(i, j),
                1 => Fault::Delay(i, j, rng.range(20, 200) as u32),
                _ => Fault::Loss(i, j, rng.range(10, 60) as u8),
            });
        }
        for f in &faults {
            if let Err(e) = path.apply(f) {
                fail(round, format!("applying {f}: {e}"));
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.range(300, 1200))).await;

        // Promotions without --force first: of a standby cut off from both other replicas
        // (must be refused), of a standby whose active is isolated (allowed only when no
        // acknowledged write can be lost: the final check holds it to that). Then forced ones:
        // of a standby cut off from its isolated active when the unforced one was refused, or
        // now and then of any standby (an operator's mistake the epochs must settle).
        let mut promoted = Vec::new();
        let mut targets = Vec::new();
        let mut forced_domains = HashSet::new();
        if let Some((d, x)) = cut_standby {
            match promote(&rig, NODES[x], d, false).await {
                Err(why) => {
                    c.unforced_refused += 1;
                    promoted.push(format!("{d}->{} (cut off) refused: {why}", NODES[x]));
                }
                Ok(other) => fail(
                    round,
                    format!(
                        "promotion of {d} without --force on {}, cut off from both other replicas, was not refused: {other:?}",
                        NODES[x]
                    ),
                ),
            }
        }
        match isolated {
            Some(x) => {
                for (d, _) in DOMAINS {
                    if actives[d] != NODES[x] || !rng.percent(70) {
                        continue;
                    }
                    let others: Vec<usize> = (0..3).filter(|y| *y != x).collect();
                    let n = NODES[rng.pick(&others).expect("a node")];
                    match promote(&rig, n, d, false).await {
                        Ok(Answer::Promoted { epoch, .. }) => {
                            c.promotions += 1;
                            c.unforced_allowed += 1;
                            promoted.push(format!("{d}->{n} {epoch} unforced"));
                        }
                        Ok(other) => fail(round, format!("promotion of {d} on {n}: {other:?}")),
                        Err(why) => {
                            c.unforced_refused += 1;
                            promoted.push(format!("{d}->{n} unforced refused: {why}"));
                            targets.push((d, n));
                        }
                    }
                }
            }
            None => {
                if rng.percent(20) {
                    let (d, _) = rng.pick(&DOMAINS).expect("a domain");
                    let others: Vec<&str> =
                        NODES.iter().copied().filter(|n| *n != actives[d]).collect();
                    targets.push((d, rng.pick(&others).expect("a node")));
                }
            }
        }
        for (d, n) in targets {
            match promote(&rig, n, d, true).await {
                Ok(Answer::Promoted {
                    epoch,
                    behind_records,
                    ..
                }) => {
                    c.promotions += 1;
                    c.forced += 1;
                    forced_domains.insert(d.to_owned());
                    promoted.push(format!("{d}->{n} {epoch} behind {behind_records}"));
                }
                Ok(other) => fail(round, format!("forced promotion of {d} on {n}: {other:?}")),
                // Refused (e.g. the replica is not a standby any more, or never synchronized).
                Err(why) => promoted.push(format!("{d}->{n} refused: {why}")),
            }
        }
        tokio::time::sleep(Duration::from_millis(rng.range(300, 1000))).await;
        if let Err(e) = path.heal() {
            fail(round, format!("heal: {e}"));
        }

        let paused = pause(&writers).await;
        let (now, statuses) = match rig.converge(CONVERGE).await {
            Ok(x) => x,
            Err(e) => fail(round, e),
        };
        let checked = Some((&mut cache, &mut excused, &forced_domains));
        let summary = match check_round(&rig, &now, &ledger, checked).await {
            Ok(x) => x,
            Err(e) => fail(round, e),
        };
        actives = now;
        c.collisions = collisions(&statuses);
        c.cycles = round;
        drop(paused);
        let faults: Vec<String> = faults.iter().map(|f| f.to_string()).collect();
        eprintln!(
            "round {round}: {}; promotions [{}]; healed; {summary}; collisions {}; {:?}",
            faults.join(", "),
            promoted.join("; "),
            c.collisions,
            t0.elapsed()
        );
    }

    for w in &mut writers {
        w.stop().await;
    }
    for r in &mut readers {
        r.stop().await;
    }
    let (now, statuses) = match rig.converge(CONVERGE).await {
        Ok(x) => x,
        Err(e) => fail(s.rounds, e),
    };
    let checked = Some((&mut cache, &mut excused, &HashSet::new()));
    if let Err(e) = check_round(&rig, &now, &ledger, checked).await {
        fail(s.rounds, e);
    }
    c.collisions = collisions(&statuses);
    assert!(lock(&ledger).reads > 0, "seed={seed}: no gateway read");
    if let Err(e) = rig.stop_all() {
        fail(s.rounds, e);
    }
    drop(rig);
    drop(path);
    report("partitions", &s, &c, &ledger, started);
}
