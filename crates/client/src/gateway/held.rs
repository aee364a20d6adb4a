//! The copies the client holds and the highest version it has seen of each package and CRL:
//! recording and dropping them in memory, loading them from the disk cache and writing them
//! to it in the background.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::cache::{CachedCrl, CachedPolicy};
use super::client::Client;
use super::config::{CrlCopy, Origin, Package};
use super::pool::{lock, lock_any};
use domsync_proto::gateway::Served;
use domsync_proto::model::{CrlNumber, Position, Version};

#[derive(Default)]
pub(super) struct PolicyState {
    /// The highest version seen anywhere (lists, fetches, watches).
    pub(super) known: Option<Version>,
    /// The last good copy.
    pub(super) held: Option<Package>,
    /// Whether the disk cache was consulted.
    loaded: bool,
}

#[derive(Default)]
pub(super) struct CrlState {
    /// The highest number seen, and the position of the answer that showed it.
    pub(super) known: Option<(CrlNumber, Position)>,
    pub(super) held: Option<CrlCopy>,
    loaded: bool,
}

/// The newest copy written to the disk cache per item, so that background writes finishing
/// out of order never replace a newer copy.
#[derive(Default)]
pub(super) struct Written {
    policies: Mutex<HashMap<String, Version>>,
    crls: Mutex<HashMap<String, CrlNumber>>,
}

impl Client {
    /// Records a verified package as the held copy (memory now, disk in the background;
    /// await the handle to wait for the disk).
    pub(super) fn accept_policy(&self, p: &Package) -> Option<tokio::task::JoinHandle<()>> {
        {
            let mut st = lock(&self.inner.state);
            self.note(&mut st, &p.served);
            let ps = st.policies.entry(p.info.name.clone()).or_default();
            let v = p.info.stamp();
            if ps.known.as_ref().is_none_or(|k| v > *k) {
                ps.known = Some(v.clone());
            }
            if ps.held.as_ref().is_none_or(|h| v > h.info.stamp()) {
                ps.held = Some(p.clone());
            }
        }
        let cache = self.inner.cache.clone()?;
        let inner = Arc::clone(&self.inner);
        let entry = CachedPolicy {
            info: p.info.clone(),
            served: p.served.clone(),
            content: p.content.to_vec(),
        };
        Some(tokio::task::spawn_blocking(move || {
            // Writes may run in any order: never replace a newer copy.
            let mut written = lock_any(&inner.written.policies);
            let v = entry.info.stamp();
            if written.get(&entry.info.name).is_some_and(|w| *w >= v) {
                return;
            }
            match cache.store_policy(&inner.domain, &entry) {
                Ok(()) => {
                    written.insert(entry.info.name.clone(), v);
                }
                Err(e) => tracing::warn!(error = %e, "gateway cache not updated"),
            }
        }))
    }

    pub(super) fn accept_crl(&self, c: &CrlCopy) -> Option<tokio::task::JoinHandle<()>> {
        {
            let mut st = lock(&self.inner.state);
            self.note(&mut st, &c.served);
            let cs = st.crls.entry(c.crl.issuer.clone()).or_default();
            if cs.known.as_ref().is_none_or(|(k, _)| c.crl.number > *k) {
                cs.known = Some((c.crl.number.clone(), c.served.position.clone()));
            }
            if cs.held.as_ref().is_none_or(|h| c.crl.number > h.crl.number) {
                cs.held = Some(c.clone());
            }
        }
        let cache = self.inner.cache.clone()?;
        let inner = Arc::clone(&self.inner);
        let entry = CachedCrl {
            crl: c.crl.clone(),
            served: c.served.clone(),
        };
        Some(tokio::task::spawn_blocking(move || {
            let mut written = lock_any(&inner.written.crls);
            let n = entry.crl.number.clone();
            if written.get(&entry.crl.issuer).is_some_and(|w| *w >= n) {
                return;
            }
            match cache.store_crl(&inner.domain, &entry) {
                Ok(()) => {
                    written.insert(entry.crl.issuer.clone(), n);
                }
                Err(e) => tracing::warn!(error = %e, "gateway cache not updated"),
            }
        }))
    }

    /// A node not behind the client said the package is gone: drop the held copy.
    pub(super) fn forget_policy(
        &self,
        name: &str,
        served: &Served,
    ) -> Option<tokio::task::JoinHandle<()>> {
        {
            let mut st = lock(&self.inner.state);
            self.note(&mut st, served);
            if let Some(ps) = st.policies.get_mut(name) {
                ps.held = None;
            }
        }
        let cache = self.inner.cache.clone()?;
        let inner = Arc::clone(&self.inner);
        let name = name.to_owned();
        Some(tokio::task::spawn_blocking(move || {
            let mut written = lock_any(&inner.written.policies);
            written.remove(&name);
            if let Err(e) = cache.remove_policy(&inner.domain, &name) {
                tracing::warn!(error = %e, "gateway cache not updated");
            }
        }))
    }

    pub(super) fn forget_crl(
        &self,
        issuer: &str,
        served: &Served,
    ) -> Option<tokio::task::JoinHandle<()>> {
        {
            let mut st = lock(&self.inner.state);
            self.note(&mut st, served);
            if let Some(cs) = st.crls.get_mut(issuer) {
                cs.held = None;
            }
        }
        let cache = self.inner.cache.clone()?;
        let inner = Arc::clone(&self.inner);
        let issuer = issuer.to_owned();
        Some(tokio::task::spawn_blocking(move || {
            let mut written = lock_any(&inner.written.crls);
            written.remove(&issuer);
            if let Err(e) = cache.remove_crl(&inner.domain, &issuer) {
                tracing::warn!(error = %e, "gateway cache not updated");
            }
        }))
    }

    /// Loads the cached copy of a package once (the newer of memory and disk is kept).
    pub(super) async fn load_policy(&self, name: &str) {
        {
            let mut st = lock(&self.inner.state);
            let ps = st.policies.entry(name.to_owned()).or_default();
            if ps.loaded {
                return;
            }
            ps.loaded = true;
        }
        let Some(cache) = self.inner.cache.clone() else {
            return;
        };
        let (domain, key) = (self.inner.domain.clone(), name.to_owned());
        let Ok(Some(c)) =
            tokio::task::spawn_blocking(move || cache.load_policy(&domain, &key)).await
        else {
            return;
        };
        let v = c.info.stamp();
        let mut st = lock(&self.inner.state);
        let ps = st.policies.entry(name.to_owned()).or_default();
        if ps.held.as_ref().is_none_or(|h| v > h.info.stamp()) {
            ps.held = Some(Package {
                info: c.info,
                content: Arc::new(c.content),
                served: c.served,
                origin: Origin::Held {
                    why: "from the cache".into(),
                },
            });
        }
        if ps.known.as_ref().is_none_or(|k| v > *k) {
            ps.known = Some(v);
        }
    }

    pub(super) async fn load_crl(&self, issuer: &str) {
        {
            let mut st = lock(&self.inner.state);
            let cs = st.crls.entry(issuer.to_owned()).or_default();
            if cs.loaded {
                return;
            }
            cs.loaded = true;
        }
        let Some(cache) = self.inner.cache.clone() else {
            return;
        };
        let (domain, key) = (self.inner.domain.clone(), issuer.to_owned());
        let Ok(Some(c)) = tokio::task::spawn_blocking(move || cache.load_crl(&domain, &key)).await
        else {
            return;
        };
        let mut st = lock(&self.inner.state);
        let cs = st.crls.entry(issuer.to_owned()).or_default();
        if cs.known.as_ref().is_none_or(|(k, _)| c.crl.number > *k) {
            cs.known = Some((c.crl.number.clone(), c.served.position.clone()));
        }
        if cs.held.as_ref().is_none_or(|h| c.crl.number > h.crl.number) {
            cs.held = Some(CrlCopy {
                crl: c.crl,
                served: c.served,
                origin: Origin::Held {
                    why: "from the cache".into(),
                },
            });
        }
    }
}
