//! Where an answer comes from: the local relays, the upstream, or both.
//!
//! | local relays can serve | upstream  | array shape                    | object shape          |
//! |------------------------|-----------|--------------------------------|-----------------------|
//! | yes                    | none      | local                          | local                 |
//! | yes                    | fallback  | local                          | local                 |
//! | yes                    | merge     | local, then upstream (upstream failing, or slower than one `timeout_ms`: local only) | local |
//! | no                     | either    | upstream (failure: 502/503/504) | upstream flattened    |
//! | no                     | none      | 503 no relay (429 if only the key's bandwidth cap is reached) | same |
//!
//! "Can serve" means [`crate::RelayStatus::ready`] (fleet mode: the directory chose at least one
//! healthy relay, whose URLs the answer then carries) and not
//! [`crate::RelayStatus::bandwidth_exhausted`] for the key. The object shape carries a single
//! username/credential pair, so merge mode cannot combine there and serves local credentials.

use crate::config::UpstreamMode;
use crate::error::{ApiError, UpstreamFailure};
use crate::ice::{self, Advertised};
use crate::ice_shape::{IceServer, Shape};
use crate::keys::KeyInfo;
use crate::state::IssuerState;
use turnkey_types::Region;

/// The servers to answer with, in the requested shape.
#[derive(Debug)]
pub(crate) enum Servers {
    Array(Vec<IceServer>),
    Object(IceServer),
}

/// An answer: the servers and, when an upstream credential that expires sooner than the
/// requested TTL had to be served (the upstream is failing and only a cached credential is
/// left), the seconds it is still valid; the answer then carries them as `"ttl"`.
#[derive(Debug)]
pub(crate) struct Issued {
    pub servers: Servers,
    pub shorter_ttl: Option<u64>,
}

/// Whether the measured usage reached the cap in the key file (the file is re-read when it
/// changes, so a cap set with `turnkey keys` applies at once).
fn over_cap(state: &IssuerState, key: &KeyInfo) -> bool {
    key.monthly_bandwidth_bytes
        .zip(state.inner.relay.bandwidth(&key.id))
        .is_some_and(|(cap, usage)| usage.used_bytes >= cap)
}

/// Mints (or fetches) credentials for `key`, valid for `ttl` seconds; in fleet mode for relays
/// of `region` first (`None`: the issuer's own).
pub(crate) async fn issue(
    state: &IssuerState,
    key: &KeyInfo,
    ttl: u64,
    custom: Option<&str>,
    shape: Shape,
    region: Option<&Region>,
) -> Result<Issued, ApiError> {
    let s = &state.inner;
    let now = state.now();
    let chosen = s.directory.as_ref().map(|d| Advertised::from_relays(&d.choose(region, s.config.relays_per_answer)));
    let advertised = chosen.as_ref().unwrap_or(&s.advertised);
    let ready = match &chosen {
        Some(a) => a.has_turn(),
        None => s.relay.ready(),
    };
    let exhausted = ready && (s.relay.bandwidth_exhausted(&key.id) || over_cap(state, key));
    if ready && !exhausted {
        let userid = ice::userid(&key.id, custom);
        let cred = s.secrets.mint(&userid, now, ttl).map_err(|e| {
            tracing::error!(error = %e, "minting failed");
            ApiError::Internal
        })?;
        s.metrics.credentials_issued.with_label_values(&[key.id.as_str()]).inc();
        let servers = match shape {
            Shape::Object => Servers::Object(advertised.object(cred.username, cred.password)),
            Shape::Array => {
                let mut servers = advertised.array(cred.username, cred.password);
                if let Some(up) = s.upstream.as_ref().filter(|u| u.config().mode == UpstreamMode::Merge) {
                    // Bounded by one try's timeout, and not waited for at all while the
                    // upstream is failing (see `UpstreamClient::merge_servers`).
                    servers.extend(up.merge_servers(ttl).await.unwrap_or_default());
                }
                Servers::Array(servers)
            }
        };
        return Ok(Issued { servers, shorter_ttl: None });
    }
    let Some(up) = s.upstream.as_ref() else {
        return Err(if exhausted { ApiError::BandwidthExhausted } else { ApiError::NoRelay });
    };
    let served = up.ice_servers(ttl).await?;
    s.metrics.upstream_fallbacks.inc();
    let servers = match shape {
        Shape::Array => Servers::Array(served.servers),
        Shape::Object => {
            Servers::Object(ice::flatten(&served.servers).ok_or(ApiError::Upstream(UpstreamFailure::BadGateway))?)
        }
    };
    Ok(Issued { servers, shorter_ttl: (served.valid_for < ttl).then_some(served.valid_for) })
}
