//! The `iceServers` shapes of the Cloudflare API and how turnkey fills them from its advertised
//! listeners and a minted credential.
//!
//! The userid inside minted usernames is `<keyid>:<customIdentifier>`, or `<keyid>:~<16 hex>`
//! (a per-credential id) when no identifier is given, so the username is
//! `<expiry>:<keyid>:<label>`: the relay attributes usage to the key (the part before the first
//! colon) and the label, and its per-userid allocation quota applies per end user rather than to a
//! whole key. `~` never survives sanitizing, so a per-credential id cannot collide with a label.
//! A `customIdentifier` keeps at most [`MAX_CUSTOM_ID_LEN`] characters; characters other than
//! ASCII letters, digits and `-_.@` are replaced by `_`.

use crate::config::{AdvertiseConfig, Endpoint};
use crate::ice_shape::IceServer;
use turnkey_types::{Transport, TurnUrl, UrlKind};

/// The longest `customIdentifier` kept (longer ones are truncated).
pub const MAX_CUSTOM_ID_LEN: usize = 64;

/// The URL lists built once from the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertised {
    stun: Vec<String>,
    turn: Vec<String>,
}

impl Advertised {
    /// Builds `stun:host:port`, `turn:host:port?transport=udp|tcp`, `turns:host:port?transport=tcp`.
    pub fn new(public_host: &str, a: &AdvertiseConfig) -> Self {
        let fmt = |kind: UrlKind, e: &Endpoint| {
            TurnUrl::new(kind, e.host.as_deref().unwrap_or(public_host), e.port).to_string()
        };
        let stun = a.stun.iter().map(|e| fmt(UrlKind::Stun, e)).collect();
        let turn = a
            .turn_udp
            .iter()
            .map(|e| fmt(UrlKind::Turn(Transport::Udp), e))
            .chain(a.turn_tcp.iter().map(|e| fmt(UrlKind::Turn(Transport::Tcp), e)))
            .chain(a.turns_tls.iter().map(|e| fmt(UrlKind::Turn(Transport::Tls), e)))
            .collect();
        Self { stun, turn }
    }

    /// The URLs of relays chosen from the fleet registry: every relay's TURN URLs (best relay
    /// first) and a STUN URL on each relay's UDP TURN port.
    pub fn from_relays(relays: &[crate::fleet::HandoutRelay]) -> Self {
        let turn: Vec<String> = relays.iter().flat_map(|r| r.urls.iter().cloned()).collect();
        let mut stun: Vec<String> = Vec::new();
        for s in turn.iter().filter_map(|u| crate::fleet::stun_of(u)) {
            if !stun.contains(&s) {
                stun.push(s);
            }
        }
        Self { stun, turn }
    }

    /// Whether there is any TURN URL to hand out.
    pub fn has_turn(&self) -> bool {
        !self.turn.is_empty()
    }

    /// The array shape: the STUN entry (if any STUN URL), then one TURN entry with the credential.
    pub fn array(&self, username: String, credential: String) -> Vec<IceServer> {
        let mut v = self.stun_only();
        v.push(IceServer { urls: self.turn.clone(), username: Some(username), credential: Some(credential) });
        v
    }

    /// The object shape: every URL (STUN first) in one entry with the credential.
    pub fn object(&self, username: String, credential: String) -> IceServer {
        IceServer {
            urls: self.stun.iter().chain(&self.turn).cloned().collect(),
            username: Some(username),
            credential: Some(credential),
        }
    }

    /// The STUN-only answer used when nothing can issue TURN credentials.
    pub fn stun_only(&self) -> Vec<IceServer> {
        if self.stun.is_empty() {
            return Vec::new();
        }
        vec![IceServer { urls: self.stun.clone(), username: None, credential: None }]
    }
}

/// Flattens an array-shape answer (from the upstream) into the object shape: every URL, and the
/// first username/credential pair found. `None` if no entry carries a credential.
pub fn flatten(servers: &[IceServer]) -> Option<IceServer> {
    let with_cred = servers.iter().find(|s| s.username.is_some() && s.credential.is_some())?;
    Some(IceServer {
        urls: servers.iter().flat_map(|s| s.urls.iter().cloned()).collect(),
        username: with_cred.username.clone(),
        credential: with_cred.credential.clone(),
    })
}

/// The userid for a credential minted for `key_id` with an optional `customIdentifier`.
pub fn userid(key_id: &str, custom: Option<&str>) -> String {
    match custom.map(sanitize_custom_id) {
        Some(c) if !c.is_empty() => format!("{key_id}:{c}"),
        _ => format!("{key_id}:~{:016x}", rand::random::<u64>()),
    }
}

/// Truncates to [`MAX_CUSTOM_ID_LEN`] characters and replaces anything outside `[A-Za-z0-9._@-]`.
pub fn sanitize_custom_id(s: &str) -> String {
    s.chars()
        .take(MAX_CUSTOM_ID_LEN)
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '@') { c } else { '_' })
        .collect()
}

/// The key id a userid was minted for (the part before the first colon).
pub fn key_of_userid(userid: &str) -> &str {
    userid.split_once(':').map_or(userid, |(k, _)| k)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ice_shape::IceServersArray;

    #[test]
    fn default_listeners_in_contract_order() {
        let a = Advertised::new("turn.example.com", &AdvertiseConfig::default());
        let arr = a.array("u".into(), "p".into());
        assert_eq!(arr[0].urls, vec!["stun:turn.example.com:3478"]);
        assert!(arr[0].username.is_none());
        assert_eq!(
            arr[1].urls,
            vec![
                "turn:turn.example.com:3478?transport=udp",
                "turn:turn.example.com:3478?transport=tcp",
                "turns:turn.example.com:5349?transport=tcp",
            ]
        );
        let obj = a.object("u".into(), "p".into());
        assert_eq!(obj.urls.len(), 4);
        assert_eq!(obj.urls[0], "stun:turn.example.com:3478");
    }

    #[test]
    fn fleet_relays_in_one_turn_entry() {
        use crate::fleet::HandoutRelay;
        let r = |id: &str, host: &str| HandoutRelay {
            node_id: turnkey_types::NodeId::new(id).unwrap(),
            urls: vec![format!("turn:{host}:3478?transport=udp"), format!("turns:{host}:5349?transport=tcp")],
        };
        let a = Advertised::from_relays(&[r("a", "10.0.0.1"), r("b", "10.0.0.2")]);
        let arr = a.array("u".into(), "p".into());
        assert_eq!(arr[0].urls, vec!["stun:10.0.0.1:3478", "stun:10.0.0.2:3478"]);
        assert_eq!(arr[1].urls.len(), 4);
        assert_eq!(arr[1].urls[0], "turn:10.0.0.1:3478?transport=udp");
        assert_eq!(arr[1].urls[2], "turn:10.0.0.2:3478?transport=udp");
    }

    #[test]
    fn ipv6_hosts_are_bracketed() {
        let a = Advertised::new("2001:db8::1", &AdvertiseConfig::default());
        assert_eq!(a.stun_only()[0].urls[0], "stun:[2001:db8::1]:3478");
    }

    #[test]
    fn userid_format_and_sanitizing() {
        let k = "0123456789abcdef0123456789abcdef";
        for anon in [userid(k, None), userid(k, Some(""))] {
            let label = anon.strip_prefix(&format!("{k}:~")).unwrap();
            assert!(label.len() == 16 && label.bytes().all(|b| b.is_ascii_hexdigit()), "{anon}");
        }
        assert_ne!(userid(k, None), userid(k, None), "each credential gets its own id");
        assert_eq!(userid(k, Some("user4523958")), format!("{k}:user4523958"));
        assert_eq!(userid(k, Some("a b/c:d")), format!("{k}:a_b_c_d"));
        assert_eq!(sanitize_custom_id(&"x".repeat(500)).len(), MAX_CUSTOM_ID_LEN);
        assert_eq!(key_of_userid(&format!("{k}:x:y")), k);
        assert_eq!(key_of_userid(k), k);
    }

    #[test]
    fn upstream_string_urls_and_flatten() {
        let v: IceServersArray = serde_json::from_str(
            r#"{"iceServers":[{"urls":"stun:a:3478"},{"urls":["turn:a:3478"],"username":"u","credential":"c"}]}"#,
        )
        .unwrap();
        let f = flatten(&v.ice_servers).unwrap();
        assert_eq!(f.urls, vec!["stun:a:3478", "turn:a:3478"]);
        assert_eq!(f.username.as_deref(), Some("u"));
        assert!(flatten(&v.ice_servers[..1]).is_none());
    }
}
