//! `domsync-wan-relay --listen ADDR --upstream ADDR --delay-ms N --loss PERCENT`: a userspace
//! stand-in for `tc qdisc ... netem delay N loss P` on a UDP path, for kernels built without
//! `sch_netem` (benches/wan.sh uses it when `tc qdisc add ... netem` is refused).
//!
//! Every datagram a client sends to `--listen` goes to `--upstream` from a socket of its own
//! (one per client address, so the upstream sees one peer per client), and every answer goes
//! back to that client. In each direction each datagram is dropped with probability
//! `--loss` percent, else held `--delay-ms` and sent: a constant delay keeps the order, as
//! netem without jitter does. Like netem's default `limit 1000`, at most [`LIMIT`] datagrams
//! wait per direction and client; more are dropped (counted apart from the random losses).
//! Counts are printed on stderr every `--report-secs` seconds.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use domsync_testkit::rng::Rng;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// Datagrams held per direction and client, as netem's default `limit 1000`.
const LIMIT: usize = 1000;
/// Largest datagram relayed (a UDP payload fits).
const MAX_DATAGRAM: usize = 65_535;
/// Most clients relayed at once (each has a socket and two tasks).
const MAX_CLIENTS: usize = 64;

/// Options.
#[derive(Parser, Debug)]
#[command(name = "domsync-wan-relay", about)]
struct Cli {
    /// Address the clients send to.
    #[arg(long)]
    listen: SocketAddr,
    /// Address datagrams are relayed to.
    #[arg(long)]
    upstream: SocketAddr,
    /// One-way delay added in each direction, milliseconds.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Loss in each direction, percent (0 to 100).
    #[arg(long, default_value_t = 0.0)]
    loss: f64,
    /// Seconds between two count lines on stderr (0: none).
    #[arg(long, default_value_t = 0)]
    report_secs: u64,
}

/// Datagrams seen, dropped at random, dropped for a full queue, in both directions.
#[derive(Default)]
struct Counts {
    seen: AtomicU64,
    lost: AtomicU64,
    overflow: AtomicU64,
}

/// One direction's impairment: loss then delay.
#[derive(Clone)]
struct Path {
    delay: Duration,
    loss: f64,
    counts: Arc<Counts>,
}

impl Path {
    /// Queues `bytes` for `tx` unless it is lost or the queue is full.
    fn offer(&self, rng: &mut Rng, tx: &mpsc::Sender<(Instant, Vec<u8>)>, bytes: Vec<u8>) {
        self.counts.seen.fetch_add(1, Ordering::Relaxed);
        // 53 random bits as a fraction in [0, 1).
        let draw = (rng.next() >> 11) as f64 / (1u64 << 53) as f64;
        if draw < self.loss {
            self.counts.lost.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if tx.try_send((Instant::now() + self.delay, bytes)).is_err() {
            self.counts.overflow.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Sends each queued datagram at its time, on `socket` (to `to`, or its connected peer).
async fn sender(
    socket: Arc<UdpSocket>,
    to: Option<SocketAddr>,
    mut rx: mpsc::Receiver<(Instant, Vec<u8>)>,
) {
    while let Some((due, bytes)) = rx.recv().await {
        tokio::time::sleep_until(due.into()).await;
        let sent = match to {
            Some(a) => socket.send_to(&bytes, a).await,
            None => socket.send(&bytes).await,
        };
        if let Err(e) = sent {
            eprintln!("domsync-wan-relay: send failed ({e}); the datagram counts as lost");
        }
    }
}

async fn run(cli: Cli) -> Result<(), String> {
    if !(0.0..=100.0).contains(&cli.loss) {
        return Err(format!(
            "--loss {} is not a percentage (0 to 100)",
            cli.loss
        ));
    }
    let listen = Arc::new(
        UdpSocket::bind(cli.listen)
            .await
            .map_err(|e| format!("cannot bind --listen {}: {e}", cli.listen))?,
    );
    let counts = Arc::new(Counts::default());
    let path = Path {
        delay: Duration::from_millis(cli.delay_ms),
        loss: cli.loss / 100.0,
        counts: Arc::clone(&counts),
    };
    if cli.report_secs > 0 {
        let (c, every) = (Arc::clone(&counts), Duration::from_secs(cli.report_secs));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                eprintln!(
                    "domsync-wan-relay: {} datagrams, {} lost at random, {} dropped on a full queue",
                    c.seen.load(Ordering::Relaxed),
                    c.lost.load(Ordering::Relaxed),
                    c.overflow.load(Ordering::Relaxed)
                );
            }
        });
    }
    // Client address -> the queue towards the upstream, from that client's own socket.
    let mut clients: HashMap<SocketAddr, mpsc::Sender<(Instant, Vec<u8>)>> = HashMap::new();
    let mut rng = Rng::from_state(0x5EED);
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let (n, from) = listen
            .recv_from(&mut buf)
            .await
            .map_err(|e| format!("receiving on {}: {e}", cli.listen))?;
        if !clients.contains_key(&from) {
            if clients.len() >= MAX_CLIENTS {
                continue;
            }
            let up = UdpSocket::bind(if cli.upstream.is_ipv4() {
                "0.0.0.0:0"
            } else {
                "[::]:0"
            })
            .await
            .map_err(|e| format!("cannot bind a socket towards {}: {e}", cli.upstream))?;
            up.connect(cli.upstream)
                .await
                .map_err(|e| format!("cannot reach --upstream {}: {e}", cli.upstream))?;
            let up = Arc::new(up);
            let (up_tx, up_rx) = mpsc::channel(LIMIT);
            tokio::spawn(sender(Arc::clone(&up), None, up_rx));
            let (down_tx, down_rx) = mpsc::channel(LIMIT);
            tokio::spawn(sender(Arc::clone(&listen), Some(from), down_rx));
            let (down, mut down_rng) = (path.clone(), Rng::from_state(rng.next()));
            tokio::spawn(async move {
                let mut buf = vec![0u8; MAX_DATAGRAM];
                while let Ok(n) = up.recv(&mut buf).await {
                    down.offer(&mut down_rng, &down_tx, buf[..n].to_vec());
                }
            });
            clients.insert(from, up_tx);
        }
        if let Some(tx) = clients.get(&from) {
            path.offer(&mut rng, tx, buf[..n].to_vec());
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("domsync-wan-relay: error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("domsync-wan-relay: error: {e}");
            ExitCode::from(1)
        }
    }
}
