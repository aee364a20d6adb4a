//! One request to one node and its answer, checked against what the client has seen; the
//! failover of a request across the nodes; why a node's answer was not used ([`Fail`]).

use std::fmt;
use std::time::{Duration, Instant};

use super::assembly::Assembly;
use super::client::Client;
use super::config::{CrlCopy, Listing, Origin};
use super::lookup::{knows_behind, reached, version_position, Got, Lookup, Miss};
use super::pool::lock;
use domsync_net::{read_frame, write_frame};
use domsync_proto::gateway::{
    Query, Refusal, Request, Response, MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES, MAX_WAIT_MS,
};
use domsync_proto::model::NodeId;

/// Why one node's answer was not used (the client moves on to the next node).
#[derive(Debug, Clone)]
pub(super) enum Fail {
    Connect(String),
    Timeout(&'static str),
    Stream(String),
    Refused(Refusal),
    /// The answer broke the protocol or failed verification.
    Bad(String),
    /// The node is behind what the client has seen.
    Behind(String),
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fail::Connect(e) => write!(f, "cannot connect: {e}"),
            Fail::Timeout(what) => write!(f, "timed out waiting for {what}"),
            Fail::Stream(e) => write!(f, "stream failed: {e}"),
            Fail::Refused(r) => write!(f, "refused: {r}"),
            Fail::Bad(e) => write!(f, "bad answer: {e}"),
            Fail::Behind(e) => write!(f, "behind: {e}"),
        }
    }
}

pub(super) fn summary(failures: &[(NodeId, Fail)]) -> String {
    if failures.is_empty() {
        return "no node configured".to_owned();
    }
    failures
        .iter()
        .map(|(n, f)| format!("{n}: {f}"))
        .collect::<Vec<_>>()
        .join("; ")
}

/// What one request asks.
pub(super) enum Ask<'a> {
    ListPolicies,
    Fetch(&'a str),
    ListCrls,
    Crl(&'a str),
    ListIssuers,
    DeltaCrl(&'a str),
}

/// One request's stream.
pub(super) struct Exchange {
    _send: quinn::SendStream,
    pub(super) recv: quinn::RecvStream,
    pub(super) conn: quinn::Connection,
}

impl Client {
    /// Opens a stream on node `i` and sends the request.
    pub(super) async fn open(&self, i: usize, query: Query) -> Result<Exchange, Fail> {
        let conn = self.connection(i).await?;
        let request = Request {
            domain: self.inner.domain.clone(),
            seen: self.seen(),
            query,
        };
        let frame = domsync_proto::gateway::encode(&request, MAX_REQUEST_BYTES)
            .map_err(|e| Fail::Bad(format!("request not encodable: {e}")))?;
        let (mut send, recv) = tokio::time::timeout(self.inner.request_timeout, conn.open_bi())
            .await
            .map_err(|_| Fail::Timeout("a stream"))?
            .map_err(|e| Fail::Stream(e.to_string()))?;
        write_frame(&mut send, &frame)
            .await
            .map_err(|e| Fail::Stream(e.to_string()))?;
        send.finish().map_err(|e| Fail::Stream(e.to_string()))?;
        Ok(Exchange {
            _send: send,
            recv,
            conn,
        })
    }

    async fn read(&self, ex: &mut Exchange, extra: Duration) -> Result<Response, Fail> {
        let wait = self.inner.request_timeout + extra;
        match tokio::time::timeout(wait, read_frame(&mut ex.recv, MAX_RESPONSE_BYTES)).await {
            Err(_) => Err(Fail::Timeout("the answer")),
            Ok(Err(e)) => Err(Fail::Stream(e.to_string())),
            Ok(Ok(None)) => Err(Fail::Stream("the node ended the answer early".into())),
            Ok(Ok(Some(frame))) => domsync_proto::gateway::decode(&frame, MAX_RESPONSE_BYTES)
                .map_err(|e| Fail::Bad(format!("undecodable frame: {e}"))),
        }
    }

    /// Tries the nodes in order until one gives an answer that carries the item; a "not
    /// found" moves on to the next node too (see [`Lookup`]).
    pub(super) async fn ask(&self, ask: &Ask<'_>) -> Result<Got, Miss> {
        let mut lookup = Lookup::default();
        for i in self.candidates().await {
            let node = self.inner.nodes[i].0.clone();
            let answer = match self.attempt(i, ask).await {
                Ok((got, rtt)) => {
                    lock(&self.inner.state).selector.succeeded(i, rtt);
                    if matches!(got, Got::NotFound(_)) {
                        tracing::debug!(%node, "gateway request: not found there; asking the next node");
                    }
                    Ok(got)
                }
                Err(fail) => {
                    tracing::debug!(%node, error = %fail, "gateway request: trying the next node");
                    lock(&self.inner.state).selector.failed(i, Instant::now());
                    Err(fail)
                }
            };
            if let Some(got) = lookup.answer(node, answer) {
                return Ok(got);
            }
        }
        Err(lookup.finish())
    }

    async fn attempt(&self, i: usize, ask: &Ask<'_>) -> Result<(Got, Duration), Fail> {
        let got = match ask {
            Ask::ListPolicies => {
                let mut ex = self.open(i, Query::ListPolicies).await?;
                let got = self.list_policies_answer(&mut ex).await?;
                (got, ex.conn.rtt())
            }
            Ask::Fetch(name) => self.fetch_from(i, name).await?,
            Ask::ListCrls => {
                let mut ex = self.open(i, Query::ListCrls).await?;
                let got = self.list_crls_answer(&mut ex).await?;
                (got, ex.conn.rtt())
            }
            Ask::Crl(issuer) => self.crl_from(i, issuer).await?,
            Ask::DeltaCrl(issuer) => self.delta_crl_from(i, issuer).await?,
            Ask::ListIssuers => {
                let mut ex = self.open(i, Query::ListIssuers).await?;
                let (served, list) = match self.read(&mut ex, Duration::ZERO).await? {
                    Response::Issuers { served, list } => (served, list),
                    Response::Behind { served } => return Err(knows_behind(&served)),
                    Response::Refused(r) => return Err(Fail::Refused(r)),
                    other => return Err(Fail::Bad(format!("unexpected {}", kind(&other)))),
                };
                self.note(&mut lock(&self.inner.state), &served);
                (
                    Got::Issuers(Listing {
                        items: list,
                        served,
                    }),
                    ex.conn.rtt(),
                )
            }
        };
        Ok(got)
    }

    async fn list_policies_answer(&self, ex: &mut Exchange) -> Result<Got, Fail> {
        let (served, list) = match self.read(ex, Duration::ZERO).await? {
            Response::Policies { served, list } => (served, list),
            Response::Behind { served } => return Err(knows_behind(&served)),
            Response::Refused(r) => return Err(Fail::Refused(r)),
            other => return Err(Fail::Bad(format!("unexpected {}", kind(&other)))),
        };
        let mut st = lock(&self.inner.state);
        for (name, ps) in &st.policies {
            let Some(known) = &ps.known else { continue };
            match list.iter().find(|p| &p.name == name) {
                Some(p) if p.stamp() < *known => {
                    return Err(Fail::Behind(format!(
                        "lists package {name} at {}, the client saw {known}",
                        p.stamp()
                    )))
                }
                None if !reached(&served.position, &version_position(known)) => {
                    return Err(Fail::Behind(format!(
                        "at {} without package {name}, the client saw {known}",
                        served.position
                    )))
                }
                _ => {}
            }
        }
        for p in &list {
            let ps = st.policies.entry(p.name.clone()).or_default();
            if ps.known.as_ref().is_none_or(|k| p.stamp() > *k) {
                ps.known = Some(p.stamp());
            }
        }
        self.note(&mut st, &served);
        Ok(Got::Policies(Listing {
            items: list,
            served,
        }))
    }

    async fn list_crls_answer(&self, ex: &mut Exchange) -> Result<Got, Fail> {
        let (served, list) = match self.read(ex, Duration::ZERO).await? {
            Response::Crls { served, list } => (served, list),
            Response::Behind { served } => return Err(knows_behind(&served)),
            Response::Refused(r) => return Err(Fail::Refused(r)),
            other => return Err(Fail::Bad(format!("unexpected {}", kind(&other)))),
        };
        let mut st = lock(&self.inner.state);
        for (issuer, cs) in &st.crls {
            let Some((known, at)) = &cs.known else {
                continue;
            };
            match list.iter().find(|c| &c.issuer == issuer) {
                Some(c) if c.number < *known => {
                    return Err(Fail::Behind(format!(
                        "lists CRL {} of {issuer}, the client saw {known}",
                        c.number
                    )))
                }
                None if !reached(&served.position, at) => {
                    return Err(Fail::Behind(format!(
                        "at {} without the CRL of {issuer}, the client saw it at {at}",
                        served.position
                    )))
                }
                _ => {}
            }
        }
        for c in &list {
            let cs = st.crls.entry(c.issuer.clone()).or_default();
            if cs.known.as_ref().is_none_or(|(k, _)| c.number > *k) {
                cs.known = Some((c.number.clone(), served.position.clone()));
            }
        }
        self.note(&mut st, &served);
        Ok(Got::Crls(Listing {
            items: list,
            served,
        }))
    }

    async fn fetch_from(&self, i: usize, name: &str) -> Result<(Got, Duration), Fail> {
        let (held, known) = {
            let st = lock(&self.inner.state);
            let ps = st.policies.get(name);
            (
                ps.and_then(|p| p.held.clone()),
                ps.and_then(|p| p.known.clone()),
            )
        };
        let held_version = held.as_ref().map(|p| p.info.stamp());
        let at_least = known.as_ref().map(version_position);
        let extra = if at_least.is_some() {
            self.inner.lag_wait
        } else {
            Duration::ZERO
        };
        let query = Query::GetPolicy {
            name: name.to_owned(),
            if_newer_than: held_version.clone(),
            at_least: at_least.clone(),
            wait_ms: u32::try_from(extra.as_millis()).unwrap_or(MAX_WAIT_MS),
        };
        let mut ex = self.open(i, query).await?;
        let got = match self.read(&mut ex, extra).await? {
            Response::PolicyBegin { served, info } => {
                if info.name != name {
                    return Err(Fail::Bad(format!(
                        "asked for package {name}, got {}",
                        info.name
                    )));
                }
                let v = info.stamp();
                if known.as_ref().is_some_and(|k| v < *k) {
                    return Err(Fail::Behind(format!(
                        "sent {name} {v}, the client saw {}",
                        known.as_ref().map(ToString::to_string).unwrap_or_default()
                    )));
                }
                let mut assembly = Assembly::begin(served, info)?;
                loop {
                    match self.read(&mut ex, Duration::ZERO).await? {
                        Response::Chunk(c) => assembly.chunk(&c)?,
                        Response::PolicyEnd => break,
                        Response::Refused(r) => return Err(Fail::Refused(r)),
                        other => {
                            return Err(Fail::Bad(format!(
                                "unexpected {} inside a package",
                                kind(&other)
                            )))
                        }
                    }
                }
                let package = assembly.end()?;
                if held_version.as_ref().is_some_and(|h| v <= *h) {
                    // The node ignored `if_newer_than`; ours is as new.
                    return Err(Fail::Bad(format!(
                        "sent {name} {v} though the client holds it"
                    )));
                }
                if let Some(write) = self.accept_policy(&package) {
                    let _ = write.await;
                }
                Got::Package(package)
            }
            Response::NotModified { served } => {
                let Some(mut p) = held else {
                    return Err(Fail::Bad(
                        "answered not modified to a request without a version".into(),
                    ));
                };
                if known.as_ref().is_some_and(|k| p.info.stamp() < *k) {
                    return Err(Fail::Behind(format!(
                        "has nothing newer than {}, but the client saw {}",
                        p.info.stamp(),
                        known.as_ref().map(ToString::to_string).unwrap_or_default()
                    )));
                }
                self.note(&mut lock(&self.inner.state), &served);
                p.served = served;
                p.origin = Origin::Confirmed;
                Got::Package(p)
            }
            Response::NotFound { served } => {
                if let Some(k) = &known {
                    if !reached(&served.position, &version_position(k)) {
                        return Err(Fail::Behind(format!(
                            "at {} without package {name}, the client saw {k}",
                            served.position
                        )));
                    }
                }
                self.note(&mut lock(&self.inner.state), &served);
                Got::NotFound(served)
            }
            // Not for want of the asked position: it knows it is behind the domain.
            Response::Behind { served }
                if at_least
                    .as_ref()
                    .is_none_or(|a| reached(&served.position, a)) =>
            {
                return Err(knows_behind(&served))
            }
            Response::Behind { served } => {
                return Err(Fail::Behind(format!(
                    "at {} after waiting {} ms",
                    served.position,
                    extra.as_millis()
                )))
            }
            Response::Refused(r) => return Err(Fail::Refused(r)),
            other => return Err(Fail::Bad(format!("unexpected {}", kind(&other)))),
        };
        Ok((got, ex.conn.rtt()))
    }

    async fn crl_from(&self, i: usize, issuer: &str) -> Result<(Got, Duration), Fail> {
        let (held, known) = {
            let st = lock(&self.inner.state);
            let cs = st.crls.get(issuer);
            (
                cs.and_then(|c| c.held.clone()),
                cs.and_then(|c| c.known.clone()),
            )
        };
        let query = Query::GetCrl {
            issuer: issuer.to_owned(),
            if_newer_than: held.as_ref().map(|c| c.crl.number.clone()),
        };
        let mut ex = self.open(i, query).await?;
        let got = match self.read(&mut ex, Duration::ZERO).await? {
            Response::Crl { served, crl } => {
                if crl.issuer != issuer {
                    return Err(Fail::Bad(format!(
                        "asked for the CRL of {issuer}, got {}",
                        crl.issuer
                    )));
                }
                if let Some((k, _)) = known.as_ref().filter(|(k, _)| crl.number < *k) {
                    return Err(Fail::Behind(format!(
                        "sent CRL {} of {issuer}, the client saw {k}",
                        crl.number
                    )));
                }
                let copy = CrlCopy {
                    crl,
                    served,
                    origin: Origin::Fetched,
                };
                if let Some(write) = self.accept_crl(&copy) {
                    let _ = write.await;
                }
                Got::Crl(copy)
            }
            Response::NotModified { served } => {
                let Some(mut c) = held else {
                    return Err(Fail::Bad(
                        "answered not modified to a request without a number".into(),
                    ));
                };
                if let Some((k, at)) = &known {
                    if c.crl.number < *k || !reached(&served.position, at) {
                        return Err(Fail::Behind(format!(
                            "at {}, the client saw CRL {k} of {issuer} at {at}",
                            served.position
                        )));
                    }
                }
                self.note(&mut lock(&self.inner.state), &served);
                c.served = served;
                c.origin = Origin::Confirmed;
                Got::Crl(c)
            }
            Response::NotFound { served } => {
                if let Some((k, at)) = &known {
                    if !reached(&served.position, at) {
                        return Err(Fail::Behind(format!(
                            "at {} without the CRL of {issuer}, the client saw {k} at {at}",
                            served.position
                        )));
                    }
                }
                self.note(&mut lock(&self.inner.state), &served);
                Got::NotFound(served)
            }
            Response::Behind { served } => return Err(knows_behind(&served)),
            Response::Refused(r) => return Err(Fail::Refused(r)),
            other => return Err(Fail::Bad(format!("unexpected {}", kind(&other)))),
        };
        Ok((got, ex.conn.rtt()))
    }
}

impl Client {
    /// The newest delta CRL of `issuer` from node `i` (not cached: a delta is only useful
    /// with the base the client holds).
    async fn delta_crl_from(&self, i: usize, issuer: &str) -> Result<(Got, Duration), Fail> {
        let query = Query::GetCrlOf {
            issuer: domsync_proto::model::IssuerKey::Text(issuer.to_owned()),
            delta: true,
            if_newer_than: None,
        };
        let mut ex = self.open(i, query).await?;
        let got = match self.read(&mut ex, Duration::ZERO).await? {
            Response::Crl { served, crl } => {
                if crl.issuer != issuer {
                    return Err(Fail::Bad(format!(
                        "asked for the delta CRL of {issuer}, got one of {}",
                        crl.issuer
                    )));
                }
                self.note(&mut lock(&self.inner.state), &served);
                Got::Crl(CrlCopy {
                    crl,
                    served,
                    origin: Origin::Fetched,
                })
            }
            Response::NotFound { served } => {
                self.note(&mut lock(&self.inner.state), &served);
                Got::NotFound(served)
            }
            Response::Behind { served } => return Err(knows_behind(&served)),
            Response::Refused(r) => return Err(Fail::Refused(r)),
            other => return Err(Fail::Bad(format!("unexpected {}", kind(&other)))),
        };
        Ok((got, ex.conn.rtt()))
    }
}

pub(super) fn kind(r: &Response) -> &'static str {
    match r {
        Response::Policies { .. } => "package list",
        Response::PolicyBegin { .. } => "package",
        Response::Chunk(_) => "chunk",
        Response::PolicyEnd => "package end",
        Response::NotModified { .. } => "not-modified",
        Response::NotFound { .. } => "not-found",
        Response::Behind { .. } => "behind",
        Response::Crls { .. } => "CRL list",
        Response::Crl { .. } => "CRL",
        Response::Removed { .. } => "removal",
        Response::Refused(_) => "refusal",
        Response::Issuers { .. } => "issuer list",
    }
}
