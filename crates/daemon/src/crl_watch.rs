//! Logs the CRLs that reach or pass their nextUpdate: at start, then every
//! [`CHECK_EVERY`], once per CRL and state (so the journal shows each change once, not every
//! hour). Status and metrics show the same facts on demand.

use std::collections::HashSet;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use domsync_proto::model::utc;

use crate::{Daemon, Placement};

/// How often the CRLs are looked at.
pub(crate) const CHECK_EVERY: Duration = Duration::from_secs(600);

/// A CRL within this of its nextUpdate is reported as near.
pub(crate) const NEAR: i64 = 24 * 3600;

/// Starts the periodic check; it ends with the daemon.
pub(crate) fn start(daemon: &Arc<Daemon>) {
    let weak = Arc::downgrade(daemon);
    tokio::spawn(async move {
        let mut told = HashSet::new();
        loop {
            if !check(&weak, &mut told) {
                return;
            }
            tokio::time::sleep(CHECK_EVERY).await;
        }
    });
}

/// One pass; `false` once the daemon is gone.
fn check(weak: &Weak<Daemon>, told: &mut HashSet<String>) -> bool {
    let Some(daemon) = weak.upgrade() else {
        return false;
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    for (name, placement) in daemon.placements() {
        if !matches!(placement, Placement::Serving(_)) {
            continue;
        }
        let Ok(domain) = daemon.store().domain(&name) else {
            continue;
        };
        let Ok(held) = domain.held_crls() else {
            continue;
        };
        for crl in held.value {
            let Some(next) = crl.next_update else {
                continue;
            };
            let state = if next <= now {
                "past"
            } else if next - now <= NEAR {
                "near"
            } else {
                continue;
            };
            let key = format!("{name}\0{}\0{}\0{state}", crl.issuer, crl.number);
            if told.insert(key) {
                tracing::warn!(
                    domain = %name,
                    issuer = %crl.issuer,
                    number = %crl.number,
                    next_update = %utc(next),
                    "CRL is {state} its nextUpdate: upload the issuer's current CRL (`domsync crl put {name} FILE`)",
                    state = if state == "past" { "past" } else { "within a day of" },
                );
            }
        }
    }
    true
}
