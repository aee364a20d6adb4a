//! The descriptor budget of a real `domsyncd`: the open-file limit is raised to the hard one
//! at start, and a hard limit that cannot hold the domains refuses the start in one line
//! naming the limit and the fix, before any domain is opened.

use std::path::{Path, PathBuf};

use domsync_net::PeerRole;
use domsync_testkit::pki::init_pki;
use domsync_testkit::poll::{free_port, GUARD};
use domsync_testkit::process::{Daemon, NodeConfig};

/// A configuration of node `a` holding `domains` local domains.
fn write_config(dir: &Path, domains: usize) -> PathBuf {
    let pki_dir = dir.join("pki");
    init_pki(&pki_dir, &[(PeerRole::Node, "a")]);
    let state = dir.join("state");
    NodeConfig {
        id: "a".to_owned(),
        admin_socket: state.join("admin.sock"),
        state_dir: state,
        listen: format!("127.0.0.1:{}", free_port()),
        pki: pki_dir,
        limits: String::new(),
        peers: Vec::new(),
        domains: (0..domains)
            .map(|i| (format!("t{i}"), vec!["a".to_owned()], "local".to_owned()))
            .collect(),
    }
    .write(dir.join("domsync.toml"))
}

/// The domain databases in the state directory.
fn databases(dir: &Path) -> usize {
    std::fs::read_dir(dir.join("state").join("domains"))
        .map(|d| {
            d.filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "redb"))
            })
            .count()
        })
        .unwrap_or(0)
}

#[test]
fn a_hard_limit_too_low_for_the_domains_refuses_the_start_in_one_line_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    // 300 domains need 600 descriptors for their files alone.
    let config = write_config(dir.path(), 300);
    let mut daemon = Daemon::spawn_with_nofile("a", dir.path(), &config, GUARD, &[], (256, 256));
    let status = daemon.wait_exit();
    let log = daemon.log();
    assert_eq!(status.code(), Some(1), "{log}");
    let errors: Vec<&str> = log.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "one error line expected: {log}");
    let line = errors[0];
    assert!(
        line.starts_with("domsyncd: error: need 1,067 file descriptors for 300 domains"),
        "{line}"
    );
    assert!(line.contains("the open-file limit is 256"), "{line}");
    assert!(line.contains("raise LimitNOFILE="), "{line}");
    assert!(!line.contains("permissions"), "{line}");
    assert!(!log.contains("Too many open files"), "{log}");
    assert_eq!(databases(dir.path()), 0, "a domain was opened: {log}");
}

#[test]
fn the_soft_limit_is_raised_to_the_hard_one_and_the_budget_logged() {
    let dir = tempfile::tempdir().unwrap();
    // 300 domains need 1,067 descriptors: more than the soft limit, less than the hard one.
    let config = write_config(dir.path(), 300);
    let mut daemon = Daemon::spawn_with_nofile("a", dir.path(), &config, GUARD, &[], (256, 2048));
    let ready = daemon.ready();
    assert!(ready.contains("300 domains: 300 active"), "{ready}");
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", daemon.child.id())).unwrap();
    let open_files = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .unwrap()
        .split_whitespace()
        .collect::<Vec<_>>();
    assert_eq!(open_files[3..5], ["2048", "2048"], "{limits}");
    daemon.signal("TERM");
    let status = daemon.wait_exit();
    let log = daemon.log();
    assert_eq!(status.code(), Some(0), "{log}");
    assert!(
        log.contains("descriptor budget: 1,067 needed for 300 domains, limit 2,048"),
        "{log}"
    );
    assert_eq!(databases(dir.path()), 300, "{log}");
}
