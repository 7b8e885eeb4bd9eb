//! Where an answer comes from: the local relays, the upstream, or both.
//!
//! | local relays can serve | upstream  | array shape                    | object shape          |
//! |------------------------|-----------|--------------------------------|-----------------------|
//! | yes                    | none      | local                          | local                 |
//! | yes                    | fallback  | local                          | local                 |
//! | yes                    | merge     | local, then upstream (upstream failed or slower than one `timeout_ms`: local only) | local |
//! | no                     | either    | upstream (failure: 502/503/504) | upstream flattened    |
//! | no                     | none      | 503 no relay (429 if only the key's bandwidth cap is reached) | same |
//!
//! "Can serve" means [`crate::RelayStatus::ready`] and not
//! [`crate::RelayStatus::bandwidth_exhausted`] for the key. The object shape carries a single
//! username/credential pair, so merge mode cannot combine there and serves local credentials.

use crate::error::{ApiError, UpstreamFailure};
use crate::ice::{self, IceServer};
use crate::keys::KeyInfo;
use crate::state::IssuerState;

/// Which response shape is wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Shape {
    /// `{"iceServers": [...]}`.
    Array,
    /// `{"iceServers": {...}}`.
    Object,
}

/// The servers to answer with, in the requested shape.
#[derive(Debug)]
pub(crate) enum Issued {
    Array(Vec<IceServer>),
    Object(IceServer),
}

/// Whether the measured usage reached the cap in the key file (the file is re-read when it
/// changes, so a cap set with `turnkey keys` applies at once).
fn over_cap(state: &IssuerState, key: &KeyInfo) -> bool {
    key.monthly_bandwidth_bytes
        .zip(state.inner.relay.bandwidth(&key.id))
        .is_some_and(|(cap, usage)| usage.used_bytes >= cap)
}

/// Mints (or fetches) credentials for `key`.
pub(crate) async fn issue(
    state: &IssuerState,
    key: &KeyInfo,
    ttl: u64,
    custom: Option<&str>,
    shape: Shape,
) -> Result<Issued, ApiError> {
    let s = &state.inner;
    let now = state.now();
    let ready = s.relay.ready();
    let exhausted = ready && (s.relay.bandwidth_exhausted(&key.id) || over_cap(state, key));
    if ready && !exhausted {
        let userid = ice::userid(&key.id, custom);
        let cred = s.secrets.mint(&userid, now, ttl).map_err(|e| {
            tracing::error!(error = %e, "minting failed");
            ApiError::Internal
        })?;
        s.metrics.credentials_issued.with_label_values(&[key.id.as_str()]).inc();
        return Ok(match shape {
            Shape::Object => Issued::Object(s.advertised.object(cred.username, cred.password)),
            Shape::Array => {
                let mut servers = s.advertised.array(cred.username, cred.password);
                if let Some(up) = s.upstream.as_ref().filter(|u| u.config().mode == crate::config::UpstreamMode::Merge)
                {
                    // Local credentials are ready: wait for the upstream at most one try's
                    // timeout rather than through all retries and backoffs.
                    let limit = std::time::Duration::from_millis(up.config().timeout_ms);
                    let fetched =
                        tokio::time::timeout(limit, up.ice_servers(now)).await.unwrap_or(Err(UpstreamFailure::Timeout));
                    match fetched {
                        Ok(extra) => servers.extend(extra),
                        Err(kind) => {
                            tracing::warn!(?kind, "upstream failed in merge mode; serving local only");
                        }
                    }
                }
                Issued::Array(servers)
            }
        });
    }
    let Some(up) = s.upstream.as_ref() else {
        return Err(if exhausted { ApiError::BandwidthExhausted } else { ApiError::NoRelay });
    };
    let servers = up.ice_servers(now).await?;
    s.metrics.upstream_fallbacks.inc();
    Ok(match shape {
        Shape::Array => Issued::Array(servers),
        Shape::Object => Issued::Object(ice::flatten(&servers).ok_or(ApiError::Upstream(UpstreamFailure::BadGateway))?),
    })
}
