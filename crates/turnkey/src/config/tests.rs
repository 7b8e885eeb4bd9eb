use std::net::SocketAddr;

use super::*;

fn parse(text: &str) -> anyhow::Result<Settings> {
    Settings::from_table(text.parse::<toml::Table>()?)
}

fn errors(text: &str) -> String {
    format!("{:#}", parse(text).unwrap_err())
}

#[test]
fn empty_config_is_the_embedded_default() {
    let s = parse("").unwrap();
    assert_eq!(s.relay.udp.addrs.len(), 2);
    assert!(s.relay.udp.is_default);
    assert_eq!(s.relay.tcp.addrs.len(), 2);
    assert_eq!(s.relay.tls.addrs[0].port(), 5349);
    assert_eq!(s.stream, StreamLimits::default());
    assert_eq!(s.engine, EngineSettings::default());
    assert_eq!(s.issuer, IssuerConfig::default());
    assert_eq!(s.usage, UsageConfig::default());
    assert_eq!(s.relay.relay_ports.range(), 49152..=65535);
    assert!(s.relay.allow_peer.is_empty());
    assert_eq!(s.node.http.0, Some("0.0.0.0:8080".parse().unwrap()));
    assert_eq!(s.metrics.listen.0, Some("0.0.0.0:9641".parse().unwrap()));
}

#[test]
fn settings_reach_their_owning_types() {
    let s = parse(
        "realm = \"r\"\nshards = 3\nhttp = \"off\"\n[metrics]\nlisten = \"127.0.0.1:1\"\n[relay]\nmax_lifetime = 60\nmax_channels = 7\nsoftware = \"x\"\nidle_timeout = 9\nrelay_ip = [\"10.0.0.1\", \"::1\"]\ndrain_grace = 0\nallow_peer = [\"10.0.0.0/8:80\"]\n",
    )
    .unwrap();
    assert_eq!((s.node.realm.as_str(), s.node.shards(), s.node.http.0), ("r", 3, None));
    assert_eq!(s.metrics.listen.0, Some("127.0.0.1:1".parse().unwrap()));
    assert_eq!(s.engine.max_lifetime, Duration::from_secs(60));
    assert_eq!(s.engine.max_channels, 7);
    assert_eq!(s.engine.software.as_deref(), Some("x"));
    assert_eq!(s.stream.idle_timeout, Duration::from_secs(9));
    assert_eq!(s.relay.relay_ip.v4, Some("10.0.0.1".parse().unwrap()));
    assert_eq!(s.relay.relay_ip.v6, Some("::1".parse().unwrap()));
    assert_eq!(s.relay.drain_grace, Duration::ZERO);
    assert_eq!(s.relay.allow_peer.len(), 1);
}

#[test]
fn every_unknown_key_is_reported_at_once() {
    let msg = errors("bogus = 1\n[relay]\nudpp = []\nmax_allocations = 3\n[nope]\nx = 1\n[issuer.app]\norigins = []\n");
    for k in ["`bogus`", "`relay.udpp`", "`nope`", "`issuer.app.origins`"] {
        assert!(msg.contains(k), "{k} missing in {msg}");
    }
    assert!(!msg.contains("max_allocations"), "{msg}");
}

#[test]
fn every_invalid_value_is_reported_with_the_unknown_keys() {
    let msg = errors(
        "typo = 1\nlog_format = \"xml\"\n[relay]\nudp = [\"nope\"]\nrelay_ports = \"9-1\"\nallow_peer = [\"300.0.0.0/8\"]\nrelay_ip = [\"x\"]\nmax_allocations = \"many\"\n[usage]\nreset_day = 31\nflush_interval = 60\n[issuer]\nmax_ttl = 0\n",
    );
    for part in [
        "unknown key `typo`",
        "log_format",
        "relay.udp",
        "relay.relay_ports",
        "relay.allow_peer",
        "relay.relay_ip",
        "relay.max_allocations",
        "usage.reset_day",
        "usage.flush_interval",
        "issuer.max_ttl: must be 1 to 172800",
    ] {
        assert!(msg.contains(part), "{part} missing in {msg}");
    }
}

#[test]
fn stream_listeners_and_limits() {
    let s = parse(
        "[relay]\ntcp = [\"off\"]\ntls = [\"127.0.0.1:443\"]\nallocate_timeout = 5\nmax_connections_per_ip = 3\n",
    )
    .unwrap();
    assert!(s.relay.tcp.addrs.is_empty());
    assert_eq!(s.relay.tls.addrs, vec!["127.0.0.1:443".parse::<SocketAddr>().unwrap()]);
    assert!(!s.relay.tls.is_default);
    assert_eq!(s.stream.allocate_timeout, Duration::from_secs(5));
    assert_eq!(s.stream.max_connections_per_ip, 3);
    let msg = errors(
        "[relay]\ntcp = [\"x\"]\ntls_cert = \"/c.pem\"\nidle_timeout = 0\nmax_frame = 10\noutbound_queue = 0\nmax_connections = 0\noutbound_queue_bytes = 100\nwrite_timeout = 0\n",
    );
    for part in [
        "relay.tcp",
        "tls_key",
        "relay.idle_timeout",
        "relay.max_frame",
        "relay.outbound_queue",
        "relay.outbound_queue_bytes",
        "relay.write_timeout",
        "relay.max_connections",
    ] {
        assert!(msg.contains(part), "{part} missing in {msg}");
    }
    assert!(errors("[relay]\ntlss = []\nmax_frame = 1000\n").contains("relay.tlss"));
}

#[test]
fn usage_section() {
    let s = parse("[usage]\nreset_day = 15\nflush_interval = 2\nenforce_on_relay = true\n").unwrap();
    assert_eq!(
        (s.usage.reset_day, s.usage.flush_interval, s.usage.enforce_on_relay),
        (15, Duration::from_secs(2), true)
    );
    assert!(errors("[usage]\nresetday = 1\n").contains("usage.resetday"));
}

#[test]
fn bad_shapes_are_reported_not_panicked_on() {
    for text in [
        "relay = 1",
        "[relay]\nudp = \"127.0.0.1:1\"",
        "[relay]\nudp = [1, 2]",
        "shards = 0",
        "secrets = [\" \"]",
        "realm = \"\"",
        "[issuer]\nadvertise = { stun = [{ host = \"x\" }] }",
        "[relay]\nrelay_ip = [\"10.0.0.1\", \"10.0.0.2\"]",
    ] {
        assert!(parse(text).is_err(), "{text}");
    }
}

#[test]
fn overlays_beat_the_file() {
    let mut t: toml::Table = "realm = \"file\"\n[relay]\nmax_allocations = 5\nidle_timeout = 7\n".parse().unwrap();
    merge(&mut t, "realm = \"flag\"\n[relay]\nmax_allocations = 9\n".parse().unwrap());
    let s = Settings::from_table(t).unwrap();
    assert_eq!((s.node.realm.as_str(), s.engine.max_allocations), ("flag", 9));
    assert_eq!(s.stream.idle_timeout, Duration::from_secs(7));
}

#[test]
fn errors_from_flags_say_so() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("t.toml");
    std::fs::write(&file, "[relay]\nidle_timeout = 0\n").unwrap();
    let overlay = "[relay]\nrelay_ports = \"9-1\"\n".parse().unwrap();
    let msg = format!("{:#}", Settings::load(Some(&file), overlay).unwrap_err());
    assert!(msg.contains("relay.relay_ports (from a flag or TURNKEY_* variable): "), "{msg}");
    assert!(msg.contains("relay.idle_timeout: "), "{msg}");
}

#[test]
fn no_mutation_of_the_example_config_panics() {
    let text =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/turnkey.toml")).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    for (i, line) in lines.iter().enumerate() {
        let Some((key, _)) = line.split_once('=') else { continue };
        for value in ["0", "-1", "\"\"", "[]", "[\"off\"]", "{}", "true", "18446744073709551615", "\"x\""] {
            let mut mutated = lines.clone();
            let replaced = format!("{key}= {value}");
            mutated[i] = &replaced;
            if let Ok(t) = mutated.join("\n").parse::<toml::Table>() {
                let _ = Settings::from_table(t);
            }
        }
    }
}

/// Every example config shipped in `deploy/` parses.
#[test]
fn every_deploy_example_is_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy");
    let mut seen = 0;
    let mut stack = vec![dir];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "toml") {
                Settings::load(Some(&p), toml::Table::new()).unwrap_or_else(|e| panic!("{}: {e:#}", p.display()));
                seen += 1;
            }
        }
    }
    assert!(seen >= 2, "expected example configs in deploy/");
}

#[test]
fn http_limits_section() {
    let h = parse(
        "[http_limits]\nheader_timeout = 3\nidle_timeout = 30\nmax_connections = 100\nmax_connections_per_ip = 5\n",
    )
    .unwrap()
    .http_limits;
    assert_eq!((h.header_timeout, h.idle_timeout), (Duration::from_secs(3), Duration::from_secs(30)));
    assert_eq!(h.max_connections.to_string(), "100");
    assert_eq!(h.max_connections_per_ip, 5);
    assert_eq!(
        parse("[http_limits]\nmax_connections = \"auto\"\n").unwrap().http_limits,
        HttpLimitsSettings::default()
    );
    let d = parse("").unwrap().http_limits;
    assert_eq!((d.header_timeout, d.idle_timeout), (Duration::from_secs(10), Duration::from_secs(60)));
    assert_eq!((d.max_connections, d.max_connections_per_ip), (ConnCap::Auto, 64));
    let msg = errors(
        "[http_limits]\nheader_timeout = 0\nmax_connections = 0\nmax_connections_per_ip = \"x\"\nheader_timeot = 1\n",
    );
    for part in [
        "http_limits.header_timeout",
        "http_limits.max_connections:",
        "http_limits.max_connections_per_ip",
        "unknown key `http_limits.header_timeot`",
    ] {
        assert!(msg.contains(part), "{part} missing in {msg}");
    }
}

#[test]
fn fleet_keys_reach_their_owner() {
    let s = parse("[fleet]\nredis = \"redis://:pw@127.0.0.1:6379/1\"\nredis_prefix = \"tk:\"\nnode_id = \"relay-1\"\nregion = \"eu\"\n")
        .unwrap();
    let cfg = s.fleet.config().unwrap();
    assert_eq!((cfg.url.as_str(), cfg.prefix.as_str()), ("redis://:pw@127.0.0.1:6379/1", "tk:"));
    assert_eq!((cfg.node_id.as_str(), cfg.region.as_ref().map(|r| r.as_str())), ("relay-1", Some("eu")));
    // No URL: no fleet, whatever else is set.
    assert!(parse("[fleet]\nregion = \"eu\"\n").unwrap().fleet.config().is_none());
    // Sentinel: the primary is asked of the sentinels named in the URL.
    let url = "redis+sentinel://:pw@10.0.0.1:26379,10.0.0.2:26379/mymaster";
    let s = parse(&format!("[fleet]\nredis = \"{url}\"\n")).unwrap();
    assert_eq!(s.fleet.config().unwrap().url.as_str(), url);
    let msg = errors("[fleet]\nredis = \"redis+sentinel://:pw@10.0.0.1:26379\"\n");
    assert!(msg.contains("primary") && !msg.contains(":pw@"), "{msg}");
}

#[test]
fn fleet_errors_are_reported_with_the_others() {
    let msg = errors(
        "[relay]\nmax_allocations = \"x\"\n[fleet]\nredis = \"http://nope\"\nredis_prefix = \"a b\"\nnode_id = \"no/slash\"\nregion = \"\"\nredos = 1\n",
    );
    for part in
        ["relay.max_allocations", "unknown key `fleet.redos`", "fleet.node_id", "fleet.region", "redis://", "prefix"]
    {
        assert!(msg.contains(part), "{part} missing in {msg}");
    }
}

#[test]
fn every_bad_issuer_and_fleet_value_is_reported_at_once() {
    // Each value on its own, the rules across keys (issuer: default_ttl above max_ttl, an
    // upstream without token; fleet: a CA file without TLS) and unknown keys: one message.
    let msg = errors(concat!(
        "[issuer]\nmax_ttl = 0\nrelays_per_answer = 99\npublic_host = \"\"\ntypo = 1\n",
        "[issuer.app]\nallowed_origins = [\"*\"]\nkey = \"a:b\"\n",
        "[issuer.upstream]\nkey_id = \"k\"\nretries = 0\nbase_url = \"ftp://x\"\n",
        "[fleet]\nredis = \"http://nope\"\nredis_prefix = \"a*\"\n",
    ));
    for part in [
        "issuer.max_ttl: must be 1 to 172800, not 0",
        "issuer.relays_per_answer: must be 1 to 16, not 99",
        "issuer.public_host: must not be empty",
        "unknown key `issuer.typo`",
        "issuer.app.allowed_origins",
        "issuer.app.key",
        "issuer.upstream.retries",
        "issuer.upstream.base_url",
        "issuer: upstream needs token_file or token_env",
        "fleet.redis",
        "fleet.redis_prefix",
    ] {
        assert!(msg.contains(part), "{part} missing in {msg}");
    }
    let msg = errors(
        "[issuer]\nmax_ttl = 100\ndefault_ttl = 200\n[fleet]\nredis = \"redis://h\"\nredis_ca_file = \"/ca.pem\"\n",
    );
    for part in ["issuer: default_ttl (200) must not exceed max_ttl (100)", "fleet: redis_ca_file needs a rediss://"] {
        assert!(msg.contains(part), "{part} missing in {msg}");
    }
}

#[test]
fn fast_path_is_typed_with_its_default_from_the_fastpath_crate() {
    use turnkey_fastpath::FastPathMode;
    assert_eq!(parse("").unwrap().relay.fast_path, FastPathMode::default());
    assert_eq!(parse("[relay]\nfast_path = \"off\"\n").unwrap().relay.fast_path, FastPathMode::Off);
    assert_eq!(parse("[relay]\nfast_path = \"xdp\"\n").unwrap().relay.fast_path, FastPathMode::Xdp);
    let msg = errors("[relay]\nfast_path = \"native\"\nrelay_ports = \"9-1\"\n");
    assert!(msg.contains("relay.fast_path") && msg.contains("auto, xdp or off"), "{msg}");
    assert!(msg.contains("relay.relay_ports"), "reported together: {msg}");
}

#[test]
fn shard_rt_priority_is_off_unless_set_and_at_most_99() {
    assert_eq!(parse("").unwrap().relay.shard_rt_priority.realtime(), None);
    assert_eq!(parse("[relay]\nshard_rt_priority = 40\n").unwrap().relay.shard_rt_priority.realtime(), Some(40));
    let msg = errors("[relay]\nshard_rt_priority = 100\nrelay_ports = \"9-1\"\n");
    assert!(msg.contains("relay.shard_rt_priority") && msg.contains("0 to 99"), "{msg}");
    assert!(msg.contains("relay.relay_ports"), "reported together: {msg}");
}

#[test]
fn the_session_listing_is_on_unless_turned_off() {
    assert!(parse("").unwrap().relay.sessions);
    assert!(!parse("[relay]\nsessions = false\n").unwrap().relay.sessions);
    let msg = errors("[relay]\nsessions = \"no\"\nrelay_ports = \"9-1\"\n");
    assert!(msg.contains("relay.sessions"), "{msg}");
    assert!(msg.contains("relay.relay_ports"), "reported together: {msg}");
}
