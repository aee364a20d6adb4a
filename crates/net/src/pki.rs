//! A small deployment CA: create it, and issue node, gateway and admin certificates from it.
//!
//! Files (all PEM):
//!
//! | file | content | mode |
//! | --- | --- | --- |
//! | `ca.pem` | the CA certificate (give it to every node, gateway and admin) | 0644 |
//! | `ca.key` | the CA private key (keep it offline) | 0600 |
//! | `<role>-<id>.pem` | the leaf certificate alone (no chain) | 0644 |
//! | `<role>-<id>.key` | the leaf private key (PKCS#8) | 0600 |
//! | `ca.crl` | the revocation list, signed by the CA ([`revoke`]; `[tls] crl`) | 0644 |
//!
//! Keys are ECDSA P-256. Every leaf carries exactly one URI SAN, `domsync://<role>/<id>`, key
//! usage digitalSignature and extended key usages serverAuth and clientAuth (nodes are servers
//! and clients; the same profile for every role keeps the CA simple). No DNS SAN is needed:
//! peers are checked by their URI SAN (see [`crate::authorize`]). Deployments may instead bring
//! their own CA; it only has to put one such URI SAN in each leaf.
//!
//! Nothing here ever overwrites a certificate or key: an existing target is an error. `ca.crl`
//! is rewritten whole (temporary file, then rename) by each revocation, its CRL number one
//! higher each time.

use std::fs::{self, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    PublicKeyData as _, RevokedCertParams, SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::CertificateDer;
use time::{Duration, OffsetDateTime};

use crate::files::{ca_files, leaf_files, PkiFiles, CA_CRL_FILE};
use crate::identity::{Identity, IdentityError, PeerRole};
use crate::revocation::hex_serial;

/// Validity of a new CA, in days (about 10 years).
pub const CA_DAYS: u32 = 3650;
/// Default validity of a leaf certificate, in days (about 2 years).
pub const DEFAULT_LEAF_DAYS: u32 = 730;
/// Longest accepted validity, in days (about 100 years).
pub const MAX_DAYS: u32 = 36_500;

/// How long a CRL written by [`revoke`] says it is current (its next update), in days.
/// domsync keeps using a CRL past its next update; this only informs other readers.
pub const CRL_DAYS: u32 = 365;

/// Certificates start being valid this long before they are issued, so that a peer whose clock
/// is a little behind still accepts them.
const BACKDATE: Duration = Duration::hours(1);

/// A PKI operation failed. Each message is one line that says what to do.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file to be written already exists.
    #[error("{} already exists: refusing to overwrite it; remove it first or use another directory", path.display())]
    Exists {
        /// The existing file.
        path: PathBuf,
    },
    /// Reading or writing a file failed.
    #[error("cannot {action} {}: {source}", path.display())]
    Io {
        /// What was being done (`read`, `create`, `write`...).
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// The system error.
        source: io::Error,
    },
    /// The CA certificate or key on disk cannot be used.
    #[error("{}: {reason}; run `domsync pki init` or point --dir at the directory holding ca.pem and ca.key", path.display())]
    BadCa {
        /// The CA certificate or key file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The role or id of the new certificate was refused.
    #[error("{0}")]
    Identity(#[from] IdentityError),
    /// The validity period was refused.
    #[error("invalid validity of {days} days: use 1 to {MAX_DAYS}")]
    BadDays {
        /// The refused number of days.
        days: u32,
    },
    /// The system gave no random bytes.
    #[error("cannot get random bytes from the system: {reason}")]
    Random {
        /// What the system said.
        reason: String,
    },
    /// The certificate to revoke cannot be revoked by this CA.
    #[error("{}: {reason}", path.display())]
    BadLeaf {
        /// The certificate file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A serial given on the command line is not one.
    #[error("{serial:?} is not a serial: give hex bytes, e.g. 3f:a2:09 or 3fa209")]
    BadSerial {
        /// What was given.
        serial: String,
    },
    /// The existing CRL cannot be read back.
    #[error("{}: {reason}; move it aside and revoke again every certificate it listed", path.display())]
    BadCrl {
        /// The CRL file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Key generation or signing failed.
    #[error("cannot generate the certificate: {0}")]
    Generate(#[from] rcgen::Error),
}

/// Creates a new CA in `out_dir` (created if missing): `ca.pem` and `ca.key` (0600), valid for
/// [`CA_DAYS`].
///
/// # Errors
/// [`PkiError::Exists`] if either file exists (nothing is written then), [`PkiError::Io`] when
/// writing fails, [`PkiError::Generate`] when key generation fails.
pub fn init_ca(out_dir: &Path) -> Result<PkiFiles, PkiError> {
    let files = ca_files(out_dir);
    refuse_existing(&files)?;

    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "domsync");
    // A random tag keeps CAs of different deployments apart by name, so that a certificate
    // from another deployment is reported as "unknown issuer" rather than "bad signature".
    let mut tag = [0u8; 4];
    getrandom::fill(&mut tag).map_err(|e| PkiError::Random {
        reason: e.to_string(),
    })?;
    name.push(
        DnType::CommonName,
        format!("domsync deployment CA {:08x}", u32::from_be_bytes(tag)),
    );
    params.distinguished_name = name;
    // No intermediates are issued from this CA: it signs leaves only.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    set_validity(&mut params, CA_DAYS)?;
    let cert = params.self_signed(&key)?;

    write_pair(out_dir, &files, &cert.pem(), &key.serialize_pem())?;
    Ok(files)
}

/// Issues a certificate for `domsync://<role>/<id>`, signed by the CA in `ca_dir`, and writes
/// `<role>-<id>.pem` and `<role>-<id>.key` (0600) into `out_dir` (created if missing). It is
/// valid for `days` days, from one hour before now.
///
/// # Errors
/// [`PkiError::Identity`] for a bad id, [`PkiError::BadDays`], [`PkiError::BadCa`] when the CA
/// files are missing, malformed, not a CA or do not match, [`PkiError::Exists`] if either
/// output file exists (nothing is written then), [`PkiError::Io`] or [`PkiError::Generate`].
pub fn issue(
    ca_dir: &Path,
    role: PeerRole,
    id: &str,
    out_dir: &Path,
    days: u32,
) -> Result<PkiFiles, PkiError> {
    let identity = Identity::new(role, id)?;
    let files = leaf_files(out_dir, &identity);
    refuse_existing(&files)?;
    let mut params = CertificateParams::default();
    set_validity(&mut params, days)?;
    let issuer = load_ca(ca_dir)?;

    let key = KeyPair::generate()?;
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "domsync");
    name.push(
        DnType::CommonName,
        format!("{} {}", identity.role, identity.id),
    );
    params.distinguished_name = name;
    params.subject_alt_names = vec![SanType::URI(identity.uri().try_into()?)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &issuer)?;

    write_pair(out_dir, &files, &cert.pem(), &key.serialize_pem())?;
    Ok(files)
}

/// What a revocation did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Revocation {
    /// The serial revoked (hex bytes joined by colons, as the daemon's log prints it).
    pub serial: String,
    /// The identity of the revoked certificate, when revoked by its file.
    pub identity: Option<String>,
    /// The CRL written (`<ca_dir>/ca.crl`).
    pub crl: PathBuf,
    /// Its CRL number.
    pub number: u64,
    /// Serials it lists.
    pub revoked: usize,
    /// False when the serial was listed already (the CRL is rewritten anyway, number raised).
    pub newly: bool,
}

/// Revokes the certificate in the file `cert` (issued by the CA in `ca_dir`): adds its serial
/// to `<ca_dir>/ca.crl`, which is written anew (created when missing), signed by the CA key,
/// with a CRL number one above the previous one. Nodes enforce it once it is their
/// `[tls] crl` and they reloaded (SIGHUP).
///
/// # Errors
/// [`PkiError::BadCa`], [`PkiError::BadLeaf`] for a file that is not a certificate of this CA,
/// [`PkiError::BadCrl`] when the existing CRL cannot be read, [`PkiError::Io`] or
/// [`PkiError::Generate`].
pub fn revoke(ca_dir: &Path, cert: &Path) -> Result<Revocation, PkiError> {
    let bad = |reason: String| PkiError::BadLeaf {
        path: cert.to_owned(),
        reason,
    };
    let pem = fs::read_to_string(cert).map_err(|e| bad(format!("cannot read it: {e}")))?;
    let der = first_cert(&pem).ok_or_else(|| bad("no PEM CERTIFICATE block".into()))?;
    let (_, x509) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| bad(format!("not an X.509 certificate: {e}")))?;
    let ca_pem = read_ca_file(&ca_files(ca_dir).cert)?;
    let ca_der = first_cert(&ca_pem).ok_or_else(|| PkiError::BadCa {
        path: ca_files(ca_dir).cert,
        reason: "no PEM CERTIFICATE block".into(),
    })?;
    let (_, ca) = x509_parser::parse_x509_certificate(&ca_der).map_err(|e| PkiError::BadCa {
        path: ca_files(ca_dir).cert,
        reason: format!("not an X.509 certificate: {e}"),
    })?;
    if x509.issuer() != ca.subject() || x509.verify_signature(Some(ca.public_key())).is_err() {
        return Err(bad(format!(
            "not issued by the CA in {}; revoke it with its own CA",
            ca_dir.display()
        )));
    }
    let identity = Identity::from_cert_der(&der).ok().map(|i| i.uri());
    let mut done = revoke_raw(ca_dir, x509.tbs_certificate.raw_serial())?;
    done.identity = identity;
    Ok(done)
}

/// Revokes the certificate of serial `serial` (hex bytes, colons allowed) issued by the CA in
/// `ca_dir`, as [`revoke`] does: for a certificate whose file is gone.
///
/// # Errors
/// [`PkiError::BadSerial`], and as [`revoke`].
pub fn revoke_serial(ca_dir: &Path, serial: &str) -> Result<Revocation, PkiError> {
    let digits: String = serial.chars().filter(|c| *c != ':').collect();
    let bad = || PkiError::BadSerial {
        serial: serial.to_owned(),
    };
    if digits.is_empty() || digits.len() % 2 != 0 || digits.len() > 42 {
        return Err(bad());
    }
    let bytes = (0..digits.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(digits.get(i..i + 2).unwrap_or("x"), 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| bad())?;
    revoke_raw(ca_dir, &bytes)
}

/// Adds the serial `raw` (DER integer content) to the CA's CRL and writes it.
fn revoke_raw(ca_dir: &Path, raw: &[u8]) -> Result<Revocation, PkiError> {
    let issuer = load_ca(ca_dir)?;
    let path = ca_dir.join(CA_CRL_FILE);
    let now = OffsetDateTime::now_utc();
    let (mut revoked, number) = read_crl(&path)?;
    let serial = hex_serial(strip_zeros(raw));
    let newly = !revoked
        .iter()
        .any(|r| hex_serial(strip_zeros(r.serial_number.as_ref())) == serial);
    if newly {
        revoked.push(RevokedCertParams {
            serial_number: SerialNumber::from_slice(strip_zeros(raw)),
            revocation_time: now,
            reason_code: None,
            invalidity_date: None,
        });
    }
    let number = number.saturating_add(1);
    let params = CertificateRevocationListParams {
        this_update: now - BACKDATE,
        next_update: now + Duration::days(i64::from(CRL_DAYS)),
        crl_number: SerialNumber::from(number),
        issuing_distribution_point: None,
        revoked_certs: revoked,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let count = params.revoked_certs.len();
    let crl = params.signed_by(&issuer)?;
    replace_file(&path, crl.pem()?.as_bytes(), 0o644)?;
    Ok(Revocation {
        serial: hex_serial(raw),
        identity: None,
        crl: path,
        number,
        revoked: count,
        newly,
    })
}

fn strip_zeros(mut raw: &[u8]) -> &[u8] {
    while raw.len() > 1 && raw[0] == 0 {
        raw = &raw[1..];
    }
    raw
}

/// The revoked entries and CRL number of an existing CRL; none and 0 when there is none.
fn read_crl(path: &Path) -> Result<(Vec<RevokedCertParams>, u64), PkiError> {
    let bad = |reason: String| PkiError::BadCrl {
        path: path.to_owned(),
        reason,
    };
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(bad(format!("cannot read it: {e}"))),
    };
    let der = if bytes.trim_ascii_start().starts_with(b"-----BEGIN") {
        rustls::pki_types::CertificateRevocationListDer::pem_slice_iter(&bytes)
            .next()
            .ok_or_else(|| bad("no PEM X509 CRL block".into()))?
            .map_err(|e| bad(format!("bad PEM: {e}")))?
            .as_ref()
            .to_vec()
    } else {
        bytes
    };
    let (_, crl) =
        x509_parser::parse_x509_crl(&der).map_err(|e| bad(format!("not an X.509 CRL: {e}")))?;
    let number = crl
        .crl_number()
        .map(|n| u64::try_from(n).unwrap_or(u64::MAX))
        .unwrap_or(0);
    let revoked = crl
        .iter_revoked_certificates()
        .map(|r| {
            let when = OffsetDateTime::from_unix_timestamp(r.revocation_date.timestamp())
                .unwrap_or(OffsetDateTime::UNIX_EPOCH);
            RevokedCertParams {
                serial_number: SerialNumber::from_slice(r.raw_serial()),
                revocation_time: when,
                reason_code: None,
                invalidity_date: None,
            }
        })
        .collect();
    Ok((revoked, number))
}

/// Writes `bytes` to `path` through a temporary file in the same directory and a rename, so
/// a reader sees the old file or the new one, never a part.
fn replace_file(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let io_error = |action, source| PkiError::Io {
        action,
        path: path.to_owned(),
        source,
    };
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name()
            .map_or_else(|| "crl".into(), |n| n.to_string_lossy())
    ));
    let _ = fs::remove_file(&tmp);
    write_new(&tmp, bytes, mode)?;
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_error("replace", e)
    })?;
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error("sync directory of", e))
}

fn set_validity(params: &mut CertificateParams, days: u32) -> Result<(), PkiError> {
    if days == 0 || days > MAX_DAYS {
        return Err(PkiError::BadDays { days });
    }
    let now = OffsetDateTime::now_utc();
    params.not_before = now - BACKDATE;
    params.not_after = now + Duration::days(i64::from(days));
    Ok(())
}

/// Reads `ca.pem` and `ca.key`, checks that the certificate is a CA and that the key is its key.
fn load_ca(ca_dir: &Path) -> Result<Issuer<'static, KeyPair>, PkiError> {
    let files = ca_files(ca_dir);
    let bad_cert = |reason: String| PkiError::BadCa {
        path: files.cert.clone(),
        reason,
    };
    let cert_pem = read_ca_file(&files.cert)?;
    let key_pem = read_ca_file(&files.key)?;

    let der = first_cert(&cert_pem).ok_or_else(|| bad_cert("no PEM CERTIFICATE block".into()))?;
    let (_, x509) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| bad_cert(format!("not an X.509 certificate: {e}")))?;
    if !x509.is_ca() {
        return Err(bad_cert(
            "this certificate is not a CA (basicConstraints CA:FALSE)".into(),
        ));
    }
    let key = KeyPair::from_pem(&key_pem).map_err(|e| PkiError::BadCa {
        path: files.key.clone(),
        reason: format!("not a usable private key: {e}"),
    })?;
    if key.subject_public_key_info() != x509.public_key().raw {
        return Err(PkiError::BadCa {
            path: files.key.clone(),
            reason: format!("this key does not belong to {}", files.cert.display()),
        });
    }
    Issuer::from_ca_cert_der(&der, key).map_err(|e| bad_cert(format!("cannot use it to sign: {e}")))
}

fn read_ca_file(path: &Path) -> Result<String, PkiError> {
    fs::read_to_string(path).map_err(|e| PkiError::BadCa {
        path: path.to_owned(),
        reason: match e.kind() {
            io::ErrorKind::NotFound => "not found".to_owned(),
            _ => format!("cannot read it: {e}"),
        },
    })
}

/// The first certificate of a PEM text.
fn first_cert(pem: &str) -> Option<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes()).find_map(Result::ok)
}

fn refuse_existing(files: &PkiFiles) -> Result<(), PkiError> {
    for path in [&files.cert, &files.key] {
        match fs::symlink_metadata(path) {
            Ok(_) => return Err(PkiError::Exists { path: path.clone() }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(PkiError::Io {
                    action: "inspect",
                    path: path.clone(),
                    source,
                })
            }
        }
    }
    Ok(())
}

/// Writes the key (0600) and then the certificate (0644), never replacing a file; if the
/// certificate cannot be written, the new key is removed again. Directories created on the
/// way are 0700, whatever the umask (an existing directory keeps its mode).
fn write_pair(dir: &Path, files: &PkiFiles, cert_pem: &str, key_pem: &str) -> Result<(), PkiError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| PkiError::Io {
            action: "create directory",
            path: dir.to_owned(),
            source,
        })?;
    write_new(&files.key, key_pem.as_bytes(), 0o600)?;
    if let Err(e) = write_new(&files.cert, cert_pem.as_bytes(), 0o644) {
        let _ = fs::remove_file(&files.key);
        return Err(e);
    }
    // Make the new directory entries durable.
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|source| PkiError::Io {
            action: "sync directory",
            path: dir.to_owned(),
            source,
        })
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PkiError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|source| match source.kind() {
            io::ErrorKind::AlreadyExists => PkiError::Exists {
                path: path.to_owned(),
            },
            _ => PkiError::Io {
                action: "create",
                path: path.to_owned(),
                source,
            },
        })?;
    let written = file.write_all(bytes).and_then(|()| file.sync_all());
    if let Err(source) = written {
        drop(file);
        let _ = fs::remove_file(path);
        return Err(PkiError::Io {
            action: "write",
            path: path.to_owned(),
            source,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;
    use crate::files::{CA_CERT_FILE, CA_KEY_FILE};

    #[test]
    fn init_issue_and_refuse_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let ca = init_ca(dir.path()).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&ca.key), 0o600);
        assert!(matches!(init_ca(dir.path()), Err(PkiError::Exists { .. })));

        let out = dir.path().join("out");
        let leaf = issue(dir.path(), PeerRole::Gateway, "gw-1", &out, 30).unwrap();
        assert_eq!(leaf.cert, out.join("gateway-gw-1.pem"));
        assert_eq!(mode(&leaf.key), 0o600);
        let pem = fs::read(&leaf.cert).unwrap();
        let der = first_cert(std::str::from_utf8(&pem).unwrap()).unwrap();
        assert_eq!(
            Identity::from_cert_der(&der).unwrap(),
            Identity::new(PeerRole::Gateway, "gw-1").unwrap()
        );
        let again = issue(dir.path(), PeerRole::Gateway, "gw-1", &out, 30);
        assert!(matches!(again, Err(PkiError::Exists { .. })));

        assert!(matches!(
            issue(dir.path(), PeerRole::Node, "a/b", &out, 30),
            Err(PkiError::Identity(_))
        ));
        assert!(matches!(
            issue(dir.path(), PeerRole::Node, "n", &out, 0),
            Err(PkiError::BadDays { .. })
        ));
        // A leaf is not a CA.
        let not_ca = tempfile::tempdir().unwrap();
        fs::copy(&leaf.cert, not_ca.path().join(CA_CERT_FILE)).unwrap();
        fs::copy(&leaf.key, not_ca.path().join(CA_KEY_FILE)).unwrap();
        let e = issue(not_ca.path(), PeerRole::Node, "n", &out, 30).unwrap_err();
        assert!(matches!(e, PkiError::BadCa { .. }), "{e}");
        // A CA certificate with someone else's key.
        let mixed = tempfile::tempdir().unwrap();
        fs::copy(&ca.cert, mixed.path().join(CA_CERT_FILE)).unwrap();
        fs::copy(&leaf.key, mixed.path().join(CA_KEY_FILE)).unwrap();
        let e = issue(mixed.path(), PeerRole::Node, "n", &out, 30).unwrap_err();
        assert!(e.to_string().contains("does not belong"), "{e}");
        // No CA at all.
        let e = issue(&out, PeerRole::Node, "n", &out, 30).unwrap_err();
        assert!(e.to_string().contains("not found"), "{e}");
        assert!(!out.join("node-n.key").exists());
    }
}
