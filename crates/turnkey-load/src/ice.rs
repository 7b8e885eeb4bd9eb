//! Answers of a credential issuer in Cloudflare's shape (`{"iceServers": [...]}` or
//! `{"iceServers": {...}}`): the TURN URLs in them (RFC 7065 `turn:` / `turns:` URIs) and which
//! one a client of a given transport allocates at, with which credential.

use serde::Deserialize;

use crate::args::TransportKind;
use crate::client::Credentials;
use crate::LoadError;

/// One `turn:` / `turns:` URL: `turn:host[:port][?transport=udp|tcp]`, `turns:host[:port][?transport=tcp]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TurnUrl {
    /// The host: a name, an IPv4 literal, or an IPv6 literal (without its brackets).
    pub host: String,
    /// The port (default 3478 for `turn:`, 5349 for `turns:`).
    pub port: u16,
    /// The transport a client of this URL uses to reach the relay.
    pub transport: TransportKind,
}

impl TurnUrl {
    /// Parses a `turn:` or `turns:` URL; `None` for anything else (a `stun:` URL, an unknown
    /// transport, `turns:` over UDP, a malformed host or port).
    pub fn parse(url: &str) -> Option<Self> {
        let (secure, rest) = match url.split_once(':')? {
            (s, rest) if s.eq_ignore_ascii_case("turn") => (false, rest),
            (s, rest) if s.eq_ignore_ascii_case("turns") => (true, rest),
            _ => return None,
        };
        let (hostport, query) = rest.split_once('?').unwrap_or((rest, ""));
        let mut transport = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=')?;
            if k.eq_ignore_ascii_case("transport") {
                transport = Some(v.to_ascii_lowercase());
            }
        }
        let transport = match (secure, transport.as_deref()) {
            (false, None | Some("udp")) => TransportKind::Udp,
            (false, Some("tcp")) => TransportKind::Tcp,
            (true, None | Some("tcp")) => TransportKind::Tls,
            _ => return None,
        };
        let default_port = if secure { 5349 } else { 3478 };
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (host, after) = v6.split_once(']')?;
            host.parse::<std::net::Ipv6Addr>().ok()?;
            let port = match after {
                "" => default_port,
                p => p.strip_prefix(':')?.parse().ok()?,
            };
            (host, port)
        } else {
            match hostport.split_once(':') {
                Some((h, p)) => (h, p.parse().ok()?),
                None => (hostport, default_port),
            }
        };
        let host_ok = !host.is_empty()
            && (host.contains(':')
                || host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')));
        (host_ok && port != 0).then(|| Self { host: host.to_owned(), port, transport })
    }

    /// `host:port` for resolution (IPv6 literals in brackets).
    pub fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// Where one allocation (or flow) goes, as an issuer's answer says: the first TURN URL of the
/// wanted transport and the credential of the entry that holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pick {
    /// The URL.
    pub url: TurnUrl,
    /// Its entry's username and credential.
    pub credentials: Credentials,
}

#[derive(Deserialize)]
struct IceAnswer {
    #[serde(rename = "iceServers")]
    ice_servers: IceServers,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum IceServers {
    List(Vec<IceServer>),
    One(IceServer),
}

#[derive(Deserialize)]
struct IceServer {
    #[serde(default)]
    urls: Urls,
    username: Option<String>,
    credential: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(untagged)]
enum Urls {
    Many(Vec<String>),
    One(String),
    #[default]
    None,
}

impl Urls {
    fn iter(&self) -> impl Iterator<Item = &str> {
        let v: &[String] = match self {
            Urls::Many(v) => v,
            Urls::One(s) => std::slice::from_ref(s),
            Urls::None => &[],
        };
        v.iter().map(String::as_str)
    }
}

fn entries(body: &[u8]) -> Result<Vec<IceServer>, LoadError> {
    let answer: IceAnswer =
        serde_json::from_slice(body).map_err(|e| LoadError::Issuer(format!("unexpected answer: {e}")))?;
    Ok(match answer.ice_servers {
        IceServers::List(v) => v,
        IceServers::One(s) => vec![s],
    })
}

/// Picks the first ICE server entry with a username and credential (array or single object).
pub fn pick_turn_credentials(body: &[u8]) -> Result<Credentials, LoadError> {
    entries(body)?
        .into_iter()
        .find_map(|s| match (s.username, s.credential) {
            (Some(username), Some(password)) => Some(Credentials { username, password }),
            _ => None,
        })
        .ok_or_else(|| LoadError::Issuer("no TURN username/credential in the answer".into()))
}

/// Picks, in answer order, the first `turn:`/`turns:` URL of `transport` in an entry that has a
/// username and credential.
pub fn pick(body: &[u8], transport: TransportKind) -> Result<Pick, LoadError> {
    for s in entries(body)? {
        let (Some(username), Some(password)) = (&s.username, &s.credential) else { continue };
        if let Some(url) = s.urls.iter().filter_map(TurnUrl::parse).find(|u| u.transport == transport) {
            let credentials = Credentials { username: username.clone(), password: password.clone() };
            return Ok(Pick { url, credentials });
        }
    }
    let scheme = match transport {
        TransportKind::Udp => "turn:...?transport=udp",
        TransportKind::Tcp => "turn:...?transport=tcp",
        TransportKind::Tls => "turns:...?transport=tcp",
    };
    Err(LoadError::Issuer(format!("no {scheme} URL with a credential in the answer")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn url(host: &str, port: u16, transport: TransportKind) -> Option<TurnUrl> {
        Some(TurnUrl { host: host.into(), port, transport })
    }

    #[test]
    fn parses_turn_urls() {
        use TransportKind::*;
        assert_eq!(TurnUrl::parse("turn:127.0.0.1:40001?transport=udp"), url("127.0.0.1", 40001, Udp));
        assert_eq!(TurnUrl::parse("turn:relay.example.org:3478?transport=tcp"), url("relay.example.org", 3478, Tcp));
        assert_eq!(TurnUrl::parse("turns:relay.example.org:443?transport=tcp"), url("relay.example.org", 443, Tls));
        assert_eq!(TurnUrl::parse("turn:a.example"), url("a.example", 3478, Udp));
        assert_eq!(TurnUrl::parse("turns:a.example"), url("a.example", 5349, Tls));
        assert_eq!(TurnUrl::parse("TURN:h:1?Transport=TCP"), url("h", 1, Tcp));
        assert_eq!(TurnUrl::parse("turn:[::1]:3478?transport=udp"), url("::1", 3478, Udp));
        assert_eq!(TurnUrl::parse("turns:[2001:db8::5]?transport=tcp"), url("2001:db8::5", 5349, Tls));
        assert_eq!(TurnUrl::parse("turn:[::1]:3478").unwrap().host_port(), "[::1]:3478");
        assert_eq!(TurnUrl::parse("turn:h:9").unwrap().host_port(), "h:9");
        for bad in [
            "stun:h:3478",
            "turn:",
            "turn:h:0",
            "turn:h:99999",
            "turn:h:x",
            "turn:h:1?transport=sctp",
            "turns:h:1?transport=udp",
            "turn:[::1",
            "turn:[nope]:1",
            "turn:[::1]x",
            "turn:h/p:1",
            "turn:h:1?transport",
            "http://h:1",
        ] {
            assert_eq!(TurnUrl::parse(bad), None, "{bad}");
        }
    }

    const ARRAY: &[u8] = br#"{"iceServers":[
        {"urls":["stun:10.0.0.1:3478","stun:10.0.0.2:3478"]},
        {"urls":["turn:10.0.0.1:3478?transport=udp","turn:10.0.0.1:3478?transport=tcp",
                 "turns:relay1.example:5349?transport=tcp","turn:10.0.0.2:3478?transport=udp",
                 "turn:[fd00::2]:3478?transport=tcp"],
         "username":"u1","credential":"c1"}]}"#;

    #[test]
    fn picks_the_first_url_of_the_transport() {
        let p = pick(ARRAY, TransportKind::Udp).unwrap();
        assert_eq!((p.url.host_port().as_str(), p.credentials.username.as_str()), ("10.0.0.1:3478", "u1"));
        assert_eq!(pick(ARRAY, TransportKind::Tcp).unwrap().url.host_port(), "10.0.0.1:3478");
        let tls = pick(ARRAY, TransportKind::Tls).unwrap();
        assert_eq!(
            (tls.url.host.as_str(), tls.url.port, tls.url.transport),
            ("relay1.example", 5349, TransportKind::Tls)
        );
        assert_eq!(tls.credentials.password, "c1");
    }

    #[test]
    fn picks_from_the_object_shape_and_a_single_url_string() {
        let body = br#"{"iceServers":{"urls":"turn:[::1]:40002?transport=tcp","username":"u2","credential":"c2"}}"#;
        let p = pick(body, TransportKind::Tcp).unwrap();
        assert_eq!((p.url.host_port().as_str(), p.credentials.username.as_str()), ("[::1]:40002", "u2"));
        assert!(pick(body, TransportKind::Udp).is_err(), "no UDP URL in that answer");
    }

    #[test]
    fn skips_entries_without_credentials() {
        let body = br#"{"iceServers":[{"urls":["turn:a:1?transport=udp"]},
            {"urls":["turn:b:2?transport=udp"],"username":"u","credential":"c"}]}"#;
        assert_eq!(pick(body, TransportKind::Udp).unwrap().url.host, "b");
        for bad in [&br#"{"iceServers":[{"urls":["stun:a"]}]}"#[..], b"not json", br#"{"iceServers":[]}"#, b"{}"] {
            let e = pick(bad, TransportKind::Udp).unwrap_err();
            assert_eq!(e.label(), "issuer", "{e}");
        }
    }

    #[test]
    fn picks_turn_entry_from_array_shape() {
        let body = br#"{"iceServers":[{"urls":["stun:a:3478"]},{"urls":["turn:a:3478?transport=udp"],"username":"u1","credential":"c1"}]}"#;
        let c = pick_turn_credentials(body).unwrap();
        assert_eq!((c.username.as_str(), c.password.as_str()), ("u1", "c1"));
    }

    #[test]
    fn picks_turn_entry_from_object_shape() {
        let body = br#"{"iceServers":{"urls":["turn:a:3478"],"username":"u2","credential":"c2"}}"#;
        assert_eq!(pick_turn_credentials(body).unwrap().username, "u2");
    }

    #[test]
    fn rejects_answers_without_credentials() {
        assert!(pick_turn_credentials(br#"{"iceServers":[{"urls":["stun:a"]}]}"#).is_err());
        assert!(pick_turn_credentials(b"not json").is_err());
    }
}
