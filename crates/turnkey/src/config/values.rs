//! Value types of the binary's own settings: each parses from its config/flag text or fails with
//! a precise message, so a value that exists is valid.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::ops::RangeInclusive;
use std::str::FromStr;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A listening address or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen(pub Option<SocketAddr>);

impl FromStr for Listen {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "off" => Ok(Self(None)),
            s => s.parse().map(|a| Self(Some(a))).map_err(|_| format!("`{s}` is not an IP:port address or `off`")),
        }
    }
}

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(a) => a.fmt(f),
            None => f.write_str("off"),
        }
    }
}

/// Listening addresses of one transport: a list of IP:port, or `["off"]` / `[]` for none.
/// `is_default` marks the built-in list, whose IPv6 entry is skipped on hosts without IPv6.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenList {
    /// The addresses (empty: this transport is off).
    pub addrs: Vec<SocketAddr>,
    /// Whether this is the built-in default.
    pub is_default: bool,
}

impl ListenList {
    /// The built-in default on `port`: every IPv4 and IPv6 address.
    pub fn any(port: u16) -> Self {
        let addrs = vec![SocketAddr::from(([0, 0, 0, 0], port)), SocketAddr::from(([0u16; 8], port))];
        Self { addrs, is_default: true }
    }
}

impl<'de> Deserialize<'de> for ListenList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let list = Vec::<String>::deserialize(d)?;
        if list.len() == 1 && list[0] == "off" {
            return Ok(Self { addrs: Vec::new(), is_default: false });
        }
        let addrs = list
            .iter()
            .map(|s| s.parse().map_err(|_| D::Error::custom(format!("`{s}` is not an IP:port address"))))
            .collect::<Result<_, _>>()?;
        Ok(Self { addrs, is_default: false })
    }
}

impl Serialize for ListenList {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.addrs.is_empty() {
            return ["off"].serialize(s);
        }
        s.collect_seq(self.addrs.iter().map(ToString::to_string))
    }
}

/// At most one IPv4 and one IPv6 address (relay and external addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IpPair {
    /// The IPv4 address.
    pub v4: Option<IpAddr>,
    /// The IPv6 address.
    pub v6: Option<IpAddr>,
}

impl<'de> Deserialize<'de> for IpPair {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut pair = Self::default();
        for s in Vec::<String>::deserialize(d)? {
            match s.parse::<IpAddr>() {
                Ok(ip @ IpAddr::V4(_)) if pair.v4.is_none() => pair.v4 = Some(ip),
                Ok(ip @ IpAddr::V6(_)) if pair.v6.is_none() => pair.v6 = Some(ip),
                Ok(_) => return Err(D::Error::custom("at most one IPv4 and one IPv6 address")),
                Err(_) => return Err(D::Error::custom(format!("`{s}` is not an IP address"))),
            }
        }
        Ok(pair)
    }
}

impl Serialize for IpPair {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.v4.iter().chain(&self.v6).map(ToString::to_string))
    }
}

/// An inclusive port range `LO-HI` with 1 <= LO <= HI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortRange(RangeInclusive<u16>);

impl PortRange {
    /// The ports.
    pub fn range(&self) -> RangeInclusive<u16> {
        self.0.clone()
    }
}

impl Default for PortRange {
    /// The IANA dynamic range, as RFC 8656 recommends.
    fn default() -> Self {
        Self(49152..=65535)
    }
}

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (lo, hi) = s.split_once('-').ok_or_else(|| format!("`{s}` is not LO-HI"))?;
        let lo: u16 = lo.trim().parse().map_err(|_| format!("`{lo}` is not a port"))?;
        let hi: u16 = hi.trim().parse().map_err(|_| format!("`{hi}` is not a port"))?;
        if lo == 0 || lo > hi {
            return Err(format!("`{s}`: need 1 <= LO <= HI"));
        }
        Ok(Self(lo..=hi))
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.0.start(), self.0.end())
    }
}

/// The REALM: 1 to 127 characters (RFC 8489 §14.9).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Realm(String);

impl Realm {
    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Realm {
    fn default() -> Self {
        Self("turnkey".to_owned())
    }
}

impl FromStr for Realm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.is_empty() || s.len() > 127 {
            return Err("must be 1 to 127 characters".to_owned());
        }
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Display for Realm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Log output: `text` or `json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Shared secrets, newest first; none may be blank.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Secrets(pub Vec<String>);

impl<'de> Deserialize<'de> for Secrets {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let list = Vec::<String>::deserialize(d)?;
        if list.iter().any(|s| s.trim().is_empty()) {
            return Err(D::Error::custom("secrets must not be empty"));
        }
        Ok(Self(list))
    }
}

/// A connection cap: `"auto"` (sized from the process's open-file limit when the listener
/// starts) or a number of connections, at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConnCap {
    /// Sized at start from `RLIMIT_NOFILE` (see `fdlimit::http_limits`).
    #[default]
    Auto,
    /// This many connections.
    Fixed(NonZeroU32),
}

impl FromStr for ConnCap {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s == "auto" {
            return Ok(Self::Auto);
        }
        match s.parse::<u32>() {
            Ok(n) => Self::fixed(u64::from(n)),
            Err(_) => Err(format!("`{s}` is not `auto` or a number of connections")),
        }
    }
}

impl ConnCap {
    fn fixed(n: u64) -> Result<Self, String> {
        u32::try_from(n)
            .ok()
            .and_then(NonZeroU32::new)
            .map(Self::Fixed)
            .ok_or_else(|| format!("must be `auto` or 1 to {}, not {n}", u32::MAX))
    }
}

impl fmt::Display for ConnCap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Auto => f.write_str("auto"),
            Self::Fixed(n) => n.fmt(f),
        }
    }
}

impl Serialize for ConnCap {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Auto => s.serialize_str("auto"),
            Self::Fixed(n) => s.serialize_u32(n.get()),
        }
    }
}

impl<'de> Deserialize<'de> for ConnCap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = ConnCap;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("`auto` or a number of connections")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<ConnCap, E> {
                match v {
                    "auto" => Ok(ConnCap::Auto),
                    _ => Err(E::custom(format!("`{v}` is not `auto` or a number of connections"))),
                }
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<ConnCap, E> {
                ConnCap::fixed(v).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<ConnCap, E> {
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::custom(format!("must be `auto` or 1 to {}, not {v}", u32::MAX))),
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// Serde through `FromStr` / `Display`, for value types written as one string.
pub mod text {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::de::Error as _;
    use serde::{Deserialize as _, Deserializer, Serializer};

    /// Serializes with `Display`.
    pub fn serialize<T: Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(v)
    }

    /// Deserializes with `FromStr`.
    pub fn deserialize<'de, T, D>(d: D) -> Result<T, D::Error>
    where
        T: FromStr<Err: Display>,
        D: Deserializer<'de>,
    {
        String::deserialize(d)?.parse().map_err(D::Error::custom)
    }
}

/// Serde of a list through `FromStr` / `Display` (peer rules).
pub mod text_list {
    use std::fmt::Display;
    use std::str::FromStr;

    use serde::de::Error as _;
    use serde::{Deserialize as _, Deserializer, Serializer};

    /// Serializes each item with `Display`.
    pub fn serialize<T: Display, S: Serializer>(v: &[T], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(ToString::to_string))
    }

    /// Deserializes each item with `FromStr`.
    pub fn deserialize<'de, T, D>(d: D) -> Result<Vec<T>, D::Error>
    where
        T: FromStr<Err: Display>,
        D: Deserializer<'de>,
    {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|s| s.parse().map_err(|e| D::Error::custom(format!("`{s}`: {e}"))))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges() {
        assert_eq!("1000-2000".parse::<PortRange>().unwrap().range(), 1000..=2000);
        for bad in ["0-10", "2000-1000", "abc", "1-x"] {
            assert!(bad.parse::<PortRange>().is_err(), "{bad}");
        }
    }

    #[test]
    fn listen_values() {
        assert_eq!("off".parse::<Listen>().unwrap(), Listen(None));
        assert_eq!("127.0.0.1:1".parse::<Listen>().unwrap().to_string(), "127.0.0.1:1");
        assert!("nope".parse::<Listen>().is_err());
        assert_eq!(ListenList::any(3478).addrs.len(), 2);
    }

    #[test]
    fn connection_caps() {
        assert_eq!("auto".parse::<ConnCap>().unwrap(), ConnCap::Auto);
        assert_eq!("7".parse::<ConnCap>().unwrap().to_string(), "7");
        for bad in ["0", "-1", "many", "4294967296"] {
            assert!(bad.parse::<ConnCap>().is_err(), "{bad}");
        }
    }
}
