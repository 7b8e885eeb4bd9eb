//! Whether browsers will use the advertised `turns:` URL, and what to tell the operator when one
//! will not. Firefox ignores a `turns:` URL whose host is an IP address ("Refuse to try TLS
//! without an FQDN" in its ICE code) and verifies the certificate against its trust store (the
//! self-signed one turnkey generates fails with `MOZILLA_PKIX_ERROR_SELF_SIGNED_CERT`); either
//! way its users silently lose TURN over TLS. The start-up banner and `check-config` print
//! [`warnings`]; `docs/deploy.md` ("TLS for browsers") shows the fix.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use crate::advertise::Reach;
use crate::config::Settings;

/// The banner's warnings: `s` serves TLS on `tls` (none: nothing to say) and advertises `host`.
pub fn banner_warnings(s: &Settings, host: &str, tls: &[SocketAddr]) -> Vec<String> {
    if tls.is_empty() {
        return Vec::new();
    }
    warnings(&problems(Some(host), cert_of(s)))
}

/// `check-config`'s warnings: the host the banner and the issuer will advertise is
/// `public_host`, else the external or relay IP; with none of them set, the host's primary IPv4
/// address detected at start, an IP address too.
pub fn config_warnings(s: &Settings) -> Vec<String> {
    if s.relay.tls.addrs.is_empty() {
        return Vec::new();
    }
    let addrs = crate::addrs::configured_relay_addrs(s);
    // The TLS listener the banner names first; with neither a public host nor an address
    // configured the rule finds none here: the address detected at start, an IP address too.
    let host = s.relay.tls.addrs.first().and_then(|tls| Reach::new(&s.issuer.public_host, &addrs).host(*tls));
    warnings(&problems(host.as_deref(), cert_of(s)))
}

fn cert_of(s: &Settings) -> Cert<'_> {
    s.relay.tls_cert.as_deref().map_or(Cert::Generated, Cert::File)
}

/// Why Firefox will not use the advertised `turns:` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TurnsProblem {
    /// The advertised host is an IP address, not a DNS name (`None`: the address detected at
    /// start).
    IpLiteral(Option<String>),
    /// The certificate is self-signed: turnkey's generated one (`None`) or the configured file.
    SelfSigned(Option<String>),
}

/// The certificate the TLS listener serves, as configured.
#[derive(Debug, Clone, Copy)]
pub enum Cert<'a> {
    /// No `tls_cert`: turnkey generates a self-signed one in its data directory.
    Generated,
    /// The configured `tls_cert` file.
    File(&'a Path),
}

/// The problems of advertising `turns:` URLs on `host` (as the banner and the issuer do; `None`:
/// the IP address detected at start) with `cert`. A configured certificate that cannot be read
/// is left to the start-up's own error.
pub fn problems(host: Option<&str>, cert: Cert<'_>) -> Vec<TurnsProblem> {
    let mut out = Vec::new();
    match host {
        None => out.push(TurnsProblem::IpLiteral(None)),
        Some(h) if h.trim_start_matches('[').trim_end_matches(']').parse::<IpAddr>().is_ok() => {
            out.push(TurnsProblem::IpLiteral(Some(h.to_owned())));
        }
        Some(_) => {}
    }
    match cert {
        Cert::Generated => out.push(TurnsProblem::SelfSigned(None)),
        Cert::File(path) => {
            let first = std::fs::read_to_string(path).ok().and_then(|pem| first_der(&pem));
            if first.as_deref().and_then(self_issued) == Some(true) {
                out.push(TurnsProblem::SelfSigned(Some(path.display().to_string())));
            }
        }
    }
    out
}

/// The lines to print for `problems` (none when there are none): what breaks and how to fix it.
pub fn warnings(problems: &[TurnsProblem]) -> Vec<String> {
    if problems.is_empty() {
        return Vec::new();
    }
    let mut out = Vec::new();
    for p in problems {
        out.push(match p {
            TurnsProblem::IpLiteral(host) => format!(
                "turnkey: warning: Firefox will not use TURN over TLS: the turns: URL names {} and Firefox \
                 only connects TLS to a DNS name",
                host.as_ref().map_or_else(
                    || "this host's IP address (no public_host is set)".to_owned(),
                    |h| format!("the IP address {h}")
                )
            ),
            TurnsProblem::SelfSigned(None) => "turnkey: warning: Firefox will not use TURN over TLS: the certificate \
                 is turnkey's self-signed one, which browsers refuse"
                .to_owned(),
            TurnsProblem::SelfSigned(Some(path)) => format!(
                "turnkey: warning: Firefox will not use TURN over TLS: the certificate {path} is self-signed, \
                 which browsers refuse"
            ),
        });
    }
    out.push(
        "turnkey: fix: start with --public-host <a DNS name of this host> and --tls-cert/--tls-key for a \
         certificate of that name from a public CA (certbot or any ACME client; turnkey reloads the files), \
         see docs/deploy.md#tls-for-browsers"
            .to_owned(),
    );
    out
}

/// The DER of the first certificate in a PEM text.
fn first_der(pem: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    let body: String = pem
        .lines()
        .skip_while(|l| l.trim() != "-----BEGIN CERTIFICATE-----")
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .map(str::trim)
        .collect();
    base64::engine::general_purpose::STANDARD.decode(body).ok().filter(|d| !d.is_empty())
}

/// Whether an X.509 certificate (DER) names itself as its issuer (issuer == subject), which is
/// what browsers call self-signed. `None` when the DER is not a certificate.
fn self_issued(der: &[u8]) -> Option<bool> {
    let (cert, _) = tlv(der, 0x30)?;
    let (mut tbs, _) = tlv(cert, 0x30)?;
    if tbs.first() == Some(&0xA0) {
        tbs = tlv(tbs, 0xA0)?.1; // [0] version
    }
    let rest = tlv(tbs, 0x02)?.1; // serialNumber
    let rest = tlv(rest, 0x30)?.1; // signature algorithm
    let issuer_len = rest.len() - tlv(rest, 0x30)?.1.len();
    let issuer = &rest[..issuer_len];
    let rest = tlv(&rest[issuer_len..], 0x30)?.1; // validity
    let subject_len = rest.len() - tlv(rest, 0x30)?.1.len();
    Some(issuer == &rest[..subject_len])
}

/// One DER element of type `tag` at the start of `b`: (its contents, what follows it).
fn tlv(b: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
    let (&t, b) = b.split_first()?;
    let (&first, mut b) = b.split_first()?;
    if t != tag {
        return None;
    }
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || b.len() < n {
            return None;
        }
        let (bytes, rest) = b.split_at(n);
        b = rest;
        bytes.iter().fold(0usize, |acc, &x| (acc << 8) | usize::from(x))
    };
    (b.len() >= len).then(|| b.split_at(len))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn pem_file(pem: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cert.pem");
        std::fs::write(&path, pem).unwrap();
        (dir, path)
    }

    #[test]
    fn ip_literals_and_self_signed_certificates_are_named() {
        let (_d, own) =
            pem_file(&rcgen::generate_simple_self_signed(vec!["turn.example.com".into()]).unwrap().cert.pem());
        assert_eq!(
            problems(Some("turn.example.com"), Cert::File(&own)),
            [TurnsProblem::SelfSigned(Some(own.display().to_string()))]
        );
        assert_eq!(
            problems(Some("192.168.1.20"), Cert::Generated),
            [TurnsProblem::IpLiteral(Some("192.168.1.20".into())), TurnsProblem::SelfSigned(None)]
        );
        assert_eq!(
            problems(Some("[2001:db8::5]"), Cert::Generated)[0],
            TurnsProblem::IpLiteral(Some("[2001:db8::5]".into()))
        );
        // A certificate issued by a CA (issuer != subject) with a DNS name: nothing to say.
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(rcgen::DnType::CommonName, "turnkey test CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf = rcgen::CertificateParams::new(vec!["turn.example.com".into()])
            .unwrap()
            .signed_by(&leaf_key, &ca, &ca_key)
            .unwrap();
        let (_d2, issued) = pem_file(&format!("{}{}", leaf.pem(), ca.pem()));
        assert_eq!(problems(Some("turn.example.com"), Cert::File(&issued)), []);
        // Unreadable or not a certificate: left to the start-up's own error.
        assert_eq!(problems(Some("turn.example.com"), Cert::File(Path::new("/nonexistent/cert.pem"))), []);
        let (_d3, junk) = pem_file("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
        assert_eq!(problems(Some("turn.example.com"), Cert::File(&junk)), []);
    }

    #[test]
    fn warnings_say_firefox_and_how_to_fix_it() {
        assert!(warnings(&[]).is_empty());
        let text = warnings(&problems(Some("192.168.1.20"), Cert::Generated)).join("\n");
        assert!(text.contains("Firefox will not use TURN over TLS"), "{text}");
        assert!(text.contains("IP address 192.168.1.20"), "{text}");
        assert!(text.contains("self-signed"), "{text}");
        assert!(text.contains("--public-host") && text.contains("--tls-cert"), "{text}");
        assert_eq!(text.lines().count(), 3, "{text}");
    }
}
