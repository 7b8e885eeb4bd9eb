//! Answers of a credential issuer in Cloudflare's shape (`{"iceServers": [...]}` or
//! `{"iceServers": {...}}`): the TURN URLs in them (RFC 7065 `turn:` / `turns:` URIs) and which
//! one a client of a given transport allocates at, with which credential.

use serde::Deserialize;

use turnkey_types::{Transport, TurnUrl};

use crate::client::Credentials;
use crate::LoadError;

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
pub fn pick(body: &[u8], transport: Transport) -> Result<Pick, LoadError> {
    for s in entries(body)? {
        let (Some(username), Some(password)) = (&s.username, &s.credential) else { continue };
        let mut urls = s.urls.iter().filter_map(|u| u.parse::<TurnUrl>().ok());
        if let Some(url) = urls.find(|u| u.transport() == Some(transport)) {
            let credentials = Credentials { username: username.clone(), password: password.clone() };
            return Ok(Pick { url, credentials });
        }
    }
    let scheme = match transport {
        Transport::Udp => "turn:...?transport=udp",
        Transport::Tcp => "turn:...?transport=tcp",
        Transport::Tls => "turns:...?transport=tcp",
    };
    Err(LoadError::Issuer(format!("no {scheme} URL with a credential in the answer")))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The URL forms issuers hand out, as the shared `TurnUrl` reads them (`stun:` URLs and
    /// malformed ones are skipped by [`pick`]).
    #[test]
    fn parses_turn_urls() {
        use Transport::*;
        let url = |s: &str| s.parse::<TurnUrl>().ok().and_then(|u| Some((u.host.clone(), u.port, u.transport()?)));
        let want = |h: &str, p: u16, t: Transport| Some((h.to_owned(), p, t));
        assert_eq!(url("turn:127.0.0.1:40001?transport=udp"), want("127.0.0.1", 40001, Udp));
        assert_eq!(url("turn:relay.example.org:3478?transport=tcp"), want("relay.example.org", 3478, Tcp));
        assert_eq!(url("turns:relay.example.org:443?transport=tcp"), want("relay.example.org", 443, Tls));
        assert_eq!(url("turn:a.example"), want("a.example", 3478, Udp));
        assert_eq!(url("turns:a.example"), want("a.example", 5349, Tls));
        assert_eq!(url("TURN:h:1?Transport=TCP"), want("h", 1, Tcp));
        assert_eq!(url("turn:[::1]:3478?transport=udp"), want("::1", 3478, Udp));
        assert_eq!(url("turns:[2001:db8::5]?transport=tcp"), want("2001:db8::5", 5349, Tls));
        assert_eq!("turn:[::1]:3478".parse::<TurnUrl>().unwrap().host_port(), "[::1]:3478");
        assert_eq!("turn:h:9".parse::<TurnUrl>().unwrap().host_port(), "h:9");
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
            assert_eq!(url(bad), None, "{bad}");
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
        let p = pick(ARRAY, Transport::Udp).unwrap();
        assert_eq!((p.url.host_port().as_str(), p.credentials.username.as_str()), ("10.0.0.1:3478", "u1"));
        assert_eq!(pick(ARRAY, Transport::Tcp).unwrap().url.host_port(), "10.0.0.1:3478");
        let tls = pick(ARRAY, Transport::Tls).unwrap();
        assert_eq!(
            (tls.url.host.as_str(), tls.url.port, tls.url.transport()),
            ("relay1.example", 5349, Some(Transport::Tls))
        );
        assert_eq!(tls.credentials.password, "c1");
    }

    #[test]
    fn picks_from_the_object_shape_and_a_single_url_string() {
        let body = br#"{"iceServers":{"urls":"turn:[::1]:40002?transport=tcp","username":"u2","credential":"c2"}}"#;
        let p = pick(body, Transport::Tcp).unwrap();
        assert_eq!((p.url.host_port().as_str(), p.credentials.username.as_str()), ("[::1]:40002", "u2"));
        assert!(pick(body, Transport::Udp).is_err(), "no UDP URL in that answer");
    }

    #[test]
    fn skips_entries_without_credentials() {
        let body = br#"{"iceServers":[{"urls":["turn:a:1?transport=udp"]},
            {"urls":["turn:b:2?transport=udp"],"username":"u","credential":"c"}]}"#;
        assert_eq!(pick(body, Transport::Udp).unwrap().url.host, "b");
        for bad in [&br#"{"iceServers":[{"urls":["stun:a"]}]}"#[..], b"not json", br#"{"iceServers":[]}"#, b"{}"] {
            let e = pick(bad, Transport::Udp).unwrap_err();
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
