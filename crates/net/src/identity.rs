//! Who a peer is: the `domsync://<role>/<id>` URI SAN of its certificate.

use std::fmt;
use std::str::FromStr;

use x509_parser::extensions::GeneralName;

use domsync_proto::model::NodeId;

/// URI scheme of domsync identities.
pub const SCHEME: &str = "domsync://";

/// What a certificate allows its holder to do (DESIGN.md §9).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PeerRole {
    /// A node running `domsyncd`: replicates domains with other nodes.
    Node,
    /// A gateway: reads configuration from nodes; cannot replicate or administer.
    Gateway,
    /// An administrator: manages nodes and domains.
    Admin,
    /// An application: reads and writes the domains its grant names (`[apps]` of the
    /// node's configuration) through `domsync-app/1`; cannot replicate or administer.
    App,
}

impl PeerRole {
    /// Every role, in URI order.
    pub const ALL: [PeerRole; 4] = [
        PeerRole::Node,
        PeerRole::Gateway,
        PeerRole::Admin,
        PeerRole::App,
    ];

    /// The role as it appears in the URI (`node`, `gateway`, `admin`, `app`).
    pub fn as_str(self) -> &'static str {
        match self {
            PeerRole::Node => "node",
            PeerRole::Gateway => "gateway",
            PeerRole::Admin => "admin",
            PeerRole::App => "app",
        }
    }
}

impl fmt::Display for PeerRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PeerRole {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, IdentityError> {
        PeerRole::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| IdentityError::UnknownRole { role: s.to_owned() })
    }
}

/// A certificate or an identity text was refused. Each message is one line that says what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The bytes are not a DER X.509 certificate.
    #[error("cannot parse the certificate: {reason}; give a PEM or DER X.509 certificate")]
    BadCertificate {
        /// What the parser said.
        reason: String,
    },
    /// The certificate has no `domsync://` URI SAN.
    #[error("certificate {subject:?} has no domsync:// URI SAN; issue it with `domsync pki issue` or add a SAN like domsync://node/<id>")]
    NoIdentity {
        /// Subject of the certificate.
        subject: String,
    },
    /// The certificate has more than one `domsync://` URI SAN.
    #[error("certificate {subject:?} has {count} domsync:// URI SANs ({uris}); reissue it with exactly one")]
    SeveralIdentities {
        /// Subject of the certificate.
        subject: String,
        /// How many were found.
        count: usize,
        /// The URIs, comma separated.
        uris: String,
    },
    /// The text is not of the form `domsync://<role>/<id>`.
    #[error("identity {uri:?} is not of the form domsync://node|gateway|admin|app/<id>; reissue the certificate with `domsync pki issue`")]
    Malformed {
        /// The refused text.
        uri: String,
    },
    /// The role is not one of `node`, `gateway`, `admin`.
    #[error("unknown role {role:?}: use node, gateway, admin or app")]
    UnknownRole {
        /// The refused role.
        role: String,
    },
    /// The id does not follow the naming rule of node ids.
    #[error("invalid {role} id {id:?}: use 1 to 64 characters from A-Z a-z 0-9 . _ - and start with a letter or digit")]
    BadId {
        /// The role of the identity.
        role: PeerRole,
        /// The refused id.
        id: String,
    },
}

/// The identity of a peer: its role and its name, read from its certificate's URI SAN
/// `domsync://<role>/<id>`.
///
/// ```
/// use domsync_net::{Identity, PeerRole};
/// let me = Identity::new(PeerRole::Node, "appliance-a")?;
/// assert_eq!(me.uri(), "domsync://node/appliance-a");
/// assert_eq!(Identity::from_uri("domsync://node/appliance-a")?, me);
/// assert_eq!(me.node_id().map(|n| n.to_string()), Some("appliance-a".to_owned()));
/// assert!(Identity::from_uri("domsync://gateway/../x").is_err());
/// # Ok::<(), domsync_net::IdentityError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Identity {
    /// What the peer may do.
    pub role: PeerRole,
    /// Its name: 1 to 64 characters from `A-Z a-z 0-9 . _ -`, starting with a letter or digit.
    pub id: String,
}

impl Identity {
    /// Checks `id` (same rule as [`NodeId`]) and builds the identity.
    ///
    /// # Errors
    /// [`IdentityError::BadId`] when the id breaks the naming rule.
    pub fn new(role: PeerRole, id: impl Into<String>) -> Result<Self, IdentityError> {
        let id = id.into();
        if NodeId::new(id.as_str()).is_err() {
            return Err(IdentityError::BadId { role, id });
        }
        Ok(Identity { role, id })
    }

    /// The URI SAN that carries this identity: `domsync://<role>/<id>`.
    pub fn uri(&self) -> String {
        format!("{SCHEME}{}/{}", self.role, self.id)
    }

    /// Parses `domsync://<role>/<id>`.
    ///
    /// # Errors
    /// [`IdentityError::Malformed`], [`IdentityError::UnknownRole`] or [`IdentityError::BadId`].
    pub fn from_uri(uri: &str) -> Result<Self, IdentityError> {
        let malformed = || IdentityError::Malformed {
            uri: uri.to_owned(),
        };
        let rest = strip_scheme(uri).ok_or_else(malformed)?;
        let (role, id) = rest.split_once('/').ok_or_else(malformed)?;
        Identity::new(role.parse()?, id)
    }

    /// The node id, when this is a node's identity.
    pub fn node_id(&self) -> Option<NodeId> {
        match self.role {
            PeerRole::Node => NodeId::new(self.id.as_str()).ok(),
            PeerRole::Gateway | PeerRole::Admin | PeerRole::App => None,
        }
    }

    /// Reads the identity of a DER certificate: its one `domsync://` URI SAN.
    ///
    /// Only the certificate's content is read here; whether it chains to the deployment CA is
    /// checked by the TLS handshake (see [`crate::server_config`]).
    ///
    /// # Errors
    /// [`IdentityError::BadCertificate`] when it cannot be parsed, [`IdentityError::NoIdentity`]
    /// or [`IdentityError::SeveralIdentities`] unless exactly one `domsync://` URI SAN is
    /// present, or the errors of [`Identity::from_uri`] for that URI.
    pub fn from_cert_der(der: &[u8]) -> Result<Self, IdentityError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| {
            IdentityError::BadCertificate {
                reason: e.to_string(),
            }
        })?;
        let subject = cert.subject().to_string();
        let san = cert
            .subject_alternative_name()
            .map_err(|e| IdentityError::BadCertificate {
                reason: format!("subject alternative names: {e}"),
            })?;
        let uris: Vec<&str> = san
            .iter()
            .flat_map(|ext| ext.value.general_names.iter())
            .filter_map(|name| match name {
                GeneralName::URI(uri) if strip_scheme(uri).is_some() => Some(*uri),
                _ => None,
            })
            .collect();
        match uris.as_slice() {
            [] => Err(IdentityError::NoIdentity { subject }),
            [uri] => Identity::from_uri(uri),
            several => Err(IdentityError::SeveralIdentities {
                subject,
                count: several.len(),
                uris: several.join(", "),
            }),
        }
    }
}

/// The part after `domsync://` (the scheme is case-insensitive, as URI schemes are).
fn strip_scheme(uri: &str) -> Option<&str> {
    let head = uri.get(..SCHEME.len())?;
    if head.eq_ignore_ascii_case(SCHEME) {
        uri.get(SCHEME.len()..)
    } else {
        None
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}/{}", self.role, self.id)
    }
}

impl FromStr for Identity {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, IdentityError> {
        Identity::from_uri(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uri_round_trip_and_rules() {
        for role in PeerRole::ALL {
            let id = Identity::new(role, "a-1.b_c").unwrap();
            assert_eq!(Identity::from_uri(&id.uri()).unwrap(), id);
            assert_eq!(id.to_string(), id.uri());
        }
        assert_eq!(
            Identity::from_uri("DOMSYNC://node/x").unwrap(),
            Identity::new(PeerRole::Node, "x").unwrap()
        );
        assert!(matches!(
            Identity::from_uri("https://node/x"),
            Err(IdentityError::Malformed { .. })
        ));
        assert!(matches!(
            Identity::from_uri("domsync://node"),
            Err(IdentityError::Malformed { .. })
        ));
        assert!(matches!(
            Identity::from_uri("domsync://root/x"),
            Err(IdentityError::UnknownRole { .. })
        ));
        for bad in ["", "-x", "a/b", "a b", &"x".repeat(65), "é"] {
            assert!(
                matches!(
                    Identity::from_uri(&format!("domsync://gateway/{bad}")),
                    Err(IdentityError::BadId { .. })
                ),
                "{bad:?}"
            );
        }
        assert!(Identity::new(PeerRole::Admin, "x".repeat(64)).is_ok());
        let app = Identity::from_uri("domsync://app/editor-1").unwrap();
        assert_eq!((app.role, app.node_id()), (PeerRole::App, None));
        assert!(Identity::new(PeerRole::Gateway, "g")
            .unwrap()
            .node_id()
            .is_none());
    }

    #[test]
    fn garbage_is_not_a_certificate() {
        let e = Identity::from_cert_der(b"not a certificate").unwrap_err();
        assert!(matches!(e, IdentityError::BadCertificate { .. }));
        assert!(!e.to_string().contains('\n'));
    }
}
