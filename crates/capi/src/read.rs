//! Reads: one key, scans of a prefix (entry lists), policy packages, CRLs.

use std::ffi::{c_char, c_int};

use ::domsync_client::app::ClientError;
use domsync_proto::app::{AppError, AtLeast, KeyRange, Scan, MAX_PAGE_ENTRIES, MAX_WAIT_MS};
use domsync_proto::gateway::Served;
use domsync_proto::model::IssuerKey;

use crate::args;
use crate::client::domsync_client;
use crate::error::{
    guard, guard_void, Failure, DOMSYNC_ERR_CONTINUATION_GONE, DOMSYNC_ERR_NOT_FOUND,
};
use crate::types::{domsync_buf, domsync_served};

/// How many times a scan whose continuation is gone starts again before giving up.
const SCAN_RESTARTS: usize = 3;

fn at_least(lsn: u64, wait_ms: u32) -> AtLeast {
    AtLeast {
        lsn: domsync_proto::model::Lsn(lsn),
        wait_ms: wait_ms.min(MAX_WAIT_MS),
    }
}

/// One key as read by `domsync_get`. Free `value` with `domsync_buf_free`.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Debug)]
pub struct domsync_value {
    /// The value (owned by the caller).
    pub value: domsync_buf,
    /// The key's version: the lsn of the record that last changed it.
    pub version: u64,
    /// Who served the read, at which position.
    pub served: domsync_served,
}

/// Reads one key of `domain`. `at_least_lsn`: the read must reflect at least this lsn (0:
/// any), a lagging standby waiting up to `wait_ms` (at most 30000) before
/// `DOMSYNC_ERR_BEHIND`.
///
/// `*out` is zeroed first. `DOMSYNC_OK`: `out->value` holds the value (free it with
/// `domsync_buf_free`). `DOMSYNC_ERR_NOT_FOUND`: no such key at the position served
/// (`out->served` is still filled in).
///
/// # Safety
/// `client`: a handle; `domain`: NUL-terminated; `key`: `key_len` bytes; `out`: a struct to fill.
#[no_mangle]
pub unsafe extern "C" fn domsync_get(
    client: *const domsync_client,
    domain: *const c_char,
    key: *const u8,
    key_len: usize,
    at_least_lsn: u64,
    wait_ms: u32,
    out: *mut domsync_value,
) -> c_int {
    guard(|| {
        let out = args::out(out, "out")?;
        *out = domsync_value {
            value: domsync_buf::empty(),
            version: 0,
            served: domsync_served::zeroed(),
        };
        let client = args::handle(client, "client")?;
        let domain = args::domain(domain)?;
        let key = args::key(key, key_len)?;
        let got = client.run(
            client
                .client
                .get(&domain, key, at_least(at_least_lsn, wait_ms)),
        )?;
        out.served = domsync_served::from_served(&got.served);
        match got.entry {
            Some(entry) => {
                out.version = entry.version.0;
                out.value = domsync_buf::from_vec(entry.value);
                Ok(())
            }
            None => Err(Failure::new(
                DOMSYNC_ERR_NOT_FOUND,
                format!(
                    "no key {} in domain {domain} at lsn {} (served by node {})",
                    domsync_proto::app::show_key(key),
                    got.served.position.lsn,
                    got.served.node
                ),
            )),
        }
    })
}

/// One key of a [`domsync_entries`] list, borrowed: the pointers stay valid until the list
/// is freed. `key` and `value` are followed by a 0 byte (not counted in their lengths).
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Debug)]
pub struct domsync_entry {
    /// The key.
    pub key: *const u8,
    /// Its length.
    pub key_len: usize,
    /// The value.
    pub value: *const u8,
    /// Its length.
    pub value_len: usize,
    /// The key's version.
    pub version: u64,
}

/// The keys a scan read, in key order, all at one position. Opaque; read with
/// `domsync_entries_count` / `_at` / `_served` / `_truncated`, free with
/// `domsync_entries_free`.
pub struct domsync_entries {
    entries: Vec<Held>,
    served: Served,
    truncated: bool,
}

/// Key and value of an entry, each with a final 0 byte, and the version.
type Held = (Box<[u8]>, Box<[u8]>, u64);

fn with_nul(mut bytes: Vec<u8>) -> Box<[u8]> {
    bytes.push(0);
    bytes.into_boxed_slice()
}

/// Reads every key of `domain` starting with `prefix` (`prefix_len` 0: every key), at one
/// position, following the scan's pages. `limit`: most keys returned (0: all); when more
/// keys remain, `domsync_entries_truncated` says so. `at_least_lsn` / `wait_ms` as for
/// `domsync_get`.
///
/// On success `*out` is a new list, to free with `domsync_entries_free`; on failure NULL.
/// `DOMSYNC_ERR_CONTINUATION_GONE` when the keys kept changing under the scan (it starts
/// again a few times first).
///
/// # Safety
/// `client`: a handle; `domain`: NUL-terminated; `prefix`: `prefix_len` bytes; `out`: where
/// to store the list.
#[no_mangle]
pub unsafe extern "C" fn domsync_scan(
    client: *const domsync_client,
    domain: *const c_char,
    prefix: *const u8,
    prefix_len: usize,
    limit: u32,
    at_least_lsn: u64,
    wait_ms: u32,
    out: *mut *mut domsync_entries,
) -> c_int {
    guard(|| {
        let out = args::out(out, "out")?;
        *out = std::ptr::null_mut();
        let client = args::handle(client, "client")?;
        let domain = args::domain(domain)?;
        let prefix = args::bytes(prefix, prefix_len, "prefix")?;
        let range = KeyRange::prefix(prefix);
        let at_least = at_least(at_least_lsn, wait_ms);
        let (entries, served, truncated) = if limit == 0 {
            let (entries, served) = client.run(client.client.scan_all(&domain, range, at_least))?;
            (entries, served, false)
        } else {
            client.run(scan_limited(
                &client.client,
                &domain,
                range,
                at_least,
                limit,
            ))?
        };
        let list = domsync_entries {
            entries: entries
                .into_iter()
                .map(|e| (with_nul(e.key), with_nul(e.value), e.version.0))
                .collect(),
            served,
            truncated,
        };
        *out = Box::into_raw(Box::new(list));
        Ok(())
    })
}

/// The first `limit` keys of `range`, at one position: pages followed by their
/// continuations, started again when a continuation is gone.
async fn scan_limited(
    client: &::domsync_client::app::AppClient,
    domain: &domsync_proto::model::DomainId,
    range: KeyRange,
    at_least: AtLeast,
    limit: u32,
) -> Result<(Vec<domsync_proto::app::Entry>, Served, bool), Failure> {
    let mut restarts = 0;
    'scan: loop {
        let mut entries = Vec::new();
        let mut continuation = None;
        loop {
            let want = (limit as usize - entries.len()).min(MAX_PAGE_ENTRIES as usize) as u32;
            let scan = Scan {
                domain: domain.clone(),
                range: range.clone(),
                limit: want,
                keys_only: false,
                at_least,
                continuation: continuation.take(),
            };
            let page = match client.scan(scan).await {
                Ok(page) => page,
                Err(ClientError::App(AppError::ContinuationGone { .. }))
                    if restarts < SCAN_RESTARTS =>
                {
                    restarts += 1;
                    continue 'scan;
                }
                Err(e @ ClientError::App(AppError::ContinuationGone { .. })) => {
                    return Err(Failure::new(
                        DOMSYNC_ERR_CONTINUATION_GONE,
                        format!("{e} (started again {SCAN_RESTARTS} times)"),
                    ))
                }
                Err(e) => return Err(e.into()),
            };
            entries.extend(page.entries);
            if entries.len() >= limit as usize {
                let truncated = entries.len() > limit as usize || page.more.is_some();
                entries.truncate(limit as usize);
                return Ok((entries, page.served, truncated));
            }
            match page.more {
                Some(more) => continuation = Some(more),
                None => return Ok((entries, page.served, false)),
            }
        }
    }
}

/// How many entries the list holds.
///
/// # Safety
/// `entries`: a list; `count`: where to store the number.
#[no_mangle]
pub unsafe extern "C" fn domsync_entries_count(
    entries: *const domsync_entries,
    count: *mut usize,
) -> c_int {
    guard(|| {
        let count = args::out(count, "count")?;
        *count = args::handle(entries, "entries")?.entries.len();
        Ok(())
    })
}

/// Entry `index` (from 0) of the list, borrowed (valid until the list is freed).
/// `DOMSYNC_ERR_INVALID_ARGUMENT` when `index` is past the end.
///
/// # Safety
/// `entries`: a list; `out`: a struct to fill.
#[no_mangle]
pub unsafe extern "C" fn domsync_entries_at(
    entries: *const domsync_entries,
    index: usize,
    out: *mut domsync_entry,
) -> c_int {
    guard(|| {
        let out = args::out(out, "out")?;
        let list = args::handle(entries, "entries")?;
        let (key, value, version) = list.entries.get(index).ok_or_else(|| {
            Failure::invalid(format!(
                "index {index} is past the end of the list ({} entries)",
                list.entries.len()
            ))
        })?;
        *out = domsync_entry {
            key: key.as_ptr(),
            key_len: key.len() - 1,
            value: value.as_ptr(),
            value_len: value.len() - 1,
            version: *version,
        };
        Ok(())
    })
}

/// Who served the scan, and the position of every entry in it: watch from there
/// (`domsync_watch_start`) to see every later change without a gap.
///
/// # Safety
/// `entries`: a list; `out`: a struct to fill.
#[no_mangle]
pub unsafe extern "C" fn domsync_entries_served(
    entries: *const domsync_entries,
    out: *mut domsync_served,
) -> c_int {
    guard(|| {
        let out = args::out(out, "out")?;
        *out = domsync_served::from_served(&args::handle(entries, "entries")?.served);
        Ok(())
    })
}

/// `*truncated` is 1 when the scan stopped at its `limit` with keys left, else 0.
///
/// # Safety
/// `entries`: a list; `truncated`: where to store the flag.
#[no_mangle]
pub unsafe extern "C" fn domsync_entries_truncated(
    entries: *const domsync_entries,
    truncated: *mut c_int,
) -> c_int {
    guard(|| {
        let truncated = args::out(truncated, "truncated")?;
        *truncated = c_int::from(args::handle(entries, "entries")?.truncated);
        Ok(())
    })
}

/// Frees a list and every entry borrowed from it (NULL is ignored).
///
/// # Safety
/// `entries`: NULL or a list from `domsync_scan`, not used again.
#[no_mangle]
pub unsafe extern "C" fn domsync_entries_free(entries: *mut domsync_entries) {
    guard_void(|| {
        if !entries.is_null() {
            // SAFETY: a list made by `domsync_scan`, given back once.
            drop(unsafe { Box::from_raw(entries) });
        }
    });
}

/// A policy package as read by `domsync_policy_get`. Free `content` with `domsync_buf_free`.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Debug)]
pub struct domsync_policy {
    /// The package's bytes (owned by the caller), checked against `sha256`.
    pub content: domsync_buf,
    /// Its version: the lsn of the record that installed it.
    pub version: u64,
    /// The epoch term of that record (packages order by epoch, then version).
    pub epoch_term: u64,
    /// SHA-256 of the content.
    pub sha256: [u8; 32],
    /// When it was installed, microseconds since the Unix epoch.
    pub installed_us: u64,
    /// Who served it.
    pub served: domsync_served,
}

/// Reads the policy package `name` of `domain`, its content checked against its SHA-256.
/// `*out` is zeroed first; `DOMSYNC_ERR_NOT_FOUND` when there is no such package.
///
/// # Safety
/// `client`: a handle; `domain`, `name`: NUL-terminated; `out`: a struct to fill.
#[no_mangle]
pub unsafe extern "C" fn domsync_policy_get(
    client: *const domsync_client,
    domain: *const c_char,
    name: *const c_char,
    at_least_lsn: u64,
    wait_ms: u32,
    out: *mut domsync_policy,
) -> c_int {
    guard(|| {
        let out = args::out(out, "out")?;
        *out = domsync_policy {
            content: domsync_buf::empty(),
            version: 0,
            epoch_term: 0,
            sha256: [0; 32],
            installed_us: 0,
            served: domsync_served::zeroed(),
        };
        let client = args::handle(client, "client")?;
        let domain = args::domain(domain)?;
        let name = args::text(name, "name")?;
        let copy = client.run(client.client.policy(
            &domain,
            name,
            at_least(at_least_lsn, wait_ms),
        ))?;
        out.version = copy.info.version;
        out.epoch_term = copy.info.epoch.term;
        out.sha256 = copy.info.sha256;
        out.installed_us = copy.info.installed;
        out.served = domsync_served::from_served(&copy.served);
        out.content = domsync_buf::from_vec(copy.content);
        Ok(())
    })
}

/// A CRL as read by `domsync_crl_get`. Free `der` with `domsync_buf_free`.
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Debug)]
pub struct domsync_crl {
    /// The whole CRL, DER, exactly as uploaded (owned by the caller).
    pub der: domsync_buf,
    /// The CRL number in decimal (or `0x` and hex past 128 bits), NUL-terminated.
    pub number: [c_char; 64],
    /// `thisUpdate`, seconds since the Unix epoch.
    pub this_update: i64,
    /// `nextUpdate`, seconds since the Unix epoch; meaningful when `has_next_update` is 1.
    pub next_update: i64,
    /// 1 when the CRL has a nextUpdate.
    pub has_next_update: c_int,
    /// Who served it.
    pub served: domsync_served,
}

/// Reads the CRL of the issuer named `issuer` in RFC 4514 text as domsync shows it
/// (`"CN=Tenant CA,O=Example"`); `delta` 1: the delta CRL held beside the base instead.
/// `*out` is zeroed first; `DOMSYNC_ERR_NOT_FOUND` (with `out->served` filled in) when none
/// is held.
///
/// # Safety
/// `client`: a handle; `domain`, `issuer`: NUL-terminated; `out`: a struct to fill.
#[no_mangle]
pub unsafe extern "C" fn domsync_crl_get(
    client: *const domsync_client,
    domain: *const c_char,
    issuer: *const c_char,
    delta: c_int,
    at_least_lsn: u64,
    wait_ms: u32,
    out: *mut domsync_crl,
) -> c_int {
    guard(|| {
        let out = args::out(out, "out")?;
        *out = domsync_crl {
            der: domsync_buf::empty(),
            number: [0; 64],
            this_update: 0,
            next_update: 0,
            has_next_update: 0,
            served: domsync_served::zeroed(),
        };
        let client = args::handle(client, "client")?;
        let domain = args::domain(domain)?;
        let issuer = args::text(issuer, "issuer")?;
        let (crl, served) = client.run(client.client.crl(
            &domain,
            IssuerKey::Text(issuer.to_owned()),
            delta != 0,
            at_least(at_least_lsn, wait_ms),
        ))?;
        out.served = domsync_served::from_served(&served);
        let crl = crl.ok_or_else(|| {
            Failure::new(
                DOMSYNC_ERR_NOT_FOUND,
                format!(
                    "domain {domain} holds no {}CRL of issuer {issuer:?} at lsn {} (node {}): check the issuer's RFC 4514 text",
                    if delta != 0 { "delta " } else { "" },
                    served.position.lsn,
                    served.node
                ),
            )
        })?;
        let number = crl.number.to_string();
        for (slot, b) in out.number.iter_mut().zip(number.bytes().take(63)) {
            *slot = b as c_char;
        }
        out.this_update = crl.this_update;
        out.next_update = crl.next_update.unwrap_or(0);
        out.has_next_update = c_int::from(crl.next_update.is_some());
        out.der = domsync_buf::from_vec(crl.der);
        Ok(())
    })
}
