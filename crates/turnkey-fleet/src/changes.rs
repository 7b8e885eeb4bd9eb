//! Relay state changes as they happen: relays publish on `<p>relay-changes` when they join, start
//! or stop draining, or leave (in the heartbeat and deregistration scripts, see `registry.rs`);
//! a subscriber learns of each at once, so an issuer updates its listing then (one `GET` of that
//! relay's record, [`Fleet::relay`]) instead of at its next periodic refresh. The periodic
//! refresh stays the fallback: a message lost while the subscription was down is covered by the
//! [`RelayChangeEvent::Subscribed`] event at every (re)subscription and by the next refresh.

use futures_util::StreamExt as _;
use serde::Deserialize;
use tokio::sync::{mpsc, watch};

use crate::client::{Ended, Inner};
use crate::names::NodeId;
use crate::Fleet;

/// What a relay announced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    /// Its record was missing: its first beat, or back after expiring or a Redis restart.
    Joined,
    /// It started draining (SIGTERM).
    Draining,
    /// It stopped draining.
    Resumed,
    /// It deregistered (graceful stop).
    Left,
}

/// One message on `<p>relay-changes`: `{"node_id": "...", "change": "joined"|"draining"|"resumed"|"left"}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct RelayChange {
    /// The relay.
    pub node_id: NodeId,
    /// What changed.
    pub change: Change,
}

/// What a [`Fleet::relay_changes`] subscription delivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RelayChangeEvent {
    /// (Re)subscribed: changes published while not subscribed may have been missed (re-read
    /// the whole listing).
    Subscribed,
    /// A relay changed state.
    Changed(RelayChange),
    /// A message that could not be read (re-read the whole listing).
    Unreadable,
}

impl Fleet {
    /// Subscribes to `<p>relay-changes`: [`RelayChangeEvent::Subscribed`] at every
    /// (re)subscription, then one event per message. After a lost connection it resubscribes
    /// when Redis is back. Events wait in a bounded queue (256): a consumer that does not keep
    /// up slows the subscriber down.
    pub fn relay_changes(&self) -> mpsc::Receiver<RelayChangeEvent> {
        let (tx, rx) = mpsc::channel(256);
        self.inner.spawn_resubscribing("relay-changes", move |inner, mut epoch| {
            let tx = tx.clone();
            async move { (inner.follow_relay_changes(&tx, &mut epoch).await, epoch) }
        });
        rx
    }
}

impl Inner {
    /// One subscription: `Subscribed` once subscribed, then an event per message, until the
    /// connection ends, Redis is seen to reconnect, or the receiver is gone.
    async fn follow_relay_changes(
        &self,
        tx: &mpsc::Sender<RelayChangeEvent>,
        epoch: &mut watch::Receiver<u64>,
    ) -> Ended {
        let mut ps = match self.subscribed(&self.names.relay_changes_channel()).await {
            Ok(ps) => ps,
            Err(why) => return Ended::Lost(why),
        };
        if tx.send(RelayChangeEvent::Subscribed).await.is_err() {
            return Ended::ReceiverGone;
        }
        let mut stream = ps.on_message();
        loop {
            tokio::select! {
                msg = stream.next() => {
                    let Some(msg) = msg else { return Ended::Lost("connection closed".to_owned()) };
                    let ev = match serde_json::from_slice::<RelayChange>(msg.get_payload_bytes()) {
                        Ok(c) => {
                            tracing::debug!(node = %c.node_id, change = ?c.change, "fleet: relay changed");
                            RelayChangeEvent::Changed(c)
                        }
                        Err(e) => {
                            tracing::debug!(error = %e, "fleet: unreadable relay-changes message");
                            RelayChangeEvent::Unreadable
                        }
                    };
                    if tx.send(ev).await.is_err() {
                        return Ended::ReceiverGone;
                    }
                }
                changed = epoch.changed() => {
                    if changed.is_err() {
                        return Ended::ReceiverGone;
                    }
                    // Redis went away and came back: this connection may be a dead one.
                    return Ended::Reconnected;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_parse_as_the_scripts_write_them() {
        let c: RelayChange = serde_json::from_str(r#"{"node_id":"eu-1.a","change":"draining"}"#).unwrap();
        assert_eq!((c.node_id.as_str(), c.change), ("eu-1.a", Change::Draining));
        for (text, change) in [("joined", Change::Joined), ("resumed", Change::Resumed), ("left", Change::Left)] {
            let c: RelayChange = serde_json::from_str(&format!(r#"{{"node_id":"r","change":"{text}"}}"#)).unwrap();
            assert_eq!(c.change, change);
        }
        for bad in [r#"{"node_id":"r","change":"exploded"}"#, r#"{"node_id":"a/b","change":"left"}"#, "left"] {
            assert!(serde_json::from_str::<RelayChange>(bad).is_err(), "{bad}");
        }
    }
}
