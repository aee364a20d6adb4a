//! Owner-only files and directories, whatever the process umask: the store is a library
//! embedded by others, so it never changes the umask; it gives every directory it creates mode
//! 0700 and every file 0600 when creating them, and tightens what it finds wider.

use std::fs::{self, DirBuilder, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

/// Mode of every directory the store creates.
pub(crate) const DIR_MODE: u32 = 0o700;
/// Mode of every file the store creates.
pub(crate) const FILE_MODE: u32 = 0o600;
/// Permission bits of group and others.
const GROUP_OTHER: u32 = 0o077;

/// Creates `dir` and its missing parents, each created one 0700 (existing ones are left as
/// they are).
pub(crate) fn create_dir_all(dir: &Path) -> io::Result<()> {
    DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir)
}

/// Creates `path` as an empty 0600 file when missing, and makes an existing one 0600: what a
/// database file is made of before redb writes anything into it.
pub(crate) fn precreate_file(path: &Path) -> io::Result<()> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .open(path)?;
    if file.metadata()?.permissions().mode() & GROUP_OTHER != 0 {
        file.set_permissions(Permissions::from_mode(FILE_MODE))?;
    }
    Ok(())
}

/// Removes group and other access from `path` (a directory becomes 0700, a file 0600).
/// Returns the mode it had when it had to be changed.
pub(crate) fn tighten(path: &Path) -> io::Result<Option<u32>> {
    let meta = fs::symlink_metadata(path)?;
    let mode = meta.permissions().mode() & 0o7777;
    if mode & GROUP_OTHER == 0 || meta.file_type().is_symlink() {
        return Ok(None);
    }
    let want = if meta.is_dir() { DIR_MODE } else { FILE_MODE };
    fs::set_permissions(path, Permissions::from_mode(want))?;
    Ok(Some(mode))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o7777
    }

    #[test]
    fn created_files_and_directories_are_owner_only_and_wider_ones_are_tightened() {
        let root = tempfile::tempdir().unwrap();
        // Whatever this process's umask, what is created here is owner-only.
        let dir = root.path().join("state/domains");
        create_dir_all(&dir).unwrap();
        assert_eq!(mode(&root.path().join("state")), 0o700);
        assert_eq!(mode(&dir), 0o700);
        let file = dir.join("t1.redb");
        precreate_file(&file).unwrap();
        assert_eq!(mode(&file), 0o600);
        // An existing file keeps its content and loses group and other access.
        fs::write(&file, b"kept").unwrap();
        fs::set_permissions(&file, Permissions::from_mode(0o644)).unwrap();
        precreate_file(&file).unwrap();
        assert_eq!(
            (mode(&file), fs::read(&file).unwrap()),
            (0o600, b"kept".to_vec())
        );
        // Tightening says what it changed, and leaves owner-only entries alone.
        fs::set_permissions(&dir, Permissions::from_mode(0o755)).unwrap();
        assert_eq!(tighten(&dir).unwrap(), Some(0o755));
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(tighten(&dir).unwrap(), None);
        fs::set_permissions(&file, Permissions::from_mode(0o640)).unwrap();
        assert_eq!(tighten(&file).unwrap(), Some(0o640));
        assert_eq!(mode(&file), 0o600);
    }

    #[test]
    fn a_store_opened_on_a_wide_state_directory_tightens_it_and_creates_owner_only_databases() {
        let root = tempfile::tempdir().unwrap();
        let state = root.path().join("state");
        fs::create_dir(&state).unwrap();
        fs::set_permissions(&state, Permissions::from_mode(0o755)).unwrap();
        let node = domsync_proto::model::NodeId::new("a").unwrap();
        let store = crate::Store::open(&state, crate::StoreOptions::new(node)).unwrap();
        let domain = store.create_domain(&"t1".parse().unwrap()).unwrap();
        domain.put("k", "v").unwrap();
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&state.join("domains")), 0o700);
        assert_eq!(mode(domain.path()), 0o600);
    }
}
