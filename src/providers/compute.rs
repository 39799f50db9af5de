//! What each provider operation computes from the opened secrets (SPEC §9.3). Pure functions:
//! no database, no HTTP, no clock of their own.

use base64::Engine;
use hmac::{Hmac, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Daraja's timestamps are Nairobi wall-clock time (EAT, UTC+3, no daylight saving).
const NAIROBI_OFFSET_SECONDS: i64 = 3 * 3600;
/// How far from the vault's clock a caller's STK timestamp may be.
pub const STK_TIMESTAMP_SKEW_SECONDS: i64 = 300;

/// `now` as a Daraja timestamp, `YYYYMMDDHHmmss` in Nairobi time.
pub fn daraja_timestamp(now: i64) -> String {
    use chrono::{Datelike, Timelike};
    let t = chrono::DateTime::from_timestamp(now + NAIROBI_OFFSET_SECONDS, 0).unwrap_or_default();
    format!(
        "{:04}{:02}{:02}{:02}{:02}{:02}",
        t.year(),
        t.month(),
        t.day(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// Checks a caller's Daraja timestamp: fourteen digits, a real Nairobi time, within five
/// minutes of `now`. The message is safe to show.
pub fn check_daraja_timestamp(raw: &str, now: i64) -> Result<(), String> {
    let shape = raw.len() == 14 && raw.bytes().all(|b| b.is_ascii_digit());
    let parsed = shape
        .then(|| chrono::NaiveDateTime::parse_from_str(raw, "%Y%m%d%H%M%S").ok())
        .flatten()
        .map(|t| t.and_utc().timestamp() - NAIROBI_OFFSET_SECONDS);
    let Some(t) = parsed else {
        return Err("timestamp must be YYYYMMDDHHmmss (Nairobi time)".into());
    };
    if (t - now).abs() > STK_TIMESTAMP_SKEW_SECONDS {
        return Err("timestamp is more than 5 minutes from the vault's clock".into());
    }
    Ok(())
}

/// The Lipa na M-Pesa Online password: base64(shortcode ‖ passkey ‖ timestamp).
pub fn stk_password(short_code: &str, passkey: &SecretString, timestamp: &str) -> String {
    let mut joined = Zeroizing::new(Vec::with_capacity(
        short_code.len() + passkey.expose_secret().len() + timestamp.len(),
    ));
    joined.extend_from_slice(short_code.as_bytes());
    joined.extend_from_slice(passkey.expose_secret().as_bytes());
    joined.extend_from_slice(timestamp.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(&*joined)
}

/// Whether `signature` (hex, either case) is HMAC-SHA256(`body`, `secret`), compared in
/// constant time. Anything that is not 64 hex digits is simply not valid.
pub fn hmac_hex_matches(secret: &SecretString, body: &[u8], signature: &str) -> bool {
    let Ok(given) = hex::decode(signature.trim()) else {
        return false;
    };
    let Ok(mut mac) = <Hmac<Sha256> as Mac>::new_from_slice(secret.expose_secret().as_bytes())
    else {
        return false;
    };
    mac.update(body);
    let expected = mac.finalize().into_bytes();
    given.len() == expected.len() && bool::from(expected.as_slice().ct_eq(&given))
}

/// Whether `candidate` is the stored challenge, in constant time.
pub fn challenge_matches(secret: &SecretString, candidate: &str) -> bool {
    let s = secret.expose_secret().as_bytes();
    s.len() == candidate.len() && bool::from(s.ct_eq(candidate.as_bytes()))
}

pub use crate::domain::CertificateInfo;

/// A certificate file as given, PEM or DER (Safaricom's portal hands out both as `.cer`), in
/// the PEM form hazina stores; the message is safe to show. Whether it is a certificate hazina
/// can use is [`parse_certificate`]'s to say.
pub fn certificate_pem(given: &[u8]) -> Result<String, String> {
    if let Ok((rest, _)) = x509_parser::parse_x509_certificate(given) {
        if rest.is_empty() {
            let b64 = base64::engine::general_purpose::STANDARD.encode(given);
            let lines: Vec<&str> = b64
                .as_bytes()
                .chunks(64)
                .map(|line| std::str::from_utf8(line).unwrap_or_default())
                .collect();
            return Ok(format!(
                "-----BEGIN CERTIFICATE-----\n{}\n-----END CERTIFICATE-----\n",
                lines.join("\n")
            ));
        }
    }
    String::from_utf8(given.to_vec()).map_err(|_| {
        "The certificate must be one PEM (-----BEGIN CERTIFICATE-----) or DER certificate".into()
    })
}

/// Parses one PEM certificate whose public key is RSA (what Daraja publishes). The message
/// is safe to show.
pub fn parse_certificate(pem_text: &str) -> Result<CertificateInfo, String> {
    let bad = || "The body must be one PEM certificate (-----BEGIN CERTIFICATE-----)".to_string();
    let (rest, pem) = x509_parser::pem::parse_x509_pem(pem_text.as_bytes()).map_err(|_| bad())?;
    if pem.label != "CERTIFICATE" || !String::from_utf8_lossy(rest).trim().is_empty() {
        return Err(bad());
    }
    let cert = pem.parse_x509().map_err(|_| bad())?;
    let spki = cert.tbs_certificate.subject_pki.raw;
    if aws_lc_rs::rsa::PublicEncryptingKey::from_der(spki).is_err() {
        return Err("The certificate's public key must be an RSA key of 2048 bits or more".into());
    }
    use sha2::Digest;
    Ok(CertificateInfo {
        sha256: hex::encode(Sha256::digest(&pem.contents)),
        subject: cert.subject().to_string(),
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
        der: pem.contents,
    })
}

/// The Daraja SecurityCredential: base64 of the RSA PKCS#1 v1.5 encryption of the initiator
/// password under the certificate's public key (aws-lc-rs).
pub fn security_credential(cert_der: &[u8], initiator_password: &SecretString) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    let key =
        aws_lc_rs::rsa::PublicEncryptingKey::from_der(cert.tbs_certificate.subject_pki.raw).ok()?;
    let key = aws_lc_rs::rsa::Pkcs1PublicEncryptingKey::new(key).ok()?;
    let mut out = vec![0u8; key.ciphertext_size()];
    let ct = key
        .encrypt(initiator_password.expose_secret().as_bytes(), &mut out)
        .ok()?;
    Some(base64::engine::general_purpose::STANDARD.encode(ct))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &str) -> SecretString {
        SecretString::from(v.to_owned())
    }

    #[test]
    fn the_published_daraja_sandbox_example() {
        let passkey = s("bfb279f9aa9bdbcf158e97dd71a467cd2e0c893059b10f78e6b72ada1ed2c919");
        assert_eq!(
            stk_password("174379", &passkey, "20200430183949"),
            "MTc0Mzc5YmZiMjc5ZjlhYTliZGJjZjE1OGU5N2RkNzFhNDY3Y2QyZTBjODkzMDU5YjEwZjc4ZTZiNzJhZGExZWQyYzkxOTIwMjAwNDMwMTgzOTQ5"
        );
    }

    #[test]
    fn daraja_timestamps_are_nairobi_time_and_near_now() {
        // 2020-04-30 15:39:49 UTC is 18:39:49 in Nairobi.
        let now = 1_588_261_189;
        assert_eq!(daraja_timestamp(now), "20200430183949");
        assert!(check_daraja_timestamp("20200430183949", now).is_ok());
        assert!(check_daraja_timestamp("20200430184449", now).is_ok());
        assert!(check_daraja_timestamp("20200430184450", now).is_err());
        assert!(check_daraja_timestamp("20200430153949", now).is_err());
        for bad in [
            "2020043018394",
            "2020043018394x",
            "20201330183949",
            "",
            "٢٠٢٠٠٤٣٠١٨٣٩٤٩",
        ] {
            assert!(check_daraja_timestamp(bad, now).is_err(), "{bad}");
        }
    }

    #[test]
    fn hmac_signatures_compare_by_value() {
        let secret = s("whsec");
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(b"whsec").unwrap();
        mac.update(b"{\"a\":1}");
        let sig = hex::encode(mac.finalize().into_bytes());
        assert!(hmac_hex_matches(&secret, b"{\"a\":1}", &sig));
        assert!(hmac_hex_matches(&secret, b"{\"a\":1}", &sig.to_uppercase()));
        assert!(!hmac_hex_matches(&secret, b"{\"a\":2}", &sig));
        assert!(!hmac_hex_matches(&secret, b"{\"a\":1}", &sig[..62]));
        assert!(!hmac_hex_matches(&secret, b"{\"a\":1}", "zz"));
        assert!(challenge_matches(&s("chal"), "chal"));
        assert!(!challenge_matches(&s("chal"), "chal "));
    }
}
