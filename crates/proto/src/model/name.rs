//! Distinguished names of CRL issuers: kept as the DER of the X.501 `Name`, shown in RFC 4514.
//!
//! The DER is the identity: two names are the same issuer exactly when their DER is equal, so
//! `CN=Twin CA,O=Example` and a CN that is literally `Twin CA, O=Example` never collide. The
//! RFC 4514 text is for people and for gateways that build the name with a standard library:
//! the last RDN of the sequence first, attributes by their short name (`CN`, `L`, `ST`, `O`,
//! `OU`, `C`, `STREET`, `DC`, `UID`) or dotted OID, special characters escaped with `\`, values
//! that are not strings as `#` and the hex of their DER.

use std::fmt;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use x509_parser::der_parser::asn1_rs::ToDer as _;
use x509_parser::prelude::FromDer;
use x509_parser::x509::{AttributeTypeAndValue, X509Name};

/// Longest name accepted, in bytes of DER (an issuer name is a few hundred bytes at most).
pub const MAX_NAME_BYTES: usize = 4096;

/// An X.501 distinguished name as DER; ordered and compared by its bytes.
///
/// ```
/// use domsync_proto::model::DistinguishedName;
/// // SEQUENCE { SET { SEQUENCE { OID 2.5.4.3 (CN), UTF8String "A,B" } } }
/// let der = [0x30, 0x0e, 0x31, 0x0c, 0x30, 0x0a, 0x06, 0x03, 0x55, 0x04, 0x03,
///            0x0c, 0x03, b'A', b',', b'B'];
/// let name = DistinguishedName::from_der(&der).unwrap();
/// assert_eq!(name.to_string(), r"CN=A\,B");
/// ```
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct DistinguishedName(#[serde(with = "serde_bytes")] Vec<u8>);

/// How a gateway or an operator names an issuer: by its RFC 4514 text (as domsync shows it)
/// or by the DER of the name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum IssuerKey {
    /// RFC 4514 text, compared with the text domsync renders for each held name.
    Text(String),
    /// The DER of the name.
    Der(#[serde(with = "serde_bytes")] Vec<u8>),
}

impl IssuerKey {
    /// True when `name` is the issuer this key names.
    pub fn matches(&self, name: &DistinguishedName) -> bool {
        match self {
            IssuerKey::Text(t) => name.rfc4514() == *t,
            IssuerKey::Der(d) => name.der() == d.as_slice(),
        }
    }
}

impl fmt::Display for IssuerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IssuerKey::Text(t) => f.write_str(t),
            IssuerKey::Der(d) => match DistinguishedName::from_der(d) {
                Ok(n) => write!(f, "{n}"),
                Err(_) => write!(f, "#{}", hex(d)),
            },
        }
    }
}

/// Bytes that are not one DER-encoded distinguished name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a DER-encoded distinguished name: {reason}")]
pub struct NameDerError {
    /// What the parser found.
    pub reason: String,
}

impl DistinguishedName {
    /// Checks that `der` is exactly one `Name` and keeps it.
    ///
    /// # Errors
    /// [`NameDerError`] when it is not, is empty (no RDN), or is longer than
    /// [`MAX_NAME_BYTES`].
    pub fn from_der(der: &[u8]) -> Result<DistinguishedName, NameDerError> {
        if der.len() > MAX_NAME_BYTES {
            return Err(NameDerError {
                reason: format!("{} bytes, the limit is {MAX_NAME_BYTES}", der.len()),
            });
        }
        let (rest, name) = X509Name::from_der(der).map_err(|e| NameDerError {
            reason: e.to_string(),
        })?;
        if !rest.is_empty() {
            return Err(NameDerError {
                reason: format!("{} bytes after the end of the name", rest.len()),
            });
        }
        if name.iter().next().is_none() {
            return Err(NameDerError {
                reason: "the name is empty".into(),
            });
        }
        Ok(DistinguishedName(der.to_vec()))
    }

    /// The DER of the name.
    pub fn der(&self) -> &[u8] {
        &self.0
    }

    /// The name in RFC 4514 text (the same as `Display`).
    pub fn rfc4514(&self) -> String {
        match X509Name::from_der(&self.0) {
            Ok((_, name)) => render(&name),
            // Only names checked by `from_der` are built; keep Display total anyway.
            Err(_) => format!("#{}", hex(&self.0)),
        }
    }
}

impl fmt::Display for DistinguishedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.rfc4514())
    }
}

impl fmt::Debug for DistinguishedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DistinguishedName({})", self.rfc4514())
    }
}

/// RFC 4514 §2.1: the RDNs in reverse order, separated by commas.
fn render(name: &X509Name<'_>) -> String {
    let rdns: Vec<_> = name.iter().collect();
    let mut out = String::new();
    for (i, rdn) in rdns.iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (j, atv) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            render_attribute(atv, &mut out);
        }
    }
    out
}

/// RFC 4514 §2.3: `type=value`.
fn render_attribute(atv: &AttributeTypeAndValue<'_>, out: &mut String) {
    let oid = atv.attr_type().to_id_string();
    let short = match oid.as_str() {
        "2.5.4.3" => Some("CN"),
        "2.5.4.7" => Some("L"),
        "2.5.4.8" => Some("ST"),
        "2.5.4.10" => Some("O"),
        "2.5.4.11" => Some("OU"),
        "2.5.4.6" => Some("C"),
        "2.5.4.9" => Some("STREET"),
        "0.9.2342.19200300.100.1.25" => Some("DC"),
        "0.9.2342.19200300.100.1.1" => Some("UID"),
        _ => None,
    };
    match short {
        Some(s) => out.push_str(s),
        None => out.push_str(&oid),
    }
    out.push('=');
    // §2.4: a string value is escaped; anything else (and a type known only by its OID,
    // whose string form the reader cannot know) is `#` and the hex of the value's DER.
    let text = if short.is_some() {
        string_value(atv)
    } else {
        None
    };
    match text {
        Some(s) => escape(&s, out),
        None => {
            out.push('#');
            match atv.attr_value().to_der_vec() {
                Ok(der) => out.push_str(&hex(&der)),
                Err(_) => out.push_str(&hex(atv.as_slice())),
            }
        }
    }
}

/// The text of a string-typed value: UTF8String, PrintableString, IA5String, NumericString,
/// BMPString (UTF-16BE) or UniversalString (UTF-32BE); `None` for any other type.
fn string_value(atv: &AttributeTypeAndValue<'_>) -> Option<String> {
    use x509_parser::der_parser::asn1_rs::Tag;
    let data = atv.as_slice();
    match atv.attr_value().tag() {
        Tag::Utf8String | Tag::PrintableString | Tag::Ia5String | Tag::NumericString => {
            std::str::from_utf8(data).ok().map(str::to_owned)
        }
        Tag::BmpString => {
            if data.len() % 2 != 0 {
                return None;
            }
            let units: Vec<u16> = data
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16(&units).ok()
        }
        Tag::UniversalString => {
            if data.len() % 4 != 0 {
                return None;
            }
            data.chunks_exact(4)
                .map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
                .collect()
        }
        _ => None,
    }
}

/// RFC 4514 §2.4 escaping: `" + , ; < > \` always, `#` and space at the start, space at the
/// end, NUL as `\00`; other control characters as `\XX` too so the text stays one line.
fn escape(value: &str, out: &mut String) {
    let last = value.chars().count().saturating_sub(1);
    for (i, c) in value.chars().enumerate() {
        match c {
            '"' | '+' | ',' | ';' | '<' | '>' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            '#' | ' ' if i == 0 => {
                out.push('\\');
                out.push(c);
            }
            ' ' if i == last => out.push_str("\\ "),
            c if c.is_control() => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    let _ = write!(out, "\\{b:02X}");
                }
            }
            c => out.push(c),
        }
    }
}

pub(crate) fn hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One attribute: OID bytes, string tag, value.
    type Atv<'a> = (&'a [u8], u8, &'a [u8]);

    /// DER of a name from its RDNs, first RDN first.
    fn name(rdns: &[&[Atv<'_>]]) -> Vec<u8> {
        fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
            assert!(content.len() < 128);
            let mut v = vec![tag, content.len() as u8];
            v.extend_from_slice(content);
            v
        }
        let mut seq = Vec::new();
        for rdn in rdns {
            let mut set = Vec::new();
            for (oid, tag, value) in *rdn {
                let mut atv = tlv(0x06, oid);
                atv.extend(tlv(*tag, value));
                set.extend(tlv(0x30, &atv));
            }
            seq.extend(tlv(0x31, &set));
        }
        tlv(0x30, &seq)
    }

    const CN: &[u8] = &[0x55, 0x04, 0x03];
    const O: &[u8] = &[0x55, 0x04, 0x0a];
    const C: &[u8] = &[0x55, 0x04, 0x06];
    const UTF8: u8 = 0x0c;
    const PRINTABLE: u8 = 0x13;

    fn text(der: &[u8]) -> String {
        DistinguishedName::from_der(der).unwrap().to_string()
    }

    #[test]
    fn rdns_are_shown_last_first() {
        let der = name(&[
            &[(C, PRINTABLE, b"FR")],
            &[(O, UTF8, b"Example Corp")],
            &[(CN, UTF8, b"RSA Tenant CA")],
        ]);
        assert_eq!(text(&der), "CN=RSA Tenant CA,O=Example Corp,C=FR");
    }

    #[test]
    fn special_characters_are_escaped() {
        let der = name(&[&[(CN, UTF8, b"Twin CA, O=Example")]]);
        assert_eq!(text(&der), r"CN=Twin CA\, O=Example");
        let der = name(&[&[(CN, UTF8, b"#lead+\"q\";<x>\\ ")]]);
        assert_eq!(text(&der), r#"CN=\#lead\+\"q\"\;\<x\>\\\ "#);
        let der = name(&[&[(CN, UTF8, b" a\0b")]]);
        assert_eq!(text(&der), r"CN=\ a\00b");
    }

    #[test]
    fn look_alike_names_stay_apart() {
        let two = name(&[&[(O, UTF8, b"Example")], &[(CN, UTF8, b"Twin CA")]]);
        let one = name(&[&[(CN, UTF8, b"Twin CA, O=Example")]]);
        let a = DistinguishedName::from_der(&two).unwrap();
        let b = DistinguishedName::from_der(&one).unwrap();
        assert_ne!(a, b);
        assert_ne!(a.to_string(), b.to_string());
        assert_eq!(a.to_string(), "CN=Twin CA,O=Example");
    }

    #[test]
    fn multi_valued_rdns_and_unknown_types() {
        let der = name(&[&[(CN, UTF8, b"a"), (O, UTF8, b"b")]]);
        assert_eq!(text(&der), "CN=a+O=b");
        // 1.2.3.4 with a UTF8String "x": shown by OID with the hex of the value's DER.
        let der = name(&[&[(&[0x2a, 0x03, 0x04], UTF8, b"x")]]);
        assert_eq!(text(&der), "1.2.3.4=#0c0178");
    }

    #[test]
    fn bad_names_are_refused() {
        assert!(DistinguishedName::from_der(b"").is_err());
        assert!(DistinguishedName::from_der(&[0x30, 0x00]).is_err());
        let mut der = name(&[&[(CN, UTF8, b"a")]]);
        der.push(0);
        assert!(DistinguishedName::from_der(&der).is_err());
    }
}
