//! `GET /test`: the browser self-test page, over real HTTP through the whole router.

use crate::harness::Issuer;

#[tokio::test]
async fn test_page_is_self_contained_html_with_a_strict_csp() {
    let iss = Issuer::start(|_, _| {}).await;
    let r = iss.send(iss.http.get(iss.url("/test"))).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert_eq!(r.header("x-content-type-options"), Some("nosniff"));
    let csp = r.header("content-security-policy").expect("CSP header");
    assert_eq!(csp, turnkey_issuer::selftest_csp());
    assert!(csp.starts_with("default-src 'none';"), "{csp}");
    assert!(csp.contains("script-src 'sha256-") && csp.contains("style-src 'sha256-"), "{csp}");
    assert!(csp.contains("connect-src 'self'"), "{csp}");
    assert!(!csp.contains("unsafe-inline") && !csp.contains('*'), "{csp}");
    assert_eq!(r.text, turnkey_issuer::SELFTEST_HTML);
    assert!(!r.text.contains("://"), "no absolute (external) URL in the page");
    assert!(r.text.contains("fetch(\"/api/turn/credentials?shape=array\""), "the array shape, whatever is configured");
    assert!(r.text.contains("iceTransportPolicy: \"relay\""));
    assert!(r.text.contains("window.turnkeyResult"));
    assert!(r.text.contains("name=\"viewport\""));
    // Counted like every other route.
    assert_eq!(iss.metric("turnkey_issuer_requests_total", &[("endpoint", "/test"), ("status", "200")]), 1.0);
}

#[tokio::test]
async fn test_page_accepts_a_transport_parameter_and_only_get() {
    let iss = Issuer::start(|_, _| {}).await;
    for t in ["udp", "tcp", "tls"] {
        let r = iss.send(iss.http.get(iss.url(&format!("/test?transport={t}")))).await;
        assert_eq!(r.status, 200, "{t}");
    }
    // An unknown transport is answered, not served a page that tests nothing.
    for bad in ["/test?transport=tpc", "/test?transport=", "/test?transport=UDP%00"] {
        let r = iss.send(iss.http.get(iss.url(bad))).await;
        assert_eq!(r.status, 400, "{bad}");
        assert_eq!(r.header("content-type"), Some("application/json"), "{bad}");
        assert_eq!(r.json()["error"], "transport must be udp, tcp or tls", "{bad}");
    }
    let r = iss.send(iss.http.post(iss.url("/test"))).await;
    assert_eq!(r.status, 405);
    let r = iss.send(iss.http.get(iss.url("/test?token=abc"))).await;
    assert_eq!(r.status, 400, "tokens in the query string stay refused everywhere");
}

#[tokio::test]
async fn the_credential_request_the_page_makes_is_same_origin_and_allowed() {
    // The page runs on the issuer's own origin with no allowed_origins configured, and gets the
    // array shape it reads even where the operator set the object shape for the endpoint.
    let iss = Issuer::start(|c, _| c.app.shape.post_turn_slash_credentials = turnkey_issuer::Shape::Object).await;
    let host = iss.base.trim_start_matches("http://").to_owned();
    let r = iss
        .send(
            iss.http
                .post(iss.url("/api/turn/credentials?shape=array"))
                .header("origin", format!("http://{host}"))
                .json(&serde_json::json!({"ttl": 600})),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text);
    let body = r.json();
    let urls: Vec<String> = body["iceServers"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["urls"].as_array().unwrap().iter().map(|u| u.as_str().unwrap().to_owned()))
        .collect();
    assert!(urls.iter().any(|u| u.starts_with("turn:")), "{urls:?}");
}
