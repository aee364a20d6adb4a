//! Names of nodes and domains, and the random uid of a domain incarnation.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Longest node or domain name, in bytes.
pub const MAX_NAME_LEN: usize = 64;

/// A node or domain name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind} name {name:?}: use 1 to 64 characters from A-Z a-z 0-9 . _ - and start with a letter or digit")]
pub struct NameError {
    /// What was being named (`"node"`, `"domain"`).
    pub kind: &'static str,
    /// The refused text.
    pub name: String,
}

fn check_name(kind: &'static str, name: &str) -> Result<(), NameError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(NameError {
            kind,
            name: name.to_owned(),
        })
    }
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $ty(String);

        impl $ty {
            /// Checks `name` and wraps it.
            ///
            /// # Errors
            /// [`NameError`] unless `name` has 1 to 64 characters from `A-Z a-z 0-9 . _ -`
            /// and starts with a letter or digit.
            pub fn new(name: impl Into<String>) -> Result<Self, NameError> {
                let name = name.into();
                check_name($kind, &name)?;
                Ok(Self(name))
            }

            /// The name as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $ty {
            type Err = NameError;
            fn from_str(s: &str) -> Result<Self, NameError> {
                Self::new(s)
            }
        }

        impl TryFrom<String> for $ty {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                Self::new(s)
            }
        }

        impl From<$ty> for String {
            fn from(id: $ty) -> String {
                id.0
            }
        }
    };
}

name_type!(
    /// Name of a domain: an isolated configuration namespace with its own store, log and epoch.
    ///
    /// ```
    /// use domsync_proto::model::DomainId;
    /// let d: DomainId = "tenant-7".parse()?;
    /// assert_eq!(d.as_str(), "tenant-7");
    /// assert!("../etc".parse::<DomainId>().is_err());
    /// # Ok::<(), domsync_proto::model::NameError>(())
    /// ```
    DomainId,
    "domain"
);

name_type!(
    /// Name of a node (one appliance running `domsyncd`), taken from its certificate.
    ///
    /// ```
    /// use domsync_proto::model::NodeId;
    /// let n = NodeId::new("appliance-a")?;
    /// assert_eq!(n.to_string(), "appliance-a");
    /// # Ok::<(), domsync_proto::model::NameError>(())
    /// ```
    NodeId,
    "node"
);

/// Random id fixed when a domain is created. A store recreated empty gets a new uid, so it is
/// a different incarnation and no peer mistakes it for the old one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DomainUid(pub [u8; 16]);

impl DomainUid {
    /// A fresh random uid from the operating system's generator.
    ///
    /// # Errors
    /// The operating system could not provide random bytes.
    pub fn random() -> Result<Self, getrandom::Error> {
        let mut bytes = [0u8; 16];
        getrandom::fill(&mut bytes)?;
        Ok(Self(bytes))
    }
}

impl fmt::Display for DomainUid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for good in ["a", "A-1", "tenant.eu_1", &"x".repeat(64)] {
            assert!(DomainId::new(good).is_ok(), "{good}");
        }
        for bad in ["", "-a", ".a", "a/b", "a b", "é", &"x".repeat(65), ".."] {
            assert!(NodeId::new(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn decoding_checks_names() {
        let bytes = postcard::to_allocvec(&"../x".to_string()).unwrap();
        assert!(postcard::from_bytes::<DomainId>(&bytes).is_err());
    }

    #[test]
    fn uids_differ() {
        assert_ne!(DomainUid::random().unwrap(), DomainUid::random().unwrap());
    }
}
