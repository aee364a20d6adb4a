//! `domsync doctor` against real configurations from the test kit: all ok for a running
//! node with its peer up, a FAIL line (and exit 1) when the peer is down or the certificate
//! is missing.

use domsync_testkit::cli::{domsync_cmd, parse_json, run};
use domsync_testkit::process::Cluster;

fn doctor(config: &std::path::Path, extra: &[&str]) -> domsync_testkit::cli::Out {
    let mut cmd = domsync_cmd(&["doctor", "--timeout", "2", "--config"]);
    cmd.arg(config).args(extra).env_remove("DOMSYNC_CONFIG");
    run(cmd)
}

/// The line of check `name`.
fn line<'a>(out: &'a str, name: &str) -> &'a str {
    out.lines()
        .find(|l| {
            l.split_once("  ")
                .map(|(_, rest)| rest.trim_start().starts_with(name))
                == Some(true)
        })
        .unwrap_or_else(|| panic!("no {name} line in\n{out}"))
}

#[test]
fn doctor_is_all_ok_for_a_running_node_and_fails_on_a_peer_down_or_a_missing_certificate() {
    let c = Cluster::new(&["a", "b"]);
    let domains: &[(&str, &[&str])] = &[("t1", &["a", "b"])];
    let _a = c.start("a", domains);
    let mut b = c.start("b", domains);
    let config = c.config_path("a");

    let out = doctor(&config, &[]);
    assert_eq!(out.code, 0, "{out}");
    for check in [
        "configuration",
        "certificate",
        "peer b",
        "disk space",
        "descriptor limit",
        "state permissions",
    ] {
        assert!(
            line(&out.stdout, check).starts_with("ok "),
            "{check}: {out}"
        );
    }
    // a is the active: it follows nothing of b, so the skew to b is not measured here, and
    // said so: never an "ok".
    let skew = line(&out.stdout, "clock skew to b");
    assert!(
        skew.starts_with("skip ") && skew.contains("not measured from here"),
        "{skew}"
    );
    assert!(!out.stdout.contains("FAIL"), "{out}");
    // b follows a: its daemon measures a's clock on the heartbeats (same machine: near 0).
    let on_b = domsync_testkit::poll::poll(
        domsync_testkit::poll::GUARD,
        std::time::Duration::from_millis(50),
        || {
            let out = doctor(&c.config_path("b"), &[]);
            let skew = line(&out.stdout, "clock skew to a").to_owned();
            if skew.starts_with("ok ") {
                Ok(skew)
            } else {
                Err(format!("no measured skew yet: {out}"))
            }
        },
    );
    assert!(on_b.contains(" ms (this clock minus a's"), "{on_b}");

    let json = parse_json(&doctor(&config, &["--json"]).stdout);
    let checks = json.as_array().unwrap();
    assert!(checks
        .iter()
        .any(|c| c["check"] == "peer b" && c["status"] == "ok"));

    // The peer down: a FAIL line saying what to do, exit 1.
    b.stop();
    let out = doctor(&config, &[]);
    assert_eq!(out.code, 1, "{out}");
    let peer = line(&out.stdout, "peer b");
    assert!(peer.starts_with("FAIL  peer b: 127.0.0.1:"), "{peer}");
    assert!(peer.contains("; check that its domsyncd runs"), "{peer}");
    assert!(
        line(&out.stdout, "configuration").starts_with("ok "),
        "{out}"
    );

    // The certificate missing.
    std::fs::remove_file(c.pki().join("node-a.pem")).unwrap();
    let out = doctor(&config, &[]);
    assert_eq!(out.code, 1, "{out}");
    // (Named by the certificate check, or by the configuration check when loading the
    // configuration checks the files.)
    let fail = out
        .stdout
        .lines()
        .find(|l| l.starts_with("FAIL  ") && l.contains("node-a.pem"))
        .unwrap_or_else(|| panic!("no FAIL line naming node-a.pem in\n{out}"));
    assert!(fail.contains("; "), "no advice in {fail}");
}

#[test]
fn doctor_fails_on_a_configuration_that_does_not_load() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("domsync.toml");
    std::fs::write(&config, "[node]\nid = 7\n").unwrap();
    let out = doctor(&config, &[]);
    assert_eq!(out.code, 1, "{out}");
    assert!(
        line(&out.stdout, "configuration").starts_with("FAIL  configuration: "),
        "{out}"
    );
    assert_eq!(out.stdout.lines().count(), 1, "{out}");
}
