//! The resumable [`Watch`] of packages and CRL issuers: its stream on one node, the checks of
//! each pushed version, failover to the next node and the move back to a better one.

use std::fmt;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::assembly::Assembly;
use super::client::Client;
use super::config::{CrlCopy, Error, Origin, Update};
use super::exchange::{kind, Fail};
use super::lookup::{reached, version_position};
use super::pool::lock;
use domsync_net::read_frame;
use domsync_proto::gateway::{Query, Response, MAX_NAMES, MAX_RESPONSE_BYTES};
use domsync_proto::model::NodeId;

/// Pause of a watch between two rounds in which no node could be reached.
const WATCH_RETRY: Duration = Duration::from_millis(500);

impl Client {
    /// Watches packages and CRL issuers: [`Watch::next`] yields each version newer than the
    /// one the client holds, as the nodes push them. The stream is opened on the first
    /// `next()`.
    ///
    /// # Errors
    /// [`Error::Config`] for an empty watch or more than [`MAX_NAMES`] packages or issuers.
    pub fn watch(&self, policies: &[&str], crls: &[&str]) -> Result<Watch, Error> {
        if policies.is_empty() && crls.is_empty() {
            return Err(Error::Config(
                "a watch needs at least one package or CRL issuer".to_owned(),
            ));
        }
        if policies.len() > MAX_NAMES || crls.len() > MAX_NAMES {
            return Err(Error::Config(format!(
                "a watch covers at most {MAX_NAMES} packages and {MAX_NAMES} CRL issuers; use several watches"
            )));
        }
        let mut recheck = tokio::time::interval(self.inner.recheck);
        recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(Watch {
            client: self.clone(),
            policies: policies.iter().map(|s| (*s).to_owned()).collect(),
            crls: crls.iter().map(|s| (*s).to_owned()).collect(),
            stream: None,
            recheck,
            pause: false,
            failures: Vec::new(),
        })
    }
}

/// A watch of packages and CRL issuers ([`Client::watch`]). [`Watch::next`] yields each
/// version newer than the one the client holds and not older than one it has seen, in the
/// order the nodes push them, never the same version twice and never an older one. When the
/// serving node fails, the watch resumes on the next node from the versions it holds; every
/// recheck interval it moves back to a better node that has recovered.
///
/// The nodes push the current version at each commit or apply, so versions committed in a
/// quick burst may arrive as the last of the burst only.
pub struct Watch {
    client: Client,
    policies: Vec<String>,
    crls: Vec<String>,
    stream: Option<WatchStream>,
    recheck: tokio::time::Interval,
    pause: bool,
    /// Streams that failed since the last good frame.
    failures: Vec<(NodeId, Fail)>,
}

struct WatchStream {
    node: usize,
    frames: mpsc::Receiver<Result<Response, Fail>>,
    task: tokio::task::JoinHandle<()>,
    assembly: Option<Assembly>,
}

impl Drop for WatchStream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

enum Event {
    Frame(Box<Option<Result<Response, Fail>>>),
    Tick,
}

impl fmt::Debug for Watch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Watch")
            .field("policies", &self.policies)
            .field("crls", &self.crls)
            .field("node", &self.node())
            .finish_non_exhaustive()
    }
}

impl Watch {
    /// The node the watch is connected to now, if any.
    pub fn node(&self) -> Option<NodeId> {
        let s = self.stream.as_ref()?;
        Some(self.client.inner.nodes[s.node].0.clone())
    }

    /// The next update. Failover is internal: an error means no node could be reached, or
    /// every node's stream failed in turn, in a whole round (the watch stays usable; call
    /// `next()` again to keep trying, after a short pause). Cancel-safe: a `next()` dropped
    /// before it returns loses no update.
    ///
    /// # Errors
    /// [`Error::Unavailable`] as above.
    pub async fn next(&mut self) -> Result<Update, Error> {
        loop {
            if self.stream.is_none() {
                if self.pause {
                    tokio::time::sleep(WATCH_RETRY).await;
                }
                match self.open_any().await {
                    Ok(s) => {
                        self.pause = false;
                        self.stream = Some(s);
                    }
                    Err(e) => {
                        self.pause = true;
                        return Err(e);
                    }
                }
            }
            let Some(stream) = self.stream.as_mut() else {
                continue;
            };
            let event = tokio::select! {
                f = stream.frames.recv() => Event::Frame(Box::new(f)),
                _ = self.recheck.tick() => Event::Tick,
            };
            let event = match event {
                Event::Tick => {
                    self.move_to_better().await;
                    continue;
                }
                Event::Frame(f) => *f,
            };
            let fail = match event {
                Some(Ok(response)) => match self.handle(response) {
                    Ok(update) => {
                        self.failures.clear();
                        match update {
                            Some(update) => return Ok(update),
                            None => continue,
                        }
                    }
                    Err(fail) => fail,
                },
                Some(Err(fail)) => fail,
                None => Fail::Stream("the watch stream ended".into()),
            };
            self.drop_stream(fail);
            // Every node failed in turn without one good frame (refused everywhere, say):
            // report it rather than spin.
            if self.failures.len() >= self.client.inner.nodes.len() {
                self.pause = true;
                let failures = std::mem::take(&mut self.failures);
                return Err(self.client.unavailable(&failures));
            }
        }
    }

    fn drop_stream(&mut self, fail: Fail) {
        if let Some(s) = self.stream.take() {
            let node = self.client.inner.nodes[s.node].0.clone();
            tracing::info!(%node, error = %fail, "gateway watch: moving to the next node");
            lock(&self.client.inner.state)
                .selector
                .failed(s.node, Instant::now());
            self.failures.push((node, fail));
        }
    }

    async fn open_any(&mut self) -> Result<WatchStream, Error> {
        let mut failures = Vec::new();
        for i in self.client.candidates().await {
            match self.open_on(i).await {
                Ok(s) => return Ok(s),
                Err(fail) => {
                    lock(&self.client.inner.state)
                        .selector
                        .failed(i, Instant::now());
                    failures.push((self.client.inner.nodes[i].0.clone(), fail));
                }
            }
        }
        Err(self.client.unavailable(&failures))
    }

    /// Opens a watch on node `i` from the versions the client holds.
    async fn open_on(&self, i: usize) -> Result<WatchStream, Fail> {
        for name in &self.policies {
            self.client.load_policy(name).await;
        }
        for issuer in &self.crls {
            self.client.load_crl(issuer).await;
        }
        let query = {
            let st = lock(&self.client.inner.state);
            Query::Watch {
                policies: self
                    .policies
                    .iter()
                    .map(|n| {
                        let held = st.policies.get(n).and_then(|p| p.held.as_ref());
                        (n.clone(), held.map(|p| p.info.stamp()))
                    })
                    .collect(),
                crls: self
                    .crls
                    .iter()
                    .map(|n| {
                        let held = st.crls.get(n).and_then(|c| c.held.as_ref());
                        (n.clone(), held.map(|c| c.crl.number.clone()))
                    })
                    .collect(),
            }
        };
        let mut ex = self.client.open(i, query).await?;
        let rtt = ex.conn.rtt();
        lock(&self.client.inner.state).selector.succeeded(i, rtt);
        // One frame in flight (at most MAX_RESPONSE_BYTES) plus the one being handled.
        let (tx, frames) = mpsc::channel(1);
        let task = tokio::spawn(async move {
            loop {
                let frame = match read_frame(&mut ex.recv, MAX_RESPONSE_BYTES).await {
                    Ok(Some(f)) => domsync_proto::gateway::decode(&f, MAX_RESPONSE_BYTES)
                        .map_err(|e| Fail::Bad(format!("undecodable frame: {e}"))),
                    Ok(None) => Err(Fail::Stream("the node ended the watch".into())),
                    Err(e) => Err(Fail::Stream(e.to_string())),
                };
                let end = frame.is_err();
                if tx.send(frame).await.is_err() || end {
                    return;
                }
            }
        });
        Ok(WatchStream {
            node: i,
            frames,
            task,
            assembly: None,
        })
    }

    /// On each recheck tick: probe nodes due for it, and move to a better node that is up.
    async fn move_to_better(&mut self) {
        let Some(current) = self.stream.as_ref().map(|s| s.node) else {
            return;
        };
        let due = lock(&self.client.inner.state)
            .selector
            .due_for_probe(Instant::now());
        self.client.spawn_probes(due);
        let better = lock(&self.client.inner.state)
            .selector
            .better_than(current, Instant::now());
        if let Some(b) = better {
            if let Ok(s) = self.open_on(b).await {
                let node = &self.client.inner.nodes[b].0;
                tracing::info!(%node, "gateway watch: back on a better node");
                self.stream = Some(s);
            }
        }
    }

    /// One pushed frame: an update to yield, nothing yet, or a reason to leave the node.
    fn handle(&mut self, response: Response) -> Result<Option<Update>, Fail> {
        let Some(stream) = self.stream.as_mut() else {
            return Ok(None);
        };
        match response {
            Response::PolicyBegin { served, info } => {
                if !self.policies.contains(&info.name) {
                    return Err(Fail::Bad(format!("pushed unwatched package {}", info.name)));
                }
                stream.assembly = Some(Assembly::begin(served, info)?);
                Ok(None)
            }
            Response::Chunk(piece) => match stream.assembly.as_mut() {
                Some(a) => a.chunk(&piece).map(|()| None),
                None => Err(Fail::Bad("a chunk outside a package".into())),
            },
            Response::PolicyEnd => {
                let Some(a) = stream.assembly.take() else {
                    return Err(Fail::Bad("a package end outside a package".into()));
                };
                let package = a.end()?;
                let v = package.info.stamp();
                let fresh = {
                    let mut st = lock(&self.client.inner.state);
                    self.client.note(&mut st, &package.served);
                    let ps = st.policies.entry(package.info.name.clone()).or_default();
                    let newer = ps.held.as_ref().is_none_or(|h| v > h.info.stamp());
                    let not_older = ps.known.as_ref().is_none_or(|k| v >= *k);
                    newer && not_older
                };
                if !fresh {
                    return Ok(None);
                }
                drop(self.client.accept_policy(&package));
                Ok(Some(Update::Policy(package)))
            }
            Response::Crl { served, crl } => {
                if !self.crls.contains(&crl.issuer) {
                    return Err(Fail::Bad(format!("pushed unwatched CRL {}", crl.issuer)));
                }
                let fresh = {
                    let mut st = lock(&self.client.inner.state);
                    self.client.note(&mut st, &served);
                    let cs = st.crls.entry(crl.issuer.clone()).or_default();
                    let newer = cs.held.as_ref().is_none_or(|h| crl.number > h.crl.number);
                    let not_older = cs.known.as_ref().is_none_or(|(k, _)| crl.number >= *k);
                    newer && not_older
                };
                if !fresh {
                    return Ok(None);
                }
                let copy = CrlCopy {
                    crl,
                    served,
                    origin: Origin::Fetched,
                };
                drop(self.client.accept_crl(&copy));
                Ok(Some(Update::Crl(copy)))
            }
            Response::Removed { served, name } => {
                if self.policies.contains(&name) {
                    let (held, behind) = {
                        let st = lock(&self.client.inner.state);
                        let ps = st.policies.get(&name);
                        let known = ps.and_then(|p| p.known.as_ref());
                        (
                            ps.is_some_and(|p| p.held.is_some()),
                            known.is_some_and(|k| !reached(&served.position, &version_position(k))),
                        )
                    };
                    // A lagging node that does not have the package yet is not believed.
                    if behind || !held {
                        return Ok(None);
                    }
                    drop(self.client.forget_policy(&name, &served));
                    Ok(Some(Update::PolicyRemoved { name, served }))
                } else if self.crls.contains(&name) {
                    let (held, behind) = {
                        let st = lock(&self.client.inner.state);
                        let cs = st.crls.get(&name);
                        let known = cs.and_then(|c| c.known.as_ref());
                        (
                            cs.is_some_and(|c| c.held.is_some()),
                            known.is_some_and(|(_, at)| !reached(&served.position, at)),
                        )
                    };
                    if behind || !held {
                        return Ok(None);
                    }
                    drop(self.client.forget_crl(&name, &served));
                    Ok(Some(Update::CrlRemoved {
                        issuer: name,
                        served,
                    }))
                } else {
                    Err(Fail::Bad(format!("pushed the removal of unwatched {name}")))
                }
            }
            Response::Refused(r) => Err(Fail::Refused(r)),
            other => Err(Fail::Bad(format!("unexpected {} in a watch", kind(&other)))),
        }
    }
}
