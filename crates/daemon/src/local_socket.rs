//! Binding the daemon's Unix sockets (admin, application) so that the final path never
//! exists with a wider mode than asked: bound under a temporary name beside it, given its
//! group and mode, then renamed into place. A stale socket is removed first; one that answers
//! is another process's and is left alone.

use std::os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, PermissionsExt as _};
use std::path::Path;

use tokio::net::UnixListener;

/// How a socket is made.
pub(crate) struct Spec<'a> {
    /// The configuration key naming the path, for messages (`node.admin_socket`).
    pub key: &'a str,
    /// Mode of a parent directory created here (an existing one keeps its mode).
    pub dir_mode: u32,
    /// Mode of the socket.
    pub mode: u32,
    /// Group given to the socket.
    pub gid: Option<u32>,
}

/// Why a socket could not be made.
pub(crate) enum BindError {
    /// Something else is at the path: what, and what to do.
    InTheWay(String),
    /// The OS refused a step.
    Io(std::io::Error),
    /// The group could not be given to the socket.
    Chown(std::io::Error),
}

/// Binds the socket at `path` as `spec` says.
pub(crate) fn bind(path: &Path, spec: &Spec<'_>) -> Result<UnixListener, BindError> {
    let key = spec.key;
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().ok_or_else(|| {
        BindError::InTheWay(format!("not a file name; set {key} to a socket path"))
    })?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(spec.dir_mode)
        .create(parent)
        .map_err(BindError::Io)?;
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(BindError::InTheWay(format!(
                    "another process (a running domsyncd?) serves it; stop it or pick another {key}"
                )));
            }
            std::fs::remove_file(path).map_err(BindError::Io)?;
        }
        Ok(_) => {
            return Err(BindError::InTheWay(format!(
                "a file that is not a socket is in the way; remove it or pick another {key}"
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(BindError::Io(e)),
    }
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = parent.join(tmp_name);
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(BindError::Io)?;
    if let Some(gid) = spec.gid {
        if let Err(e) = std::os::unix::fs::chown(&tmp, None, Some(gid)) {
            let _ = std::fs::remove_file(&tmp);
            return Err(BindError::Chown(e));
        }
    }
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(spec.mode))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(BindError::Io(e));
    }
    Ok(listener)
}
