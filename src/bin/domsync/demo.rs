//! `domsync demo`: a local walkthrough with built-in defaults, no configuration needed.

use std::path::PathBuf;
use std::process::ExitCode;

use domsync_proto::model::{Lsn, NodeId};
use domsync_store::{Store, StoreOptions};

use crate::commands::{describe_crl, describe_ops, hex};

const CRL_1: &[u8] = include_bytes!("../../../fixtures/crl/fixture-ca-1.der");
const CRL_2: &[u8] = include_bytes!("../../../fixtures/crl/fixture-ca-2.der");
const CA_PEM: &[u8] = include_bytes!("../../../fixtures/crl/fixture-ca.pem");

pub fn run(dir: Option<PathBuf>) -> Result<ExitCode, Box<dyn std::error::Error>> {
    let tmp;
    let dir = match dir {
        Some(d) => d,
        None => {
            tmp = tempfile::tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    println!("== domsync demo: state directory {}", dir.display());
    let store = Store::open(&dir, StoreOptions::new(NodeId::new("node-a")?))?;
    let id = "tenant-demo".parse()?;
    let domain = match store.domain(&id) {
        Ok(d) => d,
        Err(_) => store.create_domain(&id)?,
    };
    let s = domain.status()?;
    println!(
        "domain {} uid {} role {} epoch {}",
        s.domain,
        s.uid.map(|u| u.to_string()).unwrap_or_default(),
        s.role,
        s.epoch
    );

    println!("\n== writes (each one durable record, group-committed)");
    for (k, v) in [
        ("fw/ntp", "10.0.0.1"),
        ("fw/log-level", "info"),
        ("vpn/psk-rotation", "30d"),
    ] {
        let pos = domain.put(k, v)?;
        println!("put {k} = {v}  -> {pos}");
    }
    let pos = domain.delete("fw/log-level")?;
    println!("del fw/log-level -> {pos}");
    let read = domain.get(b"fw/ntp")?;
    println!(
        "get fw/ntp = {}  (read at lsn {})",
        String::from_utf8_lossy(read.value.as_deref().unwrap_or_default()),
        read.position.lsn
    );

    println!("\n== policy package");
    let package = b"allow tcp 443 from lan to any\ndeny any any\n".repeat(64);
    let pos = domain.install_policy("gateway-default", package)?;
    let p = domain.policy("gateway-default")?;
    if let Some(p) = p.value {
        println!(
            "installed {} version {} size {} sha256 {}  (at lsn {})",
            p.info.name,
            p.info.version,
            p.info.size,
            hex(&p.info.sha256),
            pos.lsn
        );
    }

    println!("\n== CRLs (fixture CA; a CRL verifies against its issuer's certificate, numbers only grow)");
    match domain.put_crl(CRL_1, true) {
        Err(e) => println!("CRL 1 refused before its issuer is held, as expected: {e}"),
        Ok(_) => return Err("a CRL was accepted without its issuer certificate".into()),
    }
    let (_, _, ca) = x509_parser::pem::parse_x509_pem(CA_PEM)
        .map(|(rest, pem)| (rest, (), pem.contents))
        .map_err(|e| format!("fixture CA: {e}"))?;
    let (_, issuer) = domain.add_issuer(&ca)?;
    println!(
        "holding issuer {} (id {})",
        issuer.subject,
        issuer.short_id()
    );
    // The fixture CRLs were made once; their nextUpdate passes, so the demo allows stale ones.
    domain.put_crl(CRL_1, true)?;
    domain.put_crl(CRL_2, true)?;
    match domain.put_crl(CRL_1, true) {
        Err(e) => println!("re-upload of CRL 1 refused as expected: {e}"),
        Ok(_) => return Err("an older CRL was accepted".into()),
    }
    for c in domain.crls()?.value {
        println!("{}", describe_crl(&c));
    }

    println!("\n== change log");
    for (lsn, rec) in domain.inspect_log(Lsn(1), 100)? {
        match rec {
            Ok(r) => println!(
                "{lsn:>4}  crc ok  epoch {}  {}",
                r.epoch,
                describe_ops(&r.ops)
            ),
            Err(e) => println!("{lsn:>4}  CORRUPT {e}"),
        }
    }

    println!("\n== verify");
    let report = domain.verify()?;
    println!(
        "{} records checked up to {}; digest {}; faults: {}",
        report.records,
        report.position,
        report.digest_stored,
        report.faults.len()
    );
    if !report.is_clean() {
        return Ok(ExitCode::from(crate::commands::EXIT_CORRUPT));
    }
    crate::demo_cluster::run(&dir.join("cluster"))?;
    println!("\ndemo complete: every domain is consistent on every replica.");
    Ok(ExitCode::SUCCESS)
}
