//! A resumable watch: the stream of one node's `Events`, and (sans IO) what to do when it
//! ends: resume from the last delivered position after a bounded backoff, or give up.

use std::time::Duration;

use domsync_proto::app::{Answer, AppError, Event, KeyRange, Request};
use domsync_proto::gateway::Served;
use domsync_proto::model::{DomainId, Position};

use super::conn::{Failure, Sent};
use super::{AppClient, Batch, ClientError};

/// Most reconnections in a row before a watch gives up.
pub(crate) const MAX_RESUMES: u32 = 40;
/// First wait before reconnecting; doubled each time up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
/// Longest wait between reconnections.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// How a watch's stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum End {
    /// The connection or stream broke, or no node could be reached.
    Broken(String),
    /// The node ended it with this error.
    App(AppError),
}

/// What to do after an [`End`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Next {
    /// Reconnect after this wait and resume from the last position.
    Resume(Duration),
    /// The watch is over.
    Fail(ClientError),
}

/// Counts reconnections in a row and decides whether to go on.
#[derive(Debug, Clone, Default)]
pub(crate) struct Resumer {
    attempts: u32,
}

impl Resumer {
    /// The stream ended: resume (transport trouble, a busy or lagging node) or fail (the
    /// position cannot be resumed anywhere, or the client may not watch).
    pub(crate) fn ended(&mut self, end: End) -> Next {
        let resumable = match &end {
            End::Broken(_) => true,
            End::App(e) => matches!(
                e,
                AppError::Unavailable(_)
                    | AppError::Busy(_)
                    | AppError::Behind { .. }
                    | AppError::NotActive { .. }
            ),
        };
        if !resumable {
            return Next::Fail(match end {
                End::App(e) => ClientError::App(e),
                End::Broken(e) => ClientError::Connect(e),
            });
        }
        if self.attempts >= MAX_RESUMES {
            let why = match end {
                End::App(e) => e.to_string(),
                End::Broken(e) => e,
            };
            return Next::Fail(ClientError::Connect(format!(
                "the watch could not resume after {MAX_RESUMES} attempts: {why}; start it again from its last position"
            )));
        }
        let wait = FIRST_BACKOFF
            .saturating_mul(1u32 << self.attempts.min(10))
            .min(MAX_BACKOFF);
        self.attempts += 1;
        Next::Resume(wait)
    }

    /// A batch arrived: the next trouble starts a new count.
    pub(crate) fn delivered(&mut self) {
        self.attempts = 0;
    }
}

/// The batch to deliver after `last`: events at or before `last.lsn` (a repeat) are dropped.
pub(crate) fn batch_after(last: &Position, events: Vec<Event>, position: Position) -> Batch {
    let events = events.into_iter().filter(|e| e.lsn > last.lsn).collect();
    Batch { events, position }
}

/// The stream of one node's answers to a watch.
pub(crate) enum Stream {
    /// A connection of its own to the application socket.
    Unix(tokio::net::UnixStream),
    /// A stream of a QUIC connection (the send half kept so the node sees no reset).
    Quic {
        _send: quinn::SendStream,
        recv: quinn::RecvStream,
    },
}

impl Stream {
    async fn next(&mut self) -> Result<Answer, Sent> {
        match self {
            Stream::Unix(s) => read_event(s).await,
            Stream::Quic { recv, .. } => read_event(recv).await,
        }
    }
}

/// Reads one frame of a watch (no timeout: a quiet watch is normal; a dead node shows as a
/// closed connection or the QUIC idle timeout).
async fn read_event<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Result<Answer, Sent> {
    use domsync_proto::app::MAX_ANSWER_BYTES;
    match domsync_net::read_message::<_, Answer>(s, MAX_ANSWER_BYTES).await {
        Ok(Some(a)) => Ok(a),
        Ok(None) => Err(Sent::Whole("the node closed the watch".into())),
        Err(domsync_net::FrameError::Codec(e)) => Err(Sent::Garbled(e.to_string())),
        Err(e) => Err(Sent::Whole(e.to_string())),
    }
}

/// A running watch. Resumes by itself after a dropped connection or on another node (remote
/// targets), from the position of the last batch delivered: no gap, no repeat. Ends with an
/// error when no node can resume it (`Compacted`, `Diverged`: read again and watch anew).
pub struct Watch {
    client: AppClient,
    domain: DomainId,
    range: KeyRange,
    position: Position,
    served: Served,
    stream: Option<Stream>,
    resumer: Resumer,
}

impl Watch {
    /// Opens the watch (no resumption: an error here is the caller's).
    pub(crate) async fn open(
        client: AppClient,
        domain: DomainId,
        range: KeyRange,
        from: Option<Position>,
    ) -> Result<Watch, ClientError> {
        let (stream, served, position) = start(&client, &domain, &range, from).await?;
        Ok(Watch {
            client,
            domain,
            range,
            position,
            served,
            stream: Some(stream),
            resumer: Resumer::default(),
        })
    }

    /// The next batch of changes (or progress mark).
    ///
    /// # Errors
    /// [`ClientError`] when the watch cannot go on.
    pub async fn next(&mut self) -> Result<Batch, ClientError> {
        loop {
            let end = match self.stream.as_mut() {
                None => match start(
                    &self.client,
                    &self.domain,
                    &self.range,
                    Some(self.position.clone()),
                )
                .await
                {
                    Ok((stream, served, position)) => {
                        tracing::info!(
                            "watch of domain {} resumed on node {} from lsn {}",
                            self.domain,
                            served.node,
                            position.lsn
                        );
                        self.stream = Some(stream);
                        self.served = served;
                        continue;
                    }
                    Err(ClientError::Connect(e)) => End::Broken(e),
                    Err(ClientError::App(e)) => End::App(e),
                    Err(e) => return Err(e),
                },
                Some(stream) => match stream.next().await {
                    Ok(Answer::Events { events, position }) => {
                        let batch = batch_after(&self.position, events, position.clone());
                        self.position = position;
                        self.resumer.delivered();
                        return Ok(batch);
                    }
                    Ok(Answer::Error(e)) => End::App(e),
                    Ok(other) => {
                        return Err(ClientError::Protocol(format!(
                            "node {} sent {} in the watch of domain {}; check that domsyncd and the client are of the same release",
                            self.served.node,
                            answer_name(&other),
                            self.domain
                        )))
                    }
                    Err(Sent::Garbled(e) | Sent::Unsendable(e)) => {
                        return Err(ClientError::Protocol(format!(
                            "node {} sent an unreadable frame in the watch of domain {}: {e}",
                            self.served.node, self.domain
                        )))
                    }
                    Err(Sent::Whole(e) | Sent::Not(e)) => {
                        End::Broken(format!("node {}: {e}", self.served.node))
                    }
                },
            };
            self.stream = None;
            match self.resumer.ended(end) {
                Next::Resume(wait) => {
                    tracing::debug!("watch of domain {}: resuming in {wait:?}", self.domain);
                    self.client.watch_failed(&self.served.node);
                    tokio::time::sleep(wait).await;
                }
                Next::Fail(e) => return Err(e),
            }
        }
    }

    /// The position after the last batch delivered.
    pub fn position(&self) -> &Position {
        &self.position
    }

    /// Who serves the watch now (it changes when the watch resumes on another node).
    pub fn served(&self) -> &Served {
        &self.served
    }
}

/// Sends the watch request and reads `Watching`.
async fn start(
    client: &AppClient,
    domain: &DomainId,
    range: &KeyRange,
    from: Option<Position>,
) -> Result<(Stream, Served, Position), ClientError> {
    let req = Request::Watch {
        domain: domain.clone(),
        range: range.clone(),
        from,
    };
    let (mut stream, place) = client.open_stream(&req).await?;
    match stream.next().await {
        Ok(Answer::Watching { served, position }) => Ok((stream, served, position)),
        Ok(Answer::Error(e)) => Err(ClientError::App(e)),
        Ok(other) => Err(ClientError::Protocol(format!(
            "{place} answered {} to a watch of domain {domain}; check that domsyncd and the client are of the same release",
            answer_name(&other)
        ))),
        Err(e) => Err(match e.failure(&place, &req) {
            Failure::Protocol(e) => ClientError::Protocol(e),
            Failure::Usage(e) => ClientError::Usage(e),
            Failure::Unreached(e) | Failure::Unknown(e) => ClientError::Connect(e),
        }),
    }
}

/// The name of an answer, for messages.
pub(crate) fn answer_name(a: &Answer) -> &'static str {
    match a {
        Answer::Hello { .. } => "Hello",
        Answer::Value { .. } => "Value",
        Answer::Page(_) => "Page",
        Answer::Committed { .. } => "Committed",
        Answer::Watching { .. } => "Watching",
        Answer::Events { .. } => "Events",
        Answer::Policy { .. } => "Policy",
        Answer::Crl { .. } => "Crl",
        Answer::Error(_) => "Error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domsync_proto::model::{Epoch, Lsn, NodeId};

    fn pos(lsn: u64) -> Position {
        Position {
            epoch: Epoch {
                term: 1,
                node: NodeId::new("a").unwrap(),
            },
            lsn: Lsn(lsn),
            chain: lsn as u32,
        }
    }

    fn ev(lsn: u64) -> Event {
        Event {
            key: b"k".to_vec(),
            value: None,
            lsn: Lsn(lsn),
        }
    }

    #[test]
    fn repeats_are_dropped_and_the_position_moves() {
        let b = batch_after(&pos(5), vec![ev(4), ev(5), ev(6), ev(9)], pos(10));
        assert_eq!(b.events, vec![ev(6), ev(9)]);
        assert_eq!(b.position, pos(10));
        let mark = batch_after(&pos(10), vec![], pos(12));
        assert!(mark.events.is_empty() && mark.position == pos(12));
    }

    #[test]
    fn transport_trouble_resumes_with_bounded_backoff_and_gives_up() {
        let mut r = Resumer::default();
        let mut waits = Vec::new();
        for _ in 0..MAX_RESUMES {
            match r.ended(End::Broken("gone".into())) {
                Next::Resume(w) => waits.push(w),
                Next::Fail(e) => panic!("{e}"),
            }
        }
        assert_eq!(waits[0], FIRST_BACKOFF);
        assert!(waits.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*waits.last().unwrap(), MAX_BACKOFF);
        assert!(matches!(
            r.ended(End::Broken("gone".into())),
            Next::Fail(ClientError::Connect(_))
        ));
        // A delivered batch starts a new count.
        r.delivered();
        assert_eq!(
            r.ended(End::App(AppError::Busy("x".into()))),
            Next::Resume(FIRST_BACKOFF)
        );
    }

    #[test]
    fn positions_that_cannot_resume_end_the_watch() {
        let d = DomainId::new("t1").unwrap();
        let node = NodeId::new("b").unwrap();
        for e in [
            AppError::Compacted {
                domain: d.clone(),
                node: node.clone(),
                from: pos(3),
                oldest: Lsn(9),
            },
            AppError::Diverged {
                domain: d.clone(),
                node: node.clone(),
                from: pos(3),
            },
            AppError::Forbidden {
                domain: d.clone(),
                node: node.clone(),
            },
        ] {
            assert_eq!(
                Resumer::default().ended(End::App(e.clone())),
                Next::Fail(ClientError::App(e))
            );
        }
    }
}
