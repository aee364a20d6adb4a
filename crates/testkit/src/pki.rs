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

/// The certificate (DER) of the CA that signed the fixture CRLs of `fixtures/crl/`: hold it in
/// a domain (`Domain::add_issuer`) before storing those CRLs.
pub fn fixture_crl_issuer() -> Vec<u8> {
    let pem = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../fixtures/crl/fixture-ca.pem"
    ))
    .unwrap();
    use rustls::pki_types::pem::PemObject as _;
    rustls::pki_types::CertificateDer::from_pem_slice(&pem)
        .unwrap()
        .to_vec()
}

/// The fixture CRL numbered `n` (1 or 2) of `fixtures/crl/`, DER. Made once, so their
/// nextUpdate passes: store them with `allow_stale`.
pub fn fixture_crl(n: u8) -> Vec<u8> {
    std::fs::read(format!(
        "{}/../../fixtures/crl/fixture-ca-{n}.der",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

/// Makes sure the `openssl` command is there for tests that build CAs and CRLs the way an
/// operator's CA does: when it is missing and the test runs as root on Debian, installs the
/// `openssl` package with apt-get (once per process); otherwise panics saying what to
/// install.
pub fn ensure_openssl() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let present = || {
            std::process::Command::new("openssl")
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if present() {
            return;
        }
        let root = unsafe { libc::geteuid() } == 0;
        if root && Path::new("/usr/bin/apt-get").exists() {
            let apt = |args: &[&str]| {
                std::process::Command::new("apt-get")
                    .args(args)
                    .env("DEBIAN_FRONTEND", "noninteractive")
                    .status()
                    .is_ok_and(|s| s.success())
            };
            if !apt(&["install", "-y", "-q", "--no-install-recommends", "openssl"]) {
                apt(&["update", "-q"]);
                apt(&["install", "-y", "-q", "--no-install-recommends", "openssl"]);
            }
        }
        assert!(
            present(),
            "the openssl command is missing and could not be installed: install the Debian package openssl"
        );
    });
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
