//! Deployment trust with real `domsyncd` processes (DESIGN.md §9): the TLS files are reloaded
//! on SIGHUP without a restart, the deployment CRL (`[tls] crl`, written by
//! `domsync pki revoke`) refuses a revoked certificate on every handshake, and a broken set of
//! files is refused while the running one keeps serving.
//!
//! Every wait polls a condition, bounded by [`GUARD`] (a hang guard, never a timing
//! assertion).

use std::path::{Path, PathBuf};
use std::time::Duration;

use domsync_net::{pki, CertificateInfo, Identity, PeerRole, TlsFiles, ALPN_ADMIN, CA_CRL_FILE};
use domsync_proto::admin::{Answer, Request, MAX_ANSWER_BYTES, MAX_REQUEST_BYTES};

use domsync_testkit::cli::{domsync_cmd, run, status_json, wait_status};
use domsync_testkit::poll::{poll, GUARD};
use domsync_testkit::process::{Cluster, Daemon};

/// Polling interval of every wait.
const EVERY: Duration = Duration::from_millis(50);

/// A remote admin connection (ALPN `domsync-admin/1`) with the admin certificate `id` of
/// `pki`, kept open across requests.
struct AdminConn {
    _endpoint: quinn::Endpoint,
    conn: quinn::Connection,
}

impl AdminConn {
    async fn open(pki: &Path, id: &str, addr: &str) -> Result<AdminConn, String> {
        let who = Identity::new(PeerRole::Admin, id).unwrap();
        let creds = TlsFiles::in_dir(pki, &who).load().unwrap();
        let client = domsync_net::client_config_for(&creds, ALPN_ADMIN, None).unwrap();
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        let connecting = endpoint
            .connect_with(client, addr.parse().unwrap(), domsync_net::SERVER_NAME)
            .unwrap();
        let conn = tokio::time::timeout(GUARD, connecting)
            .await
            .map_err(|_| "handshake hang".to_string())?
            .map_err(|e| e.to_string())?;
        Ok(AdminConn {
            _endpoint: endpoint,
            conn,
        })
    }

    /// The serial of the certificate the node presented on this connection.
    fn server_serial(&self) -> String {
        let der = domsync_net::peer_certificate(&self.conn).expect("the node's certificate");
        CertificateInfo::from_der(&der).unwrap().serial
    }

    /// One status request on a new stream of this connection: the node's id, or why not.
    async fn status(&self) -> Result<String, String> {
        let attempt = async {
            let (mut send, mut recv) = self.conn.open_bi().await.map_err(|e| e.to_string())?;
            domsync_net::write_message(&mut send, &Request::Status, MAX_REQUEST_BYTES)
                .await
                .map_err(|e| e.to_string())?;
            let _ = send.finish();
            match domsync_net::read_message::<_, Answer>(&mut recv, MAX_ANSWER_BYTES).await {
                Ok(Some(Answer::Status(s))) => Ok(s.node.to_string()),
                Ok(other) => Err(format!("unexpected answer {other:?}")),
                Err(e) => Err(e.to_string()),
            }
        };
        tokio::time::timeout(GUARD, attempt)
            .await
            .map_err(|_| "request hang".to_string())?
    }
}

/// A status request on a fresh connection; with the serial the node presented.
async fn fresh_status(pki: &Path, id: &str, addr: &str) -> Result<(String, String), String> {
    let c = AdminConn::open(pki, id, addr).await?;
    let node = c.status().await?;
    Ok((node, c.server_serial()))
}

fn runtime() -> tokio::runtime::Runtime {
    // A worker drives the connections between requests (keep-alives).
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// The serial of the certificate in the PEM file `path`.
fn serial_of(path: &Path) -> String {
    let pem = std::fs::read_to_string(path).unwrap();
    let der = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap().1;
    CertificateInfo::from_der(&der.contents).unwrap().serial
}

/// Writes the configuration of `me` (domain `t1` on `replicas`), with `crl` as `[tls] crl`
/// when given.
fn write_config(c: &Cluster, me: &str, replicas: &[&str], crl: Option<&Path>) -> PathBuf {
    let domains = vec![(
        "t1".to_owned(),
        replicas.iter().map(|r| r.to_string()).collect(),
        "local".to_owned(),
    )];
    let mut text = c.node_config(me, "guard_window_ms = 300", domains).text();
    if let Some(crl) = crl {
        text = text.replace("[tls]\n", &format!("[tls]\ncrl = \"{}\"\n", crl.display()));
    }
    let path = c.config_path(me);
    std::fs::write(&path, text).unwrap();
    path
}

fn start(c: &Cluster, me: &str, replicas: &[&str]) -> Daemon {
    let config = write_config(c, me, replicas, None);
    let mut d = Daemon::spawn(me, c.dir.path(), &config, GUARD, &[]);
    d.socket = c.socket(me);
    d.ready();
    d
}

/// Waits until `daemon`'s log holds `n` lines containing `what`; those lines.
fn log_lines(daemon: &Daemon, what: &str, n: usize) -> Vec<String> {
    poll(GUARD, EVERY, || {
        let log = daemon.log();
        let lines: Vec<String> = log
            .lines()
            .filter(|l| l.contains(what))
            .map(str::to_owned)
            .collect();
        if lines.len() >= n {
            Ok(lines)
        } else {
            Err(format!("{n} lines with {what:?} not logged: {log}"))
        }
    })
}

#[test]
fn a_certificate_revoked_in_the_deployment_crl_is_refused_after_sighup() {
    let c = Cluster::new(&["a"]);
    let pki_dir = c.pki();
    pki::issue(&pki_dir, PeerRole::Admin, "ops2", &pki_dir, 30).unwrap();
    let a = start(&c, "a", &["a"]);
    let addr = c.addr("a");
    let rt = runtime();
    assert_eq!(
        rt.block_on(fresh_status(&pki_dir, "ops", &addr)).unwrap().0,
        "a"
    );

    // `domsync pki revoke` writes ca.crl and says what it did.
    let serial = serial_of(&pki_dir.join("admin-ops.pem"));
    let mut revoke = domsync_cmd(&["pki", "revoke", "--role", "admin", "--id", "ops", "--dir"]);
    revoke.arg(&pki_dir);
    let out = run(revoke);
    assert_eq!(out.code, 0, "{out}");
    assert!(
        out.stdout
            .contains(&format!("revoked domsync://admin/ops (serial {serial})"))
            && out.stdout.contains("SIGHUP"),
        "{out}"
    );
    let crl = pki_dir.join(CA_CRL_FILE);
    assert!(crl.is_file());

    // Not in force until the node reloads: the admin is still served.
    write_config(&c, "a", &["a"], Some(&crl));
    assert_eq!(
        rt.block_on(fresh_status(&pki_dir, "ops", &addr)).unwrap().0,
        "a"
    );

    a.signal("HUP");
    log_lines(&a, "TLS files reloaded", 1);
    let refused = poll(GUARD, EVERY, || {
        match rt.block_on(fresh_status(&pki_dir, "ops", &addr)) {
            Ok(served) => Err(format!("the revoked admin is still served: {served:?}")),
            Err(why) => Ok(why),
        }
    });
    assert!(!refused.is_empty());
    // The refusal is logged with the serial and the identity.
    let lines = log_lines(&a, "revoked by the deployment CRL", 1);
    assert!(
        lines[0].contains(&serial) && lines[0].contains("domsync://admin/ops"),
        "{lines:?}"
    );
    // Another admin of the same CA is served: the CRL refuses only what it lists.
    assert_eq!(
        rt.block_on(fresh_status(&pki_dir, "ops2", &addr))
            .unwrap()
            .0,
        "a"
    );

    // `domsyncd --check` checks the CRL too: this one is the CA's.
    let mut check = std::process::Command::new(domsync_testkit::process::binary("domsyncd"));
    check.arg("--check").arg("--config").arg(c.config_path("a"));
    let out = run(check);
    assert_eq!(out.code, 0, "{out}");
    assert!(out.stdout.contains("1 certificates revoked"), "{out}");
    // A CRL of another CA is refused by --check, naming tls.crl.
    let other = tempfile::tempdir().unwrap();
    pki::init_ca(other.path()).unwrap();
    pki::issue(other.path(), PeerRole::Node, "z", other.path(), 30).unwrap();
    pki::revoke(other.path(), &other.path().join("node-z.pem")).unwrap();
    write_config(&c, "a", &["a"], Some(&other.path().join(CA_CRL_FILE)));
    let mut check = std::process::Command::new(domsync_testkit::process::binary("domsyncd"));
    check.arg("--check").arg("--config").arg(c.config_path("a"));
    let out = run(check);
    assert_eq!(out.code, 1, "{out}");
    assert!(
        out.stderr.contains("tls.crl") && out.stderr.contains("not signed by the CA"),
        "{out}"
    );
}

#[test]
fn a_rotated_node_certificate_is_used_by_new_connections_without_a_restart() {
    let c = Cluster::new(&["a", "b"]);
    let pki_dir = c.pki();
    let a = start(&c, "a", &["a", "b"]);
    let _b = start(&c, "b", &["a", "b"]);
    let addr = c.addr("a");
    let rt = runtime();
    let old_serial = serial_of(&pki_dir.join("node-a.pem"));

    // b follows a: each shows the other's certificate, a its own.
    let is_peer = |s: &serde_json::Value, who: &str, serial: &str| {
        s["certificates"].as_array().is_some_and(|cs| {
            cs.iter().any(|c| {
                c["identity"] == format!("domsync://node/{who}")
                    && c["whose"] == "peer"
                    && c["serial"] == serial
            })
        })
    };
    wait_status(&c.socket("b"), "b shows a's certificate", |s| {
        is_peer(s, "a", &old_serial)
    });
    let status = wait_status(&c.socket("a"), "a shows b's certificate", |s| {
        is_peer(s, "b", &serial_of(&pki_dir.join("node-b.pem")))
    });
    assert_eq!(status["certificates"][0]["whose"], "own");
    assert_eq!(status["certificates"][0]["serial"], old_serial.as_str());

    // A connection opened before the rotation.
    let before = rt
        .block_on(AdminConn::open(&pki_dir, "ops", &addr))
        .unwrap();
    assert_eq!(rt.block_on(before.status()).unwrap(), "a");
    assert_eq!(before.server_serial(), old_serial);

    // Re-issue a's certificate (same node id, new key and serial, another validity).
    std::fs::remove_file(pki_dir.join("node-a.pem")).unwrap();
    std::fs::remove_file(pki_dir.join("node-a.key")).unwrap();
    pki::issue(&pki_dir, PeerRole::Node, "a", &pki_dir, 20).unwrap();
    let new_serial = serial_of(&pki_dir.join("node-a.pem"));
    assert_ne!(new_serial, old_serial);
    // Before SIGHUP new connections still get the old certificate.
    assert_eq!(
        rt.block_on(fresh_status(&pki_dir, "ops", &addr)).unwrap().1,
        old_serial
    );

    a.signal("HUP");
    let (_, seen) = poll(GUARD, EVERY, || {
        let got = rt.block_on(fresh_status(&pki_dir, "ops", &addr))?;
        if got.1 == new_serial {
            Ok(got)
        } else {
            Err(format!("a new connection still sees serial {}", got.1))
        }
    });
    assert_eq!(seen, new_serial);
    // The connection opened before the reload keeps working, on the old certificate.
    assert_eq!(rt.block_on(before.status()).unwrap(), "a");
    assert_eq!(before.server_serial(), old_serial);
    // Status shows the new certificate and its end of validity.
    let s = status_json(&c.socket("a"));
    let own = &s["certificates"][0];
    assert_eq!(own["serial"], new_serial.as_str(), "{s}");
    let pem = std::fs::read(pki_dir.join("node-a.pem")).unwrap();
    let der = x509_parser::pem::parse_x509_pem(&pem).unwrap().1.contents;
    let not_after = CertificateInfo::from_der(&der).unwrap().not_after;
    assert_eq!(own["not_after_unix_s"].as_i64(), Some(not_after), "{s}");
    // It ends within 30 days: `domsync status` warns about it.
    let table = domsync_testkit::cli::ok(&c.socket("a"), &["status"]);
    assert!(
        table.contains(&format!(
            "WARNING: this node's certificate domsync://node/a (serial {new_serial}) expires at"
        )),
        "{table}"
    );
    // Replication still works: a write on a reaches b.
    poll(GUARD, EVERY, || {
        let out = domsync_testkit::cli::domsync(&c.socket("a"), &["kv", "put", "t1", "k", "v"]);
        (out.code == 0).then_some(()).ok_or(out.to_string())
    });
    wait_status(&c.socket("b"), "b holds the write", |s| {
        domsync_testkit::cli::domain_of(s, "t1")["lsn"].as_f64() == Some(1.0)
    });
}

#[test]
fn a_broken_tls_file_set_at_sighup_is_refused_and_the_running_set_kept() {
    let c = Cluster::new(&["a"]);
    let pki_dir = c.pki();
    pki::issue(&pki_dir, PeerRole::Node, "z", &pki_dir, 30).unwrap();
    let a = start(&c, "a", &["a"]);
    let addr = c.addr("a");
    let rt = runtime();
    let serial = serial_of(&pki_dir.join("node-a.pem"));
    let cert = pki_dir.join("node-a.pem");
    let key = pki_dir.join("node-a.key");
    let good_cert = std::fs::read(&cert).unwrap();
    let good_key = std::fs::read(&key).unwrap();
    let restore = || {
        std::fs::write(&cert, &good_cert).unwrap();
        std::fs::write(&key, &good_key).unwrap();
    };

    // Each broken set: what is wrong, as the one log line says it, and how to break it.
    type Breaks<'a> = Box<dyn Fn() + 'a>;
    let broken: Vec<(&str, Breaks<'_>)> = vec![
        (
            "cannot be used with",
            Box::new(|| {
                std::fs::copy(pki_dir.join("node-z.key"), &key)
                    .map(drop)
                    .unwrap()
            }),
        ),
        (
            "bad PEM",
            Box::new(|| {
                std::fs::write(
                    &cert,
                    "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
                )
                .unwrap()
            }),
        ),
        (
            "is for domsync://node/z, but node.id is a",
            Box::new(|| {
                std::fs::copy(pki_dir.join("node-z.pem"), &cert).unwrap();
                std::fs::copy(pki_dir.join("node-z.key"), &key).unwrap();
            }),
        ),
        (
            "cannot read",
            Box::new(|| std::fs::remove_file(&key).unwrap()),
        ),
    ];
    for (n, (what, breaks)) in broken.iter().enumerate() {
        breaks();
        a.signal("HUP");
        let lines = log_lines(&a, "reload refused", n + 1);
        let line = &lines[n];
        assert!(
            line.contains(what) && line.contains("TLS files are kept"),
            "{what}: {line}"
        );
        // Still serving with the running set: a new connection sees the old certificate.
        let (node, seen) = rt.block_on(fresh_status(&pki_dir, "ops", &addr)).unwrap();
        assert_eq!((node.as_str(), seen.as_str()), ("a", serial.as_str()));
        restore();
    }
    assert!(!a.log().contains("TLS files reloaded"), "{}", a.log());
    // The good set again: reloaded.
    a.signal("HUP");
    log_lines(&a, "TLS files reloaded", 1);
    let s = status_json(&c.socket("a"));
    assert_eq!(s["certificates"][0]["serial"], serial.as_str(), "{s}");
}

/// In process: a node refuses credentials that are not its own (all or nothing), keeps
/// serving with the running ones, and takes its own re-issued certificate.
#[tokio::test]
async fn a_node_keeps_its_credentials_when_given_another_nodes() {
    use domsync_testkit::cluster::Deployment;
    let dir = tempfile::tempdir().unwrap();
    let deployment = Deployment::nodes(dir.path(), &["a", "b"]);
    let a = deployment.start("a");
    let before = a.node.own_certificate().unwrap();
    let other = deployment.credentials(PeerRole::Node, "b");
    let refused = a.node.set_credentials(other).unwrap_err();
    assert!(
        refused.to_string().contains("domsync://node/b") && refused.to_string().contains("a"),
        "{refused}"
    );
    assert_eq!(a.node.own_certificate().unwrap(), before);
    // Its own re-issued certificate is taken.
    let pki_dir = deployment.pki();
    std::fs::remove_file(pki_dir.join("node-a.pem")).unwrap();
    std::fs::remove_file(pki_dir.join("node-a.key")).unwrap();
    deployment.issue(PeerRole::Node, "a");
    a.node
        .set_credentials(deployment.credentials(PeerRole::Node, "a"))
        .unwrap();
    let after = a.node.own_certificate().unwrap();
    assert_ne!(after.serial, before.serial);
    assert_eq!(after.identity, "domsync://node/a");
    a.node.shutdown().await;
}
