//! Self-managed serving certificates, as pure functions: a long-lived CA and a serving
//! certificate it signs, and when the serving certificate is due for renewal. Only the serving
//! certificate is ever renewed, with the same CA, so the webhook's caBundle never changes while
//! certificates rotate and no admission fails during a rotation. (The CA lives
//! [`CA_VALIDITY`]; a new CA is made only when the stored one cannot be used: see
//! [`Verdict::Replace`].)

use std::{net::IpAddr, time::Duration};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

/// How long a CA made here is valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Certificates start this much before they are made (clocks of API servers and replicas
/// differ); a short-lived serving certificate by a quarter of its validity at most.
const BACKDATE: Duration = Duration::from_secs(5 * 60);

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("cannot make a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("{0} is not a PEM X.509 certificate")]
    Unparsable(&'static str),
    #[error("invalid subject alternative name {0:?}")]
    Name(String),
}

/// The four PEM texts kept in the Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bundle {
    pub ca_cert: String,
    pub ca_key: String,
    pub cert: String,
    pub key: String,
}

/// What to do with a stored bundle.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Serve it as it is.
    Fresh,
    /// Make a new serving certificate with the same CA (why).
    Renew(String),
    /// Make a new CA and serving certificate (why): the CA cannot sign what is needed.
    Replace(String),
}

/// A new CA and a serving certificate for `names` valid for `validity` from `now`.
pub fn new_bundle(
    names: &[String],
    now: OffsetDateTime,
    validity: Duration,
) -> Result<Bundle, CertError> {
    let ca_key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params
        .distinguished_name
        .push(DnType::CommonName, "tenancy-fixer webhook CA");
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = now - BACKDATE;
    params.not_after = now + CA_VALIDITY;
    let ca_cert = params.self_signed(&ca_key)?.pem();
    let ca_key = ca_key.serialize_pem();
    renewed(&ca_cert, &ca_key, names, now, validity)
}

/// A new serving certificate for `names`, signed by the CA of `bundle`.
pub fn renew(
    bundle: &Bundle,
    names: &[String],
    now: OffsetDateTime,
    validity: Duration,
) -> Result<Bundle, CertError> {
    renewed(&bundle.ca_cert, &bundle.ca_key, names, now, validity)
}

fn renewed(
    ca_cert: &str,
    ca_key: &str,
    names: &[String],
    now: OffsetDateTime,
    validity: Duration,
) -> Result<Bundle, CertError> {
    let issuer = Issuer::from_ca_cert_pem(ca_cert, KeyPair::from_pem(ca_key)?)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.subject_alt_names = names
        .iter()
        .map(|name| san(name))
        .collect::<Result<_, _>>()?;
    if let Some(first) = names.first() {
        params.distinguished_name.push(DnType::CommonName, first);
    }
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = now - BACKDATE.min(validity / 4);
    params.not_after = now + validity;
    let cert = params.signed_by(&key, &issuer)?.pem();
    Ok(Bundle {
        ca_cert: ca_cert.to_string(),
        ca_key: ca_key.to_string(),
        cert,
        key: key.serialize_pem(),
    })
}

fn san(name: &str) -> Result<SanType, CertError> {
    if let Ok(ip) = name.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    name.try_into()
        .map(SanType::DnsName)
        .map_err(|_| CertError::Name(name.to_string()))
}

/// The validity window and names of a certificate.
struct Parsed {
    not_before: i64,
    not_after: i64,
    names: Vec<String>,
}

impl Parsed {
    /// When it is due for renewal: two thirds of its lifetime (cert-manager's default).
    fn renewal_due(&self) -> i64 {
        self.not_before + (self.not_after - self.not_before) * 2 / 3
    }
}

fn parse(pem: &str, what: &'static str) -> Result<Parsed, CertError> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|_| CertError::Unparsable(what))?;
    parse_der(&pem.contents).ok_or(CertError::Unparsable(what))
}

/// When a DER certificate expires (Unix seconds), if it parses as X.509.
pub fn not_after(der: &[u8]) -> Option<i64> {
    parse_der(der).map(|cert| cert.not_after)
}

fn parse_der(der: &[u8]) -> Option<Parsed> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let validity = cert.validity();
    let names = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    x509_parser::extensions::GeneralName::DNSName(dns) => Some(dns.to_string()),
                    x509_parser::extensions::GeneralName::IPAddress(bytes) => ip_text(bytes),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    Some(Parsed {
        not_before: validity.not_before.timestamp(),
        not_after: validity.not_after.timestamp(),
        names,
    })
}

fn ip_text(bytes: &[u8]) -> Option<String> {
    match bytes.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(bytes).ok()?).to_string()),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(bytes).ok()?).to_string()),
        _ => None,
    }
}

/// Is the stored bundle good to serve for `names` at `now`? The serving certificate is renewed
/// once two thirds of its lifetime have passed (cert-manager's default), when it lacks a name,
/// or when the stored one cannot be read; the CA is replaced when it cannot be read or would
/// expire within `validity` (it could not cover a new serving certificate).
pub fn verdict(
    bundle: &Bundle,
    names: &[String],
    now: OffsetDateTime,
    validity: Duration,
) -> Verdict {
    let now = now.unix_timestamp();
    let ca = match parse(&bundle.ca_cert, "ca.crt") {
        Ok(ca) => ca,
        Err(error) => return Verdict::Replace(error.to_string()),
    };
    if KeyPair::from_pem(&bundle.ca_key).is_err() {
        return Verdict::Replace("ca.key is not a PEM private key".into());
    }
    let validity = i64::try_from(validity.as_secs()).unwrap_or(i64::MAX);
    if ca.not_after - now < validity {
        return Verdict::Replace("the CA expires before a new certificate would".into());
    }
    let cert = match parse(&bundle.cert, "tls.crt") {
        Ok(cert) => cert,
        Err(error) => return Verdict::Renew(error.to_string()),
    };
    if KeyPair::from_pem(&bundle.key).is_err() {
        return Verdict::Renew("tls.key is not a PEM private key".into());
    }
    if let Some(missing) = names.iter().find(|name| !cert.names.contains(name)) {
        return Verdict::Renew(format!("the certificate does not name {missing}"));
    }
    if now >= cert.renewal_due() {
        return Verdict::Renew(format!(
            "two thirds of its lifetime have passed (expires at {})",
            cert.not_after
        ));
    }
    Verdict::Fresh
}

/// When the serving certificate of `bundle` is next due (Unix seconds), if it parses.
pub fn renewal_due(bundle: &Bundle) -> Option<i64> {
    parse(&bundle.cert, "tls.crt")
        .ok()
        .map(|cert| cert.renewal_due())
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn names() -> Vec<String> {
        vec!["tenancy-fixer.tenancy-fixer.svc".into(), "127.0.0.1".into()]
    }

    fn at(seconds: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(seconds).unwrap()
    }

    const T0: i64 = 1_800_000_000;

    #[test]
    fn a_new_bundle_is_fresh_until_two_thirds_of_its_life() {
        let bundle = new_bundle(&names(), at(T0), 30 * DAY).unwrap();
        assert_eq!(verdict(&bundle, &names(), at(T0), 30 * DAY), Verdict::Fresh);
        // Backdated by 5 minutes: 2/3 of (30 days + 5 min) after T0 - 5 min.
        let due = renewal_due(&bundle).unwrap();
        assert_eq!(due, T0 - 300 + (30 * 86_400 + 300) * 2 / 3);
        assert_eq!(
            verdict(&bundle, &names(), at(due - 1), 30 * DAY),
            Verdict::Fresh
        );
        assert!(matches!(
            verdict(&bundle, &names(), at(due), 30 * DAY),
            Verdict::Renew(_)
        ));
    }

    #[test]
    fn validity_windows_are_backdated_and_a_short_one_by_a_quarter_at_most() {
        let bundle = new_bundle(&names(), at(T0), 30 * DAY).unwrap();
        let ca = parse(&bundle.ca_cert, "ca.crt").unwrap();
        assert_eq!(
            (ca.not_before, ca.not_after),
            (T0 - 300, T0 + 10 * 365 * 86_400)
        );
        let cert = parse(&bundle.cert, "tls.crt").unwrap();
        assert_eq!(
            (cert.not_before, cert.not_after),
            (T0 - 300, T0 + 30 * 86_400)
        );
        let (_, pem) = x509_parser::pem::parse_x509_pem(bundle.cert.as_bytes()).unwrap();
        assert_eq!(not_after(&pem.contents), Some(T0 + 30 * 86_400));
        assert_eq!(not_after(b"not a certificate"), None);
        // 8 minutes of validity: backdated by 2 minutes, not 5.
        let short = new_bundle(&names(), at(T0), Duration::from_secs(480)).unwrap();
        let cert = parse(&short.cert, "tls.crt").unwrap();
        assert_eq!((cert.not_before, cert.not_after), (T0 - 120, T0 + 480));
    }

    #[test]
    fn renewal_keeps_the_ca_and_the_result_is_fresh() {
        let bundle = new_bundle(&names(), at(T0), 30 * DAY).unwrap();
        let later = at(T0 + 25 * 86_400);
        let renewed = renew(&bundle, &names(), later, 30 * DAY).unwrap();
        assert_eq!(renewed.ca_cert, bundle.ca_cert);
        assert_eq!(renewed.ca_key, bundle.ca_key);
        assert_ne!(renewed.cert, bundle.cert);
        assert_ne!(renewed.key, bundle.key);
        assert_eq!(verdict(&renewed, &names(), later, 30 * DAY), Verdict::Fresh);
        // The CA signed it: rustls' verifier accepts it for each name.
        let roots = {
            let mut roots = rustls::RootCertStore::empty();
            for ca in rustls::pki_types::CertificateDer::pem_slice_iter(renewed.ca_cert.as_bytes())
            {
                roots.add(ca.unwrap()).unwrap();
            }
            std::sync::Arc::new(roots)
        };
        use rustls::{client::danger::ServerCertVerifier, pki_types::pem::PemObject};
        let cert =
            rustls::pki_types::CertificateDer::from_pem_slice(renewed.cert.as_bytes()).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            roots,
            std::sync::Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .unwrap();
        let when = rustls::pki_types::UnixTime::since_unix_epoch(Duration::from_secs(
            u64::try_from(T0 + 25 * 86_400 + 60).unwrap(),
        ));
        for name in names() {
            let server = rustls::pki_types::ServerName::try_from(name.clone()).unwrap();
            verifier
                .verify_server_cert(&cert, &[], &server, &[], when)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }

    #[test]
    fn a_missing_name_or_a_broken_certificate_renews() {
        let bundle = new_bundle(&names(), at(T0), 30 * DAY).unwrap();
        let mut more = names();
        more.push("tenancy-fixer.tenancy-fixer.svc.cluster.local".into());
        assert!(matches!(
            verdict(&bundle, &more, at(T0), 30 * DAY),
            Verdict::Renew(why) if why.contains("svc.cluster.local")
        ));
        let broken = Bundle {
            cert: "not a certificate".into(),
            ..bundle.clone()
        };
        assert!(matches!(
            verdict(&broken, &names(), at(T0), 30 * DAY),
            Verdict::Renew(_)
        ));
        let no_key = Bundle {
            key: String::new(),
            ..bundle
        };
        assert!(matches!(
            verdict(&no_key, &names(), at(T0), 30 * DAY),
            Verdict::Renew(_)
        ));
    }

    #[test]
    fn an_unusable_or_expiring_ca_is_replaced() {
        let bundle = new_bundle(&names(), at(T0), 30 * DAY).unwrap();
        let broken = Bundle {
            ca_cert: String::new(),
            ..bundle.clone()
        };
        assert!(matches!(
            verdict(&broken, &names(), at(T0), 30 * DAY),
            Verdict::Replace(_)
        ));
        let no_key = Bundle {
            ca_key: "x".into(),
            ..bundle.clone()
        };
        assert!(matches!(
            verdict(&no_key, &names(), at(T0), 30 * DAY),
            Verdict::Replace(_)
        ));
        // Ten years less a day later, a 30-day certificate would outlive the CA.
        let late = at(T0 + i64::try_from(CA_VALIDITY.as_secs()).unwrap() - 86_400);
        assert!(matches!(
            verdict(&bundle, &names(), late, 30 * DAY),
            Verdict::Replace(_)
        ));
        // A CA lasting exactly as long as a new certificate still covers it: renewed, kept.
        let ca_end = T0 + i64::try_from(CA_VALIDITY.as_secs()).unwrap();
        assert!(matches!(
            verdict(&bundle, &names(), at(ca_end - 86_400), DAY),
            Verdict::Renew(_)
        ));
        assert!(matches!(
            verdict(&bundle, &names(), at(ca_end - 86_399), DAY),
            Verdict::Replace(_)
        ));
    }

    #[test]
    fn names_are_dns_names_or_ip_addresses() {
        assert!(matches!(san("127.0.0.1").unwrap(), SanType::IpAddress(_)));
        assert!(matches!(
            san("tenancy-fixer.ns.svc").unwrap(),
            SanType::DnsName(_)
        ));
        assert!(san("caf\u{e9}.example").is_err(), "a DNS name is ASCII");
        // Both address families are read back, so a bundle naming them stays fresh.
        let names = ["svc.ns".to_string(), "10.0.0.1".into(), "fd00::1".into()];
        let bundle = new_bundle(&names, at(T0), 30 * DAY).unwrap();
        assert_eq!(parse(&bundle.cert, "tls.crt").unwrap().names, names);
    }
}
