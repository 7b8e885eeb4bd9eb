//! What answering `GET /v1/sessions` costs the issuer for N live sessions (50,000 by default,
//! `--sessions N`): the scope and filter, the id sort, the page and its JSON, for one user's
//! sessions (the operator's usual question), the first page of everything, and every page of
//! 1000 (a full `turnkey sessions --json`). Run with
//! `cargo run --release -p turnkey-issuer --example sessions_list_bench`.

#![allow(clippy::unwrap_used, clippy::disallowed_methods, reason = "a benchmark: it reads the clock and fails loudly")]

use std::time::{Duration, Instant};

use turnkey_issuer::{select, Scope, Session, SessionQuery, SessionTransport};

fn sessions(n: u64) -> Vec<Session> {
    let keys = ["0123456789abcdef0123456789abcdef", "fedcba9876543210fedcba9876543210"];
    (0..n)
        .map(|i| {
            let key = keys[(i % 2) as usize];
            let user = format!("user{}", i % 5_000);
            Session {
                id: format!("{:016x}", (7u64 << 32) | (i * 7919 % n)),
                node: "relay-1".to_owned(),
                key: Some(key.to_owned()),
                username: format!("1800000000:{key}:{user}"),
                user,
                transport: [SessionTransport::Udp, SessionTransport::Tcp, SessionTransport::Tls][(i % 3) as usize],
                client: format!("10.{}.{}.{}:40000", (i >> 16) & 255, (i >> 8) & 255, i & 255).parse().unwrap(),
                server: "192.0.2.1:3478".parse().unwrap(),
                relayed: vec![format!("192.0.2.1:{}", 1024 + i % 60_000).parse().unwrap()],
                permissions: 1,
                channels: 1,
                created: 1_800_000_000,
                expires: 1_800_000_600,
                bytes_client_to_peer: i * 1000,
                bytes_peer_to_client: i * 1000,
                packets_client_to_peer: i,
                packets_peer_to_client: i,
                fast_path: false,
            }
        })
        .collect()
}

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1000.0
}

fn query(pairs: &[(&str, &str)]) -> SessionQuery {
    let pairs: Vec<(String, String)> = pairs.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect();
    SessionQuery::from_pairs(&pairs).unwrap()
}

fn main() {
    let mut args = std::env::args().skip(1);
    let mut n: u64 = 50_000;
    while let Some(a) = args.next() {
        if a == "--sessions" {
            n = args.next().and_then(|s| s.parse().ok()).expect("--sessions N");
        }
    }
    let all = sessions(n);
    let (mut one_user, mut first_page, mut every_page) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..7 {
        // Each answer starts from a fresh copy of the listing, as the handler gets one.
        let copy = all.clone();
        let t = Instant::now();
        let page = select(copy, &Scope::Key("0123456789abcdef0123456789abcdef".into()), &query(&[("user", "user42")]));
        let _json = serde_json::to_vec(&page).unwrap();
        one_user.push(t.elapsed());
        assert_eq!(page.sessions.len(), 10);

        let copy = all.clone();
        let t = Instant::now();
        let page = select(copy, &Scope::All, &query(&[]));
        let _json = serde_json::to_vec(&page).unwrap();
        first_page.push(t.elapsed());

        let t = Instant::now();
        let mut q = query(&[("limit", "1000")]);
        let mut seen = 0;
        loop {
            let page = select(all.clone(), &Scope::All, &q);
            let _json = serde_json::to_vec(&page).unwrap();
            seen += page.sessions.len();
            match page.next_cursor {
                Some(c) => q.cursor = Some(c),
                None => break,
            }
        }
        every_page.push(t.elapsed());
        assert_eq!(seen as u64, n);
    }
    println!(
        "{{\"sessions\": {n}, \"one_user_ms\": {:.2}, \"first_page_ms\": {:.2}, \"every_page_of_1000_ms\": {:.2}}}",
        median(one_user),
        median(first_page),
        median(every_page)
    );
}
