//! The daemon's runtime: one store, one node, every domain of the configuration placed in its
//! role. Domains are independent: one that fails to open is reported and left out, the others
//! serve.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crate::config::{Config, DomainConfig};
use crate::descriptors::{self, Limit as DescriptorLimit, Needs};
use crate::{DaemonError, DescriptorShortage};
use domsync_net::{CertificateInfo, Credentials, PeerRole, TlsFiles};
use domsync_node::{ActiveConfig, Node, NodeConfig};
use domsync_proto::admin::{AdminError, DomainSpec};
use domsync_proto::model::{DomainId, Role};
use domsync_proto::repl::SyncStatus;
use domsync_store::{Domain, Store, StoreError, StoreOptions};

/// How one configured domain stands on this node.
#[derive(Debug, Clone, PartialEq)]
pub enum Placement {
    /// Serving in `role`.
    Serving(Role),
    /// This node is the primary of a domain that exists nowhere yet, waiting for every other
    /// replica to answer before creating it (a wiped primary never creates a new incarnation
    /// while a replica holds the old one).
    Waiting(String),
    /// The domain failed here; the others are unaffected.
    Failed(String),
}

/// A running daemon: store, node, domains.
pub struct Daemon {
    /// The configuration in force: the file's, merged with the domains added at runtime.
    config: Mutex<Config>,
    /// The configuration file as last loaded (without the added domains).
    file: Mutex<Config>,
    /// The domains added at runtime (`admin-domains.toml`), the file's clashes included.
    added: Mutex<Vec<DomainConfig>>,
    /// Serializes reloads, domain adds and removes.
    changes: tokio::sync::Mutex<()>,
    store: Store,
    node: Node,
    placements: Mutex<BTreeMap<DomainId, Placement>>,
    /// Run first by [`Daemon::shutdown`]: stops what was started on top of the runtime
    /// (the admin server, see [`Daemon::start`]).
    on_shutdown: Mutex<Option<ShutdownHook>>,
    /// The open-file limits in force once raised at start (the descriptor budget).
    descriptors: DescriptorLimit,
}

/// What [`Daemon::shutdown`] runs before the node and the store stop.
pub(crate) type ShutdownHook = Box<dyn FnOnce(&Daemon) + Send>;

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("node", self.node.id())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The configuration file's `file` merged with the domains added at runtime; the file wins
/// on a name clash (the added entry is ignored, with a warning).
fn merge(file: &Config, added: &[DomainConfig]) -> Config {
    let (merged, shadowed) = file.merged(added);
    for name in shadowed {
        tracing::warn!(domain = %name, "domain defined both in the configuration file and in admin-domains.toml: the configuration file wins; `domsync domain remove` cannot remove it, drop the admin-domains.toml entry by hand");
    }
    merged
}

/// The first key of `new` that differs from `old` and only a restart can change, if any.
fn needs_restart(old: &Config, new: &Config) -> Option<&'static str> {
    if new.node.id != old.node.id {
        Some("node.id")
    } else if new.node.listen != old.node.listen {
        Some("node.listen")
    } else if new.node.gateway_listen != old.node.gateway_listen {
        Some("node.gateway_listen")
    } else if new.node.state_dir != old.node.state_dir {
        Some("node.state_dir")
    } else if new.node.admin_socket != old.node.admin_socket {
        Some("node.admin_socket")
    } else if new.apps.socket != old.apps.socket {
        Some("apps.socket")
    } else if new.apps.group != old.apps.group {
        Some("apps.group")
    } else {
        None
    }
}

/// Reads and checks the TLS files of `config` (certificate, key, CA, and the CRL when set)
/// as one set, which must be this node's.
pub(crate) fn load_credentials(config: &Config) -> Result<Credentials, DaemonError> {
    let files = TlsFiles {
        ca: config.tls.ca.clone(),
        cert: config.tls.cert.clone(),
        key: config.tls.key.clone(),
    };
    let credentials = files.load_with_crl(config.tls.crl.as_deref())?;
    if credentials.identity.role != PeerRole::Node
        || credentials.identity.id != config.node.id.as_str()
    {
        return Err(DaemonError::WrongCertificate {
            cert: config.tls.cert.display().to_string(),
            found: credentials.identity.uri(),
            expected: config.node.id.clone(),
        });
    }
    Ok(credentials)
}

/// Raises the open-file soft limit to the hard one and checks that it holds what `config`
/// needs (see [`descriptors`]); logs the budget once.
fn start_budget(config: &Config) -> Result<DescriptorLimit, DaemonError> {
    let domains = config.local_domains().count();
    let needs = Needs::of(config, domains);
    let limit = descriptors::raise(needs.total().unwrap_or(u64::MAX));
    let needed = descriptors::check(&needs, limit.soft).map_err(DaemonError::Descriptors)?;
    tracing::info!(
        needed,
        domains,
        limit = limit.soft,
        hard = limit.hard,
        "descriptor budget: {} needed for {} domains, limit {}",
        descriptors::group(needed),
        descriptors::group(needs.domains),
        descriptors::group(limit.soft)
    );
    Ok(limit)
}

/// Requests queued per domain for its writer: one for each connection the application
/// socket serves at once ([`crate::app_server::MAX_CONNECTIONS`]).
const WRITER_QUEUE: usize = crate::app_server::MAX_CONNECTIONS;

/// The store's settings for this node. Each domain's writer queue is allocated whole when the
/// domain opens (a bounded channel of `queue` slots, about 100 bytes each): the default 4,096
/// slots made 400 KiB a domain, most of the daemon's memory with a thousand domains (and a
/// good part of its start). [`WRITER_QUEUE`] slots take 25 KiB; writers beyond them wait off
/// the runtime's threads for room, as they did beyond 4,096, and a batch still takes every
/// request queued when it starts (up to `max_batch`).
fn store_options(config: &Config) -> StoreOptions {
    let mut options = StoreOptions::new(config.node.id.clone());
    options.queue = WRITER_QUEUE;
    options
}

/// How long the primary waits between attempts to create a new domain.
const CREATE_RETRY: Duration = Duration::from_secs(1);

impl Daemon {
    /// Opens the store, starts the node and places every domain of `config` that has a replica
    /// here. Must run inside a tokio runtime. [`Daemon::start`] is this, then the admin
    /// server.
    ///
    /// # Errors
    /// [`DaemonError`] when the node as a whole cannot start.
    pub(crate) async fn open(file: Config) -> Result<Arc<Daemon>, DaemonError> {
        if let Some(e) = file.state_dir_error() {
            return Err(DaemonError::Config(e));
        }
        let added = file
            .load_added_domains()
            .map_err(DaemonError::AddedDomains)?;
        let config = merge(&file, &added);
        let descriptors = start_budget(&config)?;
        let credentials = load_credentials(&config)?;
        let store = Store::open(&config.node.state_dir, store_options(&config))?;
        let mut node_config =
            NodeConfig::new(config.node.listen, credentials, config.peers.clone());
        node_config.guard_window = config.limits.guard_window;
        node_config.gateway_listen = config.node.gateway_listen;
        node_config.gateway.max_connections = config.limits.gateway_connections;
        node_config.gateway.max_connections_per_gateway =
            config.limits.gateway_connections_per_gateway;
        node_config.gateway.answer_timeout = config.limits.gateway_answer_timeout;
        node_config.gateway.max_streams_per_connection = config.limits.gateway_streams;
        node_config.gateway.max_request_bytes = config.limits.gateway_request_bytes;
        let node = Node::start(node_config)?;
        let daemon = Arc::new(Daemon {
            config: Mutex::new(config.clone()),
            file: Mutex::new(file),
            added: Mutex::new(added),
            changes: tokio::sync::Mutex::new(()),
            store,
            node,
            placements: Mutex::new(BTreeMap::new()),
            on_shutdown: Mutex::new(None),
            descriptors,
        });
        for dc in config.local_domains() {
            Arc::clone(&daemon).place(dc.clone()).await;
        }
        Ok(daemon)
    }

    /// Sets what [`Daemon::shutdown`] runs first (replacing any hook set before).
    pub(crate) fn on_shutdown(&self, hook: ShutdownHook) {
        *lock(&self.on_shutdown) = Some(hook);
    }

    /// The node.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The descriptor budget of the configuration in force: descriptors needed (`u64::MAX`
    /// beyond counting) and the open-file limit (the soft one, raised at start).
    pub fn descriptor_budget(&self) -> (u64, u64) {
        let config = self.config();
        let needs = Needs::of(&config, config.local_domains().count());
        (needs.total().unwrap_or(u64::MAX), self.descriptors.soft)
    }

    /// Whether the open-file limit holds `config`'s domains.
    fn check_descriptors(&self, config: &Config) -> Result<(), DescriptorShortage> {
        let needs = Needs::of(config, config.local_domains().count());
        descriptors::check(&needs, self.descriptors.soft).map(|_| ())
    }

    /// The configuration in force.
    pub fn config(&self) -> Config {
        lock(&self.config).clone()
    }

    /// How every configured domain stands here.
    pub fn placements(&self) -> BTreeMap<DomainId, Placement> {
        lock(&self.placements).clone()
    }

    fn set(&self, domain: &DomainId, p: Placement) {
        lock(&self.placements).insert(domain.clone(), p);
    }

    /// Records a role change made by the admin server (promote, switchover).
    pub(crate) fn set_placement(&self, domain: &DomainId, p: Placement) {
        if lock(&self.placements).contains_key(domain) {
            self.set(domain, p);
        }
    }

    pub(crate) fn active_config(&self, dc: &DomainConfig) -> ActiveConfig {
        let me = self.node.id();
        let mut config = ActiveConfig::new(
            dc.durability,
            dc.replicas.iter().filter(|r| *r != me).cloned().collect(),
        );
        config.retention_bytes = dc.retention_bytes;
        config.confirm_timeout = lock(&self.config).limits.confirm_timeout;
        config
    }

    /// Puts one domain in its role: the role its store remembers, or a new replica (created on
    /// the primary once no other replica holds it, joined as standby elsewhere).
    async fn place(self: Arc<Self>, dc: DomainConfig) {
        for g in &dc.gateways {
            self.node.grant(&dc.name, g);
        }
        let me = self.node.id().clone();
        match self.store.domain(&dc.name) {
            Ok(domain) => self.serve(&dc, domain),
            Err(StoreError::UnknownDomain { .. }) if dc.replicas == [me.clone()] => {
                match self.store.create_domain(&dc.name) {
                    Ok(d) => self.serve(&dc, d),
                    Err(e) => self.failed(&dc.name, &e),
                }
            }
            Err(StoreError::UnknownDomain { .. }) if *dc.primary() == me => {
                self.set(
                    &dc.name,
                    Placement::Waiting("asking the other replicas".into()),
                );
                tokio::spawn(Arc::clone(&self).create_when_new(dc));
            }
            Err(StoreError::UnknownDomain { .. }) => match self.store.join_domain(&dc.name) {
                Ok(domain) => self.serve(&dc, domain),
                Err(e) => self.failed(&dc.name, &e),
            },
            Err(e) => self.failed(&dc.name, &e),
        }
    }

    fn failed(&self, domain: &DomainId, e: &StoreError) {
        // Out of descriptors, threads or memory: the fix is named, not only the symptom.
        let why = match descriptors::resource_advice(&e.to_string()) {
            Some(fix) => format!("{e}; {fix}"),
            None => e.to_string(),
        };
        tracing::error!(domain = %domain, error = %why, "domain not served; the others keep serving");
        self.set(domain, Placement::Failed(why));
    }

    fn serve(&self, dc: &DomainConfig, domain: Domain) {
        let status = match domain.status() {
            Ok(s) => s,
            Err(e) => return self.failed(&dc.name, &e),
        };
        let me = self.node.id();
        domain.set_accept_unverified_crls(dc.accept_unverified_crls);
        if dc.accept_unverified_crls {
            tracing::warn!(domain = %dc.name, "accept_unverified_crls is on: CRLs of issuers without a held certificate are stored unverified");
        }
        self.node.configure(&dc.name, self.active_config(dc));
        match status.role {
            Role::Active => {
                self.node.serve_active(domain, self.active_config(dc));
            }
            Role::Standby => {
                // Follow the active of the highest epoch seen; the primary before any.
                let active = if status.epoch.term > 0 && status.epoch.node != *me {
                    status.epoch.node.clone()
                } else {
                    dc.replicas
                        .iter()
                        .find(|r| *r != me)
                        .cloned()
                        .unwrap_or_else(|| dc.primary().clone())
                };
                self.node.follow(domain, active);
            }
        }
        tracing::info!(domain = %dc.name, role = %status.role, epoch = %status.epoch, lsn = %status.position.lsn, "domain serving");
        self.set(&dc.name, Placement::Serving(status.role));
    }

    /// On the primary, a domain its store does not hold: created only once every other replica
    /// answers that it holds nothing either; if one holds it, this node joins as standby.
    async fn create_when_new(self: Arc<Self>, dc: DomainConfig) {
        let me = self.node.id().clone();
        loop {
            if !lock(&self.config).domains.iter().any(|d| d.name == dc.name) {
                return;
            }
            let mut waiting_for = Vec::new();
            let mut holder = None;
            for peer in dc.replicas.iter().filter(|r| **r != me) {
                match self.node.probe(peer, &dc.name, None).await {
                    Ok(None) => {}
                    Ok(Some(a)) if a.position.lsn.0 == 0 && a.epoch.term == 0 => {}
                    Ok(Some(_)) => holder = Some(peer.clone()),
                    Err(e) => waiting_for.push(format!("{peer} ({e})")),
                }
            }
            if let Some(holder) = holder {
                tracing::warn!(domain = %dc.name, holder = %holder, "this primary holds nothing of a domain another replica holds: joining as standby to resync");
                match self.store.join_domain(&dc.name) {
                    Ok(d) => self.serve(&dc, d),
                    Err(e) => self.failed(&dc.name, &e),
                }
                return;
            }
            if waiting_for.is_empty() {
                match self.store.create_domain(&dc.name) {
                    Ok(d) => {
                        tracing::info!(domain = %dc.name, "domain created on its primary");
                        self.serve(&dc, d);
                    }
                    Err(e) => self.failed(&dc.name, &e),
                }
                return;
            }
            let why = format!(
                "waiting for {} to answer before creating the domain",
                waiting_for.join(", ")
            );
            if lock(&self.placements).get(&dc.name) != Some(&Placement::Waiting(why.clone())) {
                tracing::warn!(domain = %dc.name, "{why}");
            }
            self.set(&dc.name, Placement::Waiting(why));
            tokio::time::sleep(CREATE_RETRY).await;
        }
    }

    /// Applies a new configuration file: merged again with the domains added at runtime
    /// (`admin-domains.toml`, read again; the file wins on a name clash), domains added are
    /// placed, domains removed stop being served (their files stay), grants follow the file.
    /// The TLS files (`[tls]`: certificate, key, CA, CRL) are read again and put in force for
    /// new handshakes (open connections are left alone).
    ///
    /// # Errors
    /// [`DaemonError::NeedsRestart`] when the node id, listen address, state directory, admin
    /// socket or `[apps]` socket or group changed, [`DaemonError::TlsReload`] when the TLS
    /// files are not a usable set for this node, [`DaemonError::AddedDomains`] when the added domains no longer fit (a replica no
    /// longer a peer); the running configuration and TLS files are then kept.
    pub async fn reload(self: &Arc<Self>, new: Config) -> Result<(), DaemonError> {
        let _serial = self.changes.lock().await;
        let added = new
            .load_added_domains()
            .map_err(DaemonError::AddedDomains)?;
        let merged = merge(&new, &added);
        if let Some(key) = needs_restart(&self.config(), &merged) {
            return Err(DaemonError::NeedsRestart(key));
        }
        self.check_descriptors(&merged)
            .map_err(DaemonError::ReloadDescriptors)?;
        let credentials =
            load_credentials(&merged).map_err(|e| DaemonError::TlsReload(Box::new(e)))?;
        self.node
            .set_credentials(credentials)
            .map_err(|e| DaemonError::TlsReload(Box::new(e.into())))?;
        if let Some(own) = self.node.own_certificate() {
            tracing::info!(identity = %own.identity, serial = %own.serial, not_after = own.not_after, crl = ?merged.tls.crl, "TLS files reloaded: new handshakes use them");
        }
        self.apply(merged).await?;
        *lock(&self.file) = new;
        *lock(&self.added) = added;
        Ok(())
    }

    /// Puts a merged configuration in force (see [`Daemon::reload`]).
    async fn apply(self: &Arc<Self>, new: Config) -> Result<(), DaemonError> {
        let old = self.config();
        if let Some(key) = needs_restart(&old, &new) {
            return Err(DaemonError::NeedsRestart(key));
        }
        self.node.set_peers(new.peers.clone());
        let before: BTreeMap<DomainId, DomainConfig> = old
            .local_domains()
            .map(|d| (d.name.clone(), d.clone()))
            .collect();
        let after: BTreeMap<DomainId, DomainConfig> = new
            .local_domains()
            .map(|d| (d.name.clone(), d.clone()))
            .collect();
        *lock(&self.config) = new;
        for (name, dc) in &before {
            if !after.contains_key(name) {
                self.node.release(name);
                lock(&self.placements).remove(name);
                for g in &dc.gateways {
                    self.node.revoke(name, g);
                }
                tracing::info!(domain = %name, "domain removed from the configuration: no longer served (its files stay)");
            }
        }
        for (name, dc) in &after {
            match before.get(name) {
                None => Arc::clone(self).place(dc.clone()).await,
                Some(old_dc) => {
                    // Durability, replicas, retention, timeouts: in force at once (an active
                    // domain is served again with them; its standbys reconnect).
                    self.node.configure(name, self.active_config(dc));
                    if old_dc.accept_unverified_crls != dc.accept_unverified_crls {
                        if let Ok(d) = self.store.domain(name) {
                            d.set_accept_unverified_crls(dc.accept_unverified_crls);
                        }
                    }
                    if old_dc != dc {
                        tracing::info!(domain = %name, durability = %dc.durability, replicas = ?dc.replicas, "domain settings reloaded and in force");
                    }
                    for g in old_dc.gateways.iter().filter(|g| !dc.gateways.contains(g)) {
                        self.node.revoke(name, g);
                    }
                    for g in &dc.gateways {
                        self.node.grant(name, g);
                    }
                }
            }
        }
        Ok(())
    }

    // ---- Domains added and removed at runtime (`domsync domain add|remove`) ----

    /// Adds a domain at runtime: checked like a `[[domains]]` entry of the configuration
    /// file, kept in `<state_dir>/admin-domains.toml` (written atomically), placed at once
    /// when this node is one of its replicas. Adding the same domain again with the same
    /// settings changes nothing. Returns whether this node is a replica.
    ///
    /// # Errors
    /// A one-line [`AdminError`]: bad settings, a name the configuration file or an earlier
    /// add already uses with other settings, the file not written.
    pub async fn add_domain(self: &Arc<Self>, spec: &DomainSpec) -> Result<bool, AdminError> {
        let _serial = self.changes.lock().await;
        let file = lock(&self.file).clone();
        let dc = file
            .check_spec(spec)
            .map_err(|e| AdminError::BadRequest(format!("domain add refused: {e}")))?;
        let here = dc.replicas.contains(&file.node.id);
        if file.domains.iter().any(|d| d.name == dc.name) {
            return Err(AdminError::Failed(format!(
                "domain {} is already defined in the configuration file: change it there and send SIGHUP to domsyncd",
                dc.name
            )));
        }
        let mut added = lock(&self.added).clone();
        if let Some(old) = added.iter().find(|d| d.name == dc.name) {
            if *old == dc {
                return Ok(here);
            }
            return Err(AdminError::Failed(format!(
                "domain {} was already added with other settings: `domsync domain remove {}` first, then add it again",
                dc.name, dc.name
            )));
        }
        added.push(dc);
        self.check_descriptors(&file.merged(&added).0)
            .map_err(|e| AdminError::Failed(format!("domain add refused: {e}")))?;
        self.save_added(&file, &added)?;
        self.apply(merge(&file, &added))
            .await
            .map_err(|e| AdminError::Failed(e.to_string()))?;
        *lock(&self.added) = added;
        Ok(here)
    }

    /// Removes a domain added at runtime: it stops being served here (its store files stay,
    /// under the state directory) and leaves `admin-domains.toml`.
    ///
    /// # Errors
    /// A one-line [`AdminError`]: a domain of the configuration file (edit the file and send
    /// SIGHUP), an unknown domain, the file not written.
    pub async fn remove_domain(self: &Arc<Self>, domain: &DomainId) -> Result<(), AdminError> {
        let _serial = self.changes.lock().await;
        let file = lock(&self.file).clone();
        if file.domains.iter().any(|d| d.name == *domain) {
            return Err(AdminError::Failed(format!(
                "domain {domain} is defined in the configuration file, not added with `domsync domain add`: remove it from the file and send SIGHUP to domsyncd (systemctl reload domsyncd)"
            )));
        }
        let mut added = lock(&self.added).clone();
        let before = added.len();
        added.retain(|d| d.name != *domain);
        if added.len() == before {
            return Err(AdminError::UnknownDomain {
                domain: domain.clone(),
                node: file.node.id.clone(),
            });
        }
        self.save_added(&file, &added)?;
        self.apply(merge(&file, &added))
            .await
            .map_err(|e| AdminError::Failed(e.to_string()))?;
        *lock(&self.added) = added;
        Ok(())
    }

    /// Writes `admin-domains.toml` (see [`Config::save_added_domains`]).
    fn save_added(&self, file: &Config, added: &[DomainConfig]) -> Result<(), AdminError> {
        file.save_added_domains(added).map_err(|e| {
            AdminError::Failed(format!(
                "cannot write {}: {e}; check the state directory's space and permissions (nothing changed)",
                file.added_domains_path().display()
            ))
        })
    }

    /// A one-line summary for systemd's `STATUS=`: domains, actives, standbys, failures and
    /// the worst lag.
    pub fn summary(&self) -> String {
        let placements = self.placements();
        // Roles are read live: a domain can step down on its own (a higher epoch elsewhere).
        let roles: Vec<Role> = placements
            .iter()
            .filter(|(_, p)| matches!(p, Placement::Serving(_)))
            .filter_map(|(d, _)| self.node.replica(d)?.status().ok().map(|s| s.role))
            .collect();
        let count = |r: Role| roles.iter().filter(|x| **x == r).count();
        let failed = placements
            .values()
            .filter(|p| matches!(p, Placement::Failed(_)))
            .count();
        let waiting = placements
            .values()
            .filter(|p| matches!(p, Placement::Waiting(_)))
            .count();
        let mut worst: Option<(u64, DomainId)> = None;
        for name in placements.keys() {
            let lags = self
                .node
                .sync_status(name)
                .into_iter()
                .map(|r| r.status)
                .chain(self.node.follower_status(name).map(|r| r.status));
            for s in lags {
                if let SyncStatus::Lagging { records, .. } = s {
                    if worst.as_ref().is_none_or(|(w, _)| records > *w) {
                        worst = Some((records, name.clone()));
                    }
                }
            }
        }
        let lag = worst.map_or_else(
            || "all synchronized".to_owned(),
            |(n, d)| format!("worst lag {n} records ({d})"),
        );
        format!(
            "{} domains: {} active, {} standby, {waiting} waiting, {failed} failed; {lag}",
            placements.len(),
            count(Role::Active),
            count(Role::Standby),
        )
    }

    /// This node's certificate in force and, per configured peer, the certificate it
    /// presented on its latest handshake with this node, each with `true` for our own
    /// (first), for status and metrics.
    pub fn certificates(&self) -> Vec<(CertificateInfo, bool)> {
        let own = self.node.own_certificate().map(|c| (c, true));
        own.into_iter()
            .chain(
                self.node
                    .peer_certificates()
                    .into_iter()
                    .map(|(_, c)| (c, false)),
            )
            .collect()
    }

    /// Stops serving: streams close, then the stores (in-flight commits finish first).
    pub async fn shutdown(&self) {
        // Taken out first: the hook does not run under the lock.
        let hook = lock(&self.on_shutdown).take();
        if let Some(hook) = hook {
            hook(self);
        }
        self.node.shutdown().await;
        self.store.close();
    }
}
