//! What switchyard reads from a certificate itself — the names SNI is matched against, when
//! it expires, and what a verified client certificate tells the target (subject, issuer,
//! serial number, subject alternative names, validity) — read with a small DER walk of the
//! structure RFC 5280 §4.1 fixes, so that no X.509 parsing dependency is needed. Only
//! certificates that were loaded from the configuration or already verified by rustls get
//! here; a walk that meets something unexpected gives `None`, never a panic.

use rustls_pki_types::CertificateDer;

/// (tag, value, rest) of one DER item (single-byte tags; lengths up to four bytes).
pub(super) fn item(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *b.first()?;
    let first = *b.get(1)? as usize;
    let (len, hdr) = if first < 0x80 {
        (first, 2)
    } else {
        let n = first & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *b.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let value = b.get(hdr..hdr.checked_add(len)?)?;
    Some((tag, value, &b[hdr + len..]))
}

/// The parts of a certificate's `tbsCertificate` that switchyard reads, each still DER.
struct Tbs<'a> {
    serial: &'a [u8],
    issuer: &'a [u8],
    /// The issuer Name with its tag and length: what OCSP hashes.
    issuer_der: &'a [u8],
    validity: &'a [u8],
    subject: &'a [u8],
    /// The contents of `[3] extensions`, when present.
    extensions: Option<&'a [u8]>,
}

impl<'a> Tbs<'a> {
    /// Certificate → tbsCertificate → [0] version, serialNumber, signature, issuer,
    /// validity, subject, subjectPublicKeyInfo, [1] [2] unique ids, [3] extensions.
    fn of(der: &'a [u8]) -> Option<Tbs<'a>> {
        let (0x30, cert, _) = item(der)? else {
            return None;
        };
        let (0x30, mut rest, _) = item(cert)? else {
            return None;
        };
        if rest.first() == Some(&0xa0) {
            rest = item(rest)?.2;
        }
        let (0x02, serial, rest) = item(rest)? else {
            return None;
        };
        let rest = item(rest)?.2; // signature algorithm
        let (0x30, issuer, after) = item(rest)? else {
            return None;
        };
        let issuer_der = &rest[..rest.len() - after.len()];
        let rest = after;
        let (0x30, validity, rest) = item(rest)? else {
            return None;
        };
        let (0x30, subject, mut rest) = item(rest)? else {
            return None;
        };
        rest = item(rest)?.2; // subjectPublicKeyInfo
        let mut extensions = None;
        while let Some((tag, value, next)) = item(rest) {
            if tag == 0xa3 {
                extensions = match item(value)? {
                    (0x30, exts, _) => Some(exts),
                    _ => None,
                };
            }
            rest = next;
        }
        Some(Tbs {
            serial,
            issuer,
            issuer_der,
            validity,
            subject,
            extensions,
        })
    }

    /// The `extnValue` contents of the extension with OID `oid` (its DER value bytes).
    fn extension(&self, oid: &[u8]) -> Option<&'a [u8]> {
        let mut exts = self.extensions?;
        while let Some((0x30, ext, next)) = item(exts) {
            let (0x06, id, mut rest) = item(ext)? else {
                return None;
            };
            if id == oid {
                if rest.first() == Some(&0x01) {
                    rest = item(rest)?.2; // critical
                }
                return match item(rest)? {
                    (0x04, value, _) => Some(value),
                    _ => None,
                };
            }
            exts = next;
        }
        None
    }

    /// The subjectAltName's GeneralNames, as (context tag, value).
    fn alt_names(&self) -> Vec<(u8, &'a [u8])> {
        // 2.5.29.17
        let Some(san) = self.extension(&[0x55, 0x1d, 0x11]) else {
            return Vec::new();
        };
        let Some((0x30, mut names, _)) = item(san) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        while let Some((tag, value, next)) = item(names) {
            out.push((tag, value));
            names = next;
        }
        out
    }
}

/// DNS names in the leaf certificate's subjectAltName (lowercase): what SNI is matched with.
pub(super) fn dns_names(cert: &CertificateDer<'_>) -> Vec<String> {
    let Some(tbs) = Tbs::of(cert.as_ref()) else {
        return Vec::new();
    };
    tbs.alt_names()
        .into_iter()
        .filter(|(tag, _)| *tag == 0x82)
        .map(|(_, v)| String::from_utf8_lossy(v).to_ascii_lowercase())
        .collect()
}

/// When a certificate stops being valid (its `notAfter`), in unix seconds.
pub fn not_after(cert: &CertificateDer<'_>) -> Option<i64> {
    validity(Tbs::of(cert.as_ref())?.validity).map(|(_, after)| after)
}

/// The serial number's INTEGER contents (as DER has them, sign byte included) and the
/// issuer's Name (DER, tag included): how OCSP names a certificate.
pub(super) fn serial_and_issuer<'a>(cert: &'a CertificateDer<'_>) -> Option<(&'a [u8], &'a [u8])> {
    Tbs::of(cert.as_ref()).map(|t| (t.serial, t.issuer_der))
}

/// `(notBefore, notAfter)` in unix seconds.
fn validity(v: &[u8]) -> Option<(i64, i64)> {
    let (tag, before, rest) = item(v)?;
    let before = time(tag, before)?;
    let (tag, after, _) = item(rest)?;
    Some((before, time(tag, after)?))
}

/// A UTCTime (0x17) or GeneralizedTime (0x18) in unix seconds.
pub(super) fn time(tag: u8, value: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(value).ok()?;
    let (year, rest) = match tag {
        0x17 => {
            let yy: i64 = text.get(..2)?.parse().ok()?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, text.get(2..)?)
        }
        0x18 => (text.get(..4)?.parse().ok()?, text.get(4..)?),
        _ => return None,
    };
    let field = |i: usize| -> Option<i64> { rest.get(i..i + 2)?.parse().ok() };
    let (month, day) = (field(0)?, field(2)?);
    let (h, m, sec) = (field(4)?, field(6)?, field(8)?);
    Some(days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + sec)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
pub(super) fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Unix seconds as `2024-09-20T01:50:17Z` (the inverse of [`days_from_civil`]).
fn rfc3339(t: i64) -> String {
    let (days, secs) = (t.div_euclid(86_400), t.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// What a verified client certificate says about its holder, formatted for header values
/// (visible ASCII only: anything else is escaped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    /// RFC 4514, most specific part first: `CN=client-7,O=Shop,C=DE`.
    pub subject: String,
    pub issuer: String,
    /// Upper-case hex, as ALB sends it.
    pub serial: String,
    /// `DNS:a.example, URI:spiffe://shop/client, email:x@y.example, IP:10.0.0.1`.
    pub alt_names: String,
    /// `NotBefore=…;NotAfter=…` in RFC 3339, as ALB sends it.
    pub validity: String,
}

impl CertFacts {
    pub fn of(cert: &CertificateDer<'_>) -> Option<CertFacts> {
        let tbs = Tbs::of(cert.as_ref())?;
        let (before, after) = validity(tbs.validity)?;
        let serial = tbs.serial;
        // A positive INTEGER's leading zero byte is only there for its sign.
        let serial = match serial {
            [0, rest @ ..] if !rest.is_empty() => rest,
            s => s,
        };
        Some(CertFacts {
            subject: name(tbs.subject)?,
            issuer: name(tbs.issuer)?,
            serial: serial.iter().map(|b| format!("{b:02X}")).collect(),
            alt_names: tbs
                .alt_names()
                .into_iter()
                .filter_map(|(tag, v)| alt_name(tag, v))
                .collect::<Vec<_>>()
                .join(", "),
            validity: format!("NotBefore={};NotAfter={}", rfc3339(before), rfc3339(after)),
        })
    }
}

fn alt_name(tag: u8, v: &[u8]) -> Option<String> {
    // `,` and `\` escaped: a name cannot pose as a second entry of the list.
    let text = |prefix: &str| format!("{prefix}:{}", escape(&String::from_utf8_lossy(v), ",\\"));
    match tag {
        0x81 => Some(text("email")),
        0x82 => Some(text("DNS")),
        0x86 => Some(text("URI")),
        0x87 => match v.len() {
            4 => Some(format!(
                "IP:{}",
                std::net::Ipv4Addr::from(<[u8; 4]>::try_from(v).ok()?)
            )),
            16 => Some(format!(
                "IP:{}",
                std::net::Ipv6Addr::from(<[u8; 16]>::try_from(v).ok()?)
            )),
            _ => None,
        },
        _ => None,
    }
}

/// A Name (RDNSequence) as RFC 4514 writes it: relative names in reverse order, separated
/// by `,`, multi-valued ones joined by `+`.
fn name(rdns: &[u8]) -> Option<String> {
    let mut parts = Vec::new();
    let mut rest = rdns;
    while !rest.is_empty() {
        let (0x31, mut set, next) = item(rest)? else {
            return None;
        };
        let mut attrs = Vec::new();
        while !set.is_empty() {
            let (0x30, atv, more) = item(set)? else {
                return None;
            };
            let (0x06, oid, value) = item(atv)? else {
                return None;
            };
            attrs.push(format!("{}={}", attribute(oid), value_text(value)?));
            set = more;
        }
        parts.push(attrs.join("+"));
        rest = next;
    }
    parts.reverse();
    Some(parts.join(","))
}

/// The short name RFC 4514 (and OpenSSL, for the e-mail address) gives an attribute, else
/// its dotted OID.
fn attribute(oid: &[u8]) -> String {
    let known: &[(&[u8], &str)] = &[
        (&[0x55, 0x04, 0x03], "CN"),
        (&[0x55, 0x04, 0x05], "SERIALNUMBER"),
        (&[0x55, 0x04, 0x06], "C"),
        (&[0x55, 0x04, 0x07], "L"),
        (&[0x55, 0x04, 0x08], "ST"),
        (&[0x55, 0x04, 0x09], "STREET"),
        (&[0x55, 0x04, 0x0a], "O"),
        (&[0x55, 0x04, 0x0b], "OU"),
        (
            &[0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19],
            "DC",
        ),
        (
            &[0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01],
            "UID",
        ),
        (
            &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01],
            "emailAddress",
        ),
    ];
    if let Some((_, n)) = known.iter().find(|(o, _)| *o == oid) {
        return (*n).to_string();
    }
    let mut arcs = Vec::new();
    let mut acc: u64 = 0;
    for (i, b) in oid.iter().enumerate() {
        acc = (acc << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if arcs.is_empty() {
                let first = acc.min(80) / 40;
                arcs.push(first);
                arcs.push(acc - first * 40);
            } else {
                arcs.push(acc);
            }
            acc = 0;
        } else if i == oid.len() - 1 || acc > u64::MAX >> 7 {
            break;
        }
    }
    arcs.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(".")
}

/// An attribute's value: the string types as text, anything else as `#` and its DER in hex
/// (RFC 4514 §2.4).
fn value_text(der: &[u8]) -> Option<String> {
    let (tag, v, _) = item(der)?;
    let text = match tag {
        // UTF8String, PrintableString, IA5String (the last two are ASCII).
        0x0c | 0x13 | 0x16 => String::from_utf8_lossy(v).into_owned(),
        // TeletexString: read byte for byte as Latin-1, as OpenSSL prints it (T.61 proper is
        // all but unused; old CAs put Latin-1 there), so "Müller" is not turned into U+FFFD.
        0x14 => v.iter().map(|&b| char::from(b)).collect(),
        // UniversalString: UTF-32BE.
        0x1c => v
            .chunks_exact(4)
            .map(|c| {
                char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                    .unwrap_or(char::REPLACEMENT_CHARACTER)
            })
            .collect(),
        // BMPString: UTF-16BE.
        0x1e => {
            let units: Vec<u16> = v
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            String::from_utf16_lossy(&units)
        }
        _ => {
            let hex: String = der.iter().map(|b| format!("{b:02x}")).collect();
            return Some(format!("#{hex}"));
        }
    };
    Some(escape(&text, ",+\"\\<>;="))
}

/// RFC 4514 §2.4's escaping, plus what a header value cannot carry: the characters in
/// `special`, a leading `#` or space and a trailing space get a backslash; control and
/// non-ASCII characters are written as `\XX` per UTF-8 byte.
fn escape(text: &str, special: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let last = text.chars().count().saturating_sub(1);
    for (i, c) in text.chars().enumerate() {
        if c.is_ascii_control() || !c.is_ascii() {
            let mut buf = [0u8; 4];
            for b in c.encode_utf8(&mut buf).bytes() {
                out.push_str(&format!("\\{b:02X}"));
            }
        } else if special.contains(c)
            || (!special.is_empty()
                && ((i == 0 && (c == '#' || c == ' ')) || (i == last && c == ' ')))
        {
            out.push('\\');
            out.push(c);
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_certificates_not_after_is_read_from_its_der() {
        let mut params = rcgen::CertificateParams::new(vec!["shop.test".to_string()]).unwrap();
        params.not_after = rcgen::date_time_ymd(2031, 7, 9);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        // 2031-07-09T00:00:00Z
        assert_eq!(not_after(cert.der()), Some(1_941_321_600));
        params.not_after = rcgen::date_time_ymd(2061, 2, 28); // GeneralizedTime after 2049
        let cert = params.self_signed(&key).unwrap();
        assert_eq!(not_after(cert.der()), Some(2_876_774_400));
        assert_eq!(not_after(&CertificateDer::from(vec![0x30, 0x00])), None);
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(rfc3339(1_941_321_600), "2031-07-09T00:00:00Z");
        assert_eq!(rfc3339(2_876_774_400 + 3661), "2061-02-28T01:01:01Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn a_client_certificates_facts_are_read_and_escaped_for_a_header() {
        use rcgen::{DnType, SanType};
        let mut params = rcgen::CertificateParams::new(vec!["client.shop.test".into()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CountryName, "DE");
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Shop, Inc.");
        params
            .distinguished_name
            .push(DnType::CommonName, "client-7 ü");
        params
            .subject_alt_names
            .push(SanType::URI("spiffe://shop/c7".try_into().unwrap()));
        params
            .subject_alt_names
            .push(SanType::IpAddress("10.0.0.1".parse().unwrap()));
        params
            .subject_alt_names
            .push(SanType::Rfc822Name("ops@shop.test".try_into().unwrap()));
        params.serial_number = Some(vec![0x00, 0x9f, 0x01].into());
        params.not_before = rcgen::date_time_ymd(2026, 1, 2);
        params.not_after = rcgen::date_time_ymd(2027, 1, 2);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let facts = CertFacts::of(cert.der()).unwrap();
        assert_eq!(facts.subject, "CN=client-7 \\C3\\BC,O=Shop\\, Inc.,C=DE");
        assert_eq!(facts.issuer, facts.subject, "self-signed");
        assert_eq!(facts.serial, "9F01");
        assert_eq!(
            facts.alt_names,
            "DNS:client.shop.test, URI:spiffe://shop/c7, IP:10.0.0.1, email:ops@shop.test"
        );
        assert_eq!(
            facts.validity,
            "NotBefore=2026-01-02T00:00:00Z;NotAfter=2027-01-02T00:00:00Z"
        );
        assert!(http::HeaderValue::from_str(&facts.subject).is_ok());
        assert_eq!(dns_names(cert.der()), vec!["client.shop.test".to_string()]);
    }

    #[test]
    fn unknown_attributes_are_named_by_their_oid_and_broken_der_gives_none() {
        assert_eq!(
            attribute(&[0x2b, 0x06, 0x01, 0x04, 0x01, 0x82, 0x37]),
            "1.3.6.1.4.1.311"
        );
        assert_eq!(attribute(&[0x55, 0x04, 0x03]), "CN");
        assert_eq!(value_text(&[0x02, 0x01, 0x05]).as_deref(), Some("#020105"));
        assert!(CertFacts::of(&CertificateDer::from(vec![0x30, 0x03, 0x30, 0x01])).is_none());
        assert!(item(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_none());
        assert_eq!(escape("#a ", ",+"), "\\#a\\ ");
    }

    #[test]
    fn legacy_string_types_are_decoded_as_openssl_does() {
        // TeletexString "Müller" in Latin-1: not a U+FFFD; non-ASCII escaped per UTF-8 byte.
        let t61 = [0x14, 0x06, b'M', 0xfc, b'l', b'l', b'e', b'r'];
        assert_eq!(value_text(&t61).as_deref(), Some("M\\C3\\BCller"));
        // UniversalString (UTF-32BE) and BMPString (UTF-16BE) "Ab".
        let universal = [0x1c, 0x08, 0, 0, 0, b'A', 0, 0, 0, b'b'];
        assert_eq!(value_text(&universal).as_deref(), Some("Ab"));
        assert_eq!(
            value_text(&[0x1e, 0x04, 0, b'A', 0, b'b']).as_deref(),
            Some("Ab")
        );
    }
}
