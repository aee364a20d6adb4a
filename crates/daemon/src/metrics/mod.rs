//! Metrics in the Prometheus text format (version 0.0.4), served over plain HTTP on a local
//! address (`node.metrics`): `GET /metrics`.
//!
//! Per domain: role, epoch term, lsn, log bytes, durable commit latency histogram, records and
//! bytes shipped (active), per standby its lag (records, bytes, seconds) and sync status (on
//! the active), the follower's own status (on a standby), CRL time to next update; per node:
//! gateway answers by result and gateway connections, the end of validity of this node's
//! certificate and of its peers', the descriptor budget (needed, limit, open now).
//!
//! The daemon's state is gathered at one time into a snapshot (`state`); the page is rendered
//! from it by one generic renderer over a table of metric definitions (`table`): adding a
//! metric is adding a row.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

use crate::Daemon;

mod state;
mod table;
#[cfg(test)]
mod tests;

/// Renders every metric of the daemon now.
pub fn render(daemon: &Daemon) -> String {
    table::render(&state::gather(daemon))
}

/// Whether a request head asks for `GET /metrics`, with or without a query string (which is
/// ignored, as Prometheus servers do: `GET /metrics?x=1`).
fn is_metrics_request(head: &[u8]) -> bool {
    let Some(rest) = head.strip_prefix(b"GET /metrics") else {
        return false;
    };
    matches!(rest.first(), Some(b' ' | b'?'))
}

/// Metrics connections served at once; more wait to be accepted (a bounded count of
/// descriptors, see the descriptor budget).
pub const MAX_CONNECTIONS: usize = 16;

/// Serves `GET /metrics` on `addr` until the task is dropped. Each connection gets one answer
/// and is closed; a request head is read for at most 5 s and 8 KiB; at most
/// [`MAX_CONNECTIONS`] at once.
///
/// # Errors
/// When `addr` cannot be bound.
pub async fn serve(addr: SocketAddr, daemon: Arc<Daemon>) -> std::io::Result<()> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(addr = %addr, "metrics at http://{addr}/metrics");
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    tokio::spawn(async move {
        loop {
            let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
                return;
            };
            let mut stream = match listener.accept().await {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors and the like: wait instead of spinning.
                    tracing::warn!(error = %e, "metrics connection not accepted");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let daemon = Arc::clone(&daemon);
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                let read = tokio::time::timeout(Duration::from_secs(5), async {
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                        match stream.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                })
                .await;
                if read.is_err() {
                    return;
                }
                let (status, body) = if is_metrics_request(&head) {
                    ("200 OK", render(&daemon))
                } else {
                    ("404 Not Found", "only GET /metrics is served\n".to_owned())
                };
                let answer = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(answer.as_bytes()).await;
                let _ = stream.shutdown().await;
                drop(permit);
            });
        }
    });
    Ok(())
}
