//! The floor under a durable write from one client: one small positioned write plus
//! `fdatasync` into preallocated space on the file system the servers' data lives on, plus one
//! loopback UDP round trip; both measured in the same run as the servers, one sample each per
//! iteration, their sum taken as the sample.

use std::fs::OpenOptions;
use std::net::UdpSocket;
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::load::{Lat, Run};

/// Measures `samples` floor samples in `dir`.
pub fn floor(dir: &Path, samples: usize) -> Result<Run> {
    let path = dir.join("floor.dat");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .with_context(|| format!("create {}", path.display()))?;
    // Preallocated and synced once, as the log segments are: later syncs write data only.
    let record = [0x5au8; 128];
    let size = (samples as u64 + 1) * record.len() as u64;
    file.write_all_at(&vec![0u8; size as usize], 0)?;
    file.sync_all()?;

    let echo = UdpSocket::bind("127.0.0.1:0")?;
    let echo_addr = echo.local_addr()?;
    let client = UdpSocket::bind("127.0.0.1:0")?;
    client.connect(echo_addr)?;
    let echoer = std::thread::spawn(move || {
        let mut buf = [0u8; 256];
        for _ in 0..samples {
            let Ok((n, from)) = echo.recv_from(&mut buf) else {
                return;
            };
            if echo.send_to(&buf[..n], from).is_err() {
                return;
            }
        }
    });

    let mut floor = Vec::with_capacity(samples);
    let mut syncs = Vec::with_capacity(samples);
    let mut rtts = Vec::with_capacity(samples);
    let started = Instant::now();
    let mut buf = [0u8; 256];
    for i in 0..samples {
        let t = Instant::now();
        client.send(&record[..100])?;
        client.recv(&mut buf)?;
        let rtt = t.elapsed().as_micros() as u64;
        let t = Instant::now();
        file.write_all_at(&record, i as u64 * record.len() as u64)?;
        file.sync_data()?;
        let sync = t.elapsed().as_micros() as u64;
        syncs.push(sync);
        rtts.push(rtt);
        floor.push(sync + rtt);
    }
    let _ = echoer.join();
    let seconds = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    let s = Lat::from_micros(syncs);
    let r = Lat::from_micros(rtts);
    Ok(Run {
        ops: samples as u64,
        seconds,
        ops_per_sec: samples as f64 / seconds,
        latency_ms: Lat::from_micros(floor),
        notes: vec![format!(
            "fdatasync of 128 B into preallocated space p50 {:.3} ms (p99 {:.3}), loopback UDP round trip p50 {:.3} ms (p99 {:.3}); {samples} samples",
            s.p50, s.p99, r.p50, r.p99
        )],
        ..Run::default()
    })
}
