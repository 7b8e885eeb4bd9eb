//! One-shot fleet commands: `turnkey keys ... --redis URL` (keys live in the fleet's Redis: a key
//! created here works on every issuer within 2 s; a deleted one is revoked everywhere) and
//! `turnkey fleet` (the relay table, from Redis or from an issuer's `GET /v1/fleet`).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use serde_json::Value;
use turnkey_fleet::{Fleet, FleetConfig, FleetMetrics, NodeId};
use turnkey_issuer::{FleetListing, KeyOptions, ABSOLUTE_MAX_TTL};

use crate::cli::{FleetCmdArgs, KeysAction, KeysArgs, RedisArgs};
use crate::process::runtime;

/// `turnkey keys create|list|delete --redis URL`.
pub fn keys(args: KeysArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async move {
        let fleet = connect(&args.redis).await?;
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        match args.action {
            KeysAction::Create { max_ttl, monthly_bandwidth_bytes, admin } => {
                let (new, rec) =
                    crate::issuer_fleet::new_key_record(KeyOptions { max_ttl, monthly_bandwidth_bytes, admin }, now);
                anyhow::ensure!(fleet.create_key(&rec).await?, "key id collision; run it again");
                println!("{}", serde_json::json!({ "id": new.id, "token": new.token }));
            }
            KeysAction::List => {
                for k in fleet.list_keys().await?.keys {
                    let line = serde_json::json!({
                        "id": k.id,
                        "max_ttl": k.max_ttl,
                        "monthly_bandwidth_bytes": k.monthly_bandwidth_bytes,
                        "created": k.created,
                    });
                    println!("{line}");
                }
            }
            KeysAction::Delete { id } => {
                // Its credentials are refused everywhere until the longest one could have expired.
                let found = fleet.delete_key(&id, now + ABSOLUTE_MAX_TTL).await?;
                anyhow::ensure!(found, "no such key: {id}");
            }
        }
        Ok(())
    })
}

/// `turnkey fleet`.
pub fn fleet(args: FleetCmdArgs) -> anyhow::Result<()> {
    let listing: Value = runtime()?.block_on(async {
        match (&args.issuer, &args.redis.redis) {
            (Some(url), _) => from_issuer(url, args.token.as_deref()).await,
            (None, Some(_)) => from_redis(&args.redis).await,
            (None, None) => anyhow::bail!("give --redis URL or --issuer URL"),
        }
    })?;
    if args.json {
        println!("{listing}");
    } else {
        print!("{}", table(&listing));
    }
    Ok(())
}

pub(crate) async fn connect(r: &RedisArgs) -> anyhow::Result<Fleet> {
    let url = r.redis.clone().context("--redis is required")?;
    let mut cfg = FleetConfig::new(url.parse()?, NodeId::new("turnkey-cli")?);
    cfg.prefix = r.redis_prefix.parse()?;
    cfg.ca_file.clone_from(&r.redis_ca_file);
    let fleet = Fleet::connect(cfg, FleetMetrics::unregistered()).await?;
    anyhow::ensure!(fleet.wait_up(Duration::from_secs(3)).await, "redis is not reachable");
    Ok(fleet)
}

async fn from_redis(r: &RedisArgs) -> anyhow::Result<Value> {
    let fleet = connect(r).await?;
    let snap = fleet.healthy_relays().await?;
    let stale = u64::try_from(fleet.config().stale_after().as_millis()).unwrap_or(u64::MAX);
    let listing = FleetListing {
        node_id: NodeId::new("turnkey-cli")?,
        region: None,
        redis_up: true,
        cached: false,
        relays: snap.relays.iter().map(|r| crate::issuer_fleet::fleet_relay(r, stale)).collect(),
    };
    Ok(serde_json::to_value(listing)?)
}

async fn from_issuer(base: &str, token: Option<&str>) -> anyhow::Result<Value> {
    let token = token.context("--issuer needs --token (any TURN key's token)")?;
    let url = format!("{}/v1/fleet", base.trim_end_matches('/'));
    let resp = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()?
        .get(&url)
        .bearer_auth(token)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?;
    let status = resp.status();
    let body: Value = resp.json().await.with_context(|| format!("GET {url}: not JSON"))?;
    anyhow::ensure!(status.is_success(), "GET {url}: {status} {body}");
    Ok(body)
}

/// The listing as an aligned text table, one relay per line.
fn table(listing: &Value) -> String {
    let head = ["NODE", "REGION", "HEALTHY", "DRAINING", "ALLOCATIONS", "LOAD", "RELAYED_BPS", "AGE_MS", "URLS"];
    let mut rows: Vec<Vec<String>> = vec![head.iter().map(|s| (*s).to_owned()).collect()];
    for r in listing["relays"].as_array().into_iter().flatten() {
        let s = |k: &str| match &r[k] {
            Value::String(s) => s.clone(),
            Value::Null => "-".to_owned(),
            v => v.to_string(),
        };
        let urls: Vec<&str> = r["urls"].as_array().into_iter().flatten().filter_map(Value::as_str).collect();
        rows.push(vec![
            s("node_id"),
            s("region"),
            s("healthy"),
            s("draining"),
            format!("{}/{}", s("allocations"), s("allocation_capacity")),
            s("load"),
            s("relayed_bps"),
            s("heartbeat_age_ms"),
            urls.join(","),
        ]);
    }
    aligned(&rows)
}

/// Rows (the first is the header) as left-aligned columns two spaces apart, one line each.
pub(crate) fn aligned(rows: &[Vec<String>]) -> String {
    let columns = rows.first().map_or(0, Vec::len);
    let widths: Vec<usize> = (0..columns).map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for row in rows {
        let cells: Vec<String> = row.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_has_a_row_per_relay() {
        let v = serde_json::json!({"relays": [
            {"node_id": "r1", "region": "eu", "healthy": true, "draining": false, "allocations": 3,
             "allocation_capacity": 100, "load": 0.03, "relayed_bps": 800, "heartbeat_age_ms": 120,
             "urls": ["turn:10.0.0.1:3478?transport=udp"]},
            {"node_id": "r2", "region": null, "healthy": false, "draining": true, "allocations": 0,
             "allocation_capacity": 100, "load": 0.0, "relayed_bps": 0, "heartbeat_age_ms": 900, "urls": []}
        ]});
        let t = table(&v);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3, "{t}");
        assert!(lines[0].starts_with("NODE"));
        assert!(lines[1].starts_with("r1  ") && lines[1].contains("3/100") && lines[1].contains("transport=udp"));
        assert!(lines[2].contains("false") && lines[2].contains("true") && lines[2].contains(" - "), "{t}");
    }
}
