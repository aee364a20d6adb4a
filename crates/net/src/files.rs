//! Where deployment certificates and keys live: `ca.pem`, `ca.key`, `<role>-<id>.pem` and
//! `<role>-<id>.key` in one directory, with `ca.crl` once a certificate was revoked (written by `domsync pki`, read by [`crate::TlsFiles`]).

use std::path::{Path, PathBuf};

use crate::identity::Identity;

/// File name of the CA certificate.
pub const CA_CERT_FILE: &str = "ca.pem";
/// File name of the CA private key.
pub const CA_KEY_FILE: &str = "ca.key";
/// File name of the deployment's certificate revocation list (`domsync pki revoke`).
pub const CA_CRL_FILE: &str = "ca.crl";
/// A certificate and its key, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PkiFiles {
    /// The PEM certificate.
    pub cert: PathBuf,
    /// The PEM private key (mode 0600).
    pub key: PathBuf,
}

/// File stem of the certificate and key of `identity`: `<role>-<id>`.
pub fn file_stem(identity: &Identity) -> String {
    format!("{}-{}", identity.role, identity.id)
}

/// Where `domsync pki issue` writes the files of `identity` in `dir`.
pub fn leaf_files(dir: &Path, identity: &Identity) -> PkiFiles {
    let stem = file_stem(identity);
    PkiFiles {
        cert: dir.join(format!("{stem}.pem")),
        key: dir.join(format!("{stem}.key")),
    }
}

/// Where `domsync pki init` writes the CA in `dir`.
pub fn ca_files(dir: &Path) -> PkiFiles {
    PkiFiles {
        cert: dir.join(CA_CERT_FILE),
        key: dir.join(CA_KEY_FILE),
    }
}
