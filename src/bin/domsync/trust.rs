//! `domsync crl ...` and `domsync issuer ...`: the CRLs a domain distributes and the issuer
//! certificates that verify them, on a stopped store (`--data`) or through a running daemon
//! (`--socket` / `--remote`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;
use domsync_client::admin::Target;
use domsync_proto::admin::{Answer, Request, TrustReport};
use domsync_proto::model::{
    utc, CrlNumber, DistinguishedName, DomainId, HeldCrl, IssuerCert, IssuerKey, Op, Position,
};
use domsync_store::Store;

use crate::admin;

type Res = Result<ExitCode, Box<dyn std::error::Error>>;

/// Exit code when the CRL or issuer asked for is not held.
const EXIT_NOT_FOUND: u8 = 4;

/// How soon a nextUpdate is shown as near.
const NEAR_SECS: i64 = 24 * 3600;

#[derive(Subcommand)]
pub enum CrlCmd {
    /// Upload a CRL (DER or PEM). Accepted only when a held issuer certificate of its issuer
    /// name verifies its signature (`domsync issuer add` first) and its number is above the
    /// held one; a delta CRL is kept beside its base.
    Put {
        domain: String,
        file: PathBuf,
        /// Store it even though its nextUpdate is past.
        #[arg(long)]
        allow_stale: bool,
    },
    /// Show (or with --out, write as DER) the CRL of an issuer (RFC 4514 text as `crl list`
    /// shows it, or `der:HEX`). Local store only.
    Get {
        domain: String,
        issuer: String,
        /// The newest delta CRL instead of the base.
        #[arg(long)]
        delta: bool,
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// List the CRLs held: issuer, kind, number, nextUpdate, how it was verified.
    List {
        domain: String,
        /// One JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Remove the CRL numbered NUMBER of an issuer (a base or a delta). With --legacy, a CRL
    /// stored by an earlier release (before issuer verification), named as `crl list` shows it.
    Remove {
        domain: String,
        issuer: String,
        number: String,
        #[arg(long)]
        legacy: bool,
    },
}

#[derive(Subcommand)]
pub enum IssuerCmd {
    /// Hold a CA certificate (DER or PEM) whose CRLs the domain distributes; replicated to
    /// the standbys and served to gateways.
    Add { domain: String, file: PathBuf },
    /// List the issuer certificates held.
    List {
        domain: String,
        /// One JSON document.
        #[arg(long)]
        json: bool,
    },
    /// Stop holding an issuer certificate, named by its subject and its id (as `issuer list`
    /// shows it: the first bytes of its SHA-256, or all of them).
    Remove {
        domain: String,
        issuer: String,
        id: String,
    },
}

/// Where the commands read and write.
pub enum Source<'a> {
    /// A stopped store.
    Local(&'a Store),
    /// A running daemon.
    Daemon(&'a Target),
}

impl Source<'_> {
    fn report(&self, domain: &DomainId) -> Result<TrustReport, Box<dyn std::error::Error>> {
        match self {
            Source::Local(store) => Ok(domsync_daemon::trust_report(
                &store.domain(domain)?,
                domain.clone(),
            )?),
            Source::Daemon(target) => match admin::call(
                target,
                &Request::Trust {
                    domain: domain.clone(),
                },
            )? {
                Answer::Trust(r) => Ok(r),
                other => Err(refused(other)),
            },
        }
    }

    fn write(
        &self,
        domain: &DomainId,
        ops: Vec<Op>,
    ) -> Result<Position, Box<dyn std::error::Error>> {
        match self {
            Source::Local(store) => Ok(store.domain(domain)?.write(ops)?),
            Source::Daemon(target) => match admin::call(
                target,
                &Request::Write {
                    domain: domain.clone(),
                    ops,
                },
            )? {
                Answer::Written { position, .. } => Ok(position),
                other => Err(refused(other)),
            },
        }
    }
}

/// An answer that is not the one asked for: the daemon's error, or an unexpected answer.
fn refused(answer: Answer) -> Box<dyn std::error::Error> {
    match answer {
        Answer::Error(e) => e.to_string().into(),
        other => format!("unexpected answer from the daemon: {other:?}").into(),
    }
}

/// Reads a DER or PEM file.
fn read_der(file: &Path, what: &str) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let bytes = std::fs::read(file).map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    if bytes.starts_with(b"-----BEGIN") {
        let (_, pem) = x509_parser::pem::parse_x509_pem(&bytes)
            .map_err(|e| format!("{}: not a PEM {what}: {e}", file.display()))?;
        return Ok(pem.contents);
    }
    Ok(bytes)
}

/// An issuer as given on the command line: RFC 4514 text or `der:HEX`.
fn issuer_key(text: &str) -> Result<IssuerKey, Box<dyn std::error::Error>> {
    match text.strip_prefix("der:") {
        Some(hex) => {
            let der = decode_hex(hex).ok_or_else(|| {
                format!("issuer {text:?}: der: must be followed by the name's DER in hex")
            })?;
            DistinguishedName::from_der(&der)?;
            Ok(IssuerKey::Der(der))
        }
        None => Ok(IssuerKey::Text(text.to_owned())),
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The one held name `key` names.
fn resolve<'a>(
    names: impl Iterator<Item = &'a DistinguishedName>,
    key: &IssuerKey,
    domain: &DomainId,
    what: &str,
) -> Result<DistinguishedName, Box<dyn std::error::Error>> {
    let mut found: Vec<&DistinguishedName> = names.filter(|n| key.matches(n)).collect();
    found.sort();
    found.dedup();
    match found.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(format!(
            "no {what} of {key} in domain {domain}; `domsync {what} list {domain}` shows them"
        )
        .into()),
        _ => Err(format!(
            "{key} names {} issuers in domain {domain} (their encodings differ): give it as der:HEX",
            found.len()
        )
        .into()),
    }
}

fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// How a CRL's nextUpdate reads: the time, and `PAST` or `near` when it is.
pub fn next_update_text(next: Option<i64>, now: i64) -> String {
    match next {
        None => "none".into(),
        Some(t) if t <= now => format!("{} PAST", utc(t)),
        Some(t) if t - now <= NEAR_SECS => format!("{} near", utc(t)),
        Some(t) => utc(t),
    }
}

/// Runs `domsync crl ...`.
///
/// # Errors
/// A one-line message naming the domain, issuer or file.
pub fn crl(source: &Source<'_>, cmd: CrlCmd) -> Res {
    match cmd {
        CrlCmd::Put {
            domain,
            file,
            allow_stale,
        } => {
            let domain: DomainId = domain.parse()?;
            let der = read_der(&file, "CRL")?;
            let crl = HeldCrl::from_der(&der).map_err(|e| format!("{}: {e}", file.display()))?;
            let (issuer, number, delta) = (
                crl.issuer.to_string(),
                crl.number.clone(),
                crl.delta_base.clone(),
            );
            let pos = source.write(&domain, vec![Op::PutCrl { crl, allow_stale }])?;
            match delta {
                None => println!("stored CRL number {number} of {issuer} in {domain} at {pos}"),
                Some(base) => println!(
                    "stored delta CRL number {number} (base {base}) of {issuer} in {domain} at {pos}"
                ),
            }
            Ok(ExitCode::SUCCESS)
        }
        CrlCmd::Get {
            domain,
            issuer,
            delta,
            out,
        } => {
            let Source::Local(store) = source else {
                return Err("crl get reads a stopped store (--data); from a running daemon fetch it as a gateway (`domsync gateway crl`) or list it with `crl list`".into());
            };
            let d = store.domain(&domain.parse()?)?;
            let key = issuer_key(&issuer)?;
            let r = d.crl_of(&key, delta)?;
            let Some(c) = r.value else {
                eprintln!("domsync: no {}CRL of {issuer} in domain {domain}; `domsync crl list {domain}` shows the issuers held", if delta { "delta " } else { "" });
                return Ok(ExitCode::from(EXIT_NOT_FOUND));
            };
            if let Some(out) = out {
                crate::write_private(&out, &c.der)
                    .map_err(|e| format!("cannot write {}: {e}", out.display()))?;
            }
            println!("{}", crate::commands::describe_crl(&c));
            Ok(ExitCode::SUCCESS)
        }
        CrlCmd::List { domain, json } => {
            let report = source.report(&domain.parse()?)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&crls_json(&report))?);
            } else {
                print_crls(&report);
            }
            Ok(ExitCode::SUCCESS)
        }
        CrlCmd::Remove {
            domain,
            issuer,
            number,
            legacy,
        } => {
            let domain: DomainId = domain.parse()?;
            let number = parse_number(&number)?;
            let report = source.report(&domain)?;
            let op = if legacy {
                let held = report
                    .legacy
                    .iter()
                    .find(|c| c.issuer == issuer && c.number == number)
                    .ok_or_else(|| format!("no legacy CRL number {number} of {issuer:?} in domain {domain}; `domsync crl list {domain}` shows them"))?;
                Op::RemoveLegacyCrl {
                    issuer: held.issuer.clone(),
                }
            } else {
                let name = resolve(
                    report.crls.iter().map(|c| &c.issuer),
                    &issuer_key(&issuer)?,
                    &domain,
                    "crl",
                )?;
                Op::RemoveCrl {
                    issuer: name,
                    number: number.clone(),
                }
            };
            let pos = source.write(&domain, vec![op])?;
            println!("removed CRL number {number} of {issuer} from {domain} at {pos}");
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Runs `domsync issuer ...`.
///
/// # Errors
/// A one-line message naming the domain, issuer or file.
pub fn issuer(source: &Source<'_>, cmd: IssuerCmd) -> Res {
    match cmd {
        IssuerCmd::Add { domain, file } => {
            let domain: DomainId = domain.parse()?;
            let der = read_der(&file, "certificate")?;
            let cert =
                IssuerCert::from_der(&der).map_err(|e| format!("{}: {e}", file.display()))?;
            let (subject, id) = (cert.subject.to_string(), cert.short_id());
            let pos = source.write(&domain, vec![Op::AddIssuer(cert)])?;
            println!("holding issuer {subject} (id {id}) in {domain} at {pos}; its CRLs are now verified against it");
            Ok(ExitCode::SUCCESS)
        }
        IssuerCmd::List { domain, json } => {
            let report = source.report(&domain.parse()?)?;
            if json {
                let list: Vec<_> = report
                    .issuers
                    .iter()
                    .map(|c| {
                        serde_json::json!({
                            "subject": c.subject.to_string(),
                            "subject_der": crate::commands::hex(c.subject.der()),
                            "sha256": crate::commands::hex(&c.sha256),
                            "not_after": c.not_after,
                        })
                    })
                    .collect();
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                for c in &report.issuers {
                    println!(
                        "{}  id {}  not_after {}",
                        c.subject,
                        c.short_id(),
                        utc(c.not_after)
                    );
                }
                eprintln!(
                    "{} issuer certificates, read at {}",
                    report.issuers.len(),
                    report.position
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        IssuerCmd::Remove { domain, issuer, id } => {
            let domain: DomainId = domain.parse()?;
            let report = source.report(&domain)?;
            let name = resolve(
                report.issuers.iter().map(|c| &c.subject),
                &issuer_key(&issuer)?,
                &domain,
                "issuer",
            )?;
            let id = id.to_ascii_lowercase();
            let matching: Vec<&IssuerCert> = report
                .issuers
                .iter()
                .filter(|c| c.subject == name && crate::commands::hex(&c.sha256).starts_with(&id))
                .collect();
            let cert = match matching.as_slice() {
                [one] => *one,
                [] => {
                    return Err(format!("no issuer certificate {id} of {name} in domain {domain}; `domsync issuer list {domain}` shows the ids").into())
                }
                _ => return Err(format!("id {id} matches several certificates of {name}: give more of its SHA-256").into()),
            };
            let pos = source.write(
                &domain,
                vec![Op::RemoveIssuer {
                    subject: name.clone(),
                    sha256: cert.sha256,
                }],
            )?;
            println!(
                "removed issuer certificate {} of {name} from {domain} at {pos}",
                cert.short_id()
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// A CRL number given in decimal or as `0x` hex.
fn parse_number(text: &str) -> Result<CrlNumber, Box<dyn std::error::Error>> {
    let bad =
        || format!("CRL number {text:?}: give it in decimal or as 0xHEX, as `crl list` shows it");
    if let Some(hex) = text.strip_prefix("0x") {
        let padded = if hex.len() % 2 == 1 {
            format!("0{hex}")
        } else {
            hex.to_owned()
        };
        return Ok(CrlNumber::from_be_bytes(
            &decode_hex(&padded).ok_or_else(bad)?,
        ));
    }
    let n: u128 = text.parse().map_err(|_| bad())?;
    Ok(CrlNumber::from_be_bytes(&n.to_be_bytes()))
}

fn print_crls(report: &TrustReport) {
    let now = now_secs();
    if report.accept_unverified_crls {
        println!(
            "domain {} accepts unverified CRLs (accept_unverified_crls = true)",
            report.domain
        );
    }
    for c in &report.crls {
        let kind = match &c.delta_base {
            None => "base".to_string(),
            Some(b) => format!("delta of base {b}"),
        };
        let verified = match &c.verified_by {
            Some(sha) => format!("verified by {}", crate::commands::hex(&sha[..8])),
            None => "UNVERIFIED".into(),
        };
        println!(
            "{}  {kind}  number {}  next_update {}  {verified}",
            c.issuer,
            c.number,
            next_update_text(c.next_update, now)
        );
    }
    for c in &report.legacy {
        println!(
            "{}  legacy  number {}  next_update {}  UNVERIFIED (stored by an earlier release: add its issuer, upload it again, then `domsync crl remove {} '{}' {} --legacy`)",
            c.issuer,
            c.number,
            next_update_text(c.next_update, now),
            report.domain,
            c.issuer,
            c.number
        );
    }
    eprintln!(
        "{} CRLs ({} legacy), read at {}",
        report.crls.len() + report.legacy.len(),
        report.legacy.len(),
        report.position
    );
}

fn crls_json(report: &TrustReport) -> serde_json::Value {
    let mut list: Vec<serde_json::Value> = report
        .crls
        .iter()
        .map(|c| {
            serde_json::json!({
                "issuer": c.issuer.to_string(),
                "issuer_der": crate::commands::hex(c.issuer.der()),
                "kind": if c.delta_base.is_some() { "delta" } else { "base" },
                "number": c.number.to_string(),
                "delta_base": c.delta_base.as_ref().map(ToString::to_string),
                "this_update": c.this_update,
                "next_update": c.next_update,
                "verified_by": c.verified_by.map(|s| crate::commands::hex(&s)),
            })
        })
        .collect();
    list.extend(report.legacy.iter().map(|c| {
        serde_json::json!({
            "issuer": c.issuer,
            "kind": "legacy",
            "number": c.number.to_string(),
            "this_update": c.this_update,
            "next_update": c.next_update,
            "verified_by": null,
        })
    }));
    serde_json::json!({
        "domain": report.domain.to_string(),
        "accept_unverified_crls": report.accept_unverified_crls,
        "position": report.position.to_string(),
        "crls": list,
    })
}
