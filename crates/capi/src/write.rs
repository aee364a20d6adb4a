//! Writes: transactions built condition by condition and op by op, and the one-op shortcuts
//! (put, delete, policy install, CRL put).

use std::ffi::{c_char, c_int};

use ::domsync_client::app::ClientError;
use domsync_proto::app::{put_crl_op, AppError, Condition, Txn, MAX_CONDITIONS};
use domsync_proto::model::{DomainId, Lsn, Op, Position};

use crate::args;
use crate::client::domsync_client;
use crate::error::{guard, guard_void, Failure, DOMSYNC_ERR_NOT_FOUND};
use crate::types::domsync_position;

/// Most ops one transaction handle takes (the node bounds the record's size as well).
pub const DOMSYNC_MAX_TXN_OPS: usize = 10_000;

/// A transaction being built: conditions (`domsync_txn_if_*`) and ops (`domsync_txn_put`,
/// ...), committed by `domsync_txn_commit`. Opaque; made by `domsync_txn_new`, freed by
/// `domsync_txn_free`. Use it from one thread at a time.
pub struct domsync_txn {
    domain: DomainId,
    conditions: Vec<Condition>,
    ops: Vec<Op>,
    /// The failed condition of the last commit: its index and the key's version then.
    conflict: Option<(u32, Option<Lsn>)>,
}

impl domsync_txn {
    fn condition(&mut self, condition: Condition) -> Result<(), Failure> {
        if self.conditions.len() >= MAX_CONDITIONS {
            return Err(Failure::invalid(format!(
                "the transaction on domain {} already has {MAX_CONDITIONS} conditions, the limit",
                self.domain
            )));
        }
        self.conditions.push(condition);
        Ok(())
    }

    fn op(&mut self, op: Op) -> Result<(), Failure> {
        if self.ops.len() >= DOMSYNC_MAX_TXN_OPS {
            return Err(Failure::invalid(format!(
                "the transaction on domain {} already has {DOMSYNC_MAX_TXN_OPS} ops, the limit: commit it and start another",
                self.domain
            )));
        }
        self.ops.push(op);
        Ok(())
    }
}

/// Why a transaction's condition failed (`domsync_txn_conflict`).
#[repr(C)]
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy)]
pub struct domsync_conflict {
    /// Index (from 0, in the order added) of the first condition that failed.
    pub index: u32,
    /// 1 when its key exists now, 0 when it is absent.
    pub exists: c_int,
    /// The key's current version when it exists.
    pub version: u64,
}

/// Starts a transaction on `domain`. On success `*out` is a new handle, to free with
/// `domsync_txn_free`; on failure NULL (`DOMSYNC_ERR_INVALID_ARGUMENT` for a bad domain name).
///
/// # Safety
/// `domain`: NUL-terminated; `out`: where to store the handle.
#[no_mangle]
pub unsafe extern "C" fn domsync_txn_new(
    domain: *const c_char,
    out: *mut *mut domsync_txn,
) -> c_int {
    guard(|| {
        let out = args::out(out, "out")?;
        *out = std::ptr::null_mut();
        let domain = args::domain(domain)?;
        *out = Box::into_raw(Box::new(domsync_txn {
            domain,
            conditions: Vec::new(),
            ops: Vec::new(),
            conflict: None,
        }));
        Ok(())
    })
}

/// Condition: `key` does not exist.
///
/// # Safety
/// `txn`: a handle; `key`: `key_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn domsync_txn_if_absent(
    txn: *mut domsync_txn,
    key: *const u8,
    key_len: usize,
) -> c_int {
    guard(|| {
        let txn = args::handle_mut(txn, "txn")?;
        let key = args::key(key, key_len)?.to_vec();
        txn.condition(Condition::Absent { key })
    })
}

/// Condition: `key` exists with this version (as `domsync_get` returned it).
///
/// # Safety
/// `txn`: a handle; `key`: `key_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn domsync_txn_if_version(
    txn: *mut domsync_txn,
    key: *const u8,
    key_len: usize,
    version: u64,
) -> c_int {
    guard(|| {
        let txn = args::handle_mut(txn, "txn")?;
        let key = args::key(key, key_len)?.to_vec();
        txn.condition(Condition::Version {
            key,
            version: Lsn(version),
        })
    })
}

/// Condition: `key` exists with this value.
///
/// # Safety
/// `txn`: a handle; `key`: `key_len` bytes; `value`: `value_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn domsync_txn_if_value(
    txn: *mut domsync_txn,
    key: *const u8,
    key_len: usize,
    value: *const u8,
    value_len: usize,
) -> c_int {
    guard(|| {
        let txn = args::handle_mut(txn, "txn")?;
        let key = args::key(key, key_len)?.to_vec();
        let value = args::bytes(value, value_len, "value")?.to_vec();
        txn.condition(Condition::Value { key, value })
    })
}

/// Op: set `key` to `value`.
///
/// # Safety
/// `txn`: a handle; `key`: `key_len` bytes; `value`: `value_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn domsync_txn_put(
    txn: *mut domsync_txn,
    key: *const u8,
    key_len: usize,
    value: *const u8,
    value_len: usize,
) -> c_int {
    guard(|| {
        let txn = args::handle_mut(txn, "txn")?;
        let key = args::key(key, key_len)?.to_vec();
        let value = args::bytes(value, value_len, "value")?.to_vec();
        txn.op(Op::Put { key, value })
    })
}

/// Op: remove `key` (removing a missing key is not an error).
///
/// # Safety
/// `txn`: a handle; `key`: `key_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn domsync_txn_delete(
    txn: *mut domsync_txn,
    key: *const u8,
    key_len: usize,
) -> c_int {
    guard(|| {
        let txn = args::handle_mut(txn, "txn")?;
        let key = args::key(key, key_len)?.to_vec();
        txn.op(Op::Delete { key })
    })
}

fn policy_name(name: *const c_char) -> Result<String, Failure> {
    let name = args::text(name, "name")?;
    domsync_proto::model::check_policy_name(name).map_err(Failure::invalid)?;
    Ok(name.to_owned())
}

/// Op: install the policy package `name` (1 to 128 characters from `A-Z a-z 0-9 . _ -`) with
/// `content`; its version will be the transaction's lsn.
///
/// # Safety
/// `txn`: a handle; `name`: NUL-terminated; `content`: `content_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn domsync_txn_install_policy(
    txn: *mut domsync_txn,
    name: *const c_char,
    content: *const u8,
    content_len: usize,
) -> c_int {
    guard(|| {
        let txn = args::handle_mut(txn, "txn")?;
        let name = policy_name(name)?;
        let content = args::bytes(content, content_len, "content")?.to_vec();
        txn.op(Op::InstallPolicy { name, content })
    })
}

/// Op: remove the policy package `name`.
///
/// # Safety
/// `txn`: a handle; `name`: NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn domsync_txn_remove_policy(
    txn: *mut domsync_txn,
    name: *const c_char,
) -> c_int {
    guard(|| {
        let txn = args::handle_mut(txn, "txn")?;
        let name = policy_name(name)?;
        txn.op(Op::RemovePolicy { name })
    })
}

/// Op: store a CRL given as DER. The active verifies it against the domain's issuer
/// certificates when the transaction commits (`DOMSYNC_ERR_REFUSED` otherwise);
/// `allow_stale` 1 stores it even though its nextUpdate is past.
/// `DOMSYNC_ERR_INVALID_ARGUMENT` here when the bytes are not a CRL.
///
/// # Safety
/// `txn`: a handle; `der`: `der_len` bytes.
#[no_mangle]
pub unsafe extern "C" fn domsync_txn_put_crl(
    txn: *mut domsync_txn,
    der: *const u8,
    der_len: usize,
    allow_stale: c_int,
) -> c_int {
    guard(|| {
        let txn = args::handle_mut(txn, "txn")?;
        let op = crl_op(der, der_len, allow_stale)?;
        txn.op(op)
    })
}

fn crl_op(der: *const u8, der_len: usize, allow_stale: c_int) -> Result<Op, Failure> {
    let der = args::bytes(der, der_len, "der")?;
    if der.is_empty() {
        return Err(Failure::invalid("der is empty: pass the CRL's DER bytes"));
    }
    put_crl_op(der, allow_stale != 0).map_err(|e| Failure::invalid(format!("der: {e}")))
}

fn position_out(out: *mut domsync_position, position: &Position) {
    args::set_optional(out, domsync_position::from_position(position));
}

/// Runs a transaction and says how it went, filling `out` (when not NULL) with the position
/// of its record on success and when committed but unconfirmed.
fn commit(
    client: &domsync_client,
    txn: Txn,
    out: *mut domsync_position,
) -> Result<Option<(u32, Option<Lsn>)>, Failure> {
    match client.run(client.client.txn(txn)) {
        Ok(position) => {
            position_out(out, &position);
            Ok(None)
        }
        Err(ClientError::App(AppError::Conflict { index, current, .. })) => {
            Ok(Some((index, current)))
        }
        Err(e) => {
            if let ClientError::App(AppError::Unconfirmed { position, .. }) = &e {
                position_out(out, position);
            }
            Err(e.into())
        }
    }
}

/// Commits the transaction on the domain's active: when every condition holds, its ops are
/// applied atomically as one record, and `*out` (when not NULL) is that record's position
/// (its lsn is the new version of every key changed). `DOMSYNC_ERR_CONFLICT`: a condition
/// failed and nothing was written; `domsync_txn_conflict` says which. The handle is kept: free
/// it with `domsync_txn_free` (committing it again runs the same transaction again).
///
/// `out` is zeroed first; it is also filled in on `DOMSYNC_ERR_UNCONFIRMED` (committed on the
/// active, not confirmed by its standbys).
///
/// # Safety
/// `client`, `txn`: handles; `out`: NULL or a struct to fill.
#[no_mangle]
pub unsafe extern "C" fn domsync_txn_commit(
    client: *const domsync_client,
    txn: *mut domsync_txn,
    out: *mut domsync_position,
) -> c_int {
    guard(|| {
        args::set_optional(out, domsync_position::zeroed());
        let client = args::handle(client, "client")?;
        let txn = args::handle_mut(txn, "txn")?;
        txn.conflict = None;
        let request = Txn {
            domain: txn.domain.clone(),
            conditions: txn.conditions.clone(),
            ops: txn.ops.clone(),
        };
        let conflict = commit(client, request, out);
        match conflict {
            Ok(None) => Ok(()),
            Ok(Some((index, current))) => {
                txn.conflict = Some((index, current));
                let key = txn
                    .conditions
                    .get(index as usize)
                    .map(|c| domsync_proto::app::show_key(c.key()))
                    .unwrap_or_else(|| "?".to_owned());
                Err(Failure::new(
                    crate::error::DOMSYNC_ERR_CONFLICT,
                    format!(
                        "condition {index} of the transaction on domain {} failed on key {key}: {}; read it again and retry",
                        txn.domain,
                        match current {
                            Some(v) => format!("its version is now {v}"),
                            None => "it does not exist".to_owned(),
                        }
                    ),
                ))
            }
            Err(e) => Err(e),
        }
    })
}

/// After `domsync_txn_commit` returned `DOMSYNC_ERR_CONFLICT`: which condition failed and the
/// key's version then. `DOMSYNC_ERR_NOT_FOUND` when the last commit was no conflict.
///
/// # Safety
/// `txn`: a handle; `out`: a struct to fill.
#[no_mangle]
pub unsafe extern "C" fn domsync_txn_conflict(
    txn: *const domsync_txn,
    out: *mut domsync_conflict,
) -> c_int {
    guard(|| {
        let out = args::out(out, "out")?;
        let txn = args::handle(txn, "txn")?;
        let (index, current) = txn.conflict.ok_or_else(|| {
            Failure::new(
                DOMSYNC_ERR_NOT_FOUND,
                format!(
                    "the last commit of this transaction on domain {} was no conflict",
                    txn.domain
                ),
            )
        })?;
        *out = domsync_conflict {
            index,
            exists: c_int::from(current.is_some()),
            version: current.map_or(0, |v| v.0),
        };
        Ok(())
    })
}

/// Frees a transaction handle (NULL is ignored).
///
/// # Safety
/// `txn`: NULL or a handle from `domsync_txn_new`, not used again.
#[no_mangle]
pub unsafe extern "C" fn domsync_txn_free(txn: *mut domsync_txn) {
    guard_void(|| {
        if !txn.is_null() {
            // SAFETY: a handle made by `domsync_txn_new`, given back once.
            drop(unsafe { Box::from_raw(txn) });
        }
    });
}

/// Runs a one-op transaction without conditions.
fn one_op(
    client: *const domsync_client,
    domain: *const c_char,
    out: *mut domsync_position,
    op: impl FnOnce() -> Result<Op, Failure>,
) -> c_int {
    guard(|| {
        args::set_optional(out, domsync_position::zeroed());
        let client = args::handle(client, "client")?;
        let domain = args::domain(domain)?;
        let txn = Txn {
            domain,
            conditions: Vec::new(),
            ops: vec![op()?],
        };
        match commit(client, txn, out)? {
            None => Ok(()),
            // No condition: no conflict; said plainly should a node ever answer one.
            Some((index, _)) => Err(Failure::new(
                crate::error::DOMSYNC_ERR_PROTOCOL,
                format!("the node answered a conflict on condition {index} of a transaction without conditions"),
            )),
        }
    })
}

/// Sets `key` of `domain` to `value` (a transaction without conditions). `*out`, when not
/// NULL, is the position of the write (its lsn is the key's new version).
///
/// # Safety
/// `client`: a handle; `domain`: NUL-terminated; `key`, `value`: buffers of their lengths;
/// `out`: NULL or a struct to fill.
#[no_mangle]
pub unsafe extern "C" fn domsync_put(
    client: *const domsync_client,
    domain: *const c_char,
    key: *const u8,
    key_len: usize,
    value: *const u8,
    value_len: usize,
    out: *mut domsync_position,
) -> c_int {
    one_op(client, domain, out, || {
        Ok(Op::Put {
            key: args::key(key, key_len)?.to_vec(),
            value: args::bytes(value, value_len, "value")?.to_vec(),
        })
    })
}

/// Removes `key` of `domain` (removing a missing key is not an error).
///
/// # Safety
/// As `domsync_put`.
#[no_mangle]
pub unsafe extern "C" fn domsync_delete(
    client: *const domsync_client,
    domain: *const c_char,
    key: *const u8,
    key_len: usize,
    out: *mut domsync_position,
) -> c_int {
    one_op(client, domain, out, || {
        Ok(Op::Delete {
            key: args::key(key, key_len)?.to_vec(),
        })
    })
}

/// Installs the policy package `name` of `domain` (a transaction of one op).
///
/// # Safety
/// As `domsync_put`; `name`: NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn domsync_policy_install(
    client: *const domsync_client,
    domain: *const c_char,
    name: *const c_char,
    content: *const u8,
    content_len: usize,
    out: *mut domsync_position,
) -> c_int {
    one_op(client, domain, out, || {
        Ok(Op::InstallPolicy {
            name: policy_name(name)?,
            content: args::bytes(content, content_len, "content")?.to_vec(),
        })
    })
}

/// Stores a CRL (DER) in `domain` (a transaction of one op); see `domsync_txn_put_crl`.
///
/// # Safety
/// As `domsync_put`.
#[no_mangle]
pub unsafe extern "C" fn domsync_crl_put(
    client: *const domsync_client,
    domain: *const c_char,
    der: *const u8,
    der_len: usize,
    allow_stale: c_int,
    out: *mut domsync_position,
) -> c_int {
    one_op(client, domain, out, || crl_op(der, der_len, allow_stale))
}
