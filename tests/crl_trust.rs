//! CRLs are verified against the issuer certificates a domain holds (DESIGN.md §9), with CAs
//! and CRLs made by OpenSSL in the test's temporary directory: RSA (PKCS#1 v1.5 and PSS),
//! ECDSA P-256 and P-384 and Ed25519 CAs; a tampered signature; a foreign key with the same
//! issuer name and a huge CRL number; two issuers whose names print alike; a delta CRL beside
//! its base; a stale nextUpdate; CRLs stored by an earlier release and how to remove them.

use std::path::Path;

use domsync_proto::codec::encode_record;
use domsync_proto::model::{
    Crl, CrlError, CrlNumber, DistinguishedName, DomainId, HeldCrl, IssuerCert, IssuerKey, NodeId,
    Op, Record,
};
use domsync_store::{Domain, ResyncTarget, Store, StoreError, StoreOptions};
use domsync_testkit::openssl::{Alg, Ca};

fn active(dir: &Path, name: &str) -> (Store, Domain) {
    let store = Store::open(dir, StoreOptions::new(NodeId::new("a").unwrap())).unwrap();
    let d = store
        .create_domain(&name.parse::<DomainId>().unwrap())
        .unwrap();
    (store, d)
}

fn crl_error(e: StoreError) -> CrlError {
    match e {
        StoreError::Crl { source, .. } => source,
        other => panic!("expected a CRL refusal, got: {other}"),
    }
}

fn revoked_count(der: &[u8]) -> usize {
    use x509_parser::prelude::FromDer as _;
    let (_, crl) = x509_parser::revocation_list::CertificateRevocationList::from_der(der).unwrap();
    crl.iter_revoked_certificates().count()
}

#[test]
fn every_supported_signature_scheme_verifies_and_names_are_rfc_4514() {
    let tmp = tempfile::tempdir().unwrap();
    let (_s, d) = active(&tmp.path().join("store"), "t");
    let cases = [
        ("rsa", "/CN=RSA Tenant CA/O=Example Corp/C=FR", Alg::Rsa),
        ("pss", "/CN=PSS CA/O=Example", Alg::RsaPss),
        ("p256", "/CN=P-256 CA/O=Example", Alg::EcP256),
        ("p384", "/CN=P-384 CA/O=Example", Alg::EcP384),
        ("ed25519", "/CN=Ed25519 CA/O=Example", Alg::Ed25519),
    ];
    for (label, subject, alg) in cases {
        let ca = Ca::new(tmp.path(), label, subject, alg);
        let crl = ca.crl(None, None, false);
        let (_, cert) = d.add_issuer(&ca.cert()).unwrap();
        // The text is RFC 4514, exactly as OpenSSL prints it in RFC 2253 mode.
        assert_eq!(cert.subject.to_string(), ca.openssl_subject(), "{label}");
        d.put_crl(&crl, false)
            .unwrap_or_else(|e| panic!("{label}: {e}"));
        let held = d.crl(&ca.openssl_subject()).unwrap().value.unwrap();
        assert_eq!(held.der, crl, "{label}");
    }
    assert_eq!(
        d.crl("C=FR,O=Example Corp,CN=RSA Tenant CA")
            .unwrap()
            .value
            .unwrap()
            .issuer,
        "C=FR,O=Example Corp,CN=RSA Tenant CA"
    );
    // Every held CRL records the certificate that verified it.
    let held = d.held_crls().unwrap().value;
    assert_eq!(held.len(), 5);
    let issuers = d.issuers().unwrap().value;
    for c in &held {
        let by = c.verified_by.expect("verified");
        assert!(issuers
            .iter()
            .any(|i| i.sha256 == by && i.subject == c.issuer));
    }
}

#[test]
fn a_tampered_crl_is_refused_and_the_genuine_one_of_that_number_is_then_accepted() {
    let tmp = tempfile::tempdir().unwrap();
    let (_s, d) = active(&tmp.path().join("store"), "t");
    let ca = Ca::new(
        tmp.path(),
        "rsa",
        "/CN=RSA Tenant CA/O=Example Corp",
        Alg::Rsa,
    );
    let genuine = ca.crl(None, None, false);
    let mut tampered = genuine.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 0x01; // one byte of the signature
                            // Without the issuer certificate: refused, saying so.
    assert!(matches!(
        crl_error(d.put_crl(&genuine, false).unwrap_err()),
        CrlError::UnknownIssuer { .. }
    ));
    d.add_issuer(&ca.cert()).unwrap();
    let err = crl_error(d.put_crl(&tampered, false).unwrap_err());
    assert!(
        matches!(err, CrlError::BadSignature { tried: 1, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("signature does not verify"),
        "{err}"
    );
    assert!(d.held_crls().unwrap().value.is_empty(), "nothing stored");
    d.put_crl(&genuine, false).unwrap();
    assert_eq!(
        d.crl(&ca.openssl_subject()).unwrap().value.unwrap().der,
        genuine
    );
}

#[test]
fn a_foreign_key_with_the_same_name_and_a_huge_number_cannot_block_the_genuine_issuer() {
    let tmp = tempfile::tempdir().unwrap();
    let (_s, d) = active(&tmp.path().join("store"), "t");
    let ca = Ca::new(
        tmp.path(),
        "genuine",
        "/CN=Tenant CA/O=Example",
        Alg::EcP256,
    );
    let forger = Ca::new(tmp.path(), "forger", "/CN=Tenant CA/O=Example", Alg::EcP256);
    d.add_issuer(&ca.cert()).unwrap();
    let first = ca.crl(None, None, false);
    d.put_crl(&first, false).unwrap();
    // 2^159 - 1: the largest CRL number RFC 5280 allows.
    let huge = forger.crl(Some(&format!("7F{}", "FF".repeat(19))), None, false);
    assert_eq!(
        HeldCrl::from_der(&huge).unwrap().issuer,
        HeldCrl::from_der(&first).unwrap().issuer,
        "same issuer name"
    );
    let err = crl_error(d.put_crl(&huge, false).unwrap_err());
    assert!(matches!(err, CrlError::BadSignature { .. }), "{err}");
    let next = ca.crl(None, None, false);
    d.put_crl(&next, false).unwrap();
    let held = d.crl(&ca.openssl_subject()).unwrap().value.unwrap();
    assert_eq!(held.number, CrlNumber(vec![2]));
    // Even a domain that accepts unverified CRLs refuses one that a held certificate of its
    // name fails to verify.
    d.set_accept_unverified_crls(true);
    let err = crl_error(d.put_crl(&huge, false).unwrap_err());
    assert!(matches!(err, CrlError::BadSignature { .. }), "{err}");
}

#[test]
fn names_that_print_alike_never_collide() {
    let tmp = tempfile::tempdir().unwrap();
    let (_s, d) = active(&tmp.path().join("store"), "t");
    // `O=Example` then `CN=Twin CA` (two RDNs) and one CN that is literally `Twin CA, O=Example`.
    let two = Ca::new(tmp.path(), "two", "/O=Example/CN=Twin CA", Alg::EcP256);
    let one = Ca::new(tmp.path(), "one", "/CN=Twin CA, O=Example", Alg::EcP256);
    assert_eq!(two.openssl_subject(), "CN=Twin CA,O=Example");
    assert_eq!(one.openssl_subject(), r"CN=Twin CA\, O=Example");
    let (crl_two, crl_one) = (two.crl(None, None, false), one.crl(None, None, false));
    for (ca, crl) in [(&two, &crl_two), (&one, &crl_one)] {
        d.add_issuer(&ca.cert()).unwrap();
        d.put_crl(crl, false).unwrap();
    }
    assert_eq!(d.held_crls().unwrap().value.len(), 2);
    for (ca, crl) in [(&two, &crl_two), (&one, &crl_one)] {
        let by_text = d.crl(&ca.openssl_subject()).unwrap().value.unwrap();
        assert_eq!(by_text.der, *crl);
        let name = IssuerCert::from_der(&ca.cert()).unwrap().subject;
        let by_der = d
            .crl_of(&IssuerKey::Der(name.der().to_vec()), false)
            .unwrap()
            .value
            .unwrap();
        assert_eq!(by_der.der, *crl);
    }
    // The CA of one name cannot verify the CRL of the other.
    let a = HeldCrl::from_der(&crl_two).unwrap();
    let b = IssuerCert::from_der(&one.cert()).unwrap();
    assert!(matches!(a.verify(&b), Err(CrlError::UnknownIssuer { .. })));
}

#[test]
fn a_delta_crl_sits_beside_its_base_and_never_replaces_it() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::new(tmp.path(), "rsa", "/CN=Delta CA/O=Example", Alg::Rsa);
    for serial in ["1001", "1002", "1003"] {
        ca.revoke(serial);
    }
    let base = ca.crl(Some("03"), None, false); // number 3, 3 revoked
    ca.revoke("1004");
    let delta = ca.crl(None, Some(3), false); // number 4, delta of base 3
    assert_eq!(revoked_count(&base), 3);
    let parsed = HeldCrl::from_der(&delta).unwrap();
    assert_eq!(parsed.delta_base, Some(CrlNumber(vec![3])));

    // A delta whose base is not held is refused.
    let (_s1, lone) = active(&tmp.path().join("lone"), "t");
    lone.add_issuer(&ca.cert()).unwrap();
    assert!(matches!(
        lone.put_crl(&delta, false).unwrap_err(),
        StoreError::CrlDeltaWithoutBase { .. }
    ));

    let (_s2, d) = active(&tmp.path().join("store"), "t");
    d.add_issuer(&ca.cert()).unwrap();
    d.put_crl(&base, false).unwrap();
    d.put_crl(&delta, false).unwrap();
    let name = ca.openssl_subject();
    // Gateways asking for the CRL still get the base with its three serials.
    let got = d.crl(&name).unwrap().value.unwrap();
    assert_eq!(got.der, base);
    assert_eq!(revoked_count(&got.der), 3);
    let got = d
        .crl_of(&IssuerKey::Text(name.clone()), true)
        .unwrap()
        .value
        .unwrap();
    assert_eq!(got.der, delta);
    assert_eq!(d.held_crls().unwrap().value.len(), 2);
    // A new base numbered above the delta makes it obsolete.
    let newer = ca.crl(None, None, false); // number 5
    d.put_crl(&newer, false).unwrap();
    let held = d.held_crls().unwrap().value;
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0].number, CrlNumber(vec![5]));
    assert!(d
        .crl_of(&IssuerKey::Text(name), true)
        .unwrap()
        .value
        .is_none());
}

#[test]
fn a_stale_crl_is_refused_unless_allowed_and_numbers_only_grow() {
    let tmp = tempfile::tempdir().unwrap();
    let (_s, d) = active(&tmp.path().join("store"), "t");
    let ca = Ca::new(tmp.path(), "p384", "/CN=Stale CA", Alg::EcP384);
    d.add_issuer(&ca.cert()).unwrap();
    let stale = ca.crl(None, None, true);
    let err = crl_error(d.put_crl(&stale, false).unwrap_err());
    assert!(matches!(err, CrlError::Stale { .. }), "{err}");
    assert!(err.to_string().contains("2020-02-01T00:00:00Z"), "{err}");
    assert!(err.to_string().contains("--allow-stale"), "{err}");
    d.put_crl(&stale, true).unwrap();
    let current = ca.crl(None, None, false);
    d.put_crl(&current, false).unwrap();
    assert!(matches!(
        d.put_crl(&stale, true).unwrap_err(),
        StoreError::CrlOutdated { .. }
    ));
}

#[test]
fn unverified_crls_only_by_the_domain_setting_and_remove_names_the_number() {
    let tmp = tempfile::tempdir().unwrap();
    let (_s, d) = active(&tmp.path().join("store"), "t");
    let ca = Ca::new(tmp.path(), "ed", "/CN=Loose CA", Alg::Ed25519);
    let crl = ca.crl(None, None, false);
    assert!(!d.accepts_unverified_crls(), "off by default");
    assert!(matches!(
        crl_error(d.put_crl(&crl, false).unwrap_err()),
        CrlError::UnknownIssuer { .. }
    ));
    d.set_accept_unverified_crls(true);
    d.put_crl(&crl, false).unwrap();
    let held = d.held_crls().unwrap().value;
    assert_eq!(held[0].verified_by, None, "stored as unverified");
    let name: DistinguishedName = held[0].issuer.clone();
    // Removing names the number: a wrong one is refused, the right one removes it.
    assert!(matches!(
        d.remove_crl(&name, &CrlNumber(vec![9])).unwrap_err(),
        StoreError::InvalidWrite { .. }
    ));
    d.remove_crl(&name, &CrlNumber(vec![1])).unwrap();
    assert!(d.held_crls().unwrap().value.is_empty());
    // Removing the issuer certificate leaves CRLs of other issuers alone; removing one not
    // held is refused.
    let (_, cert) = d.add_issuer(&ca.cert()).unwrap();
    d.remove_issuer(&cert.subject, &cert.sha256).unwrap();
    assert!(d.issuers().unwrap().value.is_empty());
    assert!(d.remove_issuer(&cert.subject, &cert.sha256).is_err());
}

#[test]
fn a_crl_stored_by_an_earlier_release_is_served_listed_and_removable() {
    let tmp = tempfile::tempdir().unwrap();
    let store_a = Store::open(
        tmp.path().join("a"),
        StoreOptions::new(NodeId::new("a").unwrap()),
    )
    .unwrap();
    let store_b = Store::open(
        tmp.path().join("b"),
        StoreOptions::new(NodeId::new("b").unwrap()),
    )
    .unwrap();
    let id: DomainId = "t".parse().unwrap();
    let a = store_a.create_domain(&id).unwrap();
    let b = store_b.join_domain(&id).unwrap();
    a.put("k", "v").unwrap();
    // The standby starts from a snapshot that carries an issuer certificate and a verified
    // CRL: the new rows travel in a full resync and give the same digest.
    let current = Ca::new(tmp.path(), "current", "/CN=Current CA", Alg::EcP384);
    a.add_issuer(&current.cert()).unwrap();
    a.put_crl(&current.crl(None, None, false), false).unwrap();
    let snap = a.snapshot().unwrap();
    let mut rows = Vec::new();
    snap.for_each::<StoreError>(|item| {
        rows.push(item);
        Ok(())
    })
    .unwrap();
    let target = ResyncTarget {
        uid: snap.uid.unwrap(),
        position: snap.position.clone(),
        epoch: snap.epoch.clone(),
        history: snap.history.clone(),
        digest: snap.digest,
    };
    drop(snap);
    let mut resync = b.begin_resync(target, None).unwrap();
    resync.add(&rows).unwrap();
    resync.finish().unwrap();
    assert_eq!(b.status().unwrap().digest, a.status().unwrap().digest);
    assert_eq!(b.held_crls().unwrap().value, a.held_crls().unwrap().value);
    assert_eq!(b.issuers().unwrap().value.len(), 1);
    // A record of an earlier release: the CRL keyed by its issuer text, never verified.
    let ca = Ca::new(tmp.path(), "old", "/CN=Old CA", Alg::EcP256);
    let der = ca.crl(None, None, false);
    let parsed = HeldCrl::from_der(&der).unwrap();
    let legacy = Crl {
        issuer: "CN = Old CA".into(),
        number: parsed.number.clone(),
        this_update: parsed.this_update,
        next_update: parsed.next_update,
        der: der.clone(),
    };
    let status = a.status().unwrap();
    let record = Record {
        epoch: status.epoch.clone(),
        lsn: status.position.lsn.next(),
        time: 1,
        prev_chain: status.position.chain,
        ops: vec![Op::PutLegacyCrl(legacy.clone())],
    };
    b.apply(&encode_record(&record).unwrap()).unwrap();
    assert_eq!(b.legacy_crls().unwrap().value, vec![legacy.clone()]);
    assert_eq!(b.crl("CN = Old CA").unwrap().value, Some(legacy));
    // New writes never store a CRL that way.
    b.promote().unwrap();
    let again = Op::PutLegacyCrl(b.legacy_crls().unwrap().value[0].clone());
    assert!(matches!(
        b.write(vec![again]).unwrap_err(),
        StoreError::InvalidWrite { .. }
    ));
    // The way out: hold the issuer, upload it verified, remove the legacy row.
    b.add_issuer(&ca.cert()).unwrap();
    b.put_crl(&der, false).unwrap();
    b.remove_legacy_crl("CN = Old CA").unwrap();
    assert!(b.legacy_crls().unwrap().value.is_empty());
    assert_eq!(
        b.crl(&ca.openssl_subject()).unwrap().value.unwrap().der,
        der
    );
    assert!(b.verify().unwrap().is_clean());
}

/// A real `domsyncd`: CRLs and issuers through its admin socket; a stale CRL and an
/// unverified one show in status (table and JSON), the journal (once, at start and then
/// periodically) and the metrics (a nextUpdate timestamp gauge per CRL); the per-domain
/// setting is read from the configuration file and shown.
#[test]
fn a_daemon_shows_stale_and_unverified_crls_in_status_logs_and_metrics() {
    use domsync_testkit::cli::{domain_of, domsync, ok, parse_json, status_json};
    use domsync_testkit::poll::GUARD;
    use domsync_testkit::process::{Cluster, Daemon};

    let c = Cluster::new(&["a"]);
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let domains = vec![
        ("t1".to_string(), vec!["a".to_string()], "local".to_string()),
        ("t2".to_string(), vec!["a".to_string()], "local".to_string()),
    ];
    let text = c
        .node_config("a", "guard_window_ms = 300", domains)
        .text()
        .replace(
            "[tls]",
            &format!("metrics = \"127.0.0.1:{metrics_port}\"\n\n[tls]"),
        )
        .replace(
            "name = \"t2\"\n",
            "name = \"t2\"\naccept_unverified_crls = true\n",
        );
    let config = c.config_path("a");
    std::fs::write(&config, text).unwrap();
    let start = || {
        let mut d = Daemon::spawn("a", c.dir.path(), &config, GUARD, &[]);
        d.socket = c.socket("a");
        d.ready();
        d
    };
    let mut daemon = start();
    let sock = &daemon.socket.clone();

    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::new(tmp.path(), "p256", "/CN=Ops CA/O=Example", Alg::EcP256);
    let ca_pem = ca.dir.join("ca.pem");
    let stale = tmp.path().join("stale.der");
    std::fs::write(&stale, ca.crl(None, None, true)).unwrap();

    // t1 verifies: refused without the issuer, refused stale, stored with --allow-stale.
    let out = domsync(sock, &["crl", "put", "t1", stale.to_str().unwrap()]);
    assert_eq!(
        (out.code, out.stderr.lines().count()),
        (1, 1),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("no issuer certificate"),
        "{}",
        out.stderr
    );
    ok(sock, &["issuer", "add", "t1", ca_pem.to_str().unwrap()]);
    let out = domsync(sock, &["crl", "put", "t1", stale.to_str().unwrap()]);
    assert_eq!(
        (out.code, out.stderr.lines().count()),
        (1, 1),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("--allow-stale"), "{}", out.stderr);
    ok(
        sock,
        &["crl", "put", "t1", stale.to_str().unwrap(), "--allow-stale"],
    );
    // t2 accepts a CRL of an issuer it holds no certificate of, as configured.
    let loose = Ca::new(tmp.path(), "loose", "/CN=Loose CA", Alg::Ed25519);
    let loose_crl = tmp.path().join("loose.der");
    std::fs::write(&loose_crl, loose.crl(None, None, false)).unwrap();
    ok(sock, &["crl", "put", "t2", loose_crl.to_str().unwrap()]);

    let s = status_json(sock);
    let t1 = domain_of(&s, "t1");
    assert_eq!(t1["accept_unverified_crls"], false);
    assert_eq!(t1["crls"][0]["issuer"], "O=Example,CN=Ops CA");
    assert_eq!(t1["crls"][0]["next_update_unix_s"], 1_580_515_200);
    let t2 = domain_of(&s, "t2");
    assert_eq!(t2["accept_unverified_crls"], true);
    assert_eq!(t2["crls"][0]["verified"], false);
    let table = ok(sock, &["status"]);
    assert!(
        table.contains("WARNING: base CRL number 1 of O=Example,CN=Ops CA in domain t1 is past its nextUpdate 2020-02-01T00:00:00Z"),
        "{table}"
    );
    assert!(
        table.contains("NOTE: domain t2 accepts unverified CRLs"),
        "{table}"
    );
    let list = parse_json(&ok(sock, &["crl", "list", "t2", "--json"]));
    assert!(list["crls"][0]["verified_by"].is_null());

    let page = {
        use std::io::{Read as _, Write as _};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", metrics_port)).unwrap();
        s.set_read_timeout(Some(GUARD)).unwrap();
        write!(s, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    assert!(
        page.contains("domsync_crl_next_update_timestamp_seconds{domain=\"t1\",issuer=\"O=Example,CN=Ops CA\",kind=\"base\"} 1580515200"),
        "{page}"
    );

    // The journal names the stale CRL when the daemon starts.
    daemon.stop();
    let before = daemon.log().len();
    let daemon = start();
    let line = domsync_testkit::poll::poll(GUARD, std::time::Duration::from_millis(20), || {
        let log = daemon.log();
        log.get(before..)
            .and_then(|new| {
                new.lines()
                    .find(|l| l.contains("CRL is past its nextUpdate"))
            })
            .map(str::to_owned)
            .ok_or_else(|| format!("no stale-CRL line after the restart in:\n{log}"))
    });
    assert!(line.contains("domain=t1"), "{line}");
    assert!(line.contains("2020-02-01T00:00:00Z"), "{line}");
}

/// An authenticated writer (admin socket or remote admin) that sends a CRL op it built itself:
/// fields that do not match the DER, a claimed verification, or the legacy op, are refused;
/// `verified_by` is what the active found, never what the writer said.
#[test]
fn a_write_that_forges_a_crl_row_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (_s, d) = active(&tmp.path().join("store"), "t");
    let ca = Ca::new(tmp.path(), "p256", "/CN=Forge CA", Alg::EcP256);
    let der = ca.crl(None, None, false);
    let mut crl = HeldCrl::from_der(&der).unwrap();
    crl.verified_by = Some([7; 32]);
    let put = |crl: HeldCrl| {
        d.write(vec![Op::PutCrl {
            crl,
            allow_stale: false,
        }])
    };
    // Claimed verified, but no issuer held: refused.
    assert!(matches!(
        crl_error(put(crl.clone()).unwrap_err()),
        CrlError::UnknownIssuer { .. }
    ));
    // A number that is not the DER's: refused.
    let mut bigger = crl.clone();
    bigger.number = CrlNumber(vec![0x7f; 20]);
    assert!(matches!(
        put(bigger).unwrap_err(),
        StoreError::InvalidWrite { .. }
    ));
    // With the issuer held, the row records the certificate that verified it.
    let (_, cert) = d.add_issuer(&ca.cert()).unwrap();
    put(crl).unwrap();
    assert_eq!(
        d.held_crls().unwrap().value[0].verified_by,
        Some(cert.sha256)
    );
    // An issuer certificate whose fields are not its DER's is refused too.
    let mut fake = IssuerCert::from_der(&ca.cert()).unwrap();
    fake.subject = HeldCrl::from_der(&der).unwrap().issuer;
    fake.sha256 = [1; 32];
    assert!(matches!(
        d.write(vec![Op::AddIssuer(fake)]).unwrap_err(),
        StoreError::InvalidWrite { .. }
    ));
}
