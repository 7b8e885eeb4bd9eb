//! `turnkey sessions` (live allocations as a table or `--json`) and `turnkey sessions kill ID`,
//! from an issuer (`--issuer URL --token T`: its `/v1/sessions`) or from the fleet's Redis
//! (`--redis URL`: the relays' session index, every key's sessions).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use turnkey_issuer::{Scope, Session, SessionPage, SessionQuery, MAX_LIMIT};

use crate::cli::{SessionsAction, SessionsArgs};
use crate::process::runtime;

/// `turnkey sessions [kill ID]`.
pub fn sessions(args: SessionsArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        match &args.action {
            Some(SessionsAction::Kill { id }) => kill(&args, id).await,
            None => list(&args).await,
        }
    })
}

/// The filters as query pairs (the API's names).
fn filters(args: &SessionsArgs) -> Vec<(String, String)> {
    let f = &args.filters;
    let mut pairs = Vec::new();
    let mut add = |name: &str, v: &Option<String>| {
        if let Some(v) = v {
            pairs.push((name.to_owned(), v.clone()));
        }
    };
    add("user", &f.user);
    add("key", &f.key);
    add("client_ip", &f.client_ip);
    add("node", &f.node);
    add("transport", &f.transport);
    pairs
}

async fn list(args: &SessionsArgs) -> anyhow::Result<()> {
    let all = match (&args.issuer, &args.redis.redis) {
        (Some(url), _) => from_issuer(url, token(args)?, args).await?,
        (None, Some(_)) => from_redis(args).await?,
        (None, None) => anyhow::bail!("give --issuer URL --token T, or --redis URL"),
    };
    if args.json {
        println!("{}", serde_json::to_string(&all)?);
    } else {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        print!("{}", table(&all, now));
    }
    Ok(())
}

fn token(args: &SessionsArgs) -> anyhow::Result<&str> {
    args.token.as_deref().context("--issuer needs --token (a key's token, or an operator token for every key)")
}

fn client() -> anyhow::Result<reqwest::Client> {
    Ok(reqwest::Client::builder().timeout(Duration::from_secs(15)).build()?)
}

/// Every page of the issuer's listing (up to `--limit` sessions).
async fn from_issuer(base: &str, token: &str, args: &SessionsArgs) -> anyhow::Result<Vec<Session>> {
    let http = client()?;
    let url = format!("{}/v1/sessions", base.trim_end_matches('/'));
    let mut out: Vec<Session> = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let want = args.limit.map_or(MAX_LIMIT, |l| l.saturating_sub(out.len()).min(MAX_LIMIT));
        if want == 0 {
            break;
        }
        let mut query = filters(args);
        query.push(("limit".to_owned(), want.to_string()));
        if let Some(c) = cursor.take() {
            query.push(("cursor".to_owned(), c));
        }
        let resp =
            http.get(&url).query(&query).bearer_auth(token).send().await.with_context(|| format!("GET {url}"))?;
        let status = resp.status();
        let text = resp.text().await.with_context(|| format!("GET {url}"))?;
        anyhow::ensure!(status.is_success(), "GET {url}: {status} {text}");
        let page: SessionPage =
            serde_json::from_str(&text).with_context(|| format!("GET {url}: not a session page"))?;
        out.extend(page.sessions);
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    Ok(out)
}

/// The fleet's session index, filtered here exactly as the issuer would for an operator.
async fn from_redis(args: &SessionsArgs) -> anyhow::Result<Vec<Session>> {
    let fleet = crate::fleet_cmd::connect(&args.redis).await?;
    let all = crate::fleet_sessions::read_index(&fleet).await?;
    let mut q = SessionQuery::from_pairs(&filters(args)).map_err(|e| anyhow::anyhow!("{}", e.message()))?;
    q.limit = args.limit.unwrap_or(usize::MAX).max(1);
    Ok(turnkey_issuer::select(all, &Scope::All, &q).sessions)
}

async fn kill(args: &SessionsArgs, id: &str) -> anyhow::Result<()> {
    anyhow::ensure!(turnkey_issuer::is_session_id(id), "a session id is 16 hex digits");
    match (&args.issuer, &args.redis.redis) {
        (Some(base), _) => {
            let url = format!("{}/v1/sessions/{id}", base.trim_end_matches('/'));
            let resp = client()?
                .delete(&url)
                .bearer_auth(token(args)?)
                .send()
                .await
                .with_context(|| format!("DELETE {url}"))?;
            let status = resp.status();
            let text = resp.text().await.unwrap_or_default();
            anyhow::ensure!(status.is_success(), "DELETE {url}: {status} {text}");
        }
        (None, Some(_)) => {
            let fleet = crate::fleet_cmd::connect(&args.redis).await?;
            let all = crate::fleet_sessions::read_index(&fleet).await?;
            let session = all.into_iter().find(|s| s.id == id).with_context(|| format!("no such session: {id}"))?;
            let ended = crate::fleet_sessions::end(&fleet, &session).await?;
            anyhow::ensure!(ended, "no such session: {id}");
        }
        (None, None) => anyhow::bail!("give --issuer URL --token T, or --redis URL"),
    }
    println!("ended {id}");
    Ok(())
}

/// A duration in seconds, short (`42s`, `3m`, `2h`).
fn short(secs: u64) -> String {
    match secs {
        0..=119 => format!("{secs}s"),
        120..=7199 => format!("{}m", secs / 60),
        _ => format!("{}h", secs / 3600),
    }
}

/// The sessions as an aligned text table, one per line.
fn table(sessions: &[Session], now: u64) -> String {
    let head = [
        "ID",
        "NODE",
        "KEY",
        "USER",
        "TRANSPORT",
        "CLIENT",
        "RELAYED",
        "PERMS",
        "CHANS",
        "AGE",
        "EXPIRES",
        "BYTES_OUT",
        "BYTES_IN",
    ];
    let mut rows: Vec<Vec<String>> = vec![head.iter().map(|s| (*s).to_owned()).collect()];
    for s in sessions {
        let relayed: Vec<String> = s.relayed.iter().map(ToString::to_string).collect();
        rows.push(vec![
            s.id.clone(),
            s.node.clone(),
            s.key.clone().unwrap_or_else(|| "-".to_owned()),
            s.user.clone(),
            s.transport.as_str().to_owned(),
            s.client.to_string(),
            relayed.join(","),
            s.permissions.to_string(),
            s.channels.to_string(),
            short(now.saturating_sub(s.created)),
            short(s.expires.saturating_sub(now)),
            s.bytes_client_to_peer.to_string(),
            s.bytes_peer_to_client.to_string(),
        ]);
    }
    crate::fleet_cmd::aligned(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_a_row_per_session() {
        let s: Session = serde_json::from_value(serde_json::json!({
            "id": "00000001000000aa", "node": "r1", "key": null, "user": "alice", "username": "9:alice",
            "transport": "tcp", "client": "192.0.2.1:5000", "server": "192.0.2.9:3478",
            "relayed": ["192.0.2.9:50000"], "permissions": 1, "channels": 2, "created": 1000,
            "expires": 1600, "bytes_client_to_peer": 10, "bytes_peer_to_client": 20,
            "packets_client_to_peer": 1, "packets_peer_to_client": 2, "fast_path": false
        }))
        .unwrap();
        let t = table(&[s], 1100);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 2, "{t}");
        assert!(lines[0].starts_with("ID"));
        for cell in ["00000001000000aa", "r1", " - ", "alice", "tcp", "192.0.2.9:50000", "100s", "8m", "10", "20"] {
            assert!(lines[1].contains(cell), "{cell} in {t}");
        }
    }
}
