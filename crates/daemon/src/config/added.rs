//! The domains added at runtime with `domsync domain add`: kept in
//! `<state_dir>/admin-domains.toml`, read back and checked like the configuration file's own
//! `[[domains]]`, merged with the file's (the file wins).

use std::path::{Path, PathBuf};

use super::check::{check_domains, read_domains};
use super::raw::Checker;
use super::{Config, ConfigError, DomainConfig};
use domsync_proto::model::DomainId;
use domsync_proto::repl::Durability;

/// The file, under `node.state_dir`, holding the domains added at runtime with
/// `domsync domain add` (a `[[domains]]` list like the configuration file's).
pub const ADDED_DOMAINS_FILE: &str = "admin-domains.toml";

impl Config {
    /// Where the domains added at runtime are kept: `<state_dir>/admin-domains.toml`.
    pub fn added_domains_path(&self) -> PathBuf {
        self.node.state_dir.join(ADDED_DOMAINS_FILE)
    }

    /// Reads the domains added at runtime (`admin-domains.toml`, see
    /// [`Config::added_domains_path`]); none when the file does not exist. They are checked
    /// against this configuration (node id, peers) like the file's own `[[domains]]`.
    ///
    /// # Errors
    /// [`ConfigError::Read`] or [`ConfigError::Invalid`] listing every problem.
    pub fn load_added_domains(&self) -> Result<Vec<DomainConfig>, ConfigError> {
        let path = self.added_domains_path();
        match std::fs::read_to_string(&path) {
            Ok(text) => self.parse_added_domains(&text, &path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(e) => Err(self.state_dir_error().unwrap_or(ConfigError::StateDir {
                path: self.node.state_dir.clone(),
                detail: format!("holds {} that cannot be read: {e}", path.display()),
            })),
        }
    }

    /// What is wrong with `node.state_dir` when it exists but is not a directory (or cannot
    /// be looked at).
    pub fn state_dir_error(&self) -> Option<ConfigError> {
        let dir = &self.node.state_dir;
        let detail = match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => return None,
            Ok(_) => "is not a directory".to_owned(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => {
                "is under a regular file, not a directory".to_owned()
            }
            Err(e) => format!("cannot be looked at: {e}"),
        };
        Some(ConfigError::StateDir {
            path: dir.clone(),
            detail,
        })
    }

    /// Parses and checks the text of an added-domains file (`path` names it in errors).
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] listing every problem.
    pub fn parse_added_domains(
        &self,
        text: &str,
        path: &Path,
    ) -> Result<Vec<DomainConfig>, ConfigError> {
        let invalid = |problems| ConfigError::Invalid {
            path: path.to_owned(),
            problems,
        };
        let mut c = Checker::new(text);
        let Some(doc) = c.document() else {
            return Err(invalid(c.into_problems()));
        };
        let top = c.table("", doc.get_ref(), &["domains"]);
        let raw = read_domains(&mut c, &top);
        let domains = check_domains(&mut c, raw, Some(&self.node.id), &self.peers);
        let problems = c.into_problems();
        if problems.is_empty() {
            Ok(domains)
        } else {
            Err(invalid(problems))
        }
    }

    /// This configuration (the file's) with the domains added at runtime merged in. The
    /// configuration file wins: an added domain whose name the file also defines is left out,
    /// and its name returned in the second list.
    pub fn merged(&self, added: &[DomainConfig]) -> (Config, Vec<DomainId>) {
        let mut out = self.clone();
        let mut shadowed = Vec::new();
        for d in added {
            if self.domains.iter().any(|f| f.name == d.name) {
                shadowed.push(d.name.clone());
            } else {
                out.domains.push(d.clone());
            }
        }
        (out, shadowed)
    }

    /// Writes `domains` to `admin-domains.toml` (see [`Config::added_domains_path`]): a
    /// temporary file (0600 whatever the umask: it names tenants and their gateways), fsynced,
    /// renamed into place, then the state directory fsynced. On an error the temporary file is
    /// removed and the previous file is left as it was.
    pub(crate) fn save_added_domains(&self, domains: &[DomainConfig]) -> std::io::Result<()> {
        use std::io::Write as _;
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        let path = self.added_domains_path();
        let tmp = path.with_extension("toml.tmp");
        let written = (|| {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)?;
            // A temporary file left wider by an older version keeps its mode when reopened.
            f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
            f.write_all(added_domains_toml(domains).as_bytes())?;
            f.sync_all()?;
            drop(f);
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(&self.node.state_dir)?.sync_all()
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }
}

/// The text of an added-domains file (`admin-domains.toml`) holding `domains`: a
/// `[[domains]]` list that [`Config::parse_added_domains`] reads back.
pub fn added_domains_toml(domains: &[DomainConfig]) -> String {
    let list = |items: &[String]| {
        items
            .iter()
            .map(|s| toml_string(s))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut out = String::from(
        "# Domains added with `domsync domain add` (written by domsyncd; the configuration\n\
         # file wins over an entry of the same name). Remove them with `domsync domain remove`.\n",
    );
    for d in domains {
        let replicas: Vec<String> = d.replicas.iter().map(ToString::to_string).collect();
        let durability = match d.durability {
            Durability::Local => "local",
            Durability::Standby => "standby",
            Durability::All => "all",
        };
        out.push_str(&format!(
            "\n[[domains]]\nname = {}\nreplicas = [{}]\ndurability = \"{durability}\"\ngateways = [{}]\nretention_bytes = {}\nweight = {}\n",
            toml_string(d.name.as_str()),
            list(&replicas),
            list(&d.gateways),
            d.retention_bytes,
            d.weight,
        ));
        if let Some(r) = &d.region {
            out.push_str(&format!("region = {}\n", toml_string(r)));
        }
    }
    out
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut out = String::from('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::super::GOOD;
    use super::*;
    use domsync_proto::admin::DomainSpec;

    #[test]
    fn added_domains_round_trip_are_checked_and_the_file_wins() {
        let c = Config::parse(GOOD, Path::new("x.toml")).unwrap();
        let spec = |name: &str, replicas: &[&str]| DomainSpec {
            name: name.into(),
            replicas: replicas.iter().map(|r| (*r).to_owned()).collect(),
            durability: Some("all".into()),
            gateways: vec!["gw-1".into()],
            weight: Some(3),
            region: Some("eu \"west\"\\1".into()),
            ..DomainSpec::default()
        };
        let t3 = c.check_spec(&spec("t3", &["b", "a"])).unwrap();
        assert_eq!(t3.weight, 3);
        assert_eq!(t3.durability, Durability::All);
        let err = c.check_spec(&spec("t 4", &["a", "zz"])).unwrap_err();
        assert!(err.contains("zz") && err.contains("[[peers]]"), "{err}");
        assert!(!err.contains('\n'), "{err}");
        // The same file text reads back the same domains.
        let t1 = c.check_spec(&spec("t1", &["a"])).unwrap();
        let text = added_domains_toml(&[t3.clone(), t1.clone()]);
        let back = c
            .parse_added_domains(&text, Path::new("admin-domains.toml"))
            .unwrap();
        assert_eq!(back, vec![t3.clone(), t1.clone()]);
        // The configuration file wins on a name clash.
        let (merged, shadowed) = c.merged(&back);
        assert_eq!(shadowed, vec![t1.name.clone()]);
        assert_eq!(merged.domains.len(), 3);
        assert_eq!(merged.domains[0].replicas.len(), 2);
        assert_eq!(merged.domains[2], t3);
        // A broken file is refused with its key.
        let err = c
            .parse_added_domains(
                "[[domains]]\nname = \"x\"\nreplicas = [\"q\"]\n",
                Path::new("f"),
            )
            .unwrap_err();
        assert!(err.to_string().contains("domains[0].replicas[0]"), "{err}");
    }
}
