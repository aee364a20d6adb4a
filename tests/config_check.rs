//! `domsyncd --check` as strict as the start (short of binding): every file set the start
//! refuses is refused, each problem under its key; configuration errors placed at
//! `FILE:LINE:COLUMN`; every error printed once.

use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use domsync_net::PeerRole;
use domsync_testkit::pki::init_pki;
use domsync_testkit::process::NodeConfig;

/// A clean configuration of node `a` in `dir` (PKI with nodes a and b), with `edit` applied
/// to its text.
fn config(dir: &Path, edit: impl FnOnce(String) -> String) -> PathBuf {
    let pki = dir.join("pki");
    if !pki.join("ca.pem").exists() {
        init_pki(&pki, &[(PeerRole::Node, "a"), (PeerRole::Node, "b")]);
    }
    let state = dir.join("state");
    let text = NodeConfig {
        id: "a".to_owned(),
        admin_socket: state.join("admin.sock"),
        state_dir: state,
        listen: "127.0.0.1:7400".to_owned(),
        pki,
        limits: String::new(),
        peers: Vec::new(),
        domains: vec![("t1".to_owned(), vec!["a".to_owned()], "local".to_owned())],
    }
    .text();
    let path = dir.join("domsync.toml");
    std::fs::write(&path, edit(text)).unwrap();
    path
}

fn domsyncd(config: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_domsyncd"))
        .arg("--config")
        .arg(config)
        .args(args)
        .envs(env.iter().copied())
        .env_remove("NOTIFY_SOCKET")
        .output()
        .unwrap()
}

/// `--check` refuses: exit 1, stderr (returned) naming each of `wants`.
fn refused(config: &Path, env: &[(&str, &str)], wants: &[&str]) -> String {
    let out = domsyncd(config, &["--check"], env);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "stdout {stdout} stderr {err}");
    assert!(!stdout.contains("is valid"), "{stdout}");
    for want in wants {
        assert!(err.contains(want), "{want:?} missing in {err}");
    }
    err
}

#[test]
fn a_clean_set_is_valid() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path(), |t| t);
    let out = domsyncd(&path, &["--check"], &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    assert!(stdout.contains("is valid"), "{stdout}");
    assert!(
        !dir.path().join("state").exists(),
        "--check created the state directory"
    );
}

#[test]
fn check_refuses_every_tls_file_set_the_start_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = d.join("pki");
    // A missing certificate.
    let path = config(d, |t| t.replace("node-a.pem", "node-nobody.pem"));
    refused(&path, &[], &["domsync.toml: tls.cert:", "node-nobody.pem"]);
    // A CA file that is not PEM.
    std::fs::write(d.join("ca.txt"), "not a certificate\n").unwrap();
    let ca = d.join("ca.txt");
    let path = config(d, |t| {
        t.replace(
            &format!("{}/ca.pem", pki.display()),
            &ca.display().to_string(),
        )
    });
    refused(&path, &[], &["tls.ca:", "ca.txt"]);
    // Another node's certificate (and key).
    let path = config(d, |t| t.replace("node-a.", "node-b."));
    refused(
        &path,
        &[],
        &["tls.cert:", "domsync://node/b", "node.id is a"],
    );
    // A key path that is a directory.
    std::fs::create_dir(d.join("keydir")).unwrap();
    let keydir = d.join("keydir");
    let path = config(d, |t| {
        t.replace(
            &format!("{}/node-a.key", pki.display()),
            &keydir.display().to_string(),
        )
    });
    refused(&path, &[], &["tls.key:", "keydir is a directory"]);
    // The key of another certificate.
    let path = config(d, |t| t.replace("node-a.key", "node-b.key"));
    refused(&path, &[], &["tls.key:", "node-b.key cannot be used with"]);
}

#[test]
fn check_refuses_a_key_the_service_user_cannot_read() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path(), |t| t);
    let key = dir.path().join("pki/node-a.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        // SAFETY: a NUL-terminated name.
        if unsafe { libc::getpwnam(c"nobody".as_ptr()) }.is_null() {
            eprintln!("skipped: running as root and there is no user nobody to check against");
            return;
        }
        // Root reads anything: the check is against the service user (the unit's).
        refused(
            &path,
            &[("DOMSYNC_SERVICE_USER", "nobody")],
            &["tls.key:", "cannot be read by the service user nobody"],
        );
    } else {
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o000)).unwrap();
        refused(
            &path,
            &[],
            &["tls.key:", "cannot be read by the current user"],
        );
    }
}

#[test]
fn a_state_dir_that_is_a_file_is_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain");
    std::fs::write(&file, "x").unwrap();
    let state = dir.path().join("state");
    let path = config(dir.path(), |t| {
        t.replace(
            &format!("state_dir = \"{}\"", state.display()),
            &format!("state_dir = \"{}\"", file.display()),
        )
    });
    refused(
        &path,
        &[],
        &[&format!(
            "node.state_dir: {} is not a directory",
            file.display()
        )],
    );
    // The start says the same, not "admin-domains.toml" and "pass --config FILE".
    let out = domsyncd(&path, &[], &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!(
            "node.state_dir {} is not a directory",
            file.display()
        )),
        "{err}"
    );
    assert!(
        !err.contains("--config") && !err.contains("domain add"),
        "{err}"
    );
}

#[test]
fn zero_limits_are_refused_all_at_once_with_their_place_and_range() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path(), |t| {
        format!("{t}\n[limits]\ngateway_connections = 0\nconfirm_timeout_ms = 0\n")
    });
    let lines = std::fs::read_to_string(&path).unwrap().lines().count();
    let err = refused(
        &path,
        &[],
        &[
            "refused (2 problems)",
            &format!(
                "domsync.toml:{}:23: limits.gateway_connections: 0 is out of range; must be between 1 and",
                lines - 1
            ),
            &format!(
                "domsync.toml:{lines}:22: limits.confirm_timeout_ms: 0 is out of range; must be between 100 and"
            ),
        ],
    );
    assert!(!err.contains("is valid"), "{err}");
}

#[test]
fn type_errors_name_the_key_and_place_and_every_error_is_printed_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path(), |t| {
        t.replace("listen = \"127.0.0.1:7400\"", "listen = 7400")
    });
    let text = std::fs::read_to_string(&path).unwrap();
    let line = text.lines().position(|l| l == "listen = 7400").unwrap() + 1;
    let want = format!("domsync.toml:{line}:10: node.listen: the integer 7400 is not a string");
    for args in [&["--check"][..], &[]] {
        let out = domsyncd(&path, args, &[]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert_eq!(err.matches(&want).count(), 1, "{err}");
        assert_eq!(err.matches("refused").count(), 1, "{err}");
        assert!(!err.contains("invalid type"), "{err}");
    }
}
