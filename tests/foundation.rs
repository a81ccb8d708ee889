//! The foundation, end to end through the real binary: zero-config start, health, metrics,
//! tokens, API keys and policies, app settings and secret rotation, errors of the spec's shape,
//! restart on the same data dir, and clean failures at start.

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use tessera_model::app::AppSecret;
use tessera_model::token::{self, UserToken};
use tessera_tests::*;

fn admin_key(data_dir: &Path) -> String {
    std::fs::read_to_string(data_dir.join("admin.key")).unwrap().trim().to_owned()
}

/// The secrets of an app, read from the data dir as the server stored them.
fn secrets(data_dir: &Path, app: &str) -> Vec<AppSecret> {
    let file: Value = serde_json::from_slice(&std::fs::read(data_dir.join("apps.json")).unwrap()).unwrap();
    let app = file["apps"].as_array().unwrap().iter().find(|a| a["id"] == app).unwrap();
    serde_json::from_value(app["secrets"].clone()).unwrap()
}

fn now_s() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

fn verify(data_dir: &Path, token: &str) -> Result<UserToken, token::TokenError> {
    let s = secrets(data_dir, "default");
    token::verify(token, now_s(), |app| (app.as_str() == "default").then_some(s.as_slice()))
}

fn header_kid(token: &str) -> String {
    use base64::Engine;
    let h = token.split('.').next().unwrap();
    let v: Value = serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(h).unwrap()).unwrap();
    v["kid"].as_str().unwrap().to_owned()
}

#[test]
fn zero_config_start_health_metrics_and_tokens() {
    let dir = TempDir::new("foundation");
    let data = dir.path().join("data");
    let server = Server::start(&data, &[]);
    assert!(server.banner.contains("First start"), "{}", server.banner);
    assert!(server.banner.contains("admin.key"));

    // The data dir layout of PRODUCT.md §2, with private files.
    use std::os::unix::fs::PermissionsExt;
    for f in ["apps.json", "admin.key"] {
        let mode = std::fs::metadata(data.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    for d in ["tasks", "outbox", "recordings", "spool"] {
        assert!(data.join(d).is_dir(), "{d}");
    }
    let key = admin_key(&data);
    assert!(key.starts_with("tsk_") && key.len() == 49, "{key}");

    // The demo token in the banner is a valid anchor token for demo/demo.
    let demo = server.banner.lines().find(|l| l.starts_with("    eyJ")).unwrap().trim();
    let t = verify(&data, demo).unwrap();
    assert_eq!((t.room.as_str(), t.user.as_str(), t.privileges.bits()), ("demo", "me", 255));
    assert!((t.exp - now_s() - 6 * 3600).abs() < 60);

    let h = get(&server.url("/healthz"), None);
    assert_eq!(h.status, 200);
    let h = h.json();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["failed_workers"], 0);
    assert_eq!(h["version"], env!("CARGO_PKG_VERSION"));
    assert!(h["uptime_s"].as_u64().is_some());
    // An idle server's media worker mostly waits.
    let busy = h["worker_busy_ratio"].as_f64().expect("worker_busy_ratio");
    assert!((0.0..0.2).contains(&busy), "{h}");

    // Token round trip through REST: minted with the app's secret, with the asked claims.
    let r = post_json(&server.url("/v1/tokens"), Some(&key), &json!({"room":"room1","user":"alice","role":21,"ttl_s":120,"info":"vip"}));
    assert_eq!(r.status, 201, "{}", r.body);
    let body = r.json();
    let token = body["token"].as_str().unwrap();
    let t = verify(&data, token).unwrap();
    assert_eq!((t.room.as_str(), t.user.as_str(), t.role.code(), t.privileges.bits()), ("room1", "alice", 21, 171));
    assert_eq!(t.info.as_deref(), Some("vip"));
    assert_eq!(body["expires_at"].as_i64().unwrap(), t.exp * 1000);
    assert!((t.exp - now_s() - 120).abs() <= 5);

    // And through the CLI, against the same data dir while the server runs.
    let (status, out, err) = run_cli(&["token", "--data-dir", data.to_str().unwrap(), "--room", "r2", "--user", "bob", "--role", "audience", "--privileges", "42", "--ttl", "1h"]);
    assert!(status.success(), "{err}");
    let t = verify(&data, out.trim()).unwrap();
    assert_eq!((t.room.as_str(), t.user.as_str(), t.privileges.bits()), ("r2", "bob", 42));
    assert!((t.exp - now_s() - 3600).abs() <= 5);

    // Metrics: Prometheus text with build info, uptime and requests by route and status.
    let m = get(&server.url("/metrics"), None);
    assert_eq!(m.status, 200);
    assert!(m.header("content-type").unwrap().contains("text"), "{:?}", m.header("content-type"));
    assert!(m.body.contains(&format!("tessera_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"))), "{}", m.body);
    assert!(m.body.contains("tessera_uptime_seconds "));
    assert!(m.body.contains("tessera_worker_busy_ratio ") && m.body.contains("tessera_rtp_bytes_forwarded_total "), "{}", m.body);
    assert!(m.body.contains("tessera_http_requests_total{route=\"/healthz\",status=\"200\"} 1"), "{}", m.body);
    assert!(m.body.contains("tessera_http_requests_total{route=\"/v1/tokens\",status=\"201\"} 1"), "{}", m.body);

    assert_eq!(server.stop().code(), Some(0), "SIGTERM stops the server cleanly");
}

#[test]
fn api_errors_keys_policies_and_rotation() {
    let dir = TempDir::new("api");
    let data = dir.path().join("data");
    let server = Server::start(&data, &[]);
    let key = admin_key(&data);
    let url = |p: &str| server.url(p);

    // Credentials.
    get(&url("/v1/app"), None).expect_error(401, "api_key_missing");
    get(&url("/v1/app"), Some("tsk_aaaaaaaaaaaa_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb")).expect_error(401, "api_key_invalid");
    get(&url("/v1/app"), Some("not-a-key")).expect_error(401, "api_key_invalid");
    // The credential is checked before the body (PRODUCT.md §5 order).
    request("POST", &url("/v1/tokens"), None, Some(("text/plain", b"x")), &[]).expect_error(401, "api_key_missing");

    // Routing and bodies.
    get(&url("/no/such/route"), None).expect_error(404, "route_not_found");
    request("PUT", &url("/v1/app"), Some(&key), None, &[]).expect_error(405, "method_not_allowed");
    request("POST", &url("/v1/tokens"), Some(&key), Some(("application/json", b"{\"room\":")), &[]).expect_error(400, "invalid_json");
    request("POST", &url("/v1/tokens"), Some(&key), Some(("text/plain", b"{}")), &[]).expect_error(415, "unsupported_media_type");
    let big = vec![b' '; 300 * 1024];
    request("POST", &url("/v1/tokens"), Some(&key), Some(("application/json", &big)), &[]).expect_error(413, "payload_too_large");
    let e = post_json(&url("/v1/tokens"), Some(&key), &json!({"room":"bad room","user":"u"})).expect_error(400, "invalid_parameter");
    assert_eq!(e["details"]["field"], "room");
    let e = post_json(&url("/v1/tokens"), Some(&key), &json!({"user":"u"})).expect_error(400, "invalid_parameter");
    assert_eq!(e["details"]["field"], "room");
    for (body, field) in [
        (json!({"room":"r","user":"u","ttl_s":0}), "ttl_s"),
        (json!({"room":"r","user":"u","ttl_s":2592001}), "ttl_s"),
        (json!({"room":"r","user":"u","role":22}), "role"),
        (json!({"room":"r","user":"u","privileges":256}), "privileges"),
        (json!({"room":"r","user":"u","info":"x".repeat(1025)}), "info"),
        (json!({"room":"r","user":"u","admin":true}), "admin"),
    ] {
        let e = post_json(&url("/v1/tokens"), Some(&key), &body).expect_error(400, "invalid_parameter");
        assert_eq!(e["details"]["field"], field, "{body}");
    }
    post_json(&url("/v1/tokens"), Some(&key), &json!({"room":"r","user":"mix_1"})).expect_error(403, "user_id_reserved");

    // A client's request id is echoed, in the header and in error bodies.
    let r = request("GET", &url("/v1/nope"), None, None, &[("X-Request-Id", "trace-123")]);
    assert_eq!(r.header("x-request-id"), Some("trace-123"));
    assert_eq!(r.json()["request_id"], "trace-123");

    // CORS preflight for the browser pages.
    let r = request(
        "OPTIONS",
        &url("/v1/tokens"),
        None,
        None,
        &[("Origin", "http://example.test"), ("Access-Control-Request-Method", "POST"), ("Access-Control-Request-Headers", "authorization,content-type")],
    );
    assert!(r.status == 200 || r.status == 204, "{r:?}");
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));

    // API keys: a read-only key reads but cannot change anything.
    let r = post_json(&url("/v1/api-keys"), Some(&key), &json!({"name":"ci","preset":"read-only"}));
    assert_eq!(r.status, 201, "{}", r.body);
    let ro = r.json();
    let ro_key = ro["key"].as_str().unwrap().to_owned();
    let ro_id = ro["id"].as_str().unwrap().to_owned();
    assert_eq!(ro["policy"], json!({"statements":[{"effect":"allow","actions":["*.get","*.list"]}]}));
    assert_eq!(get(&url("/v1/app"), Some(&ro_key)).status, 200);
    assert_eq!(get(&url("/v1/api-keys"), Some(&ro_key)).status, 200);
    let e = post_json(&url("/v1/tokens"), Some(&ro_key), &json!({"room":"r","user":"u"})).expect_error(403, "action_denied");
    assert_eq!(e["details"]["action"], "tokens.create");
    request("DELETE", &url(&format!("/v1/api-keys/{ro_id}")), Some(&ro_key), None, &[]).expect_error(403, "action_denied");

    // A custom policy: everything but secret removal.
    let r = post_json(
        &url("/v1/api-keys"),
        Some(&key),
        &json!({"name":"ops","policy":{"statements":[{"effect":"allow","actions":["*"]},{"effect":"deny","actions":["secrets.delete"]}]}}),
    );
    assert_eq!(r.status, 201, "{}", r.body);
    let ops_key = r.json()["key"].as_str().unwrap().to_owned();
    assert_eq!(post_json(&url("/v1/tokens"), Some(&ops_key), &json!({"room":"r","user":"u"})).status, 201);
    let e = request("DELETE", &url("/v1/app/secrets/k1"), Some(&ops_key), None, &[]).expect_error(403, "action_denied");
    assert_eq!(e["details"]["action"], "secrets.delete");
    post_json(&url("/v1/api-keys"), Some(&key), &json!({"preset":"root"})).expect_error(400, "invalid_parameter");
    post_json(&url("/v1/api-keys"), Some(&key), &json!({"policy":{"statements":[{"effect":"allow","actions":["rooms"]}]}})).expect_error(400, "invalid_parameter");
    post_json(&url("/v1/api-keys"), Some(&key), &json!({"preset":"read-only","policy":{"statements":[]}})).expect_error(400, "invalid_parameter");

    // List, paginate, get: never the key or its hash; last use is tracked.
    let list = get(&url("/v1/api-keys"), Some(&key)).json();
    assert_eq!(list["items"].as_array().unwrap().len(), 3);
    assert!(!list.to_string().contains("tsk_") && !list.to_string().contains("sha256"));
    let page1 = get(&url("/v1/api-keys?limit=2"), Some(&key)).json();
    assert_eq!(page1["items"].as_array().unwrap().len(), 2);
    let cursor = page1["next_cursor"].as_str().unwrap().to_owned();
    let page2 = get(&url(&format!("/v1/api-keys?limit=2&cursor={cursor}")), Some(&key)).json();
    assert_eq!(page2["items"].as_array().unwrap().len(), 1);
    assert!(page2["next_cursor"].is_null());
    get(&url("/v1/api-keys?limit=0"), Some(&key)).expect_error(400, "invalid_parameter");
    let got = get(&url(&format!("/v1/api-keys/{ro_id}")), Some(&key)).json();
    assert_eq!(got["name"], "ci");
    assert!(got["last_used_at"].as_i64().is_some(), "{got}");
    get(&url("/v1/api-keys/zzzzzzzzzzzz"), Some(&key)).expect_error(404, "api_key_not_found");

    // Deleting a key revokes it at once.
    assert_eq!(request("DELETE", &url(&format!("/v1/api-keys/{ro_id}")), Some(&key), None, &[]).status, 200);
    get(&url("/v1/app"), Some(&ro_key)).expect_error(401, "api_key_invalid");

    // App settings: merge patch, validation, the webhook key is stored but never shown.
    let r = request("PATCH", &url("/v1/app"), Some(&key), Some(("application/json", br#"{"webhook":{"url":"http://127.0.0.1:9/hook","key":"k3yA","groups":[1,2]}}"#)), &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    let app = r.json();
    assert_eq!(app["webhook"]["url"], "http://127.0.0.1:9/hook");
    assert_eq!(app["webhook"]["key_set"], true);
    assert!(!r.body.contains("k3yA"));
    // Leaving the key out keeps it.
    let r = request("PATCH", &url("/v1/app"), Some(&key), Some(("application/json", br#"{"webhook":{"groups":[1]},"auto_recording":{"enabled":true}}"#)), &[]);
    assert_eq!(r.status, 200, "{}", r.body);
    let app = r.json();
    assert_eq!(app["webhook"]["key_set"], true);
    assert_eq!(app["webhook"]["groups"], json!([1]));
    assert_eq!(app["auto_recording"]["enabled"], true);
    assert_eq!(app["auto_recording"]["format"], "hls+mp4");
    for (body, field) in [
        (r#"{"webhook":{"key":null}}"#, "webhook.key"),
        (r#"{"auto_recording":{"mp4_split_minutes":0}}"#, "auto_recording.mp4_split_minutes"),
        (r#"{"default_storage":"s3-nope"}"#, "default_storage"),
        (r#"{"secrets":[]}"#, "secrets"),
        (r#"{"webhook":{"colour":1}}"#, "webhook.colour"),
    ] {
        let e = request("PATCH", &url("/v1/app"), Some(&key), Some(("application/json", body.as_bytes())), &[]).expect_error(400, "invalid_parameter");
        assert_eq!(e["details"]["field"], field, "{body}");
    }
    // A refused patch changed nothing.
    assert_eq!(get(&url("/v1/app"), Some(&key)).json(), app);

    // Secret rotation: the new secret mints, both verify, the last one cannot go.
    let old_token = post_json(&url("/v1/tokens"), Some(&key), &json!({"room":"r","user":"u"})).json()["token"].as_str().unwrap().to_owned();
    assert_eq!(header_kid(&old_token), "k1");
    let r = request("POST", &url("/v1/app/secrets"), Some(&key), None, &[]);
    assert_eq!(r.status, 201, "{}", r.body);
    let s = r.json();
    assert_eq!(s["kid"], "k2");
    assert_eq!(s["secret"].as_str().unwrap().len(), 43);
    assert!(!get(&url("/v1/app"), Some(&key)).body.contains(s["secret"].as_str().unwrap()));
    let new_token = post_json(&url("/v1/tokens"), Some(&key), &json!({"room":"r","user":"u"})).json()["token"].as_str().unwrap().to_owned();
    assert_eq!(header_kid(&new_token), "k2");
    assert!(verify(&data, &old_token).is_ok() && verify(&data, &new_token).is_ok());
    assert_eq!(request("DELETE", &url("/v1/app/secrets/k1"), Some(&key), None, &[]).status, 200);
    assert_eq!(verify(&data, &old_token).unwrap_err().code(), "token_bad_signature");
    assert!(verify(&data, &new_token).is_ok());
    request("DELETE", &url("/v1/app/secrets/k2"), Some(&key), None, &[]).expect_error(409, "last_secret");
    request("DELETE", &url("/v1/app/secrets/k7"), Some(&key), None, &[]).expect_error(404, "secret_not_found");
    let r = post_json(&url("/v1/app/secrets"), Some(&key), &json!({"kid":"bad kid"}));
    r.expect_error(400, "invalid_parameter");
    for _ in 0..4 {
        assert_eq!(request("POST", &url("/v1/app/secrets"), Some(&key), None, &[]).status, 201);
    }
    request("POST", &url("/v1/app/secrets"), Some(&key), None, &[]).expect_error(429, "limit_exceeded");

    // Nothing above was a server error.
    let m = get(&url("/metrics"), None).body;
    assert!(!m.contains("status=\"5"), "{m}");
    assert_eq!(server.stop().code(), Some(0));
}

#[test]
fn restart_reuses_the_data_dir() {
    let dir = TempDir::new("restart");
    let data = dir.path().join("data");
    let server = Server::start(&data, &[]);
    let key = admin_key(&data);
    let secret_before = secrets(&data, "default")[0].secret.clone();
    let (status, token, _) = run_cli(&["token", "--data-dir", data.to_str().unwrap(), "--room", "demo", "--user", "obs"]);
    assert!(status.success());
    // A second server on the same data dir (another port) is refused while the first runs.
    let (status, _, err) = run_cli(&["serve", "--data-dir", data.to_str().unwrap(), "--http-addr", "127.0.0.1:0", "--rtmp-addr", "127.0.0.1:0", "--rtc-udp-addr", "127.0.0.1:0"]);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("in use by another tessera process"), "{err}");
    assert_eq!(server.stop().code(), Some(0));

    let server = Server::start(&data, &[]);
    assert!(!server.banner.contains("First start"), "{}", server.banner);
    assert_eq!(admin_key(&data), key);
    assert_eq!(secrets(&data, "default")[0].secret, secret_before);
    // The key from before the restart still works, and so does the token.
    assert_eq!(get(&server.url("/v1/app"), Some(&key)).status, 200);
    assert_eq!(verify(&data, token.trim()).unwrap().user.as_str(), "obs");
    // The API key's last use was saved at shutdown.
    let k = get(&server.url("/v1/api-keys"), Some(&key)).json();
    assert!(k["items"][0]["last_used_at"].as_i64().is_some(), "{k}");
    assert_eq!(server.stop().code(), Some(0));
}

#[test]
fn start_failures_exit_2_with_one_line() {
    let dir = TempDir::new("fail");
    let data = dir.path().join("data");

    // A taken HTTP port.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (status, _, err) = run_cli(&["serve", "--data-dir", data.to_str().unwrap(), "--http-addr", &addr, "--rtmp-addr", "127.0.0.1:0", "--rtc-udp-addr", "127.0.0.1:0"]);
    assert_eq!(status.code(), Some(2), "{err}");
    let line = err.lines().last().unwrap();
    assert!(line.starts_with("tessera: cannot listen on") && line.contains(&addr) && line.contains("HTTP"), "{err}");
    assert!(!data.exists(), "nothing is written when the start fails on a port");
    // The same for the RTMP port and the WebRTC UDP port.
    let (status, _, err) = run_cli(&["serve", "--data-dir", data.to_str().unwrap(), "--http-addr", "127.0.0.1:0", "--rtmp-addr", &addr, "--rtc-udp-addr", "127.0.0.1:0"]);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("for RTMP") && err.contains(&addr), "{err}");
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp_addr = udp.local_addr().unwrap().to_string();
    let (status, _, err) = run_cli(&["serve", "--data-dir", data.to_str().unwrap(), "--http-addr", "127.0.0.1:0", "--rtmp-addr", "127.0.0.1:0", "--rtc-udp-addr", &udp_addr]);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("WebRTC (UDP)") && err.contains(&udp_addr), "{err}");
    assert!(!data.exists(), "nothing is written when the start fails on a port");

    // An invalid config file: unknown key, bad value, not TOML at all.
    for (text, needle) in [("http_adr = \"127.0.0.1:1\"\n", "http_adr"), ("http_addr = \"nowhere\"\n", "http_addr"), ("[[[", "tessera.toml")] {
        let cfg = dir.path().join("tessera.toml");
        std::fs::write(&cfg, text).unwrap();
        let (status, _, err) = run_cli(&["serve", "--config", cfg.to_str().unwrap(), "--data-dir", data.to_str().unwrap()]);
        assert_eq!(status.code(), Some(2), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(err.contains("invalid config file") && err.contains(needle), "{err}");
    }
    let (status, _, err) = run_cli(&["serve", "--config", "/nonexistent/tessera.toml"]);
    assert_eq!(status.code(), Some(2));
    assert!(err.contains("/nonexistent/tessera.toml"), "{err}");

    // CLI refusals.
    let (status, _, err) = run_cli(&["token", "--data-dir", data.to_str().unwrap(), "--room", "r", "--user", "mix_x"]);
    assert_eq!(status.code(), Some(2));
    assert!(err.contains("reserved"), "{err}");
    let (status, _, err) = run_cli(&["token", "--data-dir", data.to_str().unwrap(), "--room", "bad room", "--user", "u"]);
    assert_eq!(status.code(), Some(2));
    assert!(err.contains("room id"), "{err}");
}

#[test]
fn config_file_flags_and_redacted_printout() {
    let dir = TempDir::new("config");
    let data = dir.path().join("data");
    let cfg = dir.path().join("tessera.toml");
    std::fs::write(
        &cfg,
        format!(
            "data_dir = \"{}\"\nhttp_addr = \"127.0.0.1:1\"\nlog = \"debug\"\n[apps.shop]\nsecrets = [{{kid = \"s1\", secret = \"shop-secret-0123456789\"}}]\nwebhook = {{url = \"http://127.0.0.1:9/h\", key = \"hookKey1\"}}\n",
            data.display()
        ),
    )
    .unwrap();
    let (status, out, err) = run_cli(&["config", "--config", cfg.to_str().unwrap()]);
    assert!(status.success(), "{err}");
    assert!(out.contains("http_addr = \"127.0.0.1:1\"") && out.contains("log = \"debug\""), "{out}");
    assert!(out.contains("rtmp_addr = \"0.0.0.0:1935\""), "defaults are shown: {out}");
    assert!(!out.contains("shop-secret-0123456789") && !out.contains("hookKey1"), "{out}");
    assert!(out.contains("<redacted>"));
    // What `serve` would run with: its flags count, and defaults worked out at start are shown.
    let (status, out, err) = run_cli(&["config", "--config", cfg.to_str().unwrap(), "--http-addr", "127.0.0.1:2"]);
    assert!(status.success(), "{err}");
    let cores = std::thread::available_parallelism().unwrap().get();
    assert!(out.contains("http_addr = \"127.0.0.1:2\"") && out.contains(&format!("concurrent_mix_jobs = {cores}")), "{out}");

    // `token` never makes up a data dir (its secret would be one no server knows) unless asked.
    let elsewhere = dir.path().join("not-a-data-dir");
    let (status, _, err) = run_cli(&["token", "--data-dir", elsewhere.to_str().unwrap(), "--room", "r", "--user", "u"]);
    assert_eq!(status.code(), Some(2), "{err}");
    assert!(err.contains("no Tessera data dir") && err.contains("TESSERA_DATA_DIR") && err.contains("--init"), "{err}");
    assert!(!elsewhere.exists(), "no data dir was created");
    let (status, _, err) = run_cli(&["token", "--data-dir", elsewhere.to_str().unwrap(), "--room", "r", "--user", "u", "--init"]);
    assert!(status.success() && elsewhere.join("apps.json").is_file(), "{err}");

    // Flags beat the file; the configured app exists with its secret.
    let server = Server::start(&data, &["--config", cfg.to_str().unwrap()]);
    assert!(!server.base.ends_with(":1"), "--http-addr overrode the file: {}", server.base);
    let s = secrets(&data, "shop");
    assert_eq!((s[0].kid.as_str(), s[0].secret.as_str()), ("s1", "shop-secret-0123456789"));
    let (status, token, err) = run_cli(&["token", "--config", cfg.to_str().unwrap(), "--app", "shop", "--room", "r", "--user", "u"]);
    assert!(status.success(), "{err}");
    let parsed = token::verify(token.trim(), now_s(), |app| (app.as_str() == "shop").then_some(s.as_slice())).unwrap();
    assert_eq!(parsed.kid.as_str(), "s1");
    // The data dir from the environment, run from another directory: the server's secret.
    let out = std::process::Command::new(tessera_bin())
        .args(["token", "--app", "shop", "--room", "r", "--user", "u"])
        .env("TESSERA_DATA_DIR", &data)
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let from_env = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(token::verify(&from_env, now_s(), |app| (app.as_str() == "shop").then_some(s.as_slice())).is_ok());
    assert!(!dir.path().join("tessera-data").exists(), "no ./tessera-data was made");
    assert_eq!(server.stop().code(), Some(0));
}

/// `/openapi.json` (PRODUCT.md §10) is OpenAPI 3.1 with the error schema, and every route it
/// documents is one the server routes: each documented method on each path, with made-up
/// parameters and no credentials, gets the route's own answer (401, 400, 404 of a resource…),
/// never `route_not_found` or `method_not_allowed`.
#[test]
fn the_openapi_document_matches_the_router() {
    let dir = TempDir::new("openapi");
    let server = Server::start(&dir.path().join("data"), &[]);
    let doc = get(&server.url("/openapi.json"), None).json();
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.1")), "{}", doc["openapi"]);
    assert!(doc["components"]["schemas"]["ErrorBody"]["properties"]["code"].is_object(), "the error schema");
    let paths = doc["paths"].as_object().unwrap();
    for must in ["/v1/rooms/{room}/users/{user}", "/v1/mix-jobs", "/v1/recordings/{id}/pause", "/whip/{room}", "/whep/{room}/{user}/{stream}", "/v1/tokens"] {
        assert!(paths.contains_key(must), "{must} is documented");
    }
    let mut operations = std::collections::HashSet::new();
    let mut checked = 0;
    for (path, item) in paths {
        let url = path
            .replace("{id}", "0123456789abcdef")
            .replace("{room}", "r1")
            .replace("{user}", "u1")
            .replace("{stream}", "main")
            .replace("{sid}", "nosuchsession")
            .replace("{kid}", "k9")
            .replace("{app}", "default")
            .replace("{path}", "nosuch/file.ts");
        assert!(!url.contains('{'), "an unknown parameter in {path}");
        for (method, op) in item.as_object().unwrap() {
            assert!(operations.insert(op["operationId"].as_str().unwrap().to_owned()), "operationId {} is unique", op["operationId"]);
            let r = request(&method.to_uppercase(), &server.url(&url), None, Some(("application/json", b"{}")), &[]);
            let code = serde_json::from_str::<serde_json::Value>(&r.body).ok().and_then(|v| v["code"].as_str().map(str::to_owned)).unwrap_or_default();
            assert!(code != "route_not_found" && code != "method_not_allowed" && r.status != 405, "{method} {path} is documented but not routed: {} {}", r.status, r.body);
            checked += 1;
        }
    }
    assert!(checked >= 45, "{checked} operations checked");
}

/// `tessera rooms|tasks|record|relay` against a running server (issue 15): the server found
/// through `--server`, the API key read from the data dir (no flag), human tables and `--json`
/// that parses; errors exit 1 with the server's code; over HTTPS the data dir's self-signed
/// certificate is trusted.
#[test]
fn operator_cli_drives_a_running_server() {
    let dir = TempDir::new("cli");
    let data = dir.path().join("data");
    let server = Server::start(&data, &["--tls-self-signed"]);
    assert!(server.base.starts_with("https://"), "{}", server.base);
    let cli = |args: &[&str]| -> (i32, String, String) {
        let out = std::process::Command::new(tessera_bin())
            .args(args)
            .env("TESSERA_SERVER", &server.base)
            .env("TESSERA_DATA_DIR", &data)
            .env_remove("TESSERA_API_KEY")
            .output()
            .expect("run tessera");
        (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let ok = |args: &[&str]| -> String {
        let (code, out, err) = cli(args);
        assert_eq!(code, 0, "tessera {args:?}: {err}");
        out
    };
    let json = |args: &[&str]| -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = ok(&all);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("tessera {args:?} --json: {e}: {out}"))
    };
    assert_eq!(ok(&["rooms", "list"]), "no rooms\n");

    // An RTMP publisher makes a room with a participant.
    let anchor = token(&data, "ops", "cam");
    let rtmp = format!("rtmp://127.0.0.1:{}/push/ops/cam?token={anchor}", rtmp_port(&server));
    let mut ffmpeg = std::process::Command::new("ffmpeg")
        .args(["-hide_banner", "-loglevel", "error", "-re", "-f", "lavfi", "-i", "testsrc2=size=320x180:rate=25:duration=60", "-f", "lavfi", "-i", "sine=duration=60"])
        .args(["-c:v", "libx264", "-preset", "ultrafast", "-bf", "0", "-g", "25", "-c:a", "aac", "-f", "flv", &rtmp])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("ffmpeg");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let rooms = loop {
        let rooms = json(&["rooms", "list"]);
        if rooms.as_array().is_some_and(|r| r.iter().any(|r| r["room"] == "ops" && r["publishers"] == 1)) {
            break rooms;
        }
        assert!(std::time::Instant::now() < deadline, "the RTMP publisher never showed: {rooms}");
        std::thread::sleep(std::time::Duration::from_millis(300));
    };
    assert_eq!(rooms[0]["participants"], 1, "{rooms}");
    let table = ok(&["rooms", "list"]);
    assert!(table.starts_with("ROOM") && table.lines().nth(1).is_some_and(|l| l.starts_with("ops ")), "{table}");
    let shown = json(&["rooms", "show", "ops"]);
    assert_eq!(shown["users"][0]["user"], "cam", "{shown}");
    let human = ok(&["rooms", "show", "ops"]);
    assert!(human.contains("USER") && human.lines().any(|l| l.starts_with("cam") && l.contains("anchor") && l.contains("rtmp")), "{human}");

    // Tasks of every kind: two from the CLI, two from the API.
    let recording = ok(&["record", "start", "ops", "--format", "hls"]).trim().to_owned();
    let relay = ok(&["relay", "start", "ops", "--user", "cam", "--url", "rtmp://127.0.0.1:9/live/key"]).trim().to_owned();
    assert_eq!((recording.len(), relay.len()), (16, 16), "ids on stdout: {recording} {relay}");
    let key = std::fs::read_to_string(data.join("admin.key")).unwrap();
    let api = |path: &str, body: Value| {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--cacert", data.join("tls/self-signed.crt").to_str().unwrap(), "-H", &format!("Authorization: Bearer {}", key.trim())])
            .args(["-H", "Content-Type: application/json", "-d", &body.to_string(), &format!("{}{path}", server.base)])
            .output()
            .unwrap();
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let mix = api("/v1/mix-jobs", json!({"room": "ops", "encode": {"template": "360p"}}));
    let ingest = api("/v1/ingests", json!({"room": "ops", "user": "pulled", "url": "rtmp://127.0.0.1:9/live/x"}));
    let (mix, ingest) = (mix["id"].as_str().expect("mix job").to_owned(), ingest["id"].as_str().expect("ingest").to_owned());
    let tasks = json(&["tasks", "list"]);
    let kinds: std::collections::BTreeSet<&str> = tasks.as_array().unwrap().iter().map(|t| t["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds.into_iter().collect::<Vec<_>>(), ["ingest", "mix-job", "recording", "relay"], "{tasks}");
    let table = ok(&["tasks", "list"]);
    for id in [&recording, &relay, &mix, &ingest] {
        assert!(table.lines().any(|l| l.contains(id.as_str())), "{id} in\n{table}");
    }
    assert!(table.lines().any(|l| l.starts_with("relay") && l.contains("rtmp://127.0.0.1:9/live/key (")), "per-URL state: {table}");
    assert_eq!(json(&["tasks", "list", "--kind", "relay"]).as_array().unwrap().len(), 1);
    assert_eq!(json(&["tasks", "show", "recording", &recording])["room"], "ops");

    // Stop them from the CLI.
    ok(&["record", "stop", &recording]);
    ok(&["relay", "stop", &relay]);
    ok(&["tasks", "stop", "mix-job", &mix]);
    ok(&["tasks", "stop", "ingest", &ingest]);
    assert_eq!(json(&["tasks", "show", "relay", &relay])["state"], "STOPPED");
    assert_eq!(json(&["tasks", "show", "mix-job", &mix])["state"], "STOPPED");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while json(&["tasks", "show", "recording", &recording])["state"] != "FINISHED" {
        assert!(std::time::Instant::now() < deadline, "the recording finishes");
        std::thread::sleep(std::time::Duration::from_millis(300));
    }
    assert!(ok(&["tasks", "list"]).starts_with("no running tasks"), "only stopped tasks are left");
    assert_eq!(json(&["tasks", "list", "--all"]).as_array().unwrap().len(), 4);

    // Kick, dismiss, and errors.
    assert_eq!(ok(&["rooms", "kick", "ops", "cam"]), "removed cam from room ops\n");
    let (code, _, err) = cli(&["tasks", "show", "relay", "0123456789abcdef"]);
    assert_eq!(code, 1);
    assert!(err.contains("404 task_not_found"), "{err}");
    let (code, _, err) = cli(&["rooms", "list", "--api-key", "wrong"]);
    assert_eq!(code, 1);
    assert!(err.contains("401"), "{err}");
    let (code, _, err) = cli(&["rooms", "list", "--server", "https://127.0.0.1:9"]);
    assert_eq!(code, 1);
    assert!(err.contains("cannot reach the server"), "{err}");
    ok(&["rooms", "dismiss", "ops"]);
    let _ = ffmpeg.kill();
    let _ = ffmpeg.wait();
}

/// `make deb`'s package (issue 15): its control fields and contents, and the binary it installs
/// runs with the config it installs (data dir and ports overridden by flags, as an operator
/// would to try it) up to `/healthz`.
#[test]
fn the_debian_package_holds_a_server_that_starts_with_its_config() {
    let dir = TempDir::new("deb");
    let out = dir.path().join("out");
    let script = repo_root().join("scripts/deb.sh");
    let built = std::process::Command::new(&script).args(["--binary", tessera_bin().to_str().unwrap(), "--out", out.to_str().unwrap(), "--fast"]).output().expect("scripts/deb.sh");
    assert!(built.status.success(), "deb.sh: {}", String::from_utf8_lossy(&built.stderr));
    let deb = PathBuf::from(String::from_utf8_lossy(&built.stdout).trim());
    assert!(deb.exists() && deb.extension().is_some_and(|e| e == "deb"), "{deb:?}");
    let dpkg = |args: &[&str]| {
        let o = std::process::Command::new("dpkg-deb").args(args).arg(&deb).output().unwrap();
        assert!(o.status.success(), "dpkg-deb {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    };
    let info = dpkg(&["--info"]);
    for field in ["Package: tessera", "Section: net", "Depends: adduser, libavcodec", "conffiles", "postinst"] {
        assert!(info.contains(field), "{field} in\n{info}");
    }
    let contents = dpkg(&["--contents"]);
    for path in ["./usr/bin/tessera", "./lib/systemd/system/tessera.service", "./etc/tessera/tessera.toml"] {
        assert!(contents.lines().any(|l| l.ends_with(path)), "{path} in\n{contents}");
    }
    let root = dir.path().join("root");
    let o = std::process::Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root).output().unwrap();
    assert!(o.status.success());
    let unit = std::fs::read_to_string(root.join("lib/systemd/system/tessera.service")).unwrap();
    assert!(unit.contains("ExecStart=/usr/bin/tessera serve --config /etc/tessera/tessera.toml") && unit.contains("User=tessera"), "{unit}");
    let postinst = std::process::Command::new("dpkg-deb").arg("--ctrl-tarfile").arg(&deb).output().unwrap();
    assert!(String::from_utf8_lossy(&postinst.stdout).contains("adduser --system"), "postinst creates the tessera user");
    let config = root.join("etc/tessera/tessera.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("data_dir = \"/var/lib/tessera\""), "{text}");
    // The packaged binary with the packaged config.
    let data = dir.path().join("data");
    let server = Server::start_binary(&root.join("usr/bin/tessera"), None, &data, &["--config", config.to_str().unwrap()]);
    let health = get(&server.url("/healthz"), None).json();
    assert_eq!(health["status"], "ok", "{health}");
    assert!(data.join("admin.key").exists(), "the data dir given by flag");
    let (status, printed, err) = run_cli(&["config", "--config", config.to_str().unwrap()]);
    assert!(status.success(), "{err}");
    assert!(printed.contains("data_dir = \"/var/lib/tessera\""), "{printed}");
}

/// HTTPS with the operator's certificate files (issue 15): a renewed pair is served without a
/// restart, a pair caught half-written (a key of another certificate) is not, and SIGHUP
/// reloads at once. curl trusts one certificate at a time, so it tells which one is served.
#[test]
fn tls_certificates_are_reloaded_without_a_restart() {
    let dir = TempDir::new("tls-reload");
    let d = dir.path();
    for name in ["a", "b"] {
        let made = std::process::Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj", "/CN=localhost"])
            .args(["-addext", "subjectAltName=DNS:localhost"])
            .arg("-keyout")
            .arg(d.join(format!("{name}.key")))
            .arg("-out")
            .arg(d.join(format!("{name}.crt")))
            .output()
            .expect("openssl");
        assert!(made.status.success(), "{}", String::from_utf8_lossy(&made.stderr));
    }
    let install = |cert: &str, key: &str| {
        std::fs::copy(d.join(cert), d.join("live.crt")).unwrap();
        std::fs::copy(d.join(key), d.join("live.key")).unwrap();
    };
    install("a.crt", "a.key");
    let (crt, key) = (d.join("live.crt"), d.join("live.key"));
    let server = Server::start(&d.join("data"), &["--tls-cert", crt.to_str().unwrap(), "--tls-key", key.to_str().unwrap()]);
    let port = server.base.rsplit(':').next().unwrap().to_owned();
    let url = format!("https://localhost:{port}/healthz");
    let trusts = |ca: &str| std::process::Command::new("curl").args(["-sf", "--max-time", "5", "--cacert", d.join(ca).to_str().unwrap(), &url]).output().unwrap().status.success();
    assert!(trusts("a.crt") && !trusts("b.crt"), "serves a");
    let until = |what: &str, f: &dyn Fn() -> bool| {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(8);
        while !f() {
            assert!(std::time::Instant::now() < deadline, "{what}");
            std::thread::sleep(std::time::Duration::from_millis(250));
        }
    };
    // Renewed files: picked up within the 2 s check.
    install("b.crt", "b.key");
    until("the renewed certificate is served", &|| trusts("b.crt") && !trusts("a.crt"));
    // A mismatched pair (the certificate renewed, the key not yet): b stays.
    install("a.crt", "b.key");
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert!(trusts("b.crt"), "a bad pair keeps the previous certificate");
    assert!(server.logs().iter().any(|l| l.contains("TLS certificate not reloaded")), "the refusal is logged");
    // SIGHUP reloads now (here a good pair again).
    install("a.crt", "a.key");
    let hup = std::process::Command::new("kill").args(["-HUP", &server.pid().to_string()]).status().unwrap();
    assert!(hup.success());
    until("SIGHUP reloads", &|| trusts("a.crt"));
}
