//! The client handle: connecting (local socket or remote nodes), the runtime it owns, freeing,
//! and the status of the domains (`hello`).

use std::ffi::c_char;
use std::future::Future;
use std::net::SocketAddr;
use std::os::unix::ffi::OsStrExt as _;
use std::path::PathBuf;
use std::sync::Arc;

use ::domsync_client::app::{AppClient, AppTarget};
use domsync_proto::model::NodeId;
use serde_json::json;

use crate::args;
use crate::error::{guard, guard_void, Failure, DOMSYNC_ERR_CONNECT};
use crate::types::{domsync_buf, role_code};

/// A connection to a domsync daemon (or a set of remote nodes). Opaque; made by
/// `domsync_connect_local` / `domsync_connect_remote`, freed by `domsync_client_free`. May be
/// used from several threads at once.
pub struct domsync_client {
    pub(crate) runtime: Arc<tokio::runtime::Runtime>,
    pub(crate) client: AppClient,
}

impl domsync_client {
    /// Runs `future` on the client's runtime and waits for it (the calling thread blocks).
    pub(crate) fn run<F: Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }
}

/// Most remote nodes a client may be given.
const MAX_NODES: usize = 64;

/// A runtime with two worker threads: requests run on it while the C thread that asked waits.
fn runtime() -> Result<Arc<tokio::runtime::Runtime>, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("domsync")
        .enable_all()
        .build()
        .map(Arc::new)
        .map_err(|e| {
            Failure::new(
                crate::error::DOMSYNC_ERR_INTERNAL,
                format!("cannot start the threads of the domsync client: {e}"),
            )
        })
}

fn connect(target: AppTarget, out: &mut *mut domsync_client) -> Result<(), Failure> {
    let runtime = runtime()?;
    let client = runtime.block_on(AppClient::connect(target))?;
    *out = Box::into_raw(Box::new(domsync_client { runtime, client }));
    Ok(())
}

/// Connects to the daemon on this appliance through its application socket (`[apps] socket`
/// in domsync.toml, e.g. `/run/domsync/app.sock`). On success `*out` is a new client, to free
/// with `domsync_client_free`; on failure `*out` is NULL.
///
/// Returns `DOMSYNC_ERR_CONNECT` (the message names the socket) when nobody answers there.
///
/// # Safety
/// `socket_path`: a NUL-terminated path; `out`: where to store the handle.
#[no_mangle]
pub unsafe extern "C" fn domsync_connect_local(
    socket_path: *const c_char,
    out: *mut *mut domsync_client,
) -> std::ffi::c_int {
    guard(|| {
        let out = args::out(out, "out")?;
        *out = std::ptr::null_mut();
        let path = args::c_bytes(socket_path, "socket_path")?;
        if path.is_empty() {
            return Err(Failure::invalid(
                "socket_path is empty: pass the daemon's application socket ([apps] socket)",
            ));
        }
        let path = PathBuf::from(std::ffi::OsStr::from_bytes(path));
        // Said here, before any runtime starts: the most common mistake, named with its path.
        if let Err(e) = std::fs::symlink_metadata(&path) {
            return Err(Failure::new(
                DOMSYNC_ERR_CONNECT,
                format!(
                    "cannot connect to the application socket {}: {e}; is domsyncd running with [apps] socket set to this path?",
                    path.display()
                ),
            ));
        }
        connect(AppTarget::Socket(path), out)
    })
}

/// Parses `"a=127.0.0.1:7000,b=[::1]:7000"`.
fn parse_nodes(text: &str) -> Result<Vec<(NodeId, SocketAddr)>, Failure> {
    let mut nodes = Vec::new();
    for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let (name, addr) = item.split_once('=').ok_or_else(|| {
            Failure::invalid(format!(
                "node {item:?} in nodes is not name=address: write e.g. \"a=127.0.0.1:7000,b=10.0.0.2:7000\""
            ))
        })?;
        let node = NodeId::new(name.trim()).map_err(|e| Failure::invalid(format!("nodes: {e}")))?;
        let addr: SocketAddr = addr.trim().parse().map_err(|e| {
            Failure::invalid(format!(
                "address {:?} of node {node} in nodes: {e}; write ip:port",
                addr.trim()
            ))
        })?;
        nodes.push((node, addr));
    }
    if nodes.is_empty() {
        return Err(Failure::invalid(
            "nodes names no node: write e.g. \"a=127.0.0.1:7000,b=10.0.0.2:7000\"",
        ));
    }
    if nodes.len() > MAX_NODES {
        return Err(Failure::invalid(format!(
            "nodes names {} nodes, the limit is {MAX_NODES}",
            nodes.len()
        )));
    }
    Ok(nodes)
}

/// Connects to remote nodes over QUIC with an application certificate: `nodes` is
/// `"name=ip:port,..."` in order of preference, `pki_dir` holds `ca.pem` and
/// `app-<app_id>.pem` / `.key`. On success `*out` is a new client, to free with
/// `domsync_client_free`; on failure `*out` is NULL.
///
/// # Safety
/// `nodes`, `pki_dir`, `app_id`: NUL-terminated strings; `out`: where to store the handle.
#[no_mangle]
pub unsafe extern "C" fn domsync_connect_remote(
    nodes: *const c_char,
    pki_dir: *const c_char,
    app_id: *const c_char,
    out: *mut *mut domsync_client,
) -> std::ffi::c_int {
    guard(|| {
        let out = args::out(out, "out")?;
        *out = std::ptr::null_mut();
        let nodes = parse_nodes(args::text(nodes, "nodes")?)?;
        let pki = PathBuf::from(std::ffi::OsStr::from_bytes(args::c_bytes(
            pki_dir, "pki_dir",
        )?));
        let id = args::text(app_id, "app_id")?.to_owned();
        connect(AppTarget::Remote { nodes, pki, id }, out)
    })
}

/// Frees a client (NULL is ignored). Requests still running on other threads must have
/// returned first. Watches started from it keep working until they are freed; the client's
/// threads stop when the last of them is freed.
///
/// # Safety
/// `client`: NULL or a handle from `domsync_connect_*`, not used again.
#[no_mangle]
pub unsafe extern "C" fn domsync_client_free(client: *mut domsync_client) {
    guard_void(|| {
        if client.is_null() {
            return;
        }
        // SAFETY: a handle made by `connect`, given back once.
        let handle = unsafe { Box::from_raw(client) };
        let runtime = handle.runtime.clone();
        {
            // Connections close inside the runtime that made them.
            let _entered = runtime.enter();
            drop(handle);
        }
        drop(runtime);
    });
}

/// The node answering and the domains this application may use there, as one JSON object
/// (UTF-8, NUL-terminated; free with `domsync_buf_free`):
///
/// ```text
/// {"node":"a","protocol":1,"domains":[{"domain":"fw-east","role":"active",
///   "role_code":1,"epoch":{"term":1,"node":"a"},"lsn":42,"active":"a","writable":true}]}
/// ```
///
/// `active` is null when the node knows no active for the domain.
///
/// # Safety
/// `client`: a handle; `out`: a buffer to fill (zeroed first).
#[no_mangle]
pub unsafe extern "C" fn domsync_status_json(
    client: *const domsync_client,
    out: *mut domsync_buf,
) -> std::ffi::c_int {
    guard(|| {
        let out = args::out(out, "out")?;
        *out = domsync_buf::empty();
        let client = args::handle(client, "client")?;
        let hello = client.run(client.client.hello())?;
        let domains: Vec<_> = hello
            .domains
            .iter()
            .map(|d| {
                json!({
                    "domain": d.domain.as_str(),
                    "role": d.role.to_string(),
                    "role_code": role_code(d.role),
                    "epoch": {"term": d.epoch.term, "node": d.epoch.node.as_str()},
                    "lsn": d.position.lsn.0,
                    "active": d.active.as_ref().map(NodeId::as_str),
                    "writable": d.writable,
                })
            })
            .collect();
        let text = json!({
            "node": hello.node.as_str(),
            "protocol": hello.protocol,
            "domains": domains,
        })
        .to_string();
        *out = domsync_buf::from_vec(text.into_bytes());
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_lists_parse_and_bad_ones_are_named() {
        let nodes = parse_nodes("a=127.0.0.1:7000, b=[::1]:7001").unwrap();
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[1].0.as_str(), "b");
        let e = parse_nodes("a=127.0.0.1").unwrap_err();
        assert!(
            e.message.contains("address \"127.0.0.1\" of node a"),
            "{}",
            e.message
        );
        let e = parse_nodes("a").unwrap_err();
        assert!(e.message.contains("not name=address"), "{}", e.message);
        assert!(parse_nodes(" , ").is_err());
    }
}
