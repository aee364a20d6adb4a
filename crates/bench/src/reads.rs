//! `bench read` and `bench watch`: the gateway protocol (ALPN `domsync-gw/1`) spoken directly,
//! so every fetch moves the whole package (the client library's conditional fetches would
//! answer "not modified" after the first).
//!
//! - read: `--concurrency` gateway connections, each fetching the package in a loop.
//! - watch: one gateway watches the package on a standby (embedded) or on `--node`; each
//!   install through the active's admin API is timed from its acknowledgement to the push.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use domsync_net::{read_frame, write_frame};
use domsync_net::{Credentials, Identity, PeerRole, TlsFiles, ALPN_GATEWAY, SERVER_NAME};
use domsync_proto::gateway::{Query, Request, Response, MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES};
use domsync_proto::model::{DomainId, NodeId, Op, Position};
use quinn::Endpoint;
use serde_json::json;

use super::stats::{CpuMeter, Errors, Histogram, Progress};
use super::target::{self, Embedded};
use super::{BenchResult, Ctx, Outcome, RoleArg};
use domsync_client::admin::Target;

/// How long connecting to a node may take before the bench gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a watch push may take before it counts as lost.
const PUSH_TIMEOUT: Duration = Duration::from_secs(10);

/// Gateway connections sharing one UDP socket.
const CONNECTIONS_PER_ENDPOINT: usize = 32;

/// Where the gateway side reads and how writes reach the active.
struct Setup {
    cluster: Option<Embedded>,
    node: (NodeId, SocketAddr),
    creds: Credentials,
    admin: Option<Target>,
}

/// The gateway credentials and node of a running cluster (`--node`, `--pki`, `--gateway-id`).
fn running_gateway(ctx: &Ctx) -> BenchResult<((NodeId, SocketAddr), Credentials)> {
    let node = ctx.gateway_node().ok_or(
        "reading a running cluster needs --node ID=ADDR (the node gateways read from), --pki DIR and --gateway-id ID",
    )?;
    let node = domsync_client::gateway::parse_node(node).map_err(|e| e.to_string())?;
    let id = ctx.args.gateway_id.as_deref().ok_or(
        "--node needs --gateway-id ID (the gateway certificate domsync://gateway/<ID> in --pki)",
    )?;
    let me = Identity::new(PeerRole::Gateway, id)?;
    let creds = TlsFiles::in_dir(&ctx.args.pki, &me).load()?;
    Ok((node, creds))
}

/// Starts the embedded cluster or names the running one; `role` picks the embedded reader.
async fn setup(ctx: &Ctx, role: RoleArg) -> BenchResult<Setup> {
    if ctx.running() {
        let (node, creds) = running_gateway(ctx)?;
        if let Some(a) = &ctx.admin {
            target::check_active(a, &ctx.domain).await?;
        }
        return Ok(Setup {
            cluster: None,
            node,
            creds,
            admin: ctx.admin.clone(),
        });
    }
    let c = ctx.embedded(&ctx.embedded_options()).await?;
    let i = match role {
        RoleArg::Active => c.active(),
        RoleArg::Standby => c.standby(),
    }
    .ok_or("the embedded cluster has no node in that role")?;
    let a = c.active().ok_or("no active in the embedded cluster")?;
    Ok(Setup {
        node: (c.node_id(i), c.addr(i)?),
        creds: c.gateway_credentials()?,
        admin: Some(c.admin(a)),
        cluster: Some(c),
    })
}

/// Installs `content` as package `name` through the active's admin API; returns where.
async fn install(
    admin: &Target,
    domain: &DomainId,
    name: &str,
    content: Vec<u8>,
) -> BenchResult<Position> {
    let mut s = target::connect(admin).await?;
    let op = Op::InstallPolicy {
        name: name.to_owned(),
        content,
    };
    let r = target::write(&mut s, domain, vec![op]).await?;
    s.close().await;
    Ok(r?)
}

/// `count` connections to `node`, failing fast with one line when it does not answer.
async fn connect(
    node: &(NodeId, SocketAddr),
    creds: &Credentials,
    count: usize,
) -> BenchResult<(Vec<Endpoint>, Vec<quinn::Connection>)> {
    let config = domsync_net::client_config(creds, ALPN_GATEWAY)?;
    let bind: SocketAddr = if node.1.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let endpoints = (0..count.div_ceil(CONNECTIONS_PER_ENDPOINT))
        .map(|_| Endpoint::client(bind))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("cannot open a UDP socket: {e}"))?;
    let mut conns = Vec::with_capacity(count);
    for i in 0..count {
        let e = &endpoints[i / CONNECTIONS_PER_ENDPOINT];
        let connecting = e
            .connect_with(config.clone(), node.1, SERVER_NAME)
            .map_err(|e| format!("cannot connect to {}: {e}", node.1))?;
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| {
                format!(
                    "cannot reach node {} at {}: no answer within {CONNECT_TIMEOUT:?}; is domsyncd running there, and is that its listen (or gateway_listen) address?",
                    node.0, node.1
                )
            })?
            .map_err(|e| format!("cannot reach node {} at {}: {e}", node.0, node.1))?;
        conns.push(conn);
    }
    Ok((endpoints, conns))
}

/// The frame of a fetch of `name`, read at `at_least` or later (waiting up to 5 s for it).
fn get_policy(domain: &DomainId, name: &str, at_least: Option<Position>) -> BenchResult<Vec<u8>> {
    Ok(domsync_proto::gateway::encode(
        &Request {
            domain: domain.clone(),
            seen: Vec::new(),
            query: Query::GetPolicy {
                name: name.to_owned(),
                if_newer_than: None,
                wait_ms: if at_least.is_some() { 5000 } else { 0 },
                at_least,
            },
        },
        MAX_REQUEST_BYTES,
    )?)
}

/// One fetch; returns the bytes of content received.
async fn fetch(conn: &quinn::Connection, frame: &[u8]) -> Result<u64, String> {
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    write_frame(&mut send, frame)
        .await
        .map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())?;
    let mut bytes = 0u64;
    loop {
        let frame = read_frame(&mut recv, MAX_RESPONSE_BYTES)
            .await
            .map_err(|e| e.to_string())?
            .ok_or("the stream ended before the package did")?;
        match domsync_proto::gateway::decode::<Response>(&frame, MAX_RESPONSE_BYTES)
            .map_err(|e| e.to_string())?
        {
            Response::Chunk(c) => bytes += c.len() as u64,
            Response::PolicyEnd => return Ok(bytes),
            Response::PolicyBegin { .. } => {}
            Response::NotFound { served } => {
                return Err(format!("package not found on node {}", served.node))
            }
            Response::Behind { served } => {
                return Err(format!(
                    "node {} is behind (at lsn {}) and did not catch up in time",
                    served.node, served.position.lsn
                ))
            }
            Response::Refused(r) => return Err(r.to_string()),
            other => return Err(format!("unexpected answer {other:?}")),
        }
    }
}

/// Runs `bench read`.
pub async fn read(ctx: &Ctx) -> BenchResult<Outcome> {
    let mut o = Outcome::default();
    let s = setup(ctx, ctx.args.role).await?;
    let size = ctx.value_size();
    let name = ctx
        .args
        .package
        .clone()
        .unwrap_or_else(|| format!("bench-{size}"));
    let mut installed = None;
    if let Some(admin) = &s.admin {
        let content: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        installed = Some(install(admin, &ctx.domain, &name, content).await?);
        if let Some(c) = &s.cluster {
            c.converge().await?;
        }
    }
    let (_endpoints, conns) = connect(&s.node, &s.creds, ctx.concurrency()).await?;
    let frame = get_policy(&ctx.domain, &name, None)?;
    // One fetch first, once the node holds the install: a missing package or a refusal is
    // one clear line.
    let first = get_policy(&ctx.domain, &name, installed)?;
    fetch(&conns[0], &first).await.map_err(|e| {
        format!(
            "{e}: give an existing --package NAME, or --socket/--remote of the active to install one"
        )
    })?;
    o.params.insert("package".into(), json!(name));
    o.params
        .insert("served_by".into(), json!(s.node.0.to_string()));
    let budget = Arc::new(ctx.budget(10.0));
    let progress = Progress::start(ctx.progress, "fetches");
    let cpu = CpuMeter::start();
    let started = Instant::now();
    let tasks: Vec<_> = conns
        .iter()
        .map(|conn| {
            let (conn, frame, budget, counter) = (
                conn.clone(),
                frame.clone(),
                Arc::clone(&budget),
                progress.counter(),
            );
            tokio::spawn(async move {
                let (mut h, mut errors, mut ops, mut bytes) =
                    (Histogram::default(), Errors::default(), 0u64, 0u64);
                while budget.take() {
                    let t = Instant::now();
                    match fetch(&conn, &frame).await {
                        Ok(n) => {
                            h.record(t.elapsed());
                            ops += 1;
                            bytes += n;
                            counter.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            errors.add(e);
                            if conn.close_reason().is_some() {
                                break;
                            }
                        }
                    }
                }
                (h, errors, ops, bytes)
            })
        })
        .collect();
    for t in tasks {
        let (h, e, ops, bytes) = t.await?;
        o.latency.merge(&h);
        o.errors.merge(e);
        o.ops += ops;
        o.bytes += bytes;
    }
    o.seconds = started.elapsed().as_secs_f64();
    o.cpu_percent = cpu.percent();
    progress.finish();
    for c in &conns {
        c.close(0u32.into(), b"done");
    }
    if let Some(c) = s.cluster {
        c.shutdown().await;
    }
    Ok(o)
}

/// Reads pushes until one carries `version` or later; returns the version seen.
async fn next_push(recv: &mut quinn::RecvStream, at_least: u64) -> Result<u64, String> {
    let mut version = 0;
    loop {
        let frame = tokio::time::timeout(PUSH_TIMEOUT, read_frame(recv, MAX_RESPONSE_BYTES))
            .await
            .map_err(|_| format!("no push within {PUSH_TIMEOUT:?}"))?
            .map_err(|e| e.to_string())?
            .ok_or("the watch stream ended")?;
        match domsync_proto::gateway::decode::<Response>(&frame, MAX_RESPONSE_BYTES)
            .map_err(|e| e.to_string())?
        {
            Response::PolicyBegin { info, .. } => version = info.version,
            Response::PolicyEnd if version >= at_least => return Ok(version),
            Response::Refused(r) => return Err(r.to_string()),
            _ => {}
        }
    }
}

/// Runs `bench watch`.
pub async fn watch(ctx: &Ctx) -> BenchResult<Outcome> {
    let mut o = Outcome::default();
    let s = setup(ctx, RoleArg::Standby).await?;
    let admin = s.admin.clone().ok_or(
        "bench watch installs packages: give the active's --socket PATH or --remote ID=ADDR --admin-pki DIR --admin-id ID",
    )?;
    let size = usize::try_from(ctx.value_size())?;
    let name = ctx
        .args
        .package
        .clone()
        .unwrap_or_else(|| "bench-watch".to_owned());
    let content = |i: u64| -> Vec<u8> {
        let mut c = vec![0x5Au8; size.max(8)];
        c[..8].copy_from_slice(&i.to_le_bytes());
        c
    };
    let first = install(&admin, &ctx.domain, &name, content(0)).await?.lsn.0;
    let (_endpoints, conns) = connect(&s.node, &s.creds, 1).await?;
    let (mut send, mut recv) = conns[0].open_bi().await?;
    let req = Request {
        domain: ctx.domain.clone(),
        seen: Vec::new(),
        query: Query::Watch {
            policies: vec![(name.clone(), None)],
            crls: Vec::new(),
        },
    };
    write_frame(
        &mut send,
        &domsync_proto::gateway::encode(&req, MAX_REQUEST_BYTES)?,
    )
    .await?;
    send.finish()?;
    next_push(&mut recv, first)
        .await
        .map_err(|e| format!("watching {name} on node {}: {e}", s.node.0))?;
    o.params.insert("package".into(), json!(name));
    o.params
        .insert("watched_on".into(), json!(s.node.0.to_string()));
    let mut writer = target::connect(&admin).await?;
    let budget = ctx.budget(10.0);
    let progress = Progress::start(ctx.progress, "pushes");
    let counter: Arc<AtomicU64> = progress.counter();
    let cpu = CpuMeter::start();
    let started = Instant::now();
    let mut i = 1u64;
    while budget.take() {
        let op = Op::InstallPolicy {
            name: name.clone(),
            content: content(i),
        };
        i += 1;
        let version = match target::write(&mut writer, &ctx.domain, vec![op]).await {
            Ok(Ok(p)) => p.lsn.0,
            Ok(Err(e)) => {
                o.errors.add(e);
                continue;
            }
            Err(e) => {
                o.errors.add(e);
                break;
            }
        };
        let committed = Instant::now();
        match next_push(&mut recv, version).await {
            Ok(_) => {
                o.latency.record(committed.elapsed());
                o.ops += 1;
                o.bytes += size as u64;
                counter.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                o.errors.add(e);
                break;
            }
        }
    }
    o.seconds = started.elapsed().as_secs_f64();
    o.cpu_percent = cpu.percent();
    progress.finish();
    o.notes.push(
        "latency: the install's acknowledgement by the active's admin API to the push's end on the watching gateway".into(),
    );
    writer.close().await;
    conns[0].close(0u32.into(), b"done");
    if let Some(c) = s.cluster {
        c.shutdown().await;
    }
    Ok(o)
}
