//! What to do about a run's failures, read from its report: the lines printed after the summary
//! (`hint: ...`). Each names the likely cause and the flag that changes it.

use crate::report::Report;

/// The first UDP retransmission (RFC 8489 RTO): an allocation slower than this lost an answer.
const RTO_US: u64 = 500_000;

/// Hints for `report`; `unauthenticated`: the run sent bare Allocates only (a 401 is expected).
pub fn of(report: &Report, unauthenticated: bool) -> Vec<String> {
    let mut out = Vec::new();
    let count = |k: &str| report.errors.get(k).copied().unwrap_or(0);
    if count("401") > 0 && !unauthenticated {
        out.push(format!(
            "{} refused with 401 Unauthorized: the server does not accept these credentials. turnkey has no \
             static users (--user/--password suit servers that have them): give it its own secret \
             (--secret \"$(cat SECRET_FILE)\", the file of its --secret-file or <data dir>/secret), or its \
             issuer (--issuer URL --key-id ID --token-file F); a minted credential also expires (--credential-ttl)",
            count("401")
        ));
    }
    if count("403") > 0 {
        out.push(format!(
            "{} refused with 403 Forbidden: the relay does not relay to this peer address. turnkey refuses \
             loopback and private peers by default; for --echo-peer (or a --peer-addr) on such an address, \
             start the relay with --allow-peer <that IP> (e.g. --allow-peer 127.0.0.1 on one host)",
            count("403")
        ));
    }
    if report.scenario != "allocations"
        && report.mode == "send"
        && report.traffic.sent > 0
        && report.traffic.delivered == 0
    {
        out.push(
            "every packet was lost: a relay drops a Send indication to a peer it refuses without an error \
             (RFC 8656 §11.2), and turnkey refuses loopback and private peers by default (a CreatePermission \
             for its own relay IP is granted, since other allocations live there, but only on its relay \
             ports); for --echo-peer (or a --peer-addr) on such an address, start the relay with \
             --allow-peer <that IP> (e.g. --allow-peer 127.0.0.1 on one host)"
                .to_owned(),
        );
    }
    if report.transport == "udp" && answers_went_missing(report, unauthenticated) {
        out.push(
            "answers went missing while the server was up: turnkey limits its replies to unauthenticated \
             UDP requests per source IP (unauth_replies_per_sec, default 50/s; every allocation starts with \
             one), so a storm from one host measures that limit. On a test relay lift it with \
             --unauth-replies-per-sec 0 (or spread the load over several source IPs)"
                .to_owned(),
        );
    }
    out
}

/// The server answered some requests but not others: allocations granted while others timed out
/// or needed a retransmission, or bare Allocates answered while others never were.
fn answers_went_missing(report: &Report, unauthenticated: bool) -> bool {
    let a = &report.allocations;
    let count = |k: &str| report.errors.get(k).copied().unwrap_or(0);
    if unauthenticated {
        return count("401") > 0 && count("no answer") > 0;
    }
    a.succeeded > 0 && (count("timeout") > 0 || (a.time_us.count > 0 && a.time_us.p90 >= RTO_US))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn storm(transport: &str, errors: &[(&str, u64)], succeeded: u64, p90_us: u64) -> Report {
        let mut r = Report { scenario: "allocations".into(), transport: transport.into(), ..Report::default() };
        r.errors = errors.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect();
        r.allocations.succeeded = succeeded;
        r.allocations.time_us.count = succeeded;
        r.allocations.time_us.p90 = p90_us;
        r
    }

    #[test]
    fn sends_that_all_vanish_name_the_peer_policy() {
        let mut r =
            Report { scenario: "relay".into(), transport: "tcp".into(), mode: "send".into(), ..Report::default() };
        r.traffic.sent = 50;
        let h = of(&r, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h[0].contains("--allow-peer 127.0.0.1"), "{h:?}");
        r.traffic.delivered = 1;
        assert!(of(&r, false).is_empty());
        r.traffic.delivered = 0;
        r.mode = "channel".into();
        assert!(of(&r, false).is_empty(), "a ChannelBind answers 403 itself");
    }

    #[test]
    fn each_failure_gets_its_flag() {
        let h = of(&storm("udp", &[("401", 20)], 0, 0), false);
        assert_eq!(h.len(), 1);
        assert!(h[0].contains("401") && h[0].contains("--secret"), "{h:?}");
        assert!(of(&storm("udp", &[("401", 20)], 0, 0), true).is_empty());
        let h = of(&storm("tcp", &[("403", 2)], 0, 0), false);
        assert!(h[0].contains("--allow-peer 127.0.0.1"), "{h:?}");
    }

    #[test]
    fn the_reply_limit_is_named_when_answers_go_missing_over_udp() {
        let limited = |h: &[String]| h.iter().any(|l| l.contains("--unauth-replies-per-sec 0"));
        assert!(limited(&of(&storm("udp", &[("timeout", 3)], 900, 20_000), false)));
        assert!(limited(&of(&storm("udp", &[], 900, 1_200_000), false)));
        assert!(limited(&of(&storm("udp", &[("401", 50), ("no answer", 9)], 0, 0), true)));
        assert!(!limited(&of(&storm("udp", &[], 900, 20_000), false)), "a fast clean storm");
        assert!(!limited(&of(&storm("udp", &[("timeout", 9)], 0, 0), false)), "a server that never answered");
        assert!(!limited(&of(&storm("tcp", &[("timeout", 3)], 900, 1_200_000), false)), "TCP is not limited");
    }
}
