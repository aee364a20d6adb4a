//! libdomsync from C: the error paths (no daemon), every other call (`crates/capi/tests/c/whole_api.c`),
//! and the examples of `examples/c` built with
//! `cc` through pkg-config against the committed header and run against a real `domsyncd`,
//! under valgrind (`--leak-check=full`, definite leaks and memory errors fail).
//!
//! The library comes from this workspace's target directory (the root package depends on
//! `domsync-capi`, so `cargo test` builds `libdomsync.so` and `.a` beside the test binaries);
//! `domsync.pc` is written by `crates/capi/domsync-pc` for it. `cc`, `pkg-config` and
//! `valgrind` are installed with apt-get when missing and the test runs as root on Debian.

use std::io::{BufRead as _, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use domsync_testkit::poll::GUARD;
use domsync_testkit::process::Cluster;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Makes sure `command` runs (`command --version`); when it does not and the test runs as root
/// with apt-get, installs `package` (once per process and package); otherwise panics saying
/// what to install.
fn ensure_command(command: &str, package: &str) {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _held = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let present = || {
        Command::new(command)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    if present() {
        return;
    }
    let root = unsafe { libc::geteuid() } == 0;
    if root && Path::new("/usr/bin/apt-get").exists() {
        let apt = |args: &[&str]| {
            Command::new("apt-get")
                .args(args)
                .env("DEBIAN_FRONTEND", "noninteractive")
                .status()
                .is_ok_and(|s| s.success())
        };
        let install = ["install", "-y", "-q", "--no-install-recommends", package];
        if !apt(&install) {
            apt(&["update", "-q"]);
            apt(&install);
        }
    }
    assert!(
        present(),
        "the {command} command is missing and could not be installed: install the Debian package {package}"
    );
}

/// The directory holding `libdomsync.so` and `libdomsync.a`: the test binary's target
/// directory (`target/<profile>`, above `deps/`), or `deps/` itself; the newer when both hold
/// it.
fn lib_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let deps = exe.parent().unwrap().to_path_buf();
    let mut candidates = vec![deps.clone()];
    if deps.ends_with("deps") {
        candidates.insert(0, deps.parent().unwrap().to_path_buf());
    }
    let modified = |dir: &Path| {
        let so = std::fs::metadata(dir.join("libdomsync.so")).and_then(|m| m.modified());
        let a = std::fs::metadata(dir.join("libdomsync.a")).and_then(|m| m.modified());
        match (so, a) {
            (Ok(so), Ok(_)) => Some(so),
            _ => None,
        }
    };
    candidates
        .iter()
        .filter_map(|d| modified(d).map(|t| (t, d.clone())))
        .max_by_key(|(t, _)| *t)
        .map(|(_, d)| d)
        .unwrap_or_else(|| {
            panic!(
                "libdomsync.so and libdomsync.a not found in {candidates:?}: run `cargo build -p domsync-capi` (the root package's tests build it)"
            )
        })
}

/// A scratch directory with `domsync.pc` for the library just built (written by
/// `crates/capi/domsync-pc`), and the `pkg-config` flags read from it.
struct Build {
    dir: tempfile::TempDir,
    lib_dir: PathBuf,
}

impl Build {
    fn new() -> Build {
        ensure_command("cc", "gcc");
        ensure_command("pkg-config", "pkg-config");
        let dir = tempfile::tempdir().unwrap();
        let lib_dir = lib_dir();
        let include = Path::new(ROOT).join("crates/capi/include");
        let pc = Command::new(Path::new(ROOT).join("crates/capi/domsync-pc"))
            .arg(dir.path())
            .arg(&lib_dir)
            .arg(&include)
            .output()
            .unwrap();
        assert!(pc.status.success(), "domsync-pc: {}", text(&pc.stderr));
        std::fs::write(dir.path().join("domsync.pc"), &pc.stdout).unwrap();
        Build { dir, lib_dir }
    }

    /// `pkg-config ARGS domsync` with this directory's `domsync.pc`.
    fn pkg_config(&self, args: &[&str]) -> Vec<String> {
        let out = Command::new("pkg-config")
            .args(args)
            .arg("domsync")
            .env("PKG_CONFIG_PATH", self.dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "pkg-config: {}", text(&out.stderr));
        text(&out.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }

    /// Compiles `source` (warnings are errors) and links it with libdomsync: the shared
    /// library, or the static one with `static_lib`. Returns the program.
    fn compile(&self, source: &Path, static_lib: bool) -> PathBuf {
        let name = source.file_stem().unwrap().to_str().unwrap();
        let program = self.dir.path().join(if static_lib {
            format!("{name}-static")
        } else {
            name.to_owned()
        });
        let mut flags = self.pkg_config(&["--cflags"]);
        if static_lib {
            for flag in self.pkg_config(&["--static", "--libs"]) {
                if flag == "-ldomsync" {
                    flags.extend(["-Wl,-Bstatic", "-ldomsync", "-Wl,-Bdynamic"].map(String::from));
                } else {
                    flags.push(flag);
                }
            }
        } else {
            flags.extend(self.pkg_config(&["--libs"]));
        }
        let out = Command::new("cc")
            .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-g", "-o"])
            .arg(&program)
            .arg(source)
            .args(&flags)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "cc {} {flags:?}: {}{}",
            source.display(),
            text(&out.stdout),
            text(&out.stderr)
        );
        program
    }

    /// A command running `program` with the library found, under valgrind when asked.
    fn command(&self, program: &Path, valgrind: bool) -> Command {
        let mut c = if valgrind {
            let mut c = Command::new("valgrind");
            c.args([
                "--quiet",
                "--error-exitcode=99",
                "--leak-check=full",
                "--errors-for-leak-kinds=definite",
            ])
            .arg(program);
            c
        } else {
            Command::new(program)
        };
        c.env("LD_LIBRARY_PATH", &self.lib_dir);
        c
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Waits for `child` up to the hang guard (killing it past that); its output.
fn finish(mut child: Child, what: &str) -> Output {
    let deadline = Instant::now() + GUARD;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{what} did not exit within {GUARD:?}: {}{}",
                text(&out.stdout),
                text(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn run(command: &mut Command, what: &str) -> Output {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    finish(child, what)
}

fn example(name: &str) -> PathBuf {
    Path::new(ROOT).join("examples/c").join(name)
}

#[test]
fn error_paths_from_c_shared_static_and_under_valgrind() {
    let build = Build::new();
    let source = Path::new(ROOT).join("crates/capi/tests/c/error_paths.c");
    let missing = build.dir.path().join("no-daemon/app.sock");
    let missing = missing.to_str().unwrap();

    let shared = build.compile(&source, false);
    let out = run(build.command(&shared, false).arg(missing), "error_paths");
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains(" passed, 0 failed"),
        "{}",
        text(&out.stdout)
    );

    // Linked with libdomsync.a and the private libraries of domsync.pc: runs without the .so.
    let fixed = build.compile(&source, true);
    let out = run(
        Command::new(&fixed)
            .arg(missing)
            .env_remove("LD_LIBRARY_PATH"),
        "error_paths (static)",
    );
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );

    ensure_command("valgrind", "valgrind");
    let out = run(
        build.command(&shared, true).arg(missing),
        "valgrind error_paths",
    );
    assert!(
        out.status.success(),
        "valgrind error_paths: {:?}\n{}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// Reads `child`'s stdout lines into a channel.
fn lines(child: &mut Child) -> mpsc::Receiver<String> {
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

#[test]
fn examples_edit_and_watch_a_real_daemon_under_valgrind() {
    let build = Build::new();
    ensure_command("valgrind", "valgrind");
    let editor = build.compile(&example("config_editor.c"), false);
    let watcher = build.compile(&example("watcher.c"), false);

    let cluster = Cluster::new(&["a"]);
    let _daemon = cluster.start("a", &[("fw", &["a"])]);
    // `[apps] socket` defaults to app.sock beside the admin socket.
    let socket = cluster.dir.path().join("a/run/app.sock");
    let socket = socket.to_str().unwrap();

    // The watcher waits for two changes of keys under cfg/, at most the hang guard.
    let guard_ms = GUARD.as_millis().to_string();
    let mut watching = build
        .command(&watcher, true)
        .args([socket, "fw", "cfg/", "2", &guard_ms])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let seen = lines(&mut watching);
    let first = match seen.recv_timeout(GUARD) {
        Ok(line) => line,
        Err(e) => {
            let _ = watching.kill();
            let out = watching.wait_with_output().unwrap();
            panic!("the watcher did not start ({e}): {}", text(&out.stderr))
        }
    };
    assert!(first.starts_with("watching from lsn "), "{first}");

    // Two edits of cfg/mtu (created, then changed at its version), the first under valgrind.
    let mut written = Vec::new();
    for (i, valgrind) in [(1, true), (2, false)] {
        let out = run(
            build
                .command(&editor, valgrind)
                .args([socket, "fw", "cfg/mtu"]),
            "config_editor",
        );
        assert!(
            out.status.success(),
            "config_editor: {:?}\n{}{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
        let line = text(&out.stdout);
        assert!(line.starts_with(&format!("cfg/mtu={i} lsn ")), "{line}");
        written.push(line.trim().to_owned());
    }

    let out = finish(watching, "watcher");
    assert!(
        out.status.success(),
        "watcher: {:?}\n{}",
        out.status,
        text(&out.stderr)
    );
    // The watcher has exited: its stdout ends, and so does the channel.
    let events: Vec<String> = seen.iter().collect();
    // "cfg/mtu=1 lsn 5" from the editor is "lsn 5 cfg/mtu=1" from the watcher.
    let expected: Vec<String> = written
        .iter()
        .map(|w| {
            let (kv, lsn) = w.split_once(" lsn ").unwrap();
            format!("lsn {lsn} {kv}")
        })
        .collect();
    assert_eq!(events, expected);

    // Editors racing on one counter: each retries on conflict until its increment lands.
    let racers: Vec<Child> = (0..4)
        .map(|_| {
            build
                .command(&editor, false)
                .args([socket, "fw", "cfg/counter"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for racer in racers {
        let out = finish(racer, "racing config_editor");
        assert!(
            out.status.success(),
            "{:?}\n{}{}",
            out.status,
            text(&out.stdout),
            text(&out.stderr)
        );
    }
    let out = run(
        build
            .command(&editor, false)
            .args([socket, "fw", "cfg/counter", "0"]),
        "config_editor",
    );
    assert!(
        text(&out.stdout).starts_with("cfg/counter=4 lsn "),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

#[test]
fn every_other_call_against_a_real_daemon_under_valgrind() {
    let build = Build::new();
    ensure_command("valgrind", "valgrind");
    domsync_testkit::pki::ensure_openssl();
    let program = build.compile(
        &Path::new(ROOT).join("crates/capi/tests/c/whole_api.c"),
        false,
    );
    let cluster = Cluster::new(&["a"]);
    let daemon = cluster.start("a", &[("fw", &["a"])]);
    let socket = cluster.dir.path().join("a/run/app.sock");
    // The fixture CA is held by the domain (through the admin socket); a CA of the test's own
    // is not, so its CRL must be refused.
    let ca = Path::new(ROOT).join("fixtures/crl/fixture-ca.pem");
    let out = domsync_testkit::cli::domsync_cmd(&[
        "--socket".as_ref(),
        daemon.socket.as_os_str(),
        "issuer".as_ref(),
        "add".as_ref(),
        "fw".as_ref(),
        ca.as_os_str(),
    ])
    .output()
    .unwrap();
    assert!(out.status.success(), "issuer add: {}", text(&out.stderr));
    let stranger = domsync_testkit::openssl::Ca::new(
        cluster.dir.path(),
        "stranger",
        "/CN=Stranger CA",
        domsync_testkit::openssl::Alg::EcP256,
    );
    let unknown = cluster.dir.path().join("stranger.crl");
    std::fs::write(&unknown, stranger.crl(None, None, false)).unwrap();
    let out = run(
        build.command(&program, true).args([
            socket.as_os_str(),
            "fw".as_ref(),
            Path::new(ROOT)
                .join("fixtures/crl/fixture-ca-1.der")
                .as_os_str(),
            "O=domsync,CN=domsync fixture CA".as_ref(),
            unknown.as_os_str(),
        ]),
        "whole_api",
    );
    assert!(
        out.status.success() && text(&out.stdout).trim() == "ok",
        "whole_api: {:?}\n{}{}",
        out.status,
        text(&out.stdout),
        text(&out.stderr)
    );
}
