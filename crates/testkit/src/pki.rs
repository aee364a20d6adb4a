//! A deployment PKI for tests: a CA and certificates written the way `domsync pki` writes
//! them, and the credentials a node, gateway or admin loads from them.

use std::path::Path;

use domsync_net::{pki, Credentials, Identity, PeerRole, TlsFiles};

/// A CA in `dir` and a certificate (30 days) for each `(role, name)`.
pub fn init_pki(dir: &Path, certs: &[(PeerRole, &str)]) {
    pki::init_ca(dir).unwrap();
    for (role, name) in certs {
        pki::issue(dir, *role, name, dir, 30).unwrap();
    }
}

/// The credentials of `name` in `role` from the PKI directory `pki_dir`.
pub fn creds(pki_dir: &Path, role: PeerRole, name: &str) -> Credentials {
    TlsFiles::in_dir(pki_dir, &Identity::new(role, name).unwrap())
        .load()
        .unwrap()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_credentials_load() {
        let dir = tempfile::tempdir().unwrap();
        init_pki(
            dir.path(),
            &[(PeerRole::Node, "a"), (PeerRole::Gateway, "g")],
        );
        creds(dir.path(), PeerRole::Node, "a");
        creds(dir.path(), PeerRole::Gateway, "g");
        assert!(dir.path().join("ca.pem").exists());
    }
}
