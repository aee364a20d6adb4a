//! The gateway client's cache on disk: the last good copy of each package and CRL, so a
//! gateway that restarts while every node is down still has its last policy.
//!
//! One file per item, under `<dir>/<domain>/`: `policy-<h>.bin` or `crl-<h>.bin`, where `<h>`
//! is the hex SHA-256 of the package name or CRL issuer (any text is a safe file name that
//! way). A file is
//!
//! ```text
//! magic "dsgwcach" | format u8 = 1 | kind u8 (1 package, 2 CRL) | length u64 LE | postcard | SHA-256
//! ```
//!
//! with the SHA-256 over everything before it. The entry names its domain and item, and a
//! package's content is checked against its size and SHA-256 again when loaded. Files are
//! written to a temporary file in the same directory, fsynced, renamed over the old one and
//! the directory fsynced, so a crash leaves the old copy or the new one, never a mix. A file
//! that fails any check is ignored with a warning (and left for inspection); never a panic.
//!
//! ```
//! use domsync_client::gateway::Cache;
//! use domsync_proto::model::DomainId;
//!
//! let dir = tempfile::tempdir()?;
//! let cache = Cache::open(dir.path())?;
//! let domain: DomainId = "tenant-1".parse()?;
//! assert!(cache.load_policy(&domain, "fw-rules").is_none());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use domsync_proto::gateway::Served;
use domsync_proto::model::{Crl, DomainId, PolicyInfo, MAX_CRL_BYTES, MAX_POLICY_BYTES};

const MAGIC: &[u8; 8] = b"dsgwcach";
const FORMAT: u8 = 1;
const KIND_POLICY: u8 = 1;
const KIND_CRL: u8 = 2;
const HEADER: usize = 8 + 1 + 1 + 8;
const TRAILER: usize = 32;
/// Room for an entry's envelope (names, info, served) beyond its content.
const ENVELOPE: usize = 64 * 1024;

/// A cache file could not be written.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// A file or directory operation failed.
    #[error("gateway cache {path}: {source}; check that the directory exists and is writable")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// The entry could not be encoded.
    #[error("gateway cache: cannot encode the entry: {0}")]
    Encode(String),
}

/// The last good copy of a package, as cached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedPolicy {
    /// The package.
    pub info: PolicyInfo,
    /// Who served it.
    pub served: Served,
    /// Its content (`info.size` bytes, SHA-256 `info.sha256`).
    #[serde(with = "serde_bytes")]
    pub content: Vec<u8>,
}

/// The last good copy of a CRL, as cached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CachedCrl {
    /// The CRL.
    pub crl: Crl,
    /// Who served it.
    pub served: Served,
}

#[derive(Serialize, Deserialize)]
struct Entry<T> {
    domain: DomainId,
    name: String,
    item: T,
}

/// A cache directory; see the module documentation.
#[derive(Debug, Clone)]
pub struct Cache {
    dir: PathBuf,
}

impl Cache {
    /// Uses (and creates if needed) `dir`.
    ///
    /// # Errors
    /// [`CacheError::Io`] when the directory cannot be created.
    pub fn open(dir: &Path) -> Result<Cache, CacheError> {
        create_dir_all(dir).map_err(|source| CacheError::Io {
            path: dir.to_owned(),
            source,
        })?;
        Ok(Cache {
            dir: dir.to_owned(),
        })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The file of package `name` of `domain`.
    pub fn policy_path(&self, domain: &DomainId, name: &str) -> PathBuf {
        self.path(domain, "policy", name)
    }

    /// The file of the CRL of `issuer` in `domain`.
    pub fn crl_path(&self, domain: &DomainId, issuer: &str) -> PathBuf {
        self.path(domain, "crl", issuer)
    }

    fn path(&self, domain: &DomainId, kind: &str, name: &str) -> PathBuf {
        let h = Sha256::digest(name.as_bytes());
        let mut hex = String::with_capacity(64);
        for b in h {
            hex.push_str(&format!("{b:02x}"));
        }
        self.dir
            .join(domain.as_str())
            .join(format!("{kind}-{hex}.bin"))
    }

    /// The cached package, if a good copy is there. A missing file is `None`; a damaged one
    /// is `None` with a warning.
    pub fn load_policy(&self, domain: &DomainId, name: &str) -> Option<CachedPolicy> {
        let path = self.policy_path(domain, name);
        let cached: CachedPolicy = load(&path, KIND_POLICY, domain, name, MAX_POLICY_BYTES)?;
        let ok = cached.info.name == name
            && cached.content.len() as u64 == cached.info.size
            && <[u8; 32]>::from(Sha256::digest(&cached.content)) == cached.info.sha256;
        if !ok {
            tracing::warn!(path = %path.display(), package = name, "gateway cache: cached package does not match its size and SHA-256; ignored");
            return None;
        }
        Some(cached)
    }

    /// Caches a package (atomically replacing the previous copy).
    ///
    /// # Errors
    /// [`CacheError`] when it cannot be written; the previous copy is then intact.
    pub fn store_policy(&self, domain: &DomainId, cached: &CachedPolicy) -> Result<(), CacheError> {
        let path = self.policy_path(domain, &cached.info.name);
        store(&path, KIND_POLICY, domain, &cached.info.name, cached)
    }

    /// The cached CRL of `issuer`, if a good copy is there (see [`Cache::load_policy`]).
    pub fn load_crl(&self, domain: &DomainId, issuer: &str) -> Option<CachedCrl> {
        let path = self.crl_path(domain, issuer);
        let cached: CachedCrl = load(&path, KIND_CRL, domain, issuer, MAX_CRL_BYTES)?;
        if cached.crl.issuer != issuer {
            tracing::warn!(path = %path.display(), issuer, "gateway cache: cached CRL is of another issuer; ignored");
            return None;
        }
        Some(cached)
    }

    /// Caches a CRL (atomically replacing the previous copy).
    ///
    /// # Errors
    /// As [`Cache::store_policy`].
    pub fn store_crl(&self, domain: &DomainId, cached: &CachedCrl) -> Result<(), CacheError> {
        let path = self.crl_path(domain, &cached.crl.issuer);
        store(&path, KIND_CRL, domain, &cached.crl.issuer, cached)
    }

    /// Forgets a package (removed from the domain).
    ///
    /// # Errors
    /// [`CacheError::Io`] unless the file is gone afterwards.
    pub fn remove_policy(&self, domain: &DomainId, name: &str) -> Result<(), CacheError> {
        remove(&self.policy_path(domain, name))
    }

    /// Forgets a CRL (removed from the domain).
    ///
    /// # Errors
    /// [`CacheError::Io`] unless the file is gone afterwards.
    pub fn remove_crl(&self, domain: &DomainId, issuer: &str) -> Result<(), CacheError> {
        remove(&self.crl_path(domain, issuer))
    }
}

fn remove(path: &Path) -> Result<(), CacheError> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(CacheError::Io {
            path: path.to_owned(),
            source: e,
        }),
        _ => Ok(()),
    }
}

fn load<T: serde::de::DeserializeOwned>(
    path: &Path,
    kind: u8,
    domain: &DomainId,
    name: &str,
    max_item: usize,
) -> Option<T> {
    let warn = |why: &str| {
        tracing::warn!(path = %path.display(), "gateway cache: {why}; the file is ignored (it is replaced by the next good copy)");
    };
    let len = match fs::metadata(path) {
        Ok(m) => m.len(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        Err(e) => {
            warn(&format!("cannot read it: {e}"));
            return None;
        }
    };
    let max = (HEADER + max_item + ENVELOPE + TRAILER) as u64;
    if len > max {
        warn(&format!("{len} bytes, more than an entry can be ({max})"));
        return None;
    }
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            warn(&format!("cannot read it: {e}"));
            return None;
        }
    };
    if bytes.len() < HEADER + TRAILER || &bytes[..8] != MAGIC {
        warn("not a gateway cache file (bad magic or too short)");
        return None;
    }
    if bytes[8] != FORMAT || bytes[9] != kind {
        warn(&format!(
            "unknown format {} or kind {} (expected {FORMAT}, {kind})",
            bytes[8], bytes[9]
        ));
        return None;
    }
    let mut n = [0u8; 8];
    n.copy_from_slice(&bytes[10..HEADER]);
    let payload_len = u64::from_le_bytes(n);
    if payload_len != (bytes.len() - HEADER - TRAILER) as u64 {
        warn("length does not match the file (truncated or extended)");
        return None;
    }
    let (body, sum) = bytes.split_at(bytes.len() - TRAILER);
    if Sha256::digest(body).as_slice() != sum {
        warn("checksum mismatch (damaged)");
        return None;
    }
    let entry: Entry<T> = match postcard::from_bytes(&body[HEADER..]) {
        Ok(e) => e,
        Err(e) => {
            warn(&format!("cannot decode it: {e}"));
            return None;
        }
    };
    if &entry.domain != domain || entry.name != name {
        warn("it belongs to another domain or item");
        return None;
    }
    Some(entry.item)
}

fn store<T: Serialize>(
    path: &Path,
    kind: u8,
    domain: &DomainId,
    name: &str,
    item: &T,
) -> Result<(), CacheError> {
    #[derive(Serialize)]
    struct EntryRef<'a, T> {
        domain: &'a DomainId,
        name: &'a str,
        item: &'a T,
    }
    let payload = postcard::to_allocvec(&EntryRef { domain, name, item })
        .map_err(|e| CacheError::Encode(e.to_string()))?;
    let mut bytes = Vec::with_capacity(HEADER + payload.len() + TRAILER);
    bytes.extend_from_slice(MAGIC);
    bytes.push(FORMAT);
    bytes.push(kind);
    bytes.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    bytes.extend_from_slice(&payload);
    drop(payload);
    let sum = Sha256::digest(&bytes);
    bytes.extend_from_slice(&sum);

    let io = |path: &Path| {
        let path = path.to_owned();
        move |source| CacheError::Io { path, source }
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    create_dir_all(dir).map_err(io(dir))?;
    // Created 0600 by tempfile, whatever the umask.
    let mut tmp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .map_err(io(dir))?;
    tmp.write_all(&bytes).map_err(io(tmp.path()))?;
    tmp.as_file().sync_all().map_err(io(tmp.path()))?;
    tmp.persist(path).map_err(|e| CacheError::Io {
        path: path.to_owned(),
        source: e.error,
    })?;
    if let Ok(d) = fs::File::open(dir) {
        d.sync_all().map_err(io(dir))?;
    }
    Ok(())
}

/// Creates `dir` and its missing parents, each created one owner-only (0700) whatever the
/// umask: cached packages are a tenant's configuration.
fn create_dir_all(dir: &Path) -> std::io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use domsync_proto::model::{Epoch, Lsn, NodeId, Position, Role};

    fn served() -> Served {
        let node = NodeId::new("a").unwrap();
        let epoch = Epoch {
            term: 1,
            node: node.clone(),
        };
        Served {
            node,
            role: Role::Active,
            epoch: epoch.clone(),
            position: Position {
                epoch,
                lsn: Lsn(7),
                chain: 1,
            },
        }
    }

    fn package(content: &[u8]) -> CachedPolicy {
        let s = served();
        CachedPolicy {
            info: PolicyInfo {
                name: "fw".into(),
                version: 7,
                epoch: s.epoch.clone(),
                size: content.len() as u64,
                sha256: Sha256::digest(content).into(),
                installed: 1,
            },
            served: s,
            content: content.to_vec(),
        }
    }

    #[test]
    fn round_trip_replace_and_every_damage_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let d: DomainId = "t1".parse().unwrap();
        let p = package(b"rules v1");
        cache.store_policy(&d, &p).unwrap();
        assert_eq!(cache.load_policy(&d, "fw"), Some(p));
        let p2 = package(b"rules v2, longer");
        cache.store_policy(&d, &p2).unwrap();
        assert_eq!(cache.load_policy(&d, "fw"), Some(p2));
        assert!(cache.load_policy(&"t2".parse().unwrap(), "fw").is_none());

        let path = cache.policy_path(&d, "fw");
        let good = fs::read(&path).unwrap();
        for at in [0, 9, 12, HEADER + 3, good.len() / 2, good.len() - 1] {
            let mut bad = good.clone();
            bad[at] ^= 0x40;
            fs::write(&path, &bad).unwrap();
            assert!(cache.load_policy(&d, "fw").is_none(), "flip at {at}");
        }
        for cut in [0, 5, HEADER, good.len() - 1] {
            fs::write(&path, &good[..cut]).unwrap();
            assert!(cache.load_policy(&d, "fw").is_none(), "cut at {cut}");
        }
        // A well-formed file of another name is not believed.
        fs::write(&path, &good).unwrap();
        fs::copy(&path, cache.policy_path(&d, "other")).unwrap();
        assert!(cache.load_policy(&d, "other").is_none());
        cache.remove_policy(&d, "fw").unwrap();
        cache.remove_policy(&d, "fw").unwrap();
        assert!(cache.load_policy(&d, "fw").is_none());
    }

    #[test]
    fn content_not_matching_its_info_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let cache = Cache::open(dir.path()).unwrap();
        let d: DomainId = "t1".parse().unwrap();
        let mut p = package(b"rules");
        p.content = b"RULES".to_vec();
        cache.store_policy(&d, &p).unwrap();
        assert!(cache.load_policy(&d, "fw").is_none());
    }
}
