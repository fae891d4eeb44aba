//! The identity a verified client certificate gives a request: what an
//! authorization plugin decides on. Read once per connection, after the
//! handshake, never per request.

use rustls::pki_types::CertificateDer;
use sha2::{Digest, Sha256};
use x509_parser::{
    asn1_rs::ToDer,
    extensions::GeneralName,
    objects::{oid_registry, oid2abbrev},
    prelude::FromDer,
    x509::{AttributeTypeAndValue, X509Name},
};

/// A client certificate that rustls verified against the listener's CAs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The subject distinguished name as RFC 4514 writes it: most specific
    /// attribute first (`CN=alice,O=Acme,C=FR`), special characters of
    /// values escaped (so a CN of `x,O=Admin` cannot pass for an `O`),
    /// values that are not strings as `#` and their DER in hex.
    pub subject: String,
    /// DNS names of the subjectAltName.
    pub dns_names: Vec<String>,
    /// URIs of the subjectAltName (SPIFFE IDs, for example).
    pub uris: Vec<String>,
    /// SHA-256 of the DER certificate, lower-case hex.
    pub sha256: String,
    /// `notAfter`, seconds since the Unix epoch.
    pub not_after: i64,
}

impl ClientIdentity {
    /// The identity of a verified leaf certificate; `None` if it does not
    /// parse (rustls verified it, so that would be a parser disagreement).
    pub fn from_der(cert: &CertificateDer<'_>) -> Option<ClientIdentity> {
        let (_, parsed) = x509_parser::certificate::X509Certificate::from_der(cert).ok()?;
        let mut dns_names = Vec::new();
        let mut uris = Vec::new();
        if let Ok(Some(san)) = parsed.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(d) => dns_names.push((*d).to_string()),
                    GeneralName::URI(u) => uris.push((*u).to_string()),
                    _ => {}
                }
            }
        }
        Some(ClientIdentity {
            subject: rfc4514(parsed.subject()),
            dns_names,
            uris,
            sha256: hex::encode(Sha256::digest(cert.as_ref())),
            not_after: parsed.validity().not_after.timestamp(),
        })
    }
}

/// `name` as RFC 4514 §2 writes it: the RDNs last to first joined by `,`,
/// the attributes of one RDN joined by `+`, each `type=value` with the
/// short name of the type (else its dotted OID). x509-parser's `Display`
/// is not that: certificate order, `, ` separators and nothing escaped.
fn rfc4514(name: &X509Name<'_>) -> String {
    let registry = oid_registry();
    let mut out = String::new();
    let rdns: Vec<_> = name.iter_rdn().collect();
    for (i, rdn) in rdns.into_iter().rev().enumerate() {
        if i > 0 {
            out.push(',');
        }
        for (j, attr) in rdn.iter().enumerate() {
            if j > 0 {
                out.push('+');
            }
            match oid2abbrev(attr.attr_type(), registry) {
                Ok(short) => out.push_str(short),
                Err(_) => out.push_str(&attr.attr_type().to_id_string()),
            }
            out.push('=');
            attribute_value(attr, &mut out);
        }
    }
    out
}

/// One attribute value (RFC 4514 §2.4): a string escaped, anything else
/// (or a string type x509-parser does not decode, such as BMPString) as
/// `#` and the hex of its DER.
fn attribute_value(attr: &AttributeTypeAndValue<'_>, out: &mut String) {
    let Ok(text) = attr.as_str() else {
        out.push('#');
        match attr.attr_value().to_der_vec() {
            Ok(der) => out.push_str(&hex::encode(der)),
            Err(_) => out.push_str(&hex::encode(attr.as_slice())),
        }
        return;
    };
    let last = text.chars().count().saturating_sub(1);
    for (i, c) in text.chars().enumerate() {
        let special = matches!(c, '"' | '+' | ',' | ';' | '<' | '>' | '\\')
            || (i == 0 && matches!(c, ' ' | '#'))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
            out.push(c);
        } else if c.is_control() {
            // NUL must be escaped; other controls would be taken
            // literally by a log line or a header a plugin writes them to.
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("\\{b:02x}"));
            }
        } else {
            out.push(c);
        }
    }
}

#[cfg(test)]
mod tests {
    use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair};

    use super::*;

    fn identity(params: CertificateParams) -> ClientIdentity {
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        ClientIdentity::from_der(cert.der()).unwrap()
    }

    #[test]
    fn the_subject_is_written_most_specific_first_as_rfc_4514_says() {
        let mut params = CertificateParams::new(vec!["a.test".to_owned()]).unwrap();
        // rcgen's default name has a CN first; the certificate keeps push order.
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CountryName, "FR");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Acme");
        params.distinguished_name.push(DnType::CommonName, "alice");
        let id = identity(params);
        assert_eq!(id.subject, "CN=alice,O=Acme,C=FR");
        assert_eq!(id.dns_names, ["a.test"]);
        assert_eq!(id.sha256.len(), 64);
    }

    #[test]
    fn separators_in_a_value_are_escaped_so_they_cannot_forge_an_attribute() {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Acme");
        params
            .distinguished_name
            .push(DnType::CommonName, " x,O=Admin+OU=root;\"<y> \u{1}");
        let id = identity(params);
        assert_eq!(
            id.subject,
            r#"CN=\ x\,O=Admin\+OU=root\;\"\<y\> \01,O=Acme"#
        );
    }
}
