//! The active's stream to one standby: it serves the standby's `Follow` and then executes the
//! `Shipper`'s actions (records in windows, snapshots in chunks, acknowledgements releasing
//! writers waiting for durability).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use super::{lock, wall_micros, Node};
use domsync_net::{open_frame, read_frame, write_frame, FrameError};
use domsync_proto::model::SnapshotItem;
use domsync_proto::model::{DomainId, Lsn, NodeId, Position};
use domsync_proto::repl::encode_message;
use domsync_proto::repl::Ask;
use domsync_proto::repl::MAX_INBOUND_BYTES;
use domsync_proto::repl::{
    Answer, LocalView, Message, RecordBytes, RejectReason, ShipAction, Shipper, SnapshotHeader,
};
use domsync_store::{Domain, StoreError};

use crate::active::*;

impl Node {
    /// Serves one stream opened by `peer`: its first frame is `Follow`.
    pub(super) async fn serve_stream(
        self,
        peer: NodeId,
        mut send: quinn::SendStream,
        recv: quinn::RecvStream,
    ) {
        let (mut inbox, _) = spawn_reader(recv, MAX_INBOUND_BYTES);
        let first = tokio::time::timeout(Duration::from_secs(10), inbox.recv()).await;
        let follow = match first {
            Ok(Some(Ok(Message::Follow(f)))) => f,
            Ok(Some(Ok(Message::TakeOver(take)))) => {
                let answer = Message::TookOver(self.take_over(&peer, &take).await);
                if let Ok(frame) = encode_message(&answer) {
                    drop(write_frame(&mut send, &frame).await);
                }
                drop(send.finish());
                drop(tokio::time::timeout(Duration::from_secs(5), inbox.recv()).await);
                return;
            }
            Ok(Some(Ok(Message::Probe { domain, epoch }))) => {
                let answer =
                    Message::ProbeAnswer(self.answer_probe(&peer, &domain, epoch.as_ref()).await);
                if let Ok(frame) = encode_message(&answer) {
                    drop(write_frame(&mut send, &frame).await);
                }
                drop(send.finish());
                // Wait for the peer to read the answer before the stream is dropped.
                drop(tokio::time::timeout(Duration::from_secs(5), inbox.recv()).await);
                return;
            }
            Ok(Some(Ok(_))) => {
                tracing::warn!(peer = %peer, "replication stream did not start with Follow; closed");
                return;
            }
            Ok(Some(Err(e))) => {
                tracing::warn!(peer = %peer, error = %e, "replication stream refused");
                return;
            }
            Ok(None) | Err(_) => return,
        };
        let domain_id = follow.domain.clone();
        let reject = |reason| {
            encode_message(&Message::Answer(Answer::Reject {
                reason,
                active: None,
            }))
        };
        let replicas = self.replicas(&domain_id);
        if let Err(refusal) = self.authorize(&peer, Ask::Follow, &domain_id, &replicas) {
            // Exactly what an unknown domain gets: nothing about the domain is revealed.
            tracing::warn!(domain = %domain_id, peer = %peer, "follow refused: {refusal}");
            if let Ok(frame) = reject(RejectReason::UnknownDomain) {
                drop(write_frame(&mut send, &frame).await);
            }
            drop(send.finish());
            return;
        }
        let Some(ad) = self.active(&domain_id) else {
            // Not active here: answer from the store's view when it has the domain.
            let answer = match self.store_view(&domain_id) {
                Some(view) => {
                    Message::Answer(domsync_proto::repl::decide(&follow, &view, |_| None))
                }
                None => Message::Answer(Answer::Reject {
                    reason: RejectReason::UnknownDomain,
                    active: None,
                }),
            };
            if let Ok(frame) = encode_message(&answer) {
                drop(write_frame(&mut send, &frame).await);
            }
            drop(send.finish());
            return;
        };
        if let Ok(status) = ad.domain.status() {
            if follow.epoch > status.epoch {
                // Invariant 1: a higher epoch exists; the role machine checks it and steps
                // down at once.
                self.higher_epoch(&peer, &domain_id, &follow.epoch).await;
                if let Ok(frame) = reject(RejectReason::StaleEpoch) {
                    drop(write_frame(&mut send, &frame).await);
                }
                drop(send.finish());
                return;
            }
        }
        let now = Instant::now();
        let shipper = Arc::new(Mutex::new(Shipper::new(
            peer.clone(),
            self.inner.config.ship,
            now,
        )));
        lock(&ad.shippers).insert(peer.clone(), Arc::clone(&shipper));
        let view = match local_view(&self, &ad.domain) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(domain = %domain_id, error = %e, "cannot read the local replica");
                return;
            }
        };
        let d = ad.domain.clone();
        let actions =
            lock(&shipper).on_follow(&follow, &view, |l| d.chain_at(l).ok().flatten(), now);
        tracing::info!(domain = %domain_id, standby = %peer, position = %follow.position, "standby follows");
        let mut stream = ActiveStream {
            node: self.clone(),
            ad: Arc::clone(&ad),
            peer,
            shipper: Arc::clone(&shipper),
            send,
        };
        // What the standby holds on our history counts as durable there (retention, waiters).
        let held = lock(&shipper).ack().durable;
        stream.release(held);
        stream.run(actions, &mut inbox).await;
        lock(&shipper).disconnected();
    }

    fn store_view(&self, _domain: &DomainId) -> Option<LocalView> {
        let ad_standby = lock(&self.inner.standbys).get(_domain).cloned()?;
        local_view(self, ad_standby.domain()).ok()
    }
}

/// The active's view of its replica, for deciding how to serve a standby.
fn local_view(node: &Node, domain: &Domain) -> Result<LocalView, StoreError> {
    let s = domain.status()?;
    Ok(LocalView {
        node: node.id().clone(),
        role: s.role,
        uid: s.uid,
        epoch: s.epoch,
        history: s.history,
        position: s.position,
        log_start: s.log_start,
        log_base_chain: s.log_base_chain,
    })
}

/// When bytes last arrived on a stream read by [`spawn_reader`]: a large message (a policy
/// package of tens of MiB on a slow link) takes longer than the silence bound to arrive whole,
/// and is not silence while its bytes keep coming.
#[derive(Debug)]
pub(super) struct Arrivals {
    base: tokio::time::Instant,
    last_micros: std::sync::atomic::AtomicU64,
}

impl Arrivals {
    fn new() -> Arrivals {
        Arrivals {
            base: tokio::time::Instant::now(),
            last_micros: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let now = u64::try_from(self.base.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.last_micros
            .store(now, std::sync::atomic::Ordering::Relaxed);
    }

    /// Time since bytes last arrived (since the stream was opened, before any).
    pub(super) fn since_last(&self) -> std::time::Duration {
        let last = std::time::Duration::from_micros(
            self.last_micros.load(std::sync::atomic::Ordering::Relaxed),
        );
        self.base.elapsed().saturating_sub(last)
    }
}

/// A stream that notes every read that brought bytes.
struct Noted<R> {
    inner: R,
    arrivals: Arc<Arrivals>,
}

impl<R: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Noted<R> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = std::pin::Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, std::task::Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.arrivals.touch();
        }
        polled
    }
}

/// Reads frames of at most `cap` bytes off a stream in a task of its own (reading is not
/// cancel-safe) and hands decoded messages over a small channel. The task ends with the
/// stream, at the first bad frame, or as soon as the receiver is dropped (a half-read frame
/// is then discarded with the stream). The [`Arrivals`] tell when bytes last came.
pub(super) fn spawn_reader<R: tokio::io::AsyncRead + Unpin + Send + 'static>(
    recv: R,
    cap: usize,
) -> (mpsc::Receiver<Result<Message, FrameError>>, Arc<Arrivals>) {
    // Two decoded frames at most wait here: memory per stream stays bounded.
    let (tx, rx) = mpsc::channel(2);
    let arrivals = Arc::new(Arrivals::new());
    let mut recv = Noted {
        inner: recv,
        arrivals: Arc::clone(&arrivals),
    };
    tokio::spawn(async move {
        loop {
            let read = tokio::select! {
                r = read_frame(&mut recv, cap) => r,
                () = tx.closed() => return,
            };
            let item = match read {
                Ok(Some(frame)) => open_frame::<Message>(&frame, cap),
                Ok(None) => return,
                Err(e) => Err(e),
            };
            let stop = item.is_err();
            if tx.send(item).await.is_err() || stop {
                return;
            }
        }
    });
    (rx, arrivals)
}

struct ActiveStream {
    node: Node,
    ad: Arc<ActiveDomain>,
    peer: NodeId,
    shipper: Arc<Mutex<Shipper>>,
    send: quinn::SendStream,
}

impl ActiveStream {
    async fn run(
        &mut self,
        first: Vec<ShipAction>,
        inbox: &mut mpsc::Receiver<Result<Message, FrameError>>,
    ) {
        let mut commits = self.ad.domain.subscribe();
        let mut tick = tokio::time::interval(self.node.inner.config.tick);
        let mut shutdown = self.ad.stop.subscribe();
        let mut actions = first;
        loop {
            if !self.execute(std::mem::take(&mut actions)).await {
                return;
            }
            let now = Instant::now();
            tokio::select! {
                m = inbox.recv() => match m {
                    Some(Ok(Message::Ack(ack))) => {
                        self.release(ack.durable);
                        actions = lock(&self.shipper).on_ack(ack, now);
                    }
                    Some(Ok(other)) => {
                        tracing::warn!(standby = %self.peer, "unexpected message {other:?} from a standby; stream closed");
                        return;
                    }
                    Some(Err(e)) => {
                        tracing::warn!(domain = %self.ad.domain.id(), standby = %self.peer, error = %e, "replication stream ended");
                        return;
                    }
                    None => return,
                },
                r = commits.changed() => {
                    if r.is_err() { return; }
                    let lsn = commits.borrow_and_update().lsn;
                    actions = lock(&self.shipper).on_commit(lsn, now);
                }
                _ = tick.tick() => {
                    let position = commits.borrow().clone();
                    actions = lock(&self.shipper).on_tick(&position, wall_micros(), now);
                }
                _ = shutdown.wait_for(|s| *s) => return,
            }
        }
    }

    /// Releases writers waiting for this standby's durable lsn.
    fn release(&self, durable: Lsn) {
        let mut w = lock(&self.ad.waiting);
        let before = w
            .confirmations
            .durable()
            .find(|(n, _)| **n == self.peer)
            .map_or(Lsn::ZERO, |(_, l)| l);
        if durable > before {
            self.ad.acked.notify_one();
        }
        for id in w.confirmations.on_durable(&self.peer, durable) {
            if let Some(tx) = w.writers.remove(&id) {
                if tx.send(()).is_err() {
                    tracing::debug!("a writer stopped waiting for its confirmation");
                }
            }
        }
    }

    /// Carries out actions (and the ones they lead to). False when the stream is over.
    async fn execute(&mut self, mut actions: Vec<ShipAction>) -> bool {
        while !actions.is_empty() {
            let mut next = Vec::new();
            for action in actions {
                let more = match action {
                    ShipAction::Send(m) => {
                        if !self.send_message(&m).await {
                            return false;
                        }
                        Vec::new()
                    }
                    ShipAction::SendRecords {
                        from,
                        max_records,
                        max_bytes,
                    } => match self.send_records(from, max_records, max_bytes).await {
                        Some(more) => more,
                        None => return false,
                    },
                    ShipAction::SendSnapshot => match self.send_snapshot().await {
                        Some(position) => {
                            lock(&self.shipper).snapshot_sent(&position, Instant::now())
                        }
                        None => return false,
                    },
                    ShipAction::Close { why } => {
                        tracing::warn!(domain = %self.ad.domain.id(), standby = %self.peer, "{why}");
                        drop(self.send.finish());
                        return false;
                    }
                };
                next.extend(more);
            }
            actions = next;
        }
        true
    }

    async fn send_message(&mut self, m: &Message) -> bool {
        let frame = match encode_message(m) {
            Ok(f) => f,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode a replication message");
                return false;
            }
        };
        match write_frame(&mut self.send, &frame).await {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(standby = %self.peer, error = %e, "replication stream lost");
                false
            }
        }
    }

    async fn send_records(
        &mut self,
        from: Lsn,
        max_records: usize,
        max_bytes: usize,
    ) -> Option<Vec<ShipAction>> {
        let d = self.ad.domain.clone();
        let read = tokio::task::spawn_blocking(move || d.read_log(from, max_records, max_bytes))
            .await
            .ok()?;
        let entries = match read {
            Ok(e) => e,
            Err(StoreError::LogTruncated { .. }) => {
                return Some(lock(&self.shipper).log_truncated());
            }
            Err(e) => {
                // A corrupt record is never shipped (invariant 4): the stream stops here.
                tracing::error!(domain = %self.ad.domain.id(), error = %e, "cannot ship the log");
                return None;
            }
        };
        let Some(last) = entries.last().map(|e| e.record.lsn) else {
            return Some(Vec::new());
        };
        let n = entries.len() as u64;
        let bytes: u64 = entries.iter().map(|e| e.bytes.len() as u64).sum();
        let records = entries.into_iter().map(|e| RecordBytes(e.bytes)).collect();
        if !self.send_message(&Message::Records(records)).await {
            return None;
        }
        self.ad.shipped.0.fetch_add(n, Ordering::Relaxed);
        self.ad.shipped.1.fetch_add(bytes, Ordering::Relaxed);
        Some(lock(&self.shipper).records_sent(last, n, bytes, Instant::now()))
    }

    /// Streams a snapshot taken in one read transaction, in chunks, with bounded memory.
    async fn send_snapshot(&mut self) -> Option<Position> {
        let d = self.ad.domain.clone();
        let chunk_bytes = self.node.inner.config.snapshot_chunk_bytes;
        let (tx, mut rx) = mpsc::channel::<Message>(2);
        let producer = tokio::task::spawn_blocking(move || -> Result<Position, StoreError> {
            let snap = d.snapshot()?;
            let uid = snap.uid.ok_or_else(|| StoreError::Corrupt {
                domain: d.id().clone(),
                what: "the active replica has no uid".into(),
            })?;
            let header = SnapshotHeader {
                uid,
                position: snap.position.clone(),
                epoch: snap.epoch.clone(),
                history: snap.history.clone(),
                digest: snap.digest,
            };
            let gone = || StoreError::Closed {
                domain: d.id().clone(),
            };
            tx.blocking_send(Message::SnapshotBegin(header))
                .map_err(|_| gone())?;
            let mut rows = 0u64;
            let mut chunk: Vec<SnapshotItem> = Vec::new();
            let mut size = 0usize;
            snap.for_each::<StoreError>(|item| {
                size += item_size(&item);
                chunk.push(item);
                rows += 1;
                if size >= chunk_bytes {
                    size = 0;
                    tx.blocking_send(Message::SnapshotRows(std::mem::take(&mut chunk)))
                        .map_err(|_| gone())?;
                }
                Ok(())
            })?;
            if !chunk.is_empty() {
                tx.blocking_send(Message::SnapshotRows(chunk))
                    .map_err(|_| gone())?;
            }
            tx.blocking_send(Message::SnapshotEnd { rows })
                .map_err(|_| gone())?;
            Ok(snap.position)
        });
        while let Some(m) = rx.recv().await {
            if !self.send_message(&m).await {
                return None;
            }
        }
        match producer.await {
            Ok(Ok(position)) => {
                tracing::info!(domain = %self.ad.domain.id(), standby = %self.peer, position = %position, "snapshot sent");
                Some(position)
            }
            Ok(Err(e)) => {
                tracing::error!(domain = %self.ad.domain.id(), error = %e, "snapshot failed");
                None
            }
            Err(_) => None,
        }
    }
}

fn item_size(item: &SnapshotItem) -> usize {
    match item {
        SnapshotItem::Kv { key, value } => key.len() + value.len() + 8,
        SnapshotItem::KvAt { key, value, .. } => key.len() + value.len() + 16,
        SnapshotItem::Policy(p) => p.content.len() + p.info.name.len() + 64,
        SnapshotItem::LegacyCrl(c) => c.der.len() + c.issuer.len() + 64,
        SnapshotItem::Issuer(c) => c.der.len() + c.subject.der().len() + 64,
        SnapshotItem::Crl(c) => c.der.len() + c.issuer.der().len() + 64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt as _;

    /// A message that takes longer than the silence bound to arrive whole is not silence:
    /// the reader notes every piece as it comes, so the standby keeps waiting for it.
    // Paused clock: the gaps are exact, whatever the machine's load.
    #[tokio::test(start_paused = true)]
    async fn a_message_arriving_slowly_is_noted_piece_by_piece() {
        let (mut tx, rx) = tokio::io::duplex(64);
        let (mut inbox, arrivals) = spawn_reader(rx, 1 << 20);
        let frame = encode_message(&Message::Heartbeat {
            position: domsync_proto::model::Position::empty(
                domsync_proto::model::NodeId::new("a").unwrap(),
            ),
            time: 1,
        })
        .unwrap();
        let gap = Duration::from_millis(40);
        // Sent a byte at a time, 40 ms apart: the whole message takes far longer than a gap.
        let (head, last) = frame.split_at(frame.len() - 1);
        for b in head {
            tokio::time::sleep(gap).await;
            tx.write_all(&[*b]).await.unwrap();
            for _ in 0..4 {
                tokio::task::yield_now().await;
            }
            assert!(
                arrivals.since_last() < gap,
                "bytes arrived {:?} ago",
                arrivals.since_last()
            );
            assert!(inbox.try_recv().is_err(), "not complete yet");
        }
        // Silence: the time since the last byte grows past the gap.
        tokio::time::sleep(gap * 3).await;
        assert!(arrivals.since_last() >= gap * 3);
        tx.write_all(last).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(10), inbox.recv())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert!(matches!(got, Message::Heartbeat { time: 1, .. }));
    }
}
