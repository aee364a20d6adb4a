//! The active side of the node: serves each standby's stream of a domain and releases writers
//! waiting for standby durability.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{oneshot, watch};

use super::error::WriteError;
use super::{lock, to_wall, Node};
use domsync_proto::model::{DomainId, Lsn, NodeId, Op, Position, Role};
use domsync_proto::repl::{
    retention_cut, Ack, Confirmations, Durability, RetentionInput, Shipper, SyncStatus,
};
use domsync_store::Domain;

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

pub(super) struct Waiting {
    pub(super) confirmations: Confirmations,
    pub(super) writers: HashMap<u64, oneshot::Sender<()>>,
    pub(super) next_id: u64,
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
    pub(super) domain: Domain,
    pub(super) config: ActiveConfig,
    pub(super) waiting: Mutex<Waiting>,
    /// One shipper per standby, kept after its stream ends for status.
    pub(super) shippers: Mutex<BTreeMap<NodeId, Arc<Mutex<Shipper>>>>,
    /// Set when the domain stops being served as active here (step down, shutdown).
    pub(super) stop: watch::Sender<bool>,
    /// Records and bytes shipped to standbys since it became active here.
    pub(super) shipped: (AtomicU64, AtomicU64),
    /// Records the size cap trimmed from the log that no standby held durably: a later
    /// forced promotion would fork them away with no copy left to archive (reported).
    pub(super) unreplicated_trimmed: AtomicU64,
    /// Woken when a standby's durable lsn moves: the log may be trimmed further even when
    /// no commit follows (the last acknowledgement often comes after the last commit).
    pub(super) acked: tokio::sync::Notify,
    /// An epoch announcement round is running (see `Node::announce_loop`).
    pub(super) announcing: std::sync::atomic::AtomicBool,
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
            announcing: std::sync::atomic::AtomicBool::new(false),
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
        // At once; then with every other active domain, once a second (`announce_loop`).
        self.announce(&ad);
    }

    /// Tells configured standbys that are not following us of our epoch, once a second, for
    /// every active domain of the node (one timer for the node, not one per domain: a node
    /// with thousands of domains stays idle when nothing happens): an old active among them
    /// (back from a partition) steps down and follows. Ends when the node is dropped or shut
    /// down.
    pub(super) async fn announce_loop(node: std::sync::Weak<super::Inner>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shutdown = match node.upgrade() {
            Some(inner) => inner.shutdown.subscribe(),
            None => return,
        };
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait_for(|s| *s) => return,
            }
            let Some(inner) = node.upgrade() else {
                return;
            };
            let node = Node { inner };
            let actives: Vec<Arc<ActiveDomain>> = lock(&node.inner.actives)
                .values()
                .filter(|ad| !ad.config.standbys.is_empty())
                .cloned()
                .collect();
            for ad in &actives {
                node.announce(ad);
            }
        }
    }

    /// Starts one round of epoch announcements to the standbys of `ad` that are not
    /// following it, unless the previous round is still running.
    fn announce(&self, ad: &Arc<ActiveDomain>) {
        if *ad.stop.borrow() {
            return;
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
        if silent.is_empty() || ad.announcing.swap(true, Ordering::AcqRel) {
            return;
        }
        let (node, ad) = (self.clone(), Arc::clone(ad));
        tokio::spawn(async move {
            node.announce_round(&ad, silent).await;
            ad.announcing.store(false, Ordering::Release);
        });
    }

    /// Tells each of `silent` this active's epoch, concurrently: a dead standby's timeout
    /// must not hold up telling a live one.
    async fn announce_round(&self, ad: &ActiveDomain, silent: Vec<NodeId>) {
        let Ok(status) = ad.domain.status() else {
            return;
        };
        // A demoted active (handing over) announces nothing.
        if status.role != Role::Active {
            return;
        }
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
        self.write_if(domain, Vec::new(), ops).await
    }

    /// [`Node::write`] only when every condition holds, checked in the transaction that
    /// writes (an application's transaction).
    ///
    /// # Errors
    /// As [`Node::write`]; [`WriteError::Store`] with
    /// [`StoreError::Conflict`](domsync_store::StoreError::Conflict) when a condition fails
    /// (nothing committed).
    pub async fn write_if(
        &self,
        domain: &DomainId,
        conditions: Vec<domsync_proto::app::Condition>,
        ops: Vec<Op>,
    ) -> Result<Position, WriteError> {
        let ad = self.active(domain).ok_or_else(|| WriteError::NotServed {
            domain: domain.clone(),
        })?;
        let position = ad.domain.write_if_async(conditions, ops).await?;
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
