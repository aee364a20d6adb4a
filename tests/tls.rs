//! Mutual TLS over real quinn on loopback, with PKIs made in temporary directories.

use domsync_testkit::pki::{creds, init_pki};
use std::fs;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use domsync_net::{
    self, pki, Credentials, Identity, NodeServerVerifier, PeerRole, RefuseReason, TlsError,
    TlsFiles, ALPN_GATEWAY, ALPN_REPL, CLOSE_REFUSED, SERVER_NAME,
};
use quinn::crypto::rustls::QuicClientConfig;
use quinn::{ConnectionError, Endpoint};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;
use tempfile::TempDir;
use tokio::task::JoinHandle;
use tokio::time::timeout;

/// Hang guard only: every step here completes in milliseconds on loopback.
const GUARD: Duration = Duration::from_secs(20);

fn id(role: PeerRole, name: &str) -> Identity {
    Identity::new(role, name).unwrap()
}

/// A CA with nodes a and b, gateway g and admin ops.
fn make_pki() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    init_pki(
        dir.path(),
        &[
            (PeerRole::Node, "a"),
            (PeerRole::Node, "b"),
            (PeerRole::Gateway, "g"),
            (PeerRole::Admin, "ops"),
        ],
    );
    dir
}

fn server(creds: &Credentials) -> (Endpoint, SocketAddr) {
    let config = domsync_net::server_config(
        creds,
        &[ALPN_REPL, ALPN_GATEWAY],
        Arc::new(domsync_net::transport_config()),
    )
    .unwrap();
    let endpoint = Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = endpoint.local_addr().unwrap();
    (endpoint, addr)
}

fn client_endpoint() -> Endpoint {
    Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap()
}

/// Accepts one connection for `alpn`; when authorized, answers one request with `pong` and
/// waits for the client to close.
fn serve_one(endpoint: Endpoint, alpn: &'static [u8]) -> JoinHandle<Result<Identity, TlsError>> {
    tokio::spawn(async move {
        let incoming = endpoint.accept().await.unwrap();
        let (conn, peer) = domsync_net::accept(incoming, alpn).await?;
        let (mut send, mut recv) = conn.accept_bi().await.unwrap();
        assert_eq!(recv.read_to_end(64).await.unwrap(), b"ping");
        send.write_all(b"pong").await.unwrap();
        send.finish().unwrap();
        // The client closes after reading the answer.
        assert!(matches!(
            conn.closed().await,
            ConnectionError::ApplicationClosed(_)
        ));
        Ok(peer)
    })
}

/// One request on a new stream: the first stream operation is where a client learns that the
/// server refused it after the handshake.
async fn ping(conn: &quinn::Connection) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(b"ping").await?;
    send.finish()?;
    Ok(recv.read_to_end(64).await?)
}

async fn server_result(task: JoinHandle<Result<Identity, TlsError>>) -> Result<Identity, TlsError> {
    timeout(GUARD, task).await.unwrap().unwrap()
}

#[tokio::test]
async fn nodes_connect_and_see_each_others_identity() {
    let dir = make_pki();
    let (endpoint, addr) = server(&creds(dir.path(), PeerRole::Node, "b"));
    let task = serve_one(endpoint, ALPN_REPL);

    let a = creds(dir.path(), PeerRole::Node, "a");
    assert_eq!(a.identity, id(PeerRole::Node, "a"));
    let b = id(PeerRole::Node, "b");
    let config = domsync_net::client_config_for(&a, ALPN_REPL, Some(&b)).unwrap();
    let client = client_endpoint();
    let conn = timeout(
        GUARD,
        client.connect_with(config, addr, SERVER_NAME).unwrap(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(domsync_net::peer_identity(&conn).unwrap(), b);
    assert_eq!(
        domsync_net::negotiated_alpn(&conn).as_deref(),
        Some(ALPN_REPL)
    );
    assert_eq!(timeout(GUARD, ping(&conn)).await.unwrap().unwrap(), b"pong");
    conn.close(0u32.into(), b"done");

    let seen = server_result(task).await.unwrap();
    assert_eq!(seen, id(PeerRole::Node, "a"));
    assert_eq!(seen.node_id().unwrap().as_str(), "a");
}

#[tokio::test]
async fn gateway_may_read_but_not_replicate() {
    let dir = make_pki();
    let g = creds(dir.path(), PeerRole::Gateway, "g");

    // Refused on the replication protocol, with an application close code and reason.
    let (endpoint, addr) = server(&creds(dir.path(), PeerRole::Node, "a"));
    let task = serve_one(endpoint, ALPN_REPL);
    let client = client_endpoint();
    let config = domsync_net::client_config(&g, ALPN_REPL).unwrap();
    let conn = timeout(
        GUARD,
        client.connect_with(config, addr, SERVER_NAME).unwrap(),
    )
    .await
    .unwrap()
    .expect("the handshake itself succeeds: both certificates are valid");
    let err = server_result(task).await.unwrap_err();
    match &err {
        TlsError::Refused {
            reason: RefuseReason::WrongRole { role, .. },
            peer,
            ..
        } => {
            assert_eq!(*role, PeerRole::Gateway);
            assert_eq!(peer, "domsync://gateway/g");
        }
        other => panic!("unexpected {other:?}"),
    }
    let message = err.to_string();
    assert!(!message.contains('\n'), "{message}");
    assert!(message.contains("127.0.0.1:"), "{message}");
    assert!(message.contains("domsync://gateway/g"), "{message}");
    assert!(message.contains("may not use domsync-repl/1"), "{message}");

    assert!(timeout(GUARD, ping(&conn)).await.unwrap().is_err());
    match timeout(GUARD, conn.closed()).await.unwrap() {
        ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.error_code, CLOSE_REFUSED);
            let reason = String::from_utf8_lossy(&close.reason);
            assert!(
                reason.contains("gateway certificate may not use"),
                "{reason}"
            );
        }
        other => panic!("unexpected {other:?}"),
    }

    // Accepted on the gateway protocol.
    let (endpoint, addr) = server(&creds(dir.path(), PeerRole::Node, "a"));
    let task = serve_one(endpoint, ALPN_GATEWAY);
    let config = domsync_net::client_config(&g, ALPN_GATEWAY).unwrap();
    let conn = timeout(
        GUARD,
        client.connect_with(config, addr, SERVER_NAME).unwrap(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_eq!(timeout(GUARD, ping(&conn)).await.unwrap().unwrap(), b"pong");
    conn.close(0u32.into(), b"done");
    assert_eq!(
        server_result(task).await.unwrap(),
        id(PeerRole::Gateway, "g")
    );
}

#[tokio::test]
async fn admin_may_not_use_the_gateway_protocol() {
    let dir = make_pki();
    let (endpoint, addr) = server(&creds(dir.path(), PeerRole::Node, "a"));
    let task = serve_one(endpoint, ALPN_GATEWAY);
    let admin = creds(dir.path(), PeerRole::Admin, "ops");
    let config = domsync_net::client_config(&admin, ALPN_GATEWAY).unwrap();
    let client = client_endpoint();
    let conn = timeout(
        GUARD,
        client.connect_with(config, addr, SERVER_NAME).unwrap(),
    )
    .await
    .unwrap()
    .unwrap();
    let err = server_result(task).await.unwrap_err();
    assert!(
        matches!(
            err.refuse_reason(),
            Some(RefuseReason::WrongRole {
                role: PeerRole::Admin,
                ..
            })
        ),
        "{err}"
    );
    assert!(timeout(GUARD, ping(&conn)).await.unwrap().is_err());
}

/// A PKI of another deployment, and CA bundle files trusting both, so that one side holds a
/// certificate the other side's CA did not sign while itself trusting the other side.
fn foreign_pki(ours: &Path) -> TempDir {
    let foreign = tempfile::tempdir().unwrap();
    pki::init_ca(foreign.path()).unwrap();
    pki::issue(foreign.path(), PeerRole::Node, "a", foreign.path(), 30).unwrap();
    let mut bundle = fs::read(foreign.path().join("ca.pem")).unwrap();
    bundle.extend(fs::read(ours.join("ca.pem")).unwrap());
    fs::write(foreign.path().join("both.pem"), bundle).unwrap();
    foreign
}

fn foreign_creds(foreign: &Path) -> Credentials {
    TlsFiles {
        ca: foreign.join("both.pem"),
        cert: foreign.join("node-a.pem"),
        key: foreign.join("node-a.key"),
    }
    .load()
    .unwrap()
}

#[tokio::test]
async fn client_from_another_ca_is_refused_in_the_handshake() {
    let dir = make_pki();
    let foreign = foreign_pki(dir.path());
    let (endpoint, addr) = server(&creds(dir.path(), PeerRole::Node, "b"));
    let task = serve_one(endpoint, ALPN_REPL);

    let config = domsync_net::client_config(&foreign_creds(foreign.path()), ALPN_REPL).unwrap();
    let client = client_endpoint();
    // The client may complete its side of the handshake before the server checks its
    // certificate: the refusal shows at the latest on the first stream operation.
    let connected = timeout(
        GUARD,
        client.connect_with(config, addr, SERVER_NAME).unwrap(),
    )
    .await
    .unwrap();
    if let Ok(conn) = connected {
        assert!(timeout(GUARD, ping(&conn)).await.unwrap().is_err());
    }
    let err = server_result(task).await.unwrap_err();
    assert!(matches!(err, TlsError::Handshake { .. }), "{err}");
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
}

#[tokio::test]
async fn server_from_another_ca_is_refused_in_the_handshake() {
    let dir = make_pki();
    let foreign = foreign_pki(dir.path());
    let (endpoint, addr) = server(&foreign_creds(foreign.path()));
    let task = serve_one(endpoint, ALPN_REPL);

    let config =
        domsync_net::client_config(&creds(dir.path(), PeerRole::Node, "a"), ALPN_REPL).unwrap();
    let client = client_endpoint();
    let err = timeout(
        GUARD,
        client.connect_with(config, addr, SERVER_NAME).unwrap(),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert!(err.to_string().contains("UnknownIssuer"), "{err}");
    let err = server_result(task).await.unwrap_err();
    assert!(matches!(err, TlsError::Handshake { .. }), "{err}");
}

#[tokio::test]
async fn client_expecting_another_node_refuses_the_server() {
    let dir = make_pki();
    let (endpoint, addr) = server(&creds(dir.path(), PeerRole::Node, "b"));
    let task = serve_one(endpoint, ALPN_REPL);

    let a = creds(dir.path(), PeerRole::Node, "a");
    let c = id(PeerRole::Node, "c");
    let config = domsync_net::client_config_for(&a, ALPN_REPL, Some(&c)).unwrap();
    let client = client_endpoint();
    let err = timeout(
        GUARD,
        client.connect_with(config, addr, SERVER_NAME).unwrap(),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert!(
        err.to_string()
            .contains("server is domsync://node/b, expected domsync://node/c"),
        "{err}"
    );
    assert!(server_result(task).await.is_err());
}

#[tokio::test]
async fn client_without_certificate_is_never_authorized() {
    let dir = make_pki();
    let (endpoint, addr) = server(&creds(dir.path(), PeerRole::Node, "b"));
    let task = serve_one(endpoint, ALPN_REPL);

    // A client that trusts the CA but presents no certificate.
    let roots = creds(dir.path(), PeerRole::Node, "a").roots;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NodeServerVerifier::new(roots, None)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN_REPL.to_vec()];
    let config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()));
    let client = client_endpoint();
    // connect() may well return Ok: the rejection appears on the first stream operation.
    let connected = timeout(
        GUARD,
        client.connect_with(config, addr, SERVER_NAME).unwrap(),
    )
    .await
    .unwrap();
    if let Ok(conn) = connected {
        assert!(timeout(GUARD, ping(&conn)).await.unwrap().is_err());
    }
    let err = server_result(task).await.unwrap_err();
    assert!(matches!(err, TlsError::Handshake { .. }), "{err}");
}

#[test]
fn only_nodes_serve_and_credentials_are_checked_when_loaded() {
    let dir = make_pki();
    let g = creds(dir.path(), PeerRole::Gateway, "g");
    let err = domsync_net::server_config(
        &g,
        &[ALPN_GATEWAY],
        Arc::new(domsync_net::transport_config()),
    )
    .unwrap_err();
    assert!(matches!(err, TlsError::NotANode { .. }), "{err}");
    assert!(!format!("{g:?}").contains("PRIVATE"));

    // Key of another certificate.
    let files = TlsFiles {
        key: dir.path().join("node-b.key"),
        ..TlsFiles::in_dir(dir.path(), &id(PeerRole::Node, "a"))
    };
    let err = files.load().unwrap_err();
    assert!(matches!(err, TlsError::Key { .. }), "{err}");

    // Certificate of another CA.
    let foreign = tempfile::tempdir().unwrap();
    pki::init_ca(foreign.path()).unwrap();
    pki::issue(foreign.path(), PeerRole::Node, "a", foreign.path(), 30).unwrap();
    let files = TlsFiles {
        ca: dir.path().join("ca.pem"),
        ..TlsFiles::in_dir(foreign.path(), &id(PeerRole::Node, "a"))
    };
    let err = files.load().unwrap_err();
    assert!(matches!(err, TlsError::OwnCertificate { .. }), "{err}");
    assert!(!err.to_string().contains('\n'));

    // Missing file.
    let err = TlsFiles::in_dir(dir.path(), &id(PeerRole::Node, "zz"))
        .load()
        .unwrap_err();
    assert!(matches!(err, TlsError::Read { .. }), "{err}");
}

#[test]
fn pki_cli_init_issue_and_refuse_overwrite() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("pki");
    let domsync = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_domsync"))
            .args(args)
            .current_dir(work.path())
            .output()
            .unwrap()
    };

    let out = domsync(&["pki", "init"]);
    assert!(out.status.success(), "{out:?}");
    let out = domsync(&["pki", "issue", "--role", "node", "--id", "n1"]);
    assert!(out.status.success(), "{out:?}");
    let out = domsync(&[
        "pki", "issue", "--role", "gateway", "--id", "gw", "--days", "7", "--out", "gw-out",
    ]);
    assert!(out.status.success(), "{out:?}");

    for key in [dir.join("ca.key"), dir.join("node-n1.key")] {
        assert_eq!(
            fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }
    let cert = CertificateDer::from_pem_file(dir.join("node-n1.pem")).unwrap();
    assert_eq!(
        Identity::from_cert_der(&cert).unwrap(),
        id(PeerRole::Node, "n1")
    );
    let cert = CertificateDer::from_pem_file(work.path().join("gw-out/gateway-gw.pem")).unwrap();
    assert_eq!(
        Identity::from_cert_der(&cert).unwrap(),
        id(PeerRole::Gateway, "gw")
    );
    // The files work as TLS credentials.
    let creds = TlsFiles::in_dir(&dir, &id(PeerRole::Node, "n1"))
        .load()
        .unwrap();
    assert_eq!(creds.identity, id(PeerRole::Node, "n1"));

    // Nothing is ever overwritten: one-line errors, exit code 1.
    let before = fs::read(dir.join("ca.key")).unwrap();
    for args in [
        &["pki", "init"][..],
        &["pki", "init", "--out", "pki"][..],
        &["pki", "issue", "--role", "node", "--id", "n1"][..],
        &["pki", "issue", "--role", "node", "--id", "bad/id"][..],
        &[
            "pki", "issue", "--role", "node", "--id", "n2", "--dir", "nowhere",
        ][..],
    ] {
        let out = domsync(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {out:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("domsync: error: "), "{stderr}");
    }
    assert_eq!(fs::read(dir.join("ca.key")).unwrap(), before);
    assert!(!work.path().join("nowhere").exists());
}
