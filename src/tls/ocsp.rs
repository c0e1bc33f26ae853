//! OCSP stapling: a certificate's `ocsp = "…der"` response is sent to every client that asks
//! (rustls staples what the certified key carries). A stale or wrong response is worse than
//! none — a client that insists on stapling refuses the handshake — so the file is checked
//! when it is read: a successful response, about this certificate (its serial number and its issuer's name), saying
//! `good`. One whose `nextUpdate` has passed is kept but not stapled (`tls::Served`), so
//! that a failed fetch never stops a start or a reload. Its signature is the client's to
//! check.

use rustls_pki_types::CertificateDer;

use super::der::item;

/// What a checked response says, for `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stapled {
    /// Unix seconds; `None` when the responder gives none (always fresh, by RFC 6960).
    pub next_update: Option<i64>,
}

/// Checks `response` (DER) against the leaf certificate.
pub fn check(response: &[u8], leaf: &CertificateDer<'_>) -> Result<Stapled, String> {
    let bad = |what: &str| format!("not an OCSP response the certificate can use: {what}");
    // OCSPResponse ::= SEQUENCE { responseStatus ENUMERATED, responseBytes [0] EXPLICIT … }
    let (0x30, resp, _) = item(response).ok_or_else(|| bad("no DER SEQUENCE"))? else {
        return Err(bad("no DER SEQUENCE"));
    };
    let Some((0x0a, status, rest)) = item(resp) else {
        return Err(bad("no response status"));
    };
    if status != [0] {
        return Err(format!(
            "the OCSP responder refused the request (status {})",
            status.first().copied().unwrap_or(255)
        ));
    }
    let basic = (|| {
        let (0xa0, bytes, _) = item(rest)? else {
            return None;
        };
        // ResponseBytes ::= SEQUENCE { responseType OID, response OCTET STRING }
        let (0x30, bytes, _) = item(bytes)? else {
            return None;
        };
        let (0x06, _, rest) = item(bytes)? else {
            return None;
        };
        let (0x04, basic, _) = item(rest)? else {
            return None;
        };
        // BasicOCSPResponse ::= SEQUENCE { tbsResponseData, … }
        let (0x30, basic, _) = item(basic)? else {
            return None;
        };
        let (0x30, tbs, _) = item(basic)? else {
            return None;
        };
        // ResponseData ::= SEQUENCE { [0] version OPTIONAL, responderID, producedAt, responses }
        let mut rest = tbs;
        if rest.first() == Some(&0xa0) {
            rest = item(rest)?.2;
        }
        rest = item(rest)?.2; // responderID
        rest = item(rest)?.2; // producedAt
        let (0x30, responses, _) = item(rest)? else {
            return None;
        };
        Some(responses)
    })()
    .ok_or_else(|| bad("its response bytes are not a basic OCSP response"))?;
    let (serial, issuer) =
        super::der::serial_and_issuer(leaf).ok_or_else(|| bad("the certificate cannot be read"))?;
    let mut rest = basic;
    while let Some((0x30, single, next)) = item(rest) {
        rest = next;
        // SingleResponse ::= SEQUENCE { certID, certStatus, thisUpdate, [0] nextUpdate OPTIONAL, … }
        let Some((0x30, cert_id, after)) = item(single) else {
            continue;
        };
        // CertID ::= SEQUENCE { hashAlgorithm, issuerNameHash, issuerKeyHash, serialNumber }
        let names_this = (|| {
            let (0x30, alg, r) = item(cert_id)? else {
                return None;
            };
            let (0x06, oid, _) = item(alg)? else {
                return None;
            };
            let (0x04, name_hash, r) = item(r)? else {
                return None;
            };
            let r = item(r)?.2; // issuerKeyHash: the issuer's key is not at hand
            let (0x02, id_serial, _) = item(r)? else {
                return None;
            };
            let hashed = match oid {
                // 1.3.14.3.2.26, what responders use by default
                [0x2b, 0x0e, 0x03, 0x02, 0x1a] => {
                    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, issuer)
                }
                // 2.16.840.1.101.3.4.2.1
                [0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01] => {
                    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, issuer)
                }
                _ => return Some(id_serial == serial),
            };
            Some(id_serial == serial && hashed.as_ref() == name_hash)
        })();
        if names_this != Some(true) {
            continue;
        }
        let (status, _, after) = item(after).ok_or_else(|| bad("no certificate status"))?;
        match status {
            0x80 => {}
            0xa1 => return Err("the OCSP response says the certificate is revoked".into()),
            _ => return Err("the OCSP response says the certificate's status is unknown".into()),
        }
        let (_, _, after) = item(after).ok_or_else(|| bad("no thisUpdate"))?;
        let next_update = match item(after) {
            Some((0xa0, explicit, _)) => match item(explicit) {
                Some((tag, t, _)) => {
                    Some(super::der::time(tag, t).ok_or_else(|| bad("nextUpdate"))?)
                }
                None => return Err(bad("nextUpdate")),
            },
            _ => None,
        };
        return Ok(Stapled { next_update });
    }
    Err("the OCSP response is about another certificate (no entry with its serial number and issuer)".into())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn tlv(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
        let body: Vec<u8> = parts.concat();
        let mut out = vec![tag];
        match body.len() {
            n if n < 0x80 => out.push(n as u8),
            n if n < 0x100 => out.extend([0x81, n as u8]),
            n => out.extend([0x82, (n >> 8) as u8, n as u8]),
        }
        out.extend(body);
        out
    }

    /// An OCSP response about `serial` issued by `issuer` (its Name's DER), saying `status`
    /// (0x80 good, 0xa1 revoked), with `next_update` as GeneralizedTime text.
    pub(crate) fn response(
        serial: &[u8],
        issuer: &[u8],
        status: u8,
        next_update: Option<&str>,
    ) -> Vec<u8> {
        let sha1 = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, issuer);
        let alg = tlv(
            0x30,
            &[
                &tlv(0x06, &[&[0x2b, 0x0e, 0x03, 0x02, 0x1a]]),
                &[0x05, 0x00],
            ],
        );
        let cert_id = tlv(
            0x30,
            &[
                &alg,
                &tlv(0x04, &[sha1.as_ref()]),
                &tlv(0x04, &[&[0; 20]]),
                &tlv(0x02, &[serial]),
            ],
        );
        let status = if status == 0x80 {
            vec![0x80, 0x00]
        } else {
            tlv(status, &[&tlv(0x18, &[b"20260101000000Z"])])
        };
        let this = tlv(0x18, &[b"20260101000000Z"]);
        let next = next_update
            .map(|t| tlv(0xa0, &[&tlv(0x18, &[t.as_bytes()])]))
            .unwrap_or_default();
        let single = tlv(0x30, &[&cert_id, &status, &this, &next]);
        let data = tlv(
            0x30,
            &[
                &tlv(0xa2, &[&tlv(0x04, &[&[1; 20]])]),
                &this,
                &tlv(0x30, &[&single]),
            ],
        );
        let basic = tlv(0x30, &[&data, &alg, &tlv(0x03, &[&[0, 1, 2]])]);
        let bytes = tlv(
            0x30,
            &[
                &tlv(0x06, &[&[0x2b, 6, 1, 5, 5, 7, 48, 1, 1]]),
                &tlv(0x04, &[&basic]),
            ],
        );
        tlv(0x30, &[&tlv(0x0a, &[&[0]]), &tlv(0xa0, &[&bytes])])
    }

    #[test]
    fn a_response_must_be_good_current_and_about_this_certificate() {
        let c = rcgen::generate_simple_self_signed(vec!["shop.test".into()]).unwrap();
        let leaf = c.cert.der();
        let (serial, issuer) = super::super::der::serial_and_issuer(leaf).unwrap();
        let good = response(serial, issuer, 0x80, Some("20270120000000Z"));
        assert_eq!(
            check(&good, leaf),
            Ok(Stapled {
                next_update: Some(1_800_403_200)
            })
        );
        let forever = response(serial, issuer, 0x80, None);
        assert_eq!(check(&forever, leaf), Ok(Stapled { next_update: None }));
        let stale = response(serial, issuer, 0x80, Some("20270110000000Z"));
        // Read, not refused: `tls::Served` stops stapling it.
        assert_eq!(
            check(&stale, leaf),
            Ok(Stapled {
                next_update: Some(1_799_539_200)
            })
        );
        let revoked = response(serial, issuer, 0xa1, None);
        assert!(check(&revoked, leaf).unwrap_err().contains("revoked"));
        let other_issuer = response(serial, b"\x30\x00", 0x80, None);
        assert!(check(&other_issuer, leaf)
            .unwrap_err()
            .contains("another certificate"));
        let refused = tlv(0x30, &[&tlv(0x0a, &[&[6]])]);
        assert!(check(&refused, leaf)
            .unwrap_err()
            .contains("refused the request (status 6)"));
        assert!(check(b"not der", leaf).is_err());
        assert!(check(&good[..good.len() - 3], leaf).is_err());
    }
}
