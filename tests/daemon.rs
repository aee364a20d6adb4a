//! `domsyncd` as systemd runs it: a real process with a configuration file, `NOTIFY_SOCKET`
//! listened on by the test, signals for reload and stop.

use std::path::{Path, PathBuf};
use std::process::Command;

use domsync_net::PeerRole;

use domsync_testkit::pki::{creds, init_pki};
use domsync_testkit::poll::{free_port, GUARD};
use domsync_testkit::process::{Daemon, NodeConfig};

fn write_config(dir: &Path, domains: &[&str], port: u16) -> PathBuf {
    let pki_dir = dir.join("pki");
    if !pki_dir.join("ca.pem").exists() {
        init_pki(
            &pki_dir,
            &[
                (PeerRole::Node, "a"),
                (PeerRole::Node, "b"),
                (PeerRole::Gateway, "g"),
            ],
        );
    }
    let state = dir.join("state");
    let config = NodeConfig {
        id: "a".to_owned(),
        admin_socket: state.join("admin.sock"),
        state_dir: state,
        listen: format!("127.0.0.1:{port}"),
        pki: pki_dir,
        limits: String::new(),
        peers: Vec::new(),
        domains: domains
            .iter()
            .map(|d| (d.to_string(), vec!["a".to_owned()], "local".to_owned()))
            .collect(),
    };
    config.write(dir.join("domsync.toml"))
}

/// Starts `domsyncd` as node `a` in `dir`, with `WATCHDOG_USEC` if given.
fn start(dir: &Path, config: &Path, watchdog_usec: Option<u64>) -> Daemon {
    let usec = watchdog_usec.map(|w| w.to_string());
    let env: Vec<(&str, &str)> = usec.iter().map(|w| ("WATCHDOG_USEC", w.as_str())).collect();
    Daemon::spawn("a", dir, config, GUARD, &env)
}

/// Waits (bounded) for the exit: its code (-1 for a signal) and everything it logged.
fn wait_exit(mut d: Daemon) -> (i32, String) {
    let status = d.wait_exit();
    (status.code().unwrap_or(-1), d.log())
}

#[test]
fn ready_status_watchdog_reload_and_a_clean_stop() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &["t1", "t2"], free_port());
    let child = start(dir.path(), &config, Some(300_000));

    let ready = child.until("READY=1");
    assert!(
        ready.contains("STATUS=2 domains: 2 active, 0 standby"),
        "{ready}"
    );
    child.until("WATCHDOG=1");
    assert!(dir.path().join("state/domains/t1.redb").exists());

    // SIGHUP adds a domain.
    let port = std::fs::read_to_string(&config)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("listen = \"127.0.0.1:"))
        .and_then(|p| p.trim_end_matches('"').parse::<u16>().ok())
        .unwrap();
    write_config(dir.path(), &["t1", "t2", "t3"], port);
    child.signal("HUP");
    child.until("RELOADING=1");
    let ready = child.until("READY=1");
    assert!(ready.contains("STATUS=3 domains: 3 active"), "{ready}");

    // A broken configuration is refused and the running one kept.
    std::fs::write(&config, "[node]\nid = \"a\"\nlisten = \"bogus\"\n").unwrap();
    child.signal("HUP");
    child.until("RELOADING=1");
    let ready = child.until("READY=1");
    assert!(ready.contains("STATUS=3 domains: 3 active"), "{ready}");

    child.signal("TERM");
    child.until("STOPPING=1");
    let (code, log) = wait_exit(child);
    assert_eq!(code, 0, "{log}");
    assert!(
        log.contains("reload refused, the running configuration is kept"),
        "{log}"
    );
    assert!(log.contains("node.listen"), "{log}");
}

#[test]
fn an_invalid_configuration_is_refused_with_every_problem_and_nothing_opened() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        format!(
            "[node]\nid = \"a\"\nlisten = \"nowhere\"\nstate_dir = \"{}\"\n[[domains]]\nname = \"t1\"\nreplicas = [\"a\", \"q\"]\n",
            dir.path().join("state").display()
        ),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_domsyncd"))
        .arg("--config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    // A header line, then one line per problem: `FILE:LINE:COLUMN: KEY: ...`.
    assert_eq!(err.matches("domsyncd: error:").count(), 1, "{err}");
    let bad = path.display().to_string();
    for want in [
        format!("{bad}:3:10: node.listen: \"nowhere\" is not an address"),
        format!("{bad}: tls: missing"),
        format!("{bad}:7:18: domains[0].replicas[1]: node q"),
    ] {
        assert!(
            err.lines().any(|l| l.starts_with(&want)),
            "{want} missing in {err}"
        );
    }
    assert!(!dir.path().join("state").exists(), "something was opened");
}

#[test]
fn metrics_are_served_in_the_prometheus_text_format() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &["t1"], free_port());
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let text = std::fs::read_to_string(&config).unwrap().replace(
        "[tls]",
        &format!("metrics = \"127.0.0.1:{metrics_port}\"\n\n[tls]"),
    );
    std::fs::write(&config, text).unwrap();
    let child = start(dir.path(), &config, None);
    child.until("READY=1");

    let get = |path: &str| {
        use std::io::{Read as _, Write as _};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", metrics_port)).unwrap();
        s.set_read_timeout(Some(GUARD)).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    let page = get("/metrics");
    assert!(page.starts_with("HTTP/1.1 200 OK"), "{page}");
    for want in [
        "# TYPE domsync_domain_state gauge",
        "domsync_domain_state{domain=\"t1\",state=\"active\"} 1",
        "domsync_domain_epoch_term{domain=\"t1\",node=\"a\"} 1",
        "domsync_domain_lsn{domain=\"t1\"} 0",
        "# TYPE domsync_commit_seconds histogram",
        "domsync_commit_seconds_bucket{domain=\"t1\",le=\"+Inf\"}",
        "domsync_gateway_requests_total{result=\"forbidden\"} 0",
        "domsync_gateway_connections 0",
    ] {
        assert!(page.contains(want), "{want} missing in\n{page}");
    }
    assert!(get("/other").starts_with("HTTP/1.1 404"));
    assert!(get("/metricsx").starts_with("HTTP/1.1 404"));
    // A query string is ignored, as Prometheus servers do.
    let page = get("/metrics?x=1");
    assert!(page.starts_with("HTTP/1.1 200 OK"), "{page}");
    assert!(page.contains("# TYPE domsync_domain_state gauge"), "{page}");
    child.signal("TERM");
    assert_eq!(wait_exit(child).0, 0);
}

#[test]
fn log_format_json_writes_one_json_object_a_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &["t1"], free_port());
    // `sh` execs domsyncd with `--log-format json` before the `--config FILE` the kit adds.
    let wrapper = [
        "sh".to_owned(),
        "-c".to_owned(),
        r#"exec "$0" --log-format json "$@""#.to_owned(),
    ];
    let child = Daemon::spawn_wrapped("a", dir.path(), &config, GUARD, &[], &wrapper);
    child.until("READY=1");
    child.signal("TERM");
    let (code, log) = wait_exit(child);
    assert_eq!(code, 0, "{log}");
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty(), "nothing logged");
    let mut ready = false;
    for line in lines {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}\n{log}"));
        assert!(
            v.get("level").is_some() && v.get("timestamp").is_some(),
            "{line}"
        );
        let message = v["fields"]["message"].as_str().unwrap_or_default();
        ready |= message.contains("domsyncd ready");
    }
    assert!(ready, "no ready line in\n{log}");
}

#[test]
fn log_format_defaults_to_text() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &["t1"], free_port());
    let child = start(dir.path(), &config, None);
    child.until("READY=1");
    child.signal("TERM");
    let (code, log) = wait_exit(child);
    assert_eq!(code, 0, "{log}");
    let first = log.lines().next().unwrap_or_default();
    assert!(!first.starts_with('{'), "{log}");
    assert!(log.contains("domsyncd ready"), "{log}");
}

/// One gateway request on an open connection: the list of packages of `domain`.
async fn list_policies(conn: &quinn::Connection, domain: &str) -> Result<(), String> {
    use domsync_net::{read_frame, write_frame};
    use domsync_proto::gateway::{Query, Request, Response};
    let (mut send, mut recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let request = Request {
        domain: domain.parse().map_err(|e| format!("{e}"))?,
        seen: Vec::new(),
        query: Query::ListPolicies,
    };
    let frame = domsync_proto::gateway::encode(&request, domsync_proto::gateway::MAX_REQUEST_BYTES)
        .map_err(|e| e.to_string())?;
    write_frame(&mut send, &frame)
        .await
        .map_err(|e| e.to_string())?;
    send.finish().map_err(|e| e.to_string())?;
    let answer = read_frame(&mut recv, domsync_proto::gateway::MAX_RESPONSE_BYTES)
        .await
        .map_err(|e| e.to_string())?
        .ok_or("no answer")?;
    match domsync_proto::gateway::decode::<Response>(
        &answer,
        domsync_proto::gateway::MAX_RESPONSE_BYTES,
    ) {
        Ok(Response::Policies { .. }) => Ok(()),
        other => Err(format!("{other:?}")),
    }
}

#[test]
fn a_reload_adds_a_domain_without_dropping_gateway_connections() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(dir.path(), &["t1"], port);
    let child = start(dir.path(), &config, None);
    child.until("READY=1");

    let rt = tokio::runtime::Runtime::new().unwrap();
    let creds = creds(&dir.path().join("pki"), PeerRole::Gateway, "g");
    let endpoint =
        rt.block_on(async { quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap() });
    let conn = rt.block_on(async {
        let config = domsync_net::client_config(&creds, domsync_net::ALPN_GATEWAY).unwrap();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        tokio::time::timeout(
            GUARD,
            endpoint
                .connect_with(config, addr, domsync_net::SERVER_NAME)
                .unwrap(),
        )
        .await
        .unwrap()
        .unwrap()
    });
    rt.block_on(list_policies(&conn, "t1")).unwrap();
    // t2 is not there yet.
    assert!(rt.block_on(list_policies(&conn, "t2")).is_err());

    write_config(dir.path(), &["t1", "t2"], port);
    child.signal("HUP");
    let ready = child.until("READY=1");
    assert!(ready.contains("STATUS=2 domains"), "{ready}");
    // The same connection serves the old domain and the new one.
    rt.block_on(list_policies(&conn, "t1")).unwrap();
    rt.block_on(list_policies(&conn, "t2")).unwrap();
    assert!(conn.close_reason().is_none());

    child.signal("TERM");
    assert_eq!(wait_exit(child).0, 0);
}

#[test]
fn a_domain_that_fails_to_open_is_reported_and_the_others_serve() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), &["t1", "t2"], free_port());
    let child = start(dir.path(), &config, None);
    child.until("READY=1");
    child.signal("TERM");
    assert_eq!(wait_exit(child).0, 0);

    // t2's database is destroyed while the daemon is down.
    let t2 = dir.path().join("state/domains/t2.redb");
    assert!(t2.exists());
    std::fs::write(&t2, vec![0x5a; 8192]).unwrap();
    let child = start(dir.path(), &config, None);
    let ready = child.until("READY=1");
    assert!(
        ready.contains("STATUS=2 domains: 1 active, 0 standby, 0 waiting, 1 failed"),
        "{ready}"
    );
    child.signal("TERM");
    let (code, log) = wait_exit(child);
    assert_eq!(code, 0, "{log}");
    assert!(
        log.contains("domain not served; the others keep serving"),
        "{log}"
    );
}
