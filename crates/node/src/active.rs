//! The active side of the node: serves each standby's stream of a domain and releases writers
//! waiting for standby durability.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{mpsc, oneshot, watch};

use super::error::WriteError;
use super::{lock, to_wall, wall_micros, Node};
use domsync_net::{open_frame, read_frame, write_frame, FrameError};
use domsync_proto::model::SnapshotItem;
use domsync_proto::model::{DomainId, Lsn, NodeId, Op, Position, Role};
use domsync_proto::repl::encode_message;
use domsync_proto::repl::Ask;
use domsync_proto::repl::MAX_INBOUND_BYTES;
use domsync_proto::repl::{
    retention_cut, Ack, Answer, Confirmations, Durability, LocalView, Message, RecordBytes,
    RejectReason, RetentionInput, ShipAction, Shipper, SnapshotHeader, SyncStatus,
};
use domsync_store::{Domain, StoreError};

/// How a domain is served as active.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ActiveConfig {
    /// When writes are acknowledged.
    pub durability: Durability,
    /// The domain's standby nodes; others are refused.
    pub standbys: Vec<NodeId>,
    /// How long a write waits for its standby confirmation.
    pub confirm_timeout: Duration,
    /// Most bytes of change log kept for lagging standbys; beyond it they are resynced by
    /// snapshot.
    pub retention_bytes: u64,
    /// How often the log is trimmed.
    pub retention_interval: Duration,
}

impl ActiveConfig {
    /// `durability` over `standbys`, waiting at most 5 s for confirmations.
    pub fn new(durability: Durability, standbys: Vec<NodeId>) -> ActiveConfig {
        ActiveConfig {
            durability,
            standbys,
            confirm_timeout: Duration::from_secs(5),
            retention_bytes: 256 << 20,
            retention_interval: Duration::from_millis(200),
        }
    }
}

/// How one standby stands, as seen by the active.
#[derive(Debug, Clone, PartialEq)]
pub struct StandbyReport {
    /// The standby node.
    pub node: NodeId,
    /// Its sync status.
    pub status: SyncStatus,
    /// Its latest acknowledgement.
    pub ack: Ack,
    /// When it last held everything the active had.
    pub last_sync: Option<SystemTime>,
    /// True while its stream is open.
    pub connected: bool,
}

struct Waiting {
    confirmations: Confirmations,
    writers: HashMap<u64, oneshot::Sender<()>>,
    next_id: u64,
}

impl ActiveDomain {
    pub(super) fn domain(&self) -> &Domain {
        &self.domain
    }

    pub(super) fn stop(&self) {
        self.stop.send_replace(true);
    }

    pub(super) fn config(&self) -> &ActiveConfig {
        &self.config
    }

    /// The durable lsn `standby` acknowledged.
    pub(super) fn durable_on(&self, standby: &NodeId) -> Lsn {
        lock(&self.waiting)
            .confirmations
            .durable()
            .find(|(n, _)| *n == standby)
            .map_or(Lsn::ZERO, |(_, l)| l)
    }
}

pub(super) struct ActiveDomain {
    domain: Domain,
    config: ActiveConfig,
    waiting: Mutex<Waiting>,
    /// One shipper per standby, kept after its stream ends for status.
    shippers: Mutex<BTreeMap<NodeId, Arc<Mutex<Shipper>>>>,
    /// Set when the domain stops being served as active here (step down, shutdown).
    pub(super) stop: watch::Sender<bool>,
    /// Records and bytes shipped to standbys since it became active here.
    shipped: (AtomicU64, AtomicU64),
    /// Records the size cap trimmed from the log that no standby held durably: a later
    /// forced promotion would fork them away with no copy left to archive (reported).
    unreplicated_trimmed: AtomicU64,
    /// Woken when a standby's durable lsn moves: the log may be trimmed further even when
    /// no commit follows (the last acknowledgement often comes after the last commit).
    pub(super) acked: tokio::sync::Notify,
}

impl Node {
    /// Serves `domain` as active: standbys listed in `config` may follow it.
    pub fn serve_active(&self, domain: Domain, config: ActiveConfig) {
        lock(&self.inner.configs).insert(domain.id().clone(), config.clone());
        let waiting = Waiting {
            confirmations: Confirmations::new(config.standbys.iter().cloned()),
            writers: HashMap::new(),
            next_id: 0,
        };
        let ad = Arc::new(ActiveDomain {
            domain: domain.clone(),
            config,
            waiting: Mutex::new(waiting),
            shippers: Mutex::new(BTreeMap::new()),
            stop: watch::channel(false).0,
            shipped: (AtomicU64::new(0), AtomicU64::new(0)),
            acked: tokio::sync::Notify::new(),
            unreplicated_trimmed: AtomicU64::new(0),
        });
        {
            let mut actives = lock(&self.inner.actives);
            if *self.inner.shutdown.borrow() {
                // Checked under the lock `Node::shutdown` empties the map with.
                tracing::debug!(domain = %domain.id(), "node shut down: not serving");
                return;
            }
            if let Some(old) = actives.insert(domain.id().clone(), Arc::clone(&ad)) {
                old.stop();
            }
        }
        tokio::spawn(self.clone().retention_loop(Arc::clone(&ad)));
        tokio::spawn(self.clone().announce_loop(ad));
    }

    /// Tells configured standbys that are not following us of our epoch, once a second: an
    /// old active among them (back from a partition) steps down and follows.
    async fn announce_loop(self, ad: Arc<ActiveDomain>) {
        let mut stop = ad.stop.subscribe();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let silent: Vec<NodeId> = {
                let shippers = lock(&ad.shippers);
                ad.config
                    .standbys
                    .iter()
                    .filter(|n| shippers.get(*n).is_none_or(|s| lock(s).is_closed()))
                    .cloned()
                    .collect()
            };
            if silent.is_empty() {
                continue;
            }
            let Ok(status) = ad.domain.status() else {
                continue;
            };
            // A demoted active (handing over) announces nothing.
            if status.role != Role::Active {
                continue;
            }
            // Concurrently: a dead standby's timeout must not hold up telling a live one.
            let mut probes = tokio::task::JoinSet::new();
            for peer in silent {
                let (node, domain, epoch) =
                    (self.clone(), ad.domain.id().clone(), status.epoch.clone());
                probes.spawn(async move {
                    match node.probe(&peer, &domain, Some(&epoch)).await {
                        // The peer recorded a higher epoch (a fence): this active is
                        // superseded and steps down (the role machine checks the epoch).
                        Ok(Some(answer)) if answer.epoch > epoch => {
                            node.higher_epoch(&peer, &domain, &answer.epoch).await;
                        }
                        Ok(_) => {}
                        Err(e) => {
                            tracing::debug!(domain = %domain, peer = %peer, "epoch announcement: {e}");
                        }
                    }
                });
            }
            while probes.join_next().await.is_some() {}
        }
    }

    /// Trims the log of an active domain to what standbys still need, within the size cap.
    async fn retention_loop(self, ad: Arc<ActiveDomain>) {
        let mut shutdown = ad.stop.subscribe();
        let mut positions = ad.domain.subscribe();
        loop {
            // Nothing to trim until the log grows: no wake-ups while idle. Commits are then
            // batched into one pass per `retention_interval`.
            tokio::select! {
                changed = positions.changed() => if changed.is_err() { return },
                () = ad.acked.notified() => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            tokio::select! {
                () = tokio::time::sleep(ad.config.retention_interval) => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            positions.borrow_and_update();
            let durable: Vec<Lsn> = lock(&ad.waiting)
                .confirmations
                .durable()
                .map(|(_, l)| l)
                .collect();
            let before = ad.domain.status().map(|s| s.log_start).ok();
            if !trim_log(&ad.domain, ad.config.retention_bytes, &durable).await {
                return;
            }
            // Invariant 5: records no standby holds that the size cap dropped are reported.
            if let (Some(before), Ok(after), false) =
                (before, ad.domain.status(), durable.is_empty())
            {
                let held_by_one = durable.iter().max().copied().unwrap_or(Lsn::ZERO);
                let from = before.max(held_by_one.next());
                let n = after.log_start.0.saturating_sub(from.0);
                if n > 0 {
                    ad.unreplicated_trimmed.fetch_add(n, Ordering::Relaxed);
                    tracing::warn!(domain = %ad.domain.id(), from = %from, records = n,
                        "the log's size cap dropped records no standby holds yet: if a standby is promoted with --force they cannot be archived; bring the standbys back or raise retention_bytes");
                }
            }
        }
    }

    pub(super) fn active(&self, domain: &DomainId) -> Option<Arc<ActiveDomain>> {
        lock(&self.inner.actives).get(domain).cloned()
    }

    /// Commits `ops` on the active replica and waits for the domain's durability.
    ///
    /// # Errors
    /// [`WriteError::Store`] when nothing was committed, [`WriteError::Unconfirmed`] when the
    /// write committed locally but the standbys did not confirm it in time,
    /// [`WriteError::NotServed`] when the domain is not active here.
    pub async fn write(&self, domain: &DomainId, ops: Vec<Op>) -> Result<Position, WriteError> {
        let ad = self.active(domain).ok_or_else(|| WriteError::NotServed {
            domain: domain.clone(),
        })?;
        let position = ad.domain.write_async(ops).await?;
        let mode = ad.config.durability;
        if mode == Durability::Local {
            return Ok(position);
        }
        let (tx, rx) = oneshot::channel();
        let id = {
            let mut w = lock(&ad.waiting);
            let id = w.next_id;
            w.next_id += 1;
            let deadline = Instant::now() + ad.config.confirm_timeout;
            if w.confirmations
                .wait(id, position.lsn, mode, deadline)
                .is_some()
            {
                return Ok(position);
            }
            w.writers.insert(id, tx);
            id
        };
        if let Ok(Ok(())) = tokio::time::timeout(ad.config.confirm_timeout, rx).await {
            return Ok(position);
        }
        let mut w = lock(&ad.waiting);
        w.confirmations.cancel(id);
        w.writers.remove(&id);
        let confirmed_by = w
            .confirmations
            .durable()
            .filter(|(_, l)| *l >= position.lsn)
            .map(|(n, _)| n.clone())
            .collect();
        Err(WriteError::Unconfirmed {
            domain: domain.clone(),
            position,
            mode,
            confirmed_by,
        })
    }

    /// Records and bytes shipped to the standbys of `domain` since it became active here
    /// (`None` when it is not active here).
    pub fn shipped(&self, domain: &DomainId) -> Option<(u64, u64)> {
        let ad = self.active(domain)?;
        Some((
            ad.shipped.0.load(Ordering::Relaxed),
            ad.shipped.1.load(Ordering::Relaxed),
        ))
    }

    /// Records the log's size cap dropped while no standby held them (`None` when the
    /// domain is not active here): a forced promotion would leave no copy of them to archive.
    pub fn unreplicated_trimmed(&self, domain: &DomainId) -> Option<u64> {
        Some(
            self.active(domain)?
                .unreplicated_trimmed
                .load(Ordering::Relaxed),
        )
    }

    /// The sync status of every standby of an active domain (empty when not active here).
    pub fn sync_status(&self, domain: &DomainId) -> Vec<StandbyReport> {
        let Some(ad) = self.active(domain) else {
            return Vec::new();
        };
        let local = ad.domain.subscribe().borrow().lsn;
        let now = Instant::now();
        let shippers = lock(&ad.shippers);
        ad.config
            .standbys
            .iter()
            .map(|node| match shippers.get(node) {
                Some(s) => {
                    let mut s = lock(s);
                    drop(s.on_commit(local, now));
                    let (status, last_sync) = s.status(now);
                    StandbyReport {
                        node: node.clone(),
                        status,
                        ack: s.ack(),
                        last_sync: last_sync.map(to_wall),
                        connected: s.is_connected(now),
                    }
                }
                None => StandbyReport {
                    node: node.clone(),
                    status: SyncStatus::NeverSynchronized,
                    ack: Ack::default(),
                    last_sync: None,
                    connected: false,
                },
            })
            .collect()
    }

    /// Serves one stream opened by `peer`: its first frame is `Follow`.
    pub(super) async fn serve_stream(
        self,
        peer: NodeId,
        mut send: quinn::SendStream,
        recv: quinn::RecvStream,
    ) {
        let mut inbox = spawn_reader(recv, MAX_INBOUND_BYTES);
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

/// Reads frames of at most `cap` bytes off a stream in a task of its own (reading is not
/// cancel-safe) and hands decoded messages over a small channel. The task ends with the
/// stream, at the first bad frame, or as soon as the receiver is dropped (a half-read frame
/// is then discarded with the stream).
pub(super) fn spawn_reader(
    mut recv: quinn::RecvStream,
    cap: usize,
) -> mpsc::Receiver<Result<Message, FrameError>> {
    // Two decoded frames at most wait here: memory per stream stays bounded.
    let (tx, rx) = mpsc::channel(2);
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
    rx
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
        SnapshotItem::Policy(p) => p.content.len() + p.info.name.len() + 64,
        SnapshotItem::Crl(c) => c.der.len() + c.issuer.len() + 64,
    }
}

/// Most records dropped by one trimming commit (256 records of 4 KiB free 1 MiB): a big cut is
/// made in steps, so the writes queued meanwhile are never held behind one huge delete.
const TRIM_STEP: u64 = 256;

/// Trims a replica's log as [`retention_cut`] allows, in steps. False when the store is gone.
pub(super) async fn trim_log(domain: &Domain, cap_bytes: u64, standby_durable: &[Lsn]) -> bool {
    let Ok(status) = domain.status() else {
        return true;
    };
    let Some(cut) = retention_cut(&RetentionInput {
        position: status.position.lsn,
        log_start: status.log_start,
        log_bytes: status.log_bytes,
        cap_bytes,
        standby_durable,
    }) else {
        return true;
    };
    let mut start = status.log_start;
    while start < cut {
        let below = Lsn(cut.0.min(start.0.saturating_add(TRIM_STEP)));
        let d = domain.clone();
        match tokio::task::spawn_blocking(move || d.truncate_log(below)).await {
            Ok(Ok(new_start)) if new_start > start => start = new_start,
            Ok(Ok(_)) => return true,
            Ok(Err(e)) => {
                tracing::warn!(domain = %domain.id(), error = %e, "cannot trim the log");
                return true;
            }
            Err(_) => return false,
        }
    }
    tracing::debug!(domain = %domain.id(), log_start = %start, "log trimmed");
    true
}
