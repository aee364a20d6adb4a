//! What `domsyncd --check` checks beyond the file itself: everything the start checks short
//! of binding. The TLS files exist, are regular files the service user can read, and load
//! as one set exactly as at the start (PEM, identity `domsync://node/<node.id>`, chain to the
//! CA, key matching the certificate, CRL); the state directory and the admin socket's
//! directory are directories the service user can write, or can be created; the domains
//! added at runtime still fit.

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use crate::{Config, ConfigError, DaemonError, Problem};
use domsync_net::TlsError;

/// The user the packaged unit runs the service as; when `--check` runs as root and this user
/// exists, files are checked against it rather than root (who can read anything). A unit
/// running as another user names it in `DOMSYNC_SERVICE_USER`.
pub const SERVICE_USER: &str = "domsync";

/// Who the service runs as, for permission checks.
enum Runner {
    /// The current user: the OS answers (`access(2)`).
    Current,
    /// Root checking for the service user: owner, group and mode decide.
    User { name: String, uid: u32, gid: u32 },
}

impl Runner {
    fn find() -> Runner {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Runner::Current;
        }
        let user = std::env::var("DOMSYNC_SERVICE_USER")
            .ok()
            .filter(|u| !u.is_empty())
            .unwrap_or_else(|| SERVICE_USER.to_owned());
        let Ok(name) = CString::new(user.clone()) else {
            return Runner::Current;
        };
        // SAFETY: getpwnam reads a NUL-terminated name; the result is copied at once (this
        // runs before any thread that could call it too).
        let pw = unsafe { libc::getpwnam(name.as_ptr()) };
        if pw.is_null() {
            return Runner::Current;
        }
        // SAFETY: non-null result of getpwnam.
        let (uid, gid) = unsafe { ((*pw).pw_uid, (*pw).pw_gid) };
        Runner::User {
            name: user,
            uid,
            gid,
        }
    }

    fn who(&self) -> String {
        match self {
            Runner::Current => "the current user".to_owned(),
            Runner::User { name, .. } => format!("the service user {name}"),
        }
    }

    /// Whether it may `bits` (`R_OK`/`W_OK`, with `X_OK` for directories) `path`.
    fn may(&self, path: &Path, bits: libc::c_int) -> bool {
        match self {
            Runner::Current => {
                let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
                    return false;
                };
                // SAFETY: a NUL-terminated path.
                unsafe { libc::access(c.as_ptr(), bits) == 0 }
            }
            Runner::User { uid, gid, .. } => {
                let Ok(m) = std::fs::metadata(path) else {
                    return false;
                };
                let mode = m.mode();
                let shift = if m.uid() == *uid {
                    6
                } else if m.gid() == *gid {
                    3
                } else {
                    0
                };
                let want = ((bits & libc::R_OK != 0) as u32) << 2
                    | ((bits & libc::W_OK != 0) as u32) << 1
                    | (bits & libc::X_OK != 0) as u32;
                (mode >> shift) & want == want
            }
        }
    }
}

impl Config {
    /// Checks everything the start checks short of binding (see the module): every problem
    /// listed, each under the key it concerns (`path`, the configuration file, names it).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] listing every problem.
    pub fn check_files(&self, path: &Path) -> Result<(), ConfigError> {
        let runner = Runner::find();
        let mut problems: Vec<Problem> = Vec::new();
        let problem = |problems: &mut Vec<Problem>, key: &str, message: String| {
            problems.push(Problem {
                key: key.to_owned(),
                at: None,
                message,
            });
        };
        let mut files_ok = true;
        let tls = &self.tls;
        let files = [
            ("tls.ca", Some(&tls.ca)),
            ("tls.cert", Some(&tls.cert)),
            ("tls.key", Some(&tls.key)),
            ("tls.crl", tls.crl.as_ref()),
        ];
        for (key, file) in files {
            let Some(file) = file else { continue };
            let what = match std::fs::metadata(file) {
                Err(e) => Some(format!("{} cannot be used: {e}", file.display())),
                Ok(m) if m.is_dir() => Some(format!(
                    "{} is a directory; point {key} at the file",
                    file.display()
                )),
                Ok(_) if !runner.may(file, libc::R_OK) => Some(format!(
                    "{} cannot be read by {}; give it read access (e.g. group domsync, mode 0640)",
                    file.display(),
                    runner.who()
                )),
                Ok(_) => None,
            };
            if let Some(what) = what {
                files_ok = false;
                problem(&mut problems, key, what);
            }
        }
        if files_ok {
            if let Err(e) = crate::run::load_credentials(self) {
                problem(&mut problems, tls_key(self, &e), e.to_string());
            }
        }
        let socket_dir = self
            .node
            .admin_socket
            .parent()
            .map_or_else(|| PathBuf::from("."), Path::to_owned);
        for (key, dir) in [
            ("node.state_dir", &self.node.state_dir),
            ("node.admin_socket", &socket_dir),
        ] {
            if let Some(what) = writable_dir(&runner, dir) {
                problem(&mut problems, key, what);
            }
        }
        if problems.is_empty() {
            if let Err(e) = self.load_added_domains() {
                problem(
                    &mut problems,
                    "node.state_dir",
                    e.to_string().replace('\n', " "),
                );
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            })
        }
    }
}

/// The key a TLS loading error concerns.
fn tls_key(config: &Config, e: &DaemonError) -> &'static str {
    let tls = &config.tls;
    match e {
        DaemonError::Tls(TlsError::Crl { .. }) => "tls.crl",
        DaemonError::Tls(TlsError::Key { .. }) => "tls.key",
        DaemonError::Tls(TlsError::Read { path, .. } | TlsError::Pem { path, .. }) => {
            if *path == tls.ca {
                "tls.ca"
            } else if *path == tls.key {
                "tls.key"
            } else if Some(path) == tls.crl.as_ref() {
                "tls.crl"
            } else {
                "tls.cert"
            }
        }
        _ => "tls.cert",
    }
}

/// Why `dir` is not a directory the runner can write (or create), if it is not.
fn writable_dir(runner: &Runner, dir: &Path) -> Option<String> {
    match std::fs::metadata(dir) {
        Ok(m) if !m.is_dir() => Some(format!("{} is not a directory", dir.display())),
        Ok(_) if !runner.may(dir, libc::W_OK | libc::X_OK) => Some(format!(
            "{} cannot be written by {}; give it write access",
            dir.display(),
            runner.who()
        )),
        Ok(_) => None,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // Created at the start: the nearest existing ancestor must allow it.
            let mut up = dir.parent();
            while let Some(p) = up {
                match std::fs::metadata(p) {
                    Ok(m) if !m.is_dir() => {
                        return Some(format!(
                            "{} cannot be created: {} is not a directory",
                            dir.display(),
                            p.display()
                        ))
                    }
                    Ok(_) if runner.may(p, libc::W_OK | libc::X_OK) => return None,
                    Ok(_) => {
                        return Some(format!(
                            "{} does not exist and {} cannot create it in {}",
                            dir.display(),
                            runner.who(),
                            p.display()
                        ))
                    }
                    Err(_) => up = p.parent(),
                }
            }
            None
        }
        Err(e) => Some(format!("{} cannot be used: {e}", dir.display())),
    }
}
