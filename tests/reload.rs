//! A configuration reload (SIGHUP) puts a domain's new settings in force on the running
//! domain, with real `domsyncd` processes: never "reloaded" while ignored.

use std::time::Duration;

use domsync_testkit::cli::{domsync, ok};
use domsync_testkit::poll::{poll, GUARD};
use domsync_testkit::process::{Cluster, Daemon};

const LIMITS: &str = "guard_window_ms = 300\nconfirm_timeout_ms = 400";

fn write_config(c: &Cluster, node: &str, durability: &str) -> std::path::PathBuf {
    let domains = vec![(
        "t1".to_owned(),
        vec!["a".to_owned(), "b".to_owned()],
        durability.to_owned(),
    )];
    c.node_config(node, LIMITS, domains)
        .write(c.config_path(node))
}

fn start(c: &Cluster, node: &str, durability: &str) -> Daemon {
    let config = write_config(c, node, durability);
    let mut d = Daemon::spawn(node, c.dir.path(), &config, GUARD, &[]);
    d.socket = c.socket(node);
    d.ready();
    d
}

#[test]
fn a_reload_puts_a_domains_new_durability_in_force() {
    let c = Cluster::new(&["a", "b"]);
    let mut a = start(&c, "a", "local");
    let mut b = start(&c, "b", "local");
    let put = |key: &str| domsync(&c.socket("a"), &["kv", "put", "t1", key, "v"]);
    // a is active (primary), b follows it.
    poll(GUARD, Duration::from_millis(50), || {
        let out = put("first");
        (out.code == 0).then_some(()).ok_or(out.to_string())
    });
    b.stop();
    // Durability local: acknowledged without any standby.
    ok(&c.socket("a"), &["kv", "put", "t1", "alone", "v"]);

    // The file now says durability standby: after SIGHUP a write waits for the (stopped)
    // standby and says it is not confirmed.
    write_config(&c, "a", "standby");
    a.signal("HUP");
    let refused = poll(GUARD, Duration::from_millis(20), || {
        let out = put("waits");
        if out.code != 0 && out.stderr.contains("not confirmed by standby durability") {
            Ok(out)
        } else {
            Err(format!("still acknowledged without a standby: {out}"))
        }
    });
    assert!(refused.stderr.contains("committed locally"), "{refused}");
    assert!(
        a.log().contains("domain settings reloaded and in force"),
        "{}",
        a.log()
    );

    // And back: local again, acknowledged again.
    write_config(&c, "a", "local");
    a.signal("HUP");
    poll(GUARD, Duration::from_millis(20), || {
        let out = put("alone-again");
        (out.code == 0).then_some(()).ok_or(out.to_string())
    });
    a.stop();
}
