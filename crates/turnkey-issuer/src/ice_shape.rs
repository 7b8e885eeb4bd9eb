//! The `iceServers` shapes of the Cloudflare API on the wire: one entry ([`IceServer`]), the
//! array and object answers, and which of the two an answer has ([`Shape`]). A leaf: the
//! settings, the error answers and the issuing code all speak it.

use serde::{Deserialize, Serialize};

/// One RTCIceServer entry. Fields serialize in Cloudflare's order: `urls`, `username`,
/// `credential` (keep it: some clients log or snapshot the raw JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    /// `stun:`, `turn:` or `turns:` URLs.
    #[serde(deserialize_with = "one_or_many")]
    pub urls: Vec<String>,
    /// TURN username (absent on a STUN-only entry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    /// TURN password (absent on a STUN-only entry).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

/// Which `iceServers` shape an answer has.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Shape {
    /// `{"iceServers": [{STUN urls}, {TURN urls, username, credential}]}` (generate-ice-servers).
    #[default]
    Array,
    /// `{"iceServers": {urls, username, credential}}` (Cloudflare's older `generate`).
    Object,
}

impl Shape {
    /// Parses `array` or `object` (the `?shape=` values), exactly.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "array" => Some(Self::Array),
            "object" => Some(Self::Object),
            _ => None,
        }
    }
}

/// The array shape: `{"iceServers": [...]}` (generate-ice-servers and the app endpoints).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IceServersArray {
    /// STUN entry first, then TURN entries.
    pub ice_servers: Vec<IceServer>,
}

/// The object shape of the older `generate` endpoint: `{"iceServers": {urls, username, credential}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IceServersObject {
    /// One entry with every URL.
    pub ice_servers: IceServer,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}
