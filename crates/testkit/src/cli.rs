//! Runs of the `domsync` command: its exit code and output ([`Out`]), commands against a
//! daemon's admin socket, and `status --json` read as a [`serde_json::Value`].

use std::borrow::BorrowMut;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::poll::{poll, GUARD};
use crate::process::binary;

/// What a CLI run left: exit code (-1 for a signal), stdout, stderr.
#[derive(Debug, Clone)]
pub struct Out {
    /// The exit code; -1 when a signal ended the process.
    pub code: i32,
    /// Standard output (lossy UTF-8).
    pub stdout: String,
    /// Standard error (lossy UTF-8).
    pub stderr: String,
}

impl std::fmt::Display for Out {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\nstdout: {}\nstderr: {}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `cmd` to its end.
pub fn run(mut cmd: impl BorrowMut<Command>) -> Out {
    let out = cmd.borrow_mut().output().unwrap();
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `domsync ARGS` with no daemon or state directory named by the environment.
pub fn domsync_cmd<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Command {
    let mut cmd = Command::new(binary("domsync"));
    cmd.args(args)
        .env_remove("DOMSYNC_SOCKET")
        .env_remove("DOMSYNC_REMOTE")
        .env_remove("DOMSYNC_DATA")
        .env_remove("DOMSYNC_APP_SOCKET")
        .env_remove("DOMSYNC_APP_ID");
    cmd
}

/// `domsync --socket SOCKET ARGS`, not run yet.
pub fn socket_cmd(socket: &Path, args: &[&str]) -> Command {
    let mut cmd = domsync_cmd(&["--socket"]);
    cmd.arg(socket).args(args);
    cmd
}

/// `domsync --socket SOCKET ARGS`.
pub fn domsync(socket: &Path, args: &[&str]) -> Out {
    run(socket_cmd(socket, args))
}

/// Like [`domsync`], asserting exit 0; returns stdout.
pub fn ok(socket: &Path, args: &[&str]) -> String {
    let out = domsync(socket, args);
    assert_eq!(
        out.code,
        0,
        "domsync {args:?} on {}: {out}",
        socket.display()
    );
    out.stdout
}

/// Parses a whole JSON document (e.g. the output of `domsync ... --json`), panicking with the
/// text when it is not one.
pub fn parse_json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not a JSON document ({e}): {text}"))
}

/// `domsync --socket SOCKET status --json`.
pub fn status_json(socket: &Path) -> Value {
    parse_json(&ok(socket, &["status", "--json"]))
}

/// Waits until `check` holds for the JSON status of `socket`; that status.
pub fn wait_status(socket: &Path, what: &str, check: impl Fn(&Value) -> bool) -> Value {
    poll(GUARD, Duration::from_millis(50), || {
        let s = status_json(socket);
        if check(&s) {
            Ok(s)
        } else {
            Err(format!("{what}: {s}"))
        }
    })
}

/// One domain as a node's `status --json` reports it (the element of `domains` whose
/// `domain` is `domain`).
///
/// # Panics
/// When the status has no `domains` array.
pub fn report<'a>(status: &'a Value, domain: &str) -> Option<&'a Value> {
    status["domains"]
        .as_array()
        .unwrap_or_else(|| panic!("no domains array in {status}"))
        .iter()
        .find(|d| d["domain"] == domain)
}

/// Like [`report`], panicking when the domain is not listed.
pub fn domain_of<'a>(status: &'a Value, domain: &str) -> &'a Value {
    report(status, domain).unwrap_or_else(|| panic!("{domain} not in {status}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_finds_a_domain_by_name() {
        let s = parse_json(
            r#"{"node":"a","domains":[{"domain":"t1","lsn":4},{"domain":"t2","role":null}]}"#,
        );
        assert_eq!(domain_of(&s, "t1")["lsn"].as_f64(), Some(4.0));
        assert!(domain_of(&s, "t2")["role"].is_null());
        assert!(report(&s, "t3").is_none());
    }

    #[test]
    #[should_panic(expected = "not a JSON document")]
    fn trailing_bytes_are_refused() {
        parse_json("{} x");
    }
}
