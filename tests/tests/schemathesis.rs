//! schemathesis (PyPI) fuzzes the issuer against `docs/api/openapi.yaml`, the document `turnkey`
//! serves at `/openapi.yaml`: every documented operation, with schema-valid and schema-violating
//! requests, and every check schemathesis has (no 5xx, documented status codes, content types,
//! headers and body schemas, invalid input rejected, valid input accepted, authentication not
//! ignored). The run is bounded (`--max-examples`, a fixed seed, a time limit).

use std::process::Command;
use std::time::Duration;

use turnkey_e2e::{config_file, metric_sum, require, root, run_with_timeout, Turnkey};

/// Examples per operation; about 800 requests in all with the coverage phase.
const MAX_EXAMPLES: &str = "100";

#[test]
fn schemathesis_finds_no_server_error_or_schema_violation() {
    if !require("schemathesis") {
        return;
    }
    // The app endpoints' per-IP rate limit would answer most generated requests with 429 and
    // leave their logic untested: lift it for this run (429 itself is covered in the issuer tests).
    let (conf_dir, conf) = config_file("[issuer.app.rate_limit]\nrequests = 1000000\nwindow_secs = 1\n");
    let tk = Turnkey::serve(&["--config", conf.to_str().unwrap()]);
    let (key_id, token) = tk.default_key();
    let base = format!("http://{}", tk.addr("http"));

    let out = run_with_timeout(
        Command::new("python3")
            .args([
                "-c",
                "import sys; from schemathesis.cli import schemathesis; sys.argv[0] = 'schemathesis'; schemathesis()",
            ])
            .arg("--config-file")
            .arg(root().join("tests/schemathesis.toml"))
            .arg("run")
            .arg(root().join("docs/api/openapi.yaml"))
            .args(["--url", &base, "--checks", "all", "--max-examples", MAX_EXAMPLES, "--seed", "1"])
            // One worker: hypothesis is not thread-safe (parallel workers fail with internal errors).
            .args(["--workers", "1", "--request-timeout", "10"])
            .env("TK_TOKEN", &token)
            .env("TK_KEY_ID", &key_id)
            .env("NO_COLOR", "1")
            // schemathesis and hypothesis keep their databases and reports in the working directory.
            .current_dir(conf_dir.path()),
        Duration::from_secs(150),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "schemathesis found failures:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(!stdout.contains("Authentication failed"), "the key's token was not accepted:\n{stdout}");

    // The run reached the success paths, not only the refusals: each operation answered its
    // documented success status, as the relay's own request counters say.
    let metrics = tk.metrics();
    for (endpoint, status) in [
        ("/v1/turn/keys/{id}/credentials/generate-ice-servers", "201"),
        ("/v1/turn/keys/{id}/credentials/generate", "201"),
        ("/v1/turn/keys/{id}/credentials/{username}/revoke", "204"),
        ("/api/turn-credentials", "200"),
        ("/api/turn/credentials", "200"),
        ("/api/bandwidth-status", "200"),
        ("/v1/sessions", "200"),
        ("/v1/sessions/{id}", "404"),
        ("/test", "200"),
        ("/test", "400"),
    ] {
        let n = metric_sum(
            &metrics,
            "turnkey_issuer_requests_total",
            &[&format!("endpoint=\"{endpoint}\""), &format!("status=\"{status}\"")],
        );
        assert!(n > 0.0, "no {status} from {endpoint} during the run:\n{stdout}");
    }
    // Nothing answered 5xx (schemathesis checks this too; the counters are the server's view).
    assert!(!metrics.lines().any(|l| l.starts_with("turnkey_issuer_requests_total") && l.contains("status=\"5")));
}
