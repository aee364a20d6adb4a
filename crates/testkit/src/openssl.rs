//! CAs and CRLs made with the `openssl` command, the way an operator's CA makes them (`openssl
//! req -x509`, `openssl ca -gencrl`): for tests of CRL verification against real material.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The key algorithm (and CRL signature scheme) of a test CA.
#[derive(Debug, Clone, Copy)]
pub enum Alg {
    /// RSA 2048, CRLs signed with PKCS#1 v1.5.
    Rsa,
    /// RSA 2048, CRLs signed with PSS.
    RsaPss,
    /// ECDSA P-256.
    EcP256,
    /// ECDSA P-384.
    EcP384,
    /// Ed25519.
    Ed25519,
}

/// A CA made with `openssl req -x509` and run with `openssl ca -gencrl`.
pub struct Ca {
    /// Its directory (`ca.pem`, `key.pem`, `index.txt`, `crlnumber`, `ca.cnf`).
    pub dir: PathBuf,
    alg: Alg,
}

/// Runs `openssl` in `dir`; panics with its stderr when it fails.
pub fn openssl(dir: &Path, args: &[&str]) {
    crate::pki::ensure_openssl();
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs (the project's setup installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The DER of the first PEM block of `pem`.
pub fn pem_to_der(pem: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(pem);
    let body: String = text
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    decode_base64(&body)
}

fn decode_base64(text: &str) -> Vec<u8> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let clean: Vec<u8> = text
        .bytes()
        .filter(|c| *c != b'=' && !c.is_ascii_whitespace())
        .collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let mut n = 0u32;
        for (i, c) in chunk.iter().enumerate() {
            n |= u32::from(value(*c)) << (18 - 6 * i);
        }
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

impl Ca {
    /// A CA named `subject` (OpenSSL's `/A=b/C=d` form, first RDN first) in `root/label`.
    pub fn new(root: &Path, label: &str, subject: &str, alg: Alg) -> Ca {
        let dir = root.join(label);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("index.txt"), "").unwrap();
        std::fs::write(dir.join("crlnumber"), "01\n").unwrap();
        std::fs::write(
            dir.join("ca.cnf"),
            "[ca]\ndefault_ca = dca\n[dca]\ndatabase = index.txt\ncrlnumber = crlnumber\n\
             default_md = sha256\ndefault_crl_days = 30\ncrl_extensions = crl_ext\n\
             [crl_ext]\nauthorityKeyIdentifier = keyid:always\n\
             [bare_ext]\n\
             [req]\ndistinguished_name = dn\nx509_extensions = v3_ca\n[dn]\n\
             [v3_ca]\nbasicConstraints = critical,CA:TRUE\n\
             keyUsage = critical,keyCertSign,cRLSign\nsubjectKeyIdentifier = hash\n",
        )
        .unwrap();
        let keygen: &[&str] = match alg {
            Alg::Rsa | Alg::RsaPss => &["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"],
            Alg::EcP256 => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
            Alg::EcP384 => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"],
            Alg::Ed25519 => &["-algorithm", "ed25519"],
        };
        let mut args = vec!["genpkey"];
        args.extend_from_slice(keygen);
        args.extend_from_slice(&["-out", "key.pem"]);
        openssl(&dir, &args);
        openssl(
            &dir,
            &[
                "req", "-config", "ca.cnf", "-x509", "-new", "-key", "key.pem", "-subj", subject,
                "-days", "3650", "-out", "ca.pem",
            ],
        );
        Ca { dir, alg }
    }

    /// The CA certificate, DER.
    pub fn cert(&self) -> Vec<u8> {
        pem_to_der(&std::fs::read(self.dir.join("ca.pem")).unwrap())
    }

    /// The subject as `openssl x509 -nameopt RFC2253` prints it.
    pub fn openssl_subject(&self) -> String {
        let out = Command::new("openssl")
            .args([
                "x509", "-in", "ca.pem", "-noout", "-subject", "-nameopt", "RFC2253",
            ])
            .current_dir(&self.dir)
            .output()
            .unwrap();
        String::from_utf8(out.stdout)
            .unwrap()
            .trim()
            .trim_start_matches("subject=")
            .to_owned()
    }

    /// Marks `serial` (hex) revoked in the CA's database.
    pub fn revoke(&self, serial: &str) {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.join("index.txt"))
            .unwrap();
        writeln!(
            f,
            "R\t301231235959Z\t250101000000Z\t{serial}\tunknown\t/CN=leaf {serial}"
        )
        .unwrap();
    }

    /// The next CRL (DER); `number` (hex) sets its CRL number, `delta_of` makes it a delta
    /// CRL of that base number, `stale` dates it in 2020.
    pub fn crl(&self, number: Option<&str>, delta_of: Option<u8>, stale: bool) -> Vec<u8> {
        if let Some(n) = number {
            std::fs::write(self.dir.join("crlnumber"), format!("{n}\n")).unwrap();
        }
        let exts = match delta_of {
            Some(base) => {
                let cnf = std::fs::read_to_string(self.dir.join("ca.cnf")).unwrap();
                let cnf = format!("{cnf}[delta_ext]\n2.5.29.27 = critical,DER:02:01:{base:02x}\n");
                std::fs::write(self.dir.join("ca.cnf"), cnf).unwrap();
                "delta_ext"
            }
            None => "crl_ext",
        };
        let mut args = vec![
            "ca", "-config", "ca.cnf", "-gencrl", "-keyfile", "key.pem", "-cert", "ca.pem",
            "-crlexts", exts, "-out", "crl.pem",
        ];
        if let Alg::RsaPss = self.alg {
            args.extend_from_slice(&[
                "-sigopt",
                "rsa_padding_mode:pss",
                "-sigopt",
                "rsa_pss_saltlen:digest",
            ]);
        }
        if stale {
            args.extend_from_slice(&[
                "-crl_lastupdate",
                "20200101000000Z",
                "-crl_nextupdate",
                "20200201000000Z",
            ]);
        }
        openssl(&self.dir, &args);
        pem_to_der(&std::fs::read(self.dir.join("crl.pem")).unwrap())
    }
}
