//! The node side of the gateway service over real QUIC on loopback, spoken to frame by frame:
//! who may read what, answers from either role, hostile requests, limits, and 1,000 gateways
//! at once.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use domsync_net::{
    self, pki, Credentials, NodeServerVerifier, PeerRole, TlsFiles, ALPN_GATEWAY, ALPN_REPL,
    CLOSE_REFUSED, SERVER_NAME,
};
use domsync_net::{read_frame, write_frame};
use domsync_node::{ActiveConfig, GatewayLimits, Node};
use domsync_proto::gateway::{
    Query, Refusal, Request, Response, MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES,
};
use domsync_proto::model::{DomainId, Lsn, Role};
use domsync_proto::repl::{Durability, SyncStatus};
use domsync_store::{Domain, Store};
use quinn::crypto::rustls::QuicClientConfig;
use quinn::{ConnectionError, Endpoint};
use sha2::{Digest as _, Sha256};
use tokio::time::timeout;

use domsync_testkit::cluster::{mesh, Deployment, TestNode, TEST_TICK};
use domsync_testkit::nid;
use domsync_testkit::pki::creds;

/// Hang guard only.
const GUARD: Duration = Duration::from_secs(120);

fn dom(s: &str) -> DomainId {
    s.parse().unwrap()
}

/// Active `a` and standby `b` of `tenant-a` and `tenant-b`; gateway `g1` is granted
/// `tenant-a`, `g2` is granted `tenant-b`, on both nodes; `g3` is a gateway of the
/// deployment granted nothing.
struct Cluster {
    dir: tempfile::TempDir,
    a: Node,
    b: Node,
    on_a: BTreeMap<String, Domain>,
    on_b: BTreeMap<String, Domain>,
    _stores: (Store, Store),
}

async fn cluster(limits: GatewayLimits) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    let deployment = Deployment::new(
        dir.path(),
        &[
            (PeerRole::Node, "a"),
            (PeerRole::Node, "b"),
            (PeerRole::Gateway, "g1"),
            (PeerRole::Gateway, "g2"),
            (PeerRole::Gateway, "g3"),
            (PeerRole::Admin, "ops"),
        ],
    );
    let start = |name: &str| {
        deployment.start_with(name, |config, _| {
            config.tick = TEST_TICK;
            config.gateway = limits.clone();
        })
    };
    let (ta, tb) = (start("a"), start("b"));
    mesh(&[&ta, &tb]);
    let (a, sa, b, sb) = (ta.node, ta.store, tb.node, tb.store);
    let (mut on_a, mut on_b) = (BTreeMap::new(), BTreeMap::new());
    for (tenant, gateway) in [("tenant-a", "g1"), ("tenant-b", "g2")] {
        let da = sa.create_domain(&dom(tenant)).unwrap();
        a.serve_active(
            da.clone(),
            ActiveConfig::new(Durability::Local, vec![nid("b")]),
        );
        let db = sb.join_domain(&dom(tenant)).unwrap();
        b.follow(db.clone(), nid("a"));
        for n in [&a, &b] {
            n.grant(&dom(tenant), gateway);
        }
        on_a.insert(tenant.to_owned(), da);
        on_b.insert(tenant.to_owned(), db);
    }
    Cluster {
        dir,
        a,
        b,
        on_a,
        on_b,
        _stores: (sa, sb),
    }
}

impl Cluster {
    fn pki(&self) -> std::path::PathBuf {
        self.dir.path().join("pki")
    }

    async fn connect(&self, role: PeerRole, name: &str, node: &Node) -> quinn::Connection {
        let endpoint = Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
        connect_on(&endpoint, &creds(&self.pki(), role, name), node).await
    }
}

async fn connect_on(endpoint: &Endpoint, creds: &Credentials, node: &Node) -> quinn::Connection {
    let config = domsync_net::client_config(creds, ALPN_GATEWAY).unwrap();
    timeout(
        GUARD,
        endpoint
            .connect_with(config, node.local_addr().unwrap(), SERVER_NAME)
            .unwrap(),
    )
    .await
    .unwrap()
    .unwrap()
}

async fn reach(domain: &Domain, lsn: Lsn) {
    let mut positions = domain.subscribe();
    timeout(GUARD, positions.wait_for(|p| p.lsn >= lsn))
        .await
        .expect("replica did not reach the lsn in time")
        .unwrap();
}

/// Waits until `node`'s standby replica of `domain` reports itself synchronized with its
/// active and connected to it.
async fn synchronized(node: &Node, domain: &str) {
    let domain = dom(domain);
    timeout(GUARD, async {
        loop {
            let report = node.follower_status(&domain);
            if report.is_some_and(|r| r.connected && r.status == SyncStatus::Synchronized) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the standby never reported itself synchronized");
}

fn request(domain: &str, query: Query) -> Request {
    Request {
        domain: dom(domain),
        seen: Vec::new(),
        query,
    }
}

fn get(name: &str) -> Query {
    Query::GetPolicy {
        name: name.into(),
        if_newer_than: None,
        at_least: None,
        wait_ms: 0,
    }
}

/// Sends raw bytes as a request and reads every answer frame until the node finishes.
async fn exchange_raw(
    conn: &quinn::Connection,
    bytes: &[u8],
) -> Result<Vec<Response>, Box<dyn std::error::Error>> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(bytes).await?;
    send.finish()?;
    let mut out = Vec::new();
    while let Some(frame) = read_frame(&mut recv, MAX_RESPONSE_BYTES).await? {
        out.push(domsync_proto::gateway::decode(&frame, MAX_RESPONSE_BYTES)?);
    }
    Ok(out)
}

async fn exchange(conn: &quinn::Connection, r: &Request) -> Vec<Response> {
    let frame = domsync_proto::gateway::encode(r, MAX_REQUEST_BYTES).unwrap();
    timeout(GUARD, exchange_raw(conn, &frame))
        .await
        .unwrap()
        .unwrap()
}

/// A whole package from `PolicyBegin`..`PolicyEnd`, checked against its size and SHA-256.
fn package(answer: &[Response]) -> (domsync_proto::gateway::Served, Vec<u8>) {
    let Some(Response::PolicyBegin { served, info }) = answer.first() else {
        panic!("expected a package, got {answer:?}");
    };
    let mut content = Vec::new();
    for r in &answer[1..answer.len() - 1] {
        match r {
            Response::Chunk(c) => content.extend_from_slice(c),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(answer.last(), Some(&Response::PolicyEnd));
    assert_eq!(content.len() as u64, info.size);
    assert_eq!(<[u8; 32]>::from(Sha256::digest(&content)), info.sha256);
    (served.clone(), content)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_roles_serve_packages_and_crls_and_name_themselves() {
    let c = cluster(GatewayLimits::default()).await;
    let da = &c.on_a["tenant-a"];
    let content: Vec<u8> = (0..700_000u32).map(|i| (i % 251) as u8).collect();
    da.install_policy("edge", content.clone()).unwrap();
    let crl = domsync_testkit::pki::fixture_crl(2);
    da.add_issuer(&domsync_testkit::pki::fixture_crl_issuer())
        .unwrap();
    let p = da.put_crl(&crl, true).unwrap();
    reach(&c.on_b["tenant-a"], p.lsn).await;
    synchronized(&c.b, "tenant-a").await;

    for (node, role) in [(&c.a, Role::Active), (&c.b, Role::Standby)] {
        let conn = c.connect(PeerRole::Gateway, "g1", node).await;
        let (served, got) = package(&exchange(&conn, &request("tenant-a", get("edge"))).await);
        assert_eq!(got, content);
        assert_eq!((&served.node, served.role), (node.id(), role));
        assert_eq!(served.position.lsn, p.lsn);
        assert_eq!(served.epoch.node, nid("a"));

        let list = exchange(&conn, &request("tenant-a", Query::ListCrls)).await;
        let [Response::Crls { served, list }] = list.as_slice() else {
            panic!("{list:?}")
        };
        assert_eq!((served.role, list.len()), (role, 1));
        let issuer = list[0].issuer.clone();
        let answer = exchange(
            &conn,
            &request(
                "tenant-a",
                Query::GetCrl {
                    issuer: issuer.clone(),
                    if_newer_than: None,
                },
            ),
        )
        .await;
        let [Response::Crl { served, crl: got }] = answer.as_slice() else {
            panic!("{answer:?}")
        };
        assert_eq!((served.role, &got.der), (role, &crl));
        // Conditional reads.
        let answer = exchange(
            &conn,
            &request(
                "tenant-a",
                Query::GetCrl {
                    issuer,
                    if_newer_than: Some(got.number.clone()),
                },
            ),
        )
        .await;
        assert!(matches!(answer.as_slice(), [Response::NotModified { .. }]));
        let info = da.policy("edge").unwrap().value.unwrap().info;
        let answer = exchange(
            &conn,
            &request(
                "tenant-a",
                Query::GetPolicy {
                    name: "edge".into(),
                    if_newer_than: Some(info.stamp()),
                    at_least: None,
                    wait_ms: 0,
                },
            ),
        )
        .await;
        assert!(matches!(answer.as_slice(), [Response::NotModified { .. }]));
        let answer = exchange(&conn, &request("tenant-a", get("nope"))).await;
        assert!(matches!(answer.as_slice(), [Response::NotFound { .. }]));
    }
}

/// Issuers are asked by the RFC 4514 text OpenSSL prints or by the DER of the name; a delta
/// CRL is served beside its base, never instead of it; the issuer certificates are served
/// too; both roles answer the same (the trust material is replicated like any row).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_get_crls_by_rfc_4514_text_or_der_deltas_beside_bases_and_issuers() {
    use domsync_proto::model::{CrlNumber, HeldCrl, IssuerCert, IssuerKey};
    use domsync_testkit::openssl::{Alg, Ca};
    let c = cluster(GatewayLimits::default()).await;
    let (da, db) = (&c.on_a["tenant-a"], &c.on_b["tenant-a"]);
    let ca = Ca::new(
        c.dir.path(),
        "ca",
        "/CN=Gateway CA/O=Example/C=FR",
        Alg::Rsa,
    );
    for serial in ["a1", "a2", "a3"] {
        ca.revoke(serial);
    }
    let base = ca.crl(Some("03"), None, false);
    ca.revoke("a4");
    let delta = ca.crl(None, Some(3), false);
    da.add_issuer(&ca.cert()).unwrap();
    da.put_crl(&base, false).unwrap();
    let p = da.put_crl(&delta, false).unwrap();
    reach(db, p.lsn).await;
    synchronized(&c.b, "tenant-a").await;
    let text = ca.openssl_subject();
    assert_eq!(text, "C=FR,O=Example,CN=Gateway CA");
    let der = IssuerCert::from_der(&ca.cert())
        .unwrap()
        .subject
        .der()
        .to_vec();

    for (node, role) in [(&c.a, Role::Active), (&c.b, Role::Standby)] {
        let conn = c.connect(PeerRole::Gateway, "g1", node).await;
        let ask = |issuer: IssuerKey, delta: bool| {
            request(
                "tenant-a",
                Query::GetCrlOf {
                    issuer,
                    delta,
                    if_newer_than: None,
                },
            )
        };
        let crl_of = |answer: Vec<Response>| match answer.as_slice() {
            [Response::Crl { served, crl }] => {
                assert_eq!(served.role, role);
                crl.clone()
            }
            other => panic!("{other:?}"),
        };
        let by_text = crl_of(exchange(&conn, &ask(IssuerKey::Text(text.clone()), false)).await);
        assert_eq!(
            (by_text.der.as_slice(), by_text.issuer.as_str()),
            (base.as_slice(), text.as_str())
        );
        let by_der = crl_of(exchange(&conn, &ask(IssuerKey::Der(der.clone()), false)).await);
        assert_eq!(by_der.der, base);
        let d = crl_of(exchange(&conn, &ask(IssuerKey::Der(der.clone()), true)).await);
        assert_eq!(d.der, delta);
        assert_eq!(
            HeldCrl::from_der(&d.der).unwrap().delta_base,
            Some(CrlNumber(vec![3]))
        );
        // The old request by text gets the base as well.
        let old = exchange(
            &conn,
            &request(
                "tenant-a",
                Query::GetCrl {
                    issuer: text.clone(),
                    if_newer_than: None,
                },
            ),
        )
        .await;
        assert_eq!(crl_of(old).der, base);
        // The first-RDN-first form is not the RFC 4514 name: nothing under it.
        let wrong = exchange(
            &conn,
            &ask(
                IssuerKey::Text("CN=Gateway CA, O=Example, C=FR".into()),
                false,
            ),
        )
        .await;
        assert!(
            matches!(wrong.as_slice(), [Response::NotFound { .. }]),
            "{wrong:?}"
        );
        let issuers = exchange(&conn, &request("tenant-a", Query::ListIssuers)).await;
        let [Response::Issuers { served, list }] = issuers.as_slice() else {
            panic!("{issuers:?}")
        };
        assert_eq!(served.role, role);
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].der, ca.cert());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_standby_waits_for_the_asked_position_or_says_it_is_behind() {
    let c = cluster(GatewayLimits::default()).await;
    let (da, db) = (&c.on_a["tenant-a"], &c.on_b["tenant-a"]);
    let p = da.install_policy("edge", b"v1".to_vec()).unwrap();
    reach(db, p.lsn).await;
    c.b.unfollow(&dom("tenant-a"));
    let newer = da.install_policy("edge", b"v2".to_vec()).unwrap();
    // `b` follows again; the read asks for a position `b` holds only once it caught up.
    c.b.follow(db.clone(), nid("a"));
    let conn = c.connect(PeerRole::Gateway, "g1", &c.b).await;
    let answer = exchange(
        &conn,
        &request(
            "tenant-a",
            Query::GetPolicy {
                name: "edge".into(),
                if_newer_than: None,
                at_least: Some(newer.clone()),
                wait_ms: 30_000,
            },
        ),
    )
    .await;
    let (served, content) = package(&answer);
    assert_eq!(content, b"v2");
    assert!(served.position.lsn >= newer.lsn);

    // A position no replica has reached yet: `Behind` after the wait, with where it stands.
    let mut ahead = newer.clone();
    ahead.lsn = Lsn(newer.lsn.0 + 100);
    let answer = exchange(
        &conn,
        &request(
            "tenant-a",
            Query::GetPolicy {
                name: "edge".into(),
                if_newer_than: None,
                at_least: Some(ahead),
                wait_ms: 50,
            },
        ),
    )
    .await;
    let [Response::Behind { served }] = answer.as_slice() else {
        panic!("{answer:?}")
    };
    assert_eq!(served.position.lsn, newer.lsn);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_that_knows_it_is_behind_answers_behind_where_it_would_say_not_found() {
    let c = cluster(GatewayLimits::default()).await;
    let (da, db) = (&c.on_a["tenant-a"], &c.on_b["tenant-a"]);
    da.install_policy("edge", b"v1".to_vec()).unwrap();
    let crl = domsync_testkit::pki::fixture_crl(2);
    da.add_issuer(&domsync_testkit::pki::fixture_crl_issuer())
        .unwrap();
    let p = da.put_crl(&crl, true).unwrap();
    reach(db, p.lsn).await;
    synchronized(&c.b, "tenant-a").await;
    let g1_b = c.connect(PeerRole::Gateway, "g1", &c.b).await;
    let g1_a = c.connect(PeerRole::Gateway, "g1", &c.a).await;
    let missing_crl = || Query::GetCrl {
        issuer: "CN=Nobody".into(),
        if_newer_than: None,
    };
    // Synchronized: the standby vouches for what it does not hold.
    for query in [get("nope"), missing_crl()] {
        let answer = exchange(&g1_b, &request("tenant-a", query)).await;
        assert!(
            matches!(answer.as_slice(), [Response::NotFound { .. }]),
            "{answer:?}"
        );
    }

    // b loses its active (it follows a node that does not exist): it keeps serving what it
    // holds, and answers `Behind`, with where it stands, instead of "not found" or a list.
    c.b.unfollow(&dom("tenant-a"));
    c.b.follow(db.clone(), nid("ghost"));
    assert!(!c.b.follower_status(&dom("tenant-a")).unwrap().connected);
    let (served, content) = package(&exchange(&g1_b, &request("tenant-a", get("edge"))).await);
    assert_eq!(
        (served.role, content.as_slice()),
        (Role::Standby, &b"v1"[..])
    );
    let answer = exchange(
        &g1_b,
        &request(
            "tenant-a",
            Query::GetCrl {
                issuer: domsync_proto::model::HeldCrl::from_der(&crl)
                    .unwrap()
                    .issuer
                    .to_string(),
                if_newer_than: None,
            },
        ),
    )
    .await;
    assert!(
        matches!(answer.as_slice(), [Response::Crl { .. }]),
        "{answer:?}"
    );
    for query in [
        get("nope"),
        missing_crl(),
        Query::ListPolicies,
        Query::ListCrls,
    ] {
        let answer = exchange(&g1_b, &request("tenant-a", query.clone())).await;
        let [Response::Behind { served }] = answer.as_slice() else {
            panic!("{query:?}: {answer:?}")
        };
        assert_eq!(
            (&served.node, served.role, served.position.lsn),
            (&nid("b"), Role::Standby, p.lsn)
        );
        // The active never answers `Behind` for this.
        let answer = exchange(&g1_a, &request("tenant-a", query.clone())).await;
        assert!(
            !matches!(answer.as_slice(), [Response::Behind { .. }]),
            "{query:?}: {answer:?}"
        );
    }
    let answer = exchange(&g1_a, &request("tenant-a", get("nope"))).await;
    let [Response::NotFound { served }] = answer.as_slice() else {
        panic!("{answer:?}")
    };
    assert_eq!((served.role, served.position.lsn), (Role::Active, p.lsn));

    // Following its active again and synchronized: "not found" again.
    c.b.unfollow(&dom("tenant-a"));
    c.b.follow(db.clone(), nid("a"));
    synchronized(&c.b, "tenant-a").await;
    let answer = exchange(&g1_b, &request("tenant-a", get("nope"))).await;
    assert!(
        matches!(answer.as_slice(), [Response::NotFound { .. }]),
        "{answer:?}"
    );
    let answer = exchange(&g1_b, &request("tenant-a", Query::ListPolicies)).await;
    assert!(
        matches!(answer.as_slice(), [Response::Policies { list, .. }] if list.len() == 1),
        "{answer:?}"
    );

    // A replica that never synchronized (joined, its active unreachable): `Behind` at lsn 0.
    let tenant = "tenant-c";
    let d = c._stores.0.create_domain(&dom(tenant)).unwrap();
    c.a.serve_active(
        d.clone(),
        ActiveConfig::new(Durability::Local, vec![nid("b")]),
    );
    d.install_policy("edge", b"v1".to_vec()).unwrap();
    let joined = c._stores.1.join_domain(&dom(tenant)).unwrap();
    c.b.follow(joined, nid("ghost"));
    for n in [&c.a, &c.b] {
        n.grant(&dom(tenant), "g1");
    }
    assert_eq!(
        c.b.follower_status(&dom(tenant)).unwrap().status,
        SyncStatus::NeverSynchronized
    );
    let answer = exchange(&g1_b, &request(tenant, get("edge"))).await;
    let [Response::Behind { served }] = answer.as_slice() else {
        panic!("{answer:?}")
    };
    assert_eq!(
        (served.role, served.position.lsn),
        (Role::Standby, Lsn::ZERO)
    );
    let (served, _) = package(&exchange(&g1_a, &request(tenant, get("edge"))).await);
    assert_eq!(served.role, Role::Active);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_on_the_standby_is_pushed_each_new_version() {
    let c = cluster(GatewayLimits::default()).await;
    let (da, db) = (&c.on_a["tenant-a"], &c.on_b["tenant-a"]);
    let first = da.install_policy("edge", b"v1".to_vec()).unwrap();
    reach(db, first.lsn).await;
    let conn = c.connect(PeerRole::Gateway, "g1", &c.b).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let watch = request(
        "tenant-a",
        Query::Watch {
            policies: vec![("edge".into(), None)],
            crls: Vec::new(),
        },
    );
    write_frame(
        &mut send,
        &domsync_proto::gateway::encode(&watch, MAX_REQUEST_BYTES).unwrap(),
    )
    .await
    .unwrap();
    send.finish().unwrap();
    // The current version first, then each new one as the standby applies it.
    let (served, content) = next_package(&mut recv).await;
    assert_eq!(
        (served.role, content.as_slice()),
        (Role::Standby, &b"v1"[..])
    );
    for v in 2..=5 {
        let p = da
            .install_policy("edge", format!("v{v}").into_bytes())
            .unwrap();
        let (served, content) = next_package(&mut recv).await;
        assert_eq!(content, format!("v{v}").into_bytes());
        assert_eq!(served.position.lsn, p.lsn);
        assert_eq!(served.node, nid("b"));
    }
    // Revoking the grant ends the watch with `Forbidden`.
    c.b.revoke(&dom("tenant-a"), "g1");
    let frame = timeout(GUARD, read_frame(&mut recv, MAX_RESPONSE_BYTES))
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let r: Response = domsync_proto::gateway::decode(&frame, MAX_RESPONSE_BYTES).unwrap();
    assert_eq!(r, Response::Refused(Refusal::Forbidden));
    assert!(timeout(GUARD, read_frame(&mut recv, MAX_RESPONSE_BYTES))
        .await
        .unwrap()
        .unwrap()
        .is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_granted_gateways_read_and_only_gateways_connect() {
    let c = cluster(GatewayLimits::default()).await;
    let da = &c.on_a["tenant-b"];
    da.install_policy("edge", b"secret".to_vec()).unwrap();

    // g1 is granted tenant-a only: tenant-b and an unknown domain get the same answer.
    let conn = c.connect(PeerRole::Gateway, "g1", &c.a).await;
    for domain in ["tenant-b", "tenant-zz"] {
        let answer = exchange(&conn, &request(domain, get("edge"))).await;
        assert_eq!(answer, vec![Response::Refused(Refusal::Forbidden)]);
    }
    // A revoked grant is refused from the next request on.
    let ok = exchange(&conn, &request("tenant-a", Query::ListPolicies)).await;
    assert!(matches!(ok.as_slice(), [Response::Policies { .. }]));
    c.a.revoke(&dom("tenant-a"), "g1");
    let answer = exchange(&conn, &request("tenant-a", Query::ListPolicies)).await;
    assert_eq!(answer, vec![Response::Refused(Refusal::Forbidden)]);
    // g2 reads tenant-b.
    let conn2 = c.connect(PeerRole::Gateway, "g2", &c.b).await;
    reach(&c.on_b["tenant-b"], Lsn(1)).await;
    let (_, content) = package(&exchange(&conn2, &request("tenant-b", get("edge"))).await);
    assert_eq!(content, b"secret");

    // A gateway cannot replicate (and so cannot write): refused on the replication protocol.
    let endpoint = Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let g = creds(&c.pki(), PeerRole::Gateway, "g1");
    let config = domsync_net::client_config(&g, ALPN_REPL).unwrap();
    let conn = timeout(
        GUARD,
        endpoint
            .connect_with(config, c.a.local_addr().unwrap(), SERVER_NAME)
            .unwrap(),
    )
    .await
    .unwrap()
    .unwrap();
    assert_refused(&conn, "gateway certificate may not use domsync-repl/1").await;
    // Granted nothing on a any more, g1 is refused at its next connection.
    let conn = c.connect(PeerRole::Gateway, "g1", &c.a).await;
    assert_refused(
        &conn,
        "forbidden: gateway g1 is granted no domain of node a",
    )
    .await;
    // Replication messages sent on the gateway protocol are not requests.
    let conn = c.connect(PeerRole::Gateway, "g2", &c.a).await;
    let follow = domsync_proto::repl::encode_message(&domsync_proto::repl::Message::Probe {
        domain: dom("tenant-a"),
        epoch: None,
    })
    .unwrap();
    let answer = timeout(GUARD, exchange_raw(&conn, &follow))
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(
            answer.as_slice(),
            [Response::Refused(Refusal::BadRequest(_))]
        ),
        "{answer:?}"
    );

    // Node and admin certificates are not gateways.
    for (role, name, reason) in [
        (
            PeerRole::Node,
            "b",
            "node certificate may not use domsync-gw/1",
        ),
        (
            PeerRole::Admin,
            "ops",
            "admin certificate may not use domsync-gw/1",
        ),
    ] {
        let conn = c.connect(role, name, &c.a).await;
        assert_refused(&conn, reason).await;
    }

    // A gateway of another CA fails the handshake.
    let foreign = tempfile::tempdir().unwrap();
    pki::init_ca(foreign.path()).unwrap();
    pki::issue(foreign.path(), PeerRole::Gateway, "g1", foreign.path(), 30).unwrap();
    let mut bundle = std::fs::read(foreign.path().join("ca.pem")).unwrap();
    bundle.extend(std::fs::read(c.pki().join("ca.pem")).unwrap());
    std::fs::write(foreign.path().join("both.pem"), bundle).unwrap();
    let stranger = TlsFiles {
        ca: foreign.path().join("both.pem"),
        cert: foreign.path().join("gateway-g1.pem"),
        key: foreign.path().join("gateway-g1.key"),
    }
    .load()
    .unwrap();
    let config = domsync_net::client_config(&stranger, ALPN_GATEWAY).unwrap();
    let attempt = timeout(
        GUARD,
        endpoint
            .connect_with(config, c.a.local_addr().unwrap(), SERVER_NAME)
            .unwrap(),
    )
    .await
    .unwrap();
    if let Ok(conn) = attempt {
        let r = timeout(GUARD, exchange_raw(&conn, b"x")).await.unwrap();
        assert!(r.is_err(), "a foreign gateway was served: {r:?}");
    }

    // No certificate at all.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NodeServerVerifier::new(g.roots.clone(), None)))
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN_GATEWAY.to_vec()];
    let config = quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap()));
    let attempt = timeout(
        GUARD,
        endpoint
            .connect_with(config, c.a.local_addr().unwrap(), SERVER_NAME)
            .unwrap(),
    )
    .await
    .unwrap();
    if let Ok(conn) = attempt {
        let r = timeout(GUARD, exchange_raw(&conn, b"x")).await.unwrap();
        assert!(
            r.is_err(),
            "a gateway without certificate was served: {r:?}"
        );
    }
    // The node still serves the granted gateway.
    let answer = exchange(&conn2, &request("tenant-b", Query::ListPolicies)).await;
    assert!(matches!(answer.as_slice(), [Response::Policies { .. }]));
}

async fn assert_refused(conn: &quinn::Connection, reason: &str) {
    let r = timeout(GUARD, exchange_raw(conn, b"x")).await.unwrap();
    assert!(r.is_err(), "served: {r:?}");
    match timeout(GUARD, conn.closed()).await.unwrap() {
        ConnectionError::ApplicationClosed(close) => {
            assert_eq!(close.error_code, CLOSE_REFUSED);
            let got = String::from_utf8_lossy(&close.reason);
            assert!(got.contains(reason), "{got}");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_oversized_and_truncated_requests_get_typed_errors_and_others_are_served() {
    let mut limits = GatewayLimits::default();
    limits.max_streams_per_connection = 2;
    limits.max_connections = 3;
    limits.request_timeout = Duration::from_millis(300);
    let c = cluster(limits).await;
    c.on_a["tenant-a"]
        .install_policy("edge", b"v1".to_vec())
        .unwrap();
    let conn = c.connect(PeerRole::Gateway, "g1", &c.a).await;
    let good = domsync_proto::gateway::encode(&request("tenant-a", get("edge")), MAX_REQUEST_BYTES)
        .unwrap();
    let bad_request = |answer: &[Response], what: &str| match answer {
        [Response::Refused(Refusal::BadRequest(why))] => {
            assert!(why.contains(what), "{why} lacks {what}")
        }
        other => panic!("expected a bad request ({what}), got {other:?}"),
    };

    // Not a frame (unknown version).
    let answer = exchange_raw(&conn, b"garbage").await.unwrap();
    bad_request(&answer, "version");
    // A header announcing 100 MB: refused before anything is allocated.
    let mut huge = vec![good[0]];
    huge.extend_from_slice(&100_000_000u32.to_le_bytes());
    let answer = exchange_raw(&conn, &huge).await.unwrap();
    bad_request(&answer, "at most");
    // Truncated in the payload.
    let answer = exchange_raw(&conn, &good[..good.len() - 3]).await.unwrap();
    bad_request(&answer, "ended in the middle");
    // A checked frame around bytes that are no request.
    let junk = domsync_proto::gateway::encode(&vec![0xFFu8; 40], MAX_REQUEST_BYTES).unwrap();
    let answer = exchange_raw(&conn, &junk).await.unwrap();
    bad_request(&answer, "undecodable");
    // A bit flipped in flight.
    let mut flipped = good.clone();
    flipped[8] ^= 0x10;
    let answer = exchange_raw(&conn, &flipped).await.unwrap();
    bad_request(&answer, "");
    // Out of bounds: a watch of too many names.
    let names = (0..300).map(|i| (format!("p{i}"), None)).collect();
    let answer = exchange(
        &conn,
        &request(
            "tenant-a",
            Query::Watch {
                policies: names,
                crls: Vec::new(),
            },
        ),
    )
    .await;
    bad_request(&answer, "at most 256");
    // A stream that never sends the rest of its request is reset after the request timeout.
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(&good[..2]).await.unwrap();
    let silent = timeout(GUARD, recv.read_to_end(1024)).await.unwrap();
    assert!(silent.is_err(), "{silent:?}");

    // The connection still serves.
    let (_, content) = package(
        &timeout(GUARD, exchange_raw(&conn, &good))
            .await
            .unwrap()
            .unwrap(),
    );
    assert_eq!(content, b"v1");

    // Two requests in progress per connection: a third is told the node is busy.
    let watch = domsync_proto::gateway::encode(
        &request(
            "tenant-a",
            Query::Watch {
                policies: vec![("edge".into(), None)],
                crls: Vec::new(),
            },
        ),
        MAX_REQUEST_BYTES,
    )
    .unwrap();
    let mut open = Vec::new();
    for _ in 0..2 {
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        write_frame(&mut send, &watch).await.unwrap();
        // The first frame of the answer proves the watch is running.
        timeout(GUARD, read_frame(&mut recv, MAX_RESPONSE_BYTES))
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        open.push((send, recv));
    }
    let answer = exchange_raw(&conn, &good).await.unwrap();
    assert!(
        matches!(answer.as_slice(), [Response::Refused(Refusal::Busy(why))] if why.contains("2 requests")),
        "{answer:?}"
    );
    drop(open);

    // Three connections at most: a fourth is closed with the reason.
    let _second = c.connect(PeerRole::Gateway, "g1", &c.a).await;
    let _third = c.connect(PeerRole::Gateway, "g2", &c.a).await;
    timeout(GUARD, async {
        while c.a.gateway_connections() < 3 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    let fourth = c.connect(PeerRole::Gateway, "g2", &c.a).await;
    assert_refused(&fourth, "too many gateway connections to node a (limit 3").await;
    let (_, content) = package(
        &timeout(GUARD, exchange_raw(&conn, &good))
            .await
            .unwrap()
            .unwrap(),
    );
    assert_eq!(content, b"v1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_reports_of_the_active_reach_the_promotion_guard() {
    let c = cluster(GatewayLimits::default()).await;
    let epoch = c.on_a["tenant-a"].status().unwrap().epoch;
    let conn = c.connect(PeerRole::Gateway, "g1", &c.b).await;
    let heard = domsync_proto::model::Heard {
        node: nid("a"),
        epoch: epoch.clone(),
        ago_ms: 100,
    };
    let mut r = request("tenant-a", Query::ListPolicies);
    // Reports for domains the gateway is not granted are ignored.
    r.seen = vec![
        (dom("tenant-a"), heard.clone()),
        (dom("tenant-b"), heard.clone()),
    ];
    exchange(&conn, &r).await;
    let seen = c.b.sightings(&dom("tenant-a"));
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].active, nid("a"));
    assert!(seen[0].age >= Duration::from_millis(100));
    assert!(c.b.sightings(&dom("tenant-b")).is_empty());
    c.a.shutdown().await;
    let err =
        c.b.promote(
            &dom("tenant-a"),
            &[nid("a")],
            ActiveConfig::new(Durability::Local, vec![nid("a")]),
            false,
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("by gateway g1"), "{err}");
}

/// Reads the next whole package pushed on a watch stream.
async fn next_package(recv: &mut quinn::RecvStream) -> (domsync_proto::gateway::Served, Vec<u8>) {
    let mut frames = Vec::new();
    loop {
        let frame = timeout(GUARD, read_frame(recv, MAX_RESPONSE_BYTES))
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let r: Response = domsync_proto::gateway::decode(&frame, MAX_RESPONSE_BYTES).unwrap();
        let end = r == Response::PolicyEnd;
        frames.push(r);
        if end {
            return package(&frames);
        }
    }
}

/// Peak resident memory of this process since the last reset, in KiB.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_gateways_fetch_a_256_kib_package_from_a_standby() {
    const GATEWAYS: usize = 1000;
    // A thousand gateways, played by one gateway certificate.
    let mut limits = GatewayLimits::default();
    limits.max_connections_per_gateway = GATEWAYS;
    let c = cluster(limits).await;
    let content: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 253) as u8).collect();
    let p = c.on_a["tenant-a"]
        .install_policy("edge", content.clone())
        .unwrap();
    reach(&c.on_b["tenant-a"], p.lsn).await;
    // Reset the peak so it covers the fetches only.
    drop(std::fs::write("/proc/self/clear_refs", "5"));
    let before = peak_rss_kib();
    let g = creds(&c.pki(), PeerRole::Gateway, "g1");
    // Ten client sockets with a hundred connections each.
    let endpoints: Vec<Endpoint> = (0..10)
        .map(|_| Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap())
        .collect();
    let mut conns = Vec::new();
    for i in 0..GATEWAYS {
        conns.push(connect_on(&endpoints[i % endpoints.len()], &g, &c.b).await);
    }
    timeout(GUARD, async {
        while c.b.gateway_connections() < GATEWAYS {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the node did not see every gateway connection");
    let frame =
        domsync_proto::gateway::encode(&request("tenant-a", get("edge")), MAX_REQUEST_BYTES)
            .unwrap();
    let started = std::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for conn in &conns {
        let (conn, frame) = (conn.clone(), frame.clone());
        tasks.spawn(async move { exchange_raw(&conn, &frame).await.map_err(|e| e.to_string()) });
    }
    let mut errors = Vec::new();
    let mut ok = 0;
    while let Some(done) = timeout(GUARD, tasks.join_next()).await.unwrap() {
        match done.unwrap() {
            Ok(answer) => {
                let (served, got) = package(&answer);
                assert_eq!(served.role, Role::Standby);
                assert!(got == content);
                ok += 1;
            }
            Err(e) => errors.push(e),
        }
    }
    let took = started.elapsed();
    let peak = peak_rss_kib();
    println!(
        "{ok} gateways fetched 256 KiB from the standby in {:.2} s; peak RSS of the process (node and all clients) {} MiB, {} MiB above the start",
        took.as_secs_f64(),
        peak / 1024,
        peak.saturating_sub(before) / 1024
    );
    assert!(
        errors.is_empty(),
        "{} errors, first: {:?}",
        errors.len(),
        errors.first()
    );
    assert_eq!(ok, GATEWAYS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_64_mib_package_streams_in_pieces() {
    let c = cluster(GatewayLimits::default()).await;
    let content: Vec<u8> = (0..64u32 << 20).map(|i| (i % 241) as u8).collect();
    c.on_a["tenant-a"]
        .install_policy("big", content.clone())
        .unwrap();
    let conn = c.connect(PeerRole::Gateway, "g1", &c.a).await;
    let answer = exchange(&conn, &request("tenant-a", get("big"))).await;
    // Begin, 256 pieces of 256 KiB, end.
    assert_eq!(answer.len(), 2 + 256);
    let (served, got) = package(&answer);
    assert_eq!(served.role, Role::Active);
    assert!(got == content);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_separate_gateway_address_serves_gateways_and_the_main_one_no_longer_does() {
    let dir = tempfile::tempdir().unwrap();
    let deployment = Deployment::new(
        dir.path(),
        &[(PeerRole::Node, "a"), (PeerRole::Gateway, "g1")],
    );
    let pki_dir = deployment.pki().to_path_buf();
    let TestNode { node: a, store, .. } = deployment.start_with("a", |config, _| {
        config.gateway_listen = Some("127.0.0.1:0".parse().unwrap());
    });
    let d = store.create_domain(&dom("tenant-a")).unwrap();
    d.install_policy("edge", b"v1".to_vec()).unwrap();
    a.serve_active(d, ActiveConfig::new(Durability::Local, Vec::new()));
    a.grant(&dom("tenant-a"), "g1");
    assert_ne!(a.gateway_addr().unwrap(), a.local_addr().unwrap());

    let g = creds(&pki_dir, PeerRole::Gateway, "g1");
    let endpoint = Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let config = domsync_net::client_config(&g, ALPN_GATEWAY).unwrap();
    let conn = timeout(
        GUARD,
        endpoint
            .connect_with(config.clone(), a.gateway_addr().unwrap(), SERVER_NAME)
            .unwrap(),
    )
    .await
    .unwrap()
    .unwrap();
    let (_, content) = package(&exchange(&conn, &request("tenant-a", get("edge"))).await);
    assert_eq!(content, b"v1");
    // The main address does not offer the gateway protocol any more.
    let attempt = timeout(
        GUARD,
        endpoint
            .connect_with(config, a.local_addr().unwrap(), SERVER_NAME)
            .unwrap(),
    )
    .await
    .unwrap();
    if let Ok(conn) = attempt {
        let r = timeout(GUARD, exchange_raw(&conn, b"x")).await.unwrap();
        assert!(r.is_err(), "the main address served a gateway: {r:?}");
    }
}

/// Polls `done` until it holds (up to the hang guard).
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    timeout(GUARD, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what}: not within {GUARD:?}"));
}

/// The refusals of `node` counted for `limit`.
fn refused(node: &Node, limit: &str) -> u64 {
    node.gateway_refusals()
        .into_iter()
        .find(|(l, _)| *l == limit)
        .map_or(0, |(_, n)| n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_gateway_holds_at_most_its_share_of_connections_and_another_still_fetches() {
    let mut limits = GatewayLimits::default();
    limits.max_connections_per_gateway = 3;
    limits.max_connections = 4;
    let c = cluster(limits).await;
    c.on_a["tenant-b"]
        .install_policy("edge", b"for g2".to_vec())
        .unwrap();
    // g1 takes its three connections, each served.
    let mut held = Vec::new();
    for _ in 0..3 {
        let conn = c.connect(PeerRole::Gateway, "g1", &c.a).await;
        let answer = exchange(&conn, &request("tenant-a", Query::ListPolicies)).await;
        assert!(
            matches!(answer.as_slice(), [Response::Policies { .. }]),
            "{answer:?}"
        );
        held.push(conn);
    }
    assert_eq!(c.a.gateway_connections_of("g1"), 3);
    // A fourth is refused right after its handshake, naming the gateway and the limit.
    for _ in 0..5 {
        let conn = c.connect(PeerRole::Gateway, "g1", &c.a).await;
        assert_refused(
            &conn,
            "too many connections of gateway g1 to node a (limit 3 per gateway",
        )
        .await;
    }
    assert_eq!(refused(&c.a, "per_gateway"), 5);
    assert_eq!(c.a.gateway_connections_of("g1"), 3);
    assert_eq!(c.a.gateway_connections(), 3);
    // Another gateway still connects and fetches.
    let g2 = c.connect(PeerRole::Gateway, "g2", &c.a).await;
    let (_, content) = package(&exchange(&g2, &request("tenant-b", get("edge"))).await);
    assert_eq!(content, b"for g2");
    // The total still applies: g2's second connection is the fifth.
    let conn = c.connect(PeerRole::Gateway, "g2", &c.a).await;
    assert_refused(&conn, "too many gateway connections to node a (limit 4").await;
    assert_eq!(refused(&c.a, "total"), 1);
    // A closed connection gives its slot back to its gateway.
    held.pop().unwrap().close(0u32.into(), b"done");
    until("g1's closed connection is released", || {
        c.a.gateway_connections_of("g1") == 2
    })
    .await;
    let conn = c.connect(PeerRole::Gateway, "g1", &c.a).await;
    let answer = exchange(&conn, &request("tenant-a", Query::ListPolicies)).await;
    assert!(
        matches!(answer.as_slice(), [Response::Policies { .. }]),
        "{answer:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_granted_no_domain_here_is_refused_without_taking_a_slot() {
    let mut limits = GatewayLimits::default();
    limits.max_connections = 2;
    let c = cluster(limits).await;
    // g3 is granted nothing: refused at once, however often it tries, holding nothing.
    for _ in 0..4 {
        let conn = c.connect(PeerRole::Gateway, "g3", &c.a).await;
        assert_refused(
            &conn,
            "forbidden: gateway g3 is granted no domain of node a",
        )
        .await;
        assert_eq!(c.a.gateway_connections(), 0);
    }
    assert_eq!(refused(&c.a, "no_grant"), 4);
    assert_eq!(c.a.gateway_connections_of("g3"), 0);
    // The two slots are still free for granted gateways.
    let g1 = c.connect(PeerRole::Gateway, "g1", &c.a).await;
    let g2 = c.connect(PeerRole::Gateway, "g2", &c.a).await;
    for (conn, tenant) in [(&g1, "tenant-a"), (&g2, "tenant-b")] {
        let answer = exchange(conn, &request(tenant, Query::ListPolicies)).await;
        assert!(
            matches!(answer.as_slice(), [Response::Policies { .. }]),
            "{answer:?}"
        );
    }
    assert_eq!(c.a.gateway_connections(), 2);
    // Granted a domain, g3 is admitted (within the total again once a slot is free).
    g2.close(0u32.into(), b"done");
    until("g2's connection is released", || {
        c.a.gateway_connections() == 1
    })
    .await;
    c.a.grant(&dom("tenant-b"), "g3");
    let g3 = c.connect(PeerRole::Gateway, "g3", &c.a).await;
    let answer = exchange(&g3, &request("tenant-b", Query::ListPolicies)).await;
    assert!(
        matches!(answer.as_slice(), [Response::Policies { .. }]),
        "{answer:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_the_gateway_does_not_read_is_cut_and_its_read_snapshot_released() {
    let mut limits = GatewayLimits::default();
    limits.answer_timeout = Duration::from_millis(500);
    let c = cluster(limits).await;
    let da = &c.on_a["tenant-a"];
    // Far more than the stream's flow-control window: the node must wait for the reader.
    let content: Vec<u8> = (0..16u32 << 20).map(|i| (i % 239) as u8).collect();
    da.install_policy("big", content).unwrap();
    assert_eq!(da.policy_readers_open(), 0);

    let conn = c.connect(PeerRole::Gateway, "g1", &c.a).await;
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let frame = domsync_proto::gateway::encode(&request("tenant-a", get("big")), MAX_REQUEST_BYTES)
        .unwrap();
    send.write_all(&frame).await.unwrap();
    send.finish().unwrap();
    // The node opened the package (one read snapshot) and is stuck writing it...
    until("the node opens the package", || {
        da.policy_readers_open() == 1
    })
    .await;
    // ...until the answer timeout cuts the stream and drops the reader, though the gateway
    // still holds its end of the stream and never read a byte.
    until("the unread answer's read snapshot is released", || {
        da.policy_readers_open() == 0
    })
    .await;
    let mut buf = vec![0u8; 1 << 20];
    let end = timeout(GUARD, async {
        loop {
            match recv.read(&mut buf).await {
                Ok(Some(_)) => {}
                other => return other,
            }
        }
    })
    .await
    .unwrap();
    assert!(
        matches!(end, Err(quinn::ReadError::Reset(code)) if code == quinn::VarInt::from_u32(0x401)),
        "{end:?}"
    );
    // The connection and the node carry on: the same package is served to a gateway that reads.
    let answer = exchange(&conn, &request("tenant-a", get("big"))).await;
    let (_, got) = package(&answer);
    assert_eq!(got.len(), 16 << 20);
    assert_eq!(da.policy_readers_open(), 0);
}
