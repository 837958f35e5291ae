//! Authentication and permissions (SPEC "Authentication"), black-box:
//! tokens on the URL and in `auth` frames, channel permissions, per-user
//! targeting on every endpoint, token expiry and refresh.

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::*;
use hmac::{Hmac, Mac};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use orapush::config::{AuthMode, Secret, Settings};
use serde_json::{json, Value};
use sha2::Sha256;

const SECRET: &str = "apex-shared-secret-0123456789";

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// An HS256 token built by hand the way APEX_JWT.ENCODE builds it: base64url
/// header and claims, HMAC-SHA256 over the key's bytes (UTL_RAW.CAST_TO_RAW).
fn apex_token(claims: Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{header}.{payload}").as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{header}.{payload}.{signature}")
}

fn signed(alg: Algorithm, key: &EncodingKey, claims: Value) -> String {
    encode(&Header::new(alg), &claims, key).unwrap()
}

fn hs256(s: &mut Settings) {
    s.auth.mode = AuthMode::Jwt;
    s.auth.hs256_secret = Some(Secret::new(SECRET));
    s.auth.public_channels = vec!["news".into()];
}

fn claims(sub: &str, channels: &[&str]) -> Value {
    json!({ "iss": "apex", "sub": sub, "aud": "orapush", "iat": now(), "exp": now() + 300, "channels": channels })
}

/// The HTTP status of a WebSocket upgrade attempt (101 when accepted).
async fn upgrade_status(url: &str) -> u16 {
    match tokio_tungstenite::connect_async(url).await {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("{url}: {e}"),
    }
}

/// Valid tokens (APEX-built HS256, RS256, ES256) are accepted on the URL and in an auth frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn valid_tokens_are_accepted() {
    let server = Server::start_with(hs256).await;
    let token = apex_token(claims("SCOTT", &["emp*"]));
    let mut ws = connect(&server.ws_url(&format!("/ws?token={token}"))).await;
    subscribe(&mut ws, "emp.dept").await;
    let mut ws = connect(&server.ws_url("/ws")).await;
    send_json(&mut ws, json!({"op": "auth", "token": token})).await;
    let reply = next_json(&mut ws).await;
    assert_eq!((reply["type"].as_str(), reply["sub"].as_str()), (Some("auth"), Some("SCOTT")));
    subscribe(&mut ws, "emp").await;
    server.stop().await.unwrap();

    for (public, private, alg) in [
        ("rsa_public.pem", "rsa_private.pem", Algorithm::RS256),
        ("ec_public.pem", "ec_private.pem", Algorithm::ES256),
    ] {
        let server = Server::start_with(|s| {
            s.auth.mode = AuthMode::Jwt;
            s.auth.public_key_pem = Some(fixture(public));
        })
        .await;
        let pem = std::fs::read(fixture(private)).unwrap();
        let key = match alg {
            Algorithm::RS256 => EncodingKey::from_rsa_pem(&pem).unwrap(),
            _ => EncodingKey::from_ec_pem(&pem).unwrap(),
        };
        let token = signed(alg, &key, claims("alice", &["hr"]));
        let mut ws = connect(&server.ws_url(&format!("/ws?token={token}"))).await;
        subscribe(&mut ws, "hr").await;
        server.stop().await.unwrap();
    }
}

/// Forged, expired, unsigned or misdirected tokens are refused: 401 before the upgrade, or an error and close 1008 after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_before_any_subscription() {
    let rsa_public = std::fs::read(fixture("rsa_public.pem")).unwrap();
    let server = Server::start_with(|s| {
        s.auth.mode = AuthMode::Jwt;
        s.auth.public_key_pem = Some(fixture("rsa_public.pem"));
        s.auth.issuer = Some("apex".into());
        s.auth.audience = Some("orapush".into());
    })
    .await;
    let rsa = EncodingKey::from_rsa_pem(&std::fs::read(fixture("rsa_private.pem")).unwrap()).unwrap();
    let good = claims("alice", &["*"]);
    let unsigned = format!(
        "{}.{}.",
        URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#),
        URL_SAFE_NO_PAD.encode(good.to_string())
    );
    let mut forged = signed(Algorithm::RS256, &rsa, good.clone());
    forged.replace_range(forged.len() - 6.., "AAAAAA");
    let mut expired = good.clone();
    expired["exp"] = json!(now() - 3600);
    let mut no_exp = good.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    let mut wrong_aud = good.clone();
    wrong_aud["aud"] = json!("someone-else");
    let mut wrong_iss = good.clone();
    wrong_iss["iss"] = json!("evil");
    let refused = [
        ("alg none", unsigned),
        (
            "HS256 keyed with the RSA public key",
            signed(Algorithm::HS256, &EncodingKey::from_secret(&rsa_public), good.clone()),
        ),
        ("bad signature", forged),
        ("expired", signed(Algorithm::RS256, &rsa, expired)),
        ("no exp", signed(Algorithm::RS256, &rsa, no_exp)),
        ("wrong aud", signed(Algorithm::RS256, &rsa, wrong_aud)),
        ("wrong iss", signed(Algorithm::RS256, &rsa, wrong_iss)),
        ("garbage", "not.a.token".to_string()),
    ];
    for (what, token) in &refused {
        assert_eq!(upgrade_status(&server.ws_url(&format!("/ws?token={token}"))).await, 401, "{what}");
        assert_eq!(upgrade_status(&server.ws_url(&format!("/?token={token}"))).await, 401, "{what} on /");
        let mut ws = connect(&server.ws_url("/ws")).await;
        send_json(&mut ws, json!({"op": "auth", "token": token})).await;
        let reply = next_json(&mut ws).await;
        assert_eq!(
            (reply["type"].as_str(), reply["code"].as_str()),
            (Some("error"), Some("unauthorized")),
            "{what}"
        );
        assert_eq!(close_code(&mut ws).await, Some(1008), "{what}");
    }
    let ok = signed(Algorithm::RS256, &rsa, good);
    assert_eq!(upgrade_status(&server.ws_url(&format!("/ws?token={ok}"))).await, 101);
    server.stop().await.unwrap();
}

/// A token for `emp*` may subscribe to emp.dept but not hr; anonymous only to public channels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_permissions() {
    let server = Server::start_with(hs256).await;
    let token = apex_token(claims("SCOTT", &["emp*"]));
    let mut scott = connect(&server.ws_url(&format!("/ws?token={token}"))).await;
    subscribe(&mut scott, "emp.dept").await;
    subscribe(&mut scott, "news").await;
    send_json(&mut scott, json!({"op": "subscribe", "channel": "hr"})).await;
    assert_eq!(next_json(&mut scott).await["code"], "forbidden");
    let mut anonymous = connect(&server.ws_url("/ws")).await;
    subscribe(&mut anonymous, "news").await;
    send_json(&mut anonymous, json!({"op": "subscribe", "channel": "emp"})).await;
    assert_eq!(next_json(&mut anonymous).await["code"], "forbidden");
    expect_pong_next(&mut anonymous).await;
    // ?channel= goes through the same check.
    let mut auto = connect(&server.ws_url("/ws?channel=hr")).await;
    assert_eq!(next_json(&mut auto).await["code"], "forbidden");
    server.stop().await.unwrap();
}

/// A targeted row reaches its user on /ws and on /, never another user, never anonymous, never through a replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targeted_rows_reach_only_their_user() {
    let server = Server::start_with(|s| {
        hs256(s);
        s.auth.public_channels = vec!["emp".into()];
    })
    .await;
    let scott_token = apex_token(claims("SCOTT", &["emp"]));
    let king_token = apex_token(claims("KING", &["emp"]));
    let mut scott = connect(&server.ws_url(&format!("/ws?token={scott_token}&channel=emp"))).await;
    let mut king = connect(&server.ws_url(&format!("/ws?token={king_token}&channel=emp"))).await;
    let mut anonymous = connect(&server.ws_url("/ws?channel=emp")).await;
    let mut scott_legacy = connect(&server.ws_url(&format!("/?token={scott_token}"))).await;
    let mut king_legacy = connect(&server.ws_url(&format!("/?token={king_token}"))).await;
    let epoch = next_json(&mut king).await["epoch"].as_str().unwrap().to_string();
    for ws in [&mut scott, &mut anonymous] {
        assert_eq!(next_json(ws).await["type"], "subscribed");
    }
    let ids = insert_targeted(
        &server.db,
        &[("emp", r#"{"for":"scott"}"#, Some("SCOTT")), ("emp", r#"{"for":"all"}"#, None)],
    );
    assert_eq!(next_json(&mut scott).await["id"], ids[0].to_string());
    assert_eq!(next_json(&mut scott).await["id"], ids[1].to_string());
    assert_eq!(next_text(&mut scott_legacy).await, r#"{"for":"scott"}"#);
    assert_eq!(next_text(&mut scott_legacy).await, r#"{"for":"all"}"#);
    for ws in [&mut king, &mut anonymous] {
        assert_eq!(next_json(ws).await["id"], ids[1].to_string());
        expect_pong_next(ws).await;
    }
    assert_eq!(next_text(&mut king_legacy).await, r#"{"for":"all"}"#);
    // KING reconnecting with since=0 gets the public row only.
    let mut again = connect(&server.ws_url(&format!("/ws?token={king_token}"))).await;
    send_json(&mut again, json!({"op":"subscribe","channel":"emp","since":{"epoch":epoch,"offset":0}})).await;
    assert_eq!(next_json(&mut again).await["recovered"], true);
    assert_eq!(next_json(&mut again).await["id"], ids[1].to_string());
    expect_pong_next(&mut again).await;
    server.stop().await.unwrap();
}

/// A socket whose token expires is closed with 4001; one refreshed in time stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_closes_and_refresh_keeps_open() {
    let server = Server::start_with(|s| {
        hs256(s);
        s.auth.leeway_seconds = 0;
    })
    .await;
    let short = |sub: &str| {
        let mut c = claims(sub, &["emp"]);
        c["exp"] = json!(now() + 2);
        apex_token(c)
    };
    let mut expiring = connect(&server.ws_url(&format!("/ws?token={}", short("SCOTT")))).await;
    let mut refreshed = connect(&server.ws_url(&format!("/ws?token={}", short("SCOTT")))).await;
    send_json(&mut refreshed, json!({"op": "auth", "token": apex_token(claims("SCOTT", &["emp"]))})).await;
    assert_eq!(next_json(&mut refreshed).await["type"], "auth");
    let started = std::time::Instant::now();
    let reply = next_json(&mut expiring).await;
    assert_eq!(reply["code"], "token_expired");
    assert_eq!(close_code(&mut expiring).await, Some(4001));
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    expect_pong_next(&mut refreshed).await;
    // A token for another user is refused on an open connection.
    send_json(&mut refreshed, json!({"op": "auth", "token": apex_token(claims("KING", &["emp"]))})).await;
    assert_eq!(next_json(&mut refreshed).await["code"], "unauthorized");
    assert_eq!(close_code(&mut refreshed).await, Some(1008));
    server.stop().await.unwrap();
}

/// Auth frames from an anonymous connection attach the user to existing subscriptions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_auth_targets_existing_subscriptions() {
    let server = Server::start_with(|s| {
        hs256(s);
        s.auth.public_channels = vec!["emp".into()];
    })
    .await;
    let mut ws = connect(&server.ws_url("/ws?channel=emp")).await;
    assert_eq!(next_json(&mut ws).await["type"], "subscribed");
    send_json(&mut ws, json!({"op": "auth", "token": apex_token(claims("SCOTT", &[]))})).await;
    assert_eq!(next_json(&mut ws).await["sub"], "SCOTT");
    let ids = insert_targeted(&server.db, &[("emp", "x", Some("SCOTT"))]);
    assert_eq!(next_json(&mut ws).await["id"], ids[0].to_string());
    server.stop().await.unwrap();
}

/// Without auth, an auth frame is answered with bad_request and the connection stays open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auth_frames_without_auth_keep_the_connection() {
    let server = Server::start().await;
    let mut ws = connect(&server.ws_url("/ws")).await;
    send_json(&mut ws, json!({"op": "auth", "token": apex_token(claims("SCOTT", &[]))})).await;
    let reply = next_json(&mut ws).await;
    assert_eq!(
        (reply["code"].as_str(), reply["message"].as_str().map(|m| m.contains("auth.mode"))),
        (Some("bad_request"), Some(true))
    );
    subscribe(&mut ws, "emp").await;
    server.stop().await.unwrap();
}

/// A token with surrounding whitespace (what APEX's `htp.p` returns) is accepted on the URL and in an auth frame.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_with_a_trailing_newline_are_accepted() {
    let server = Server::start_with(hs256).await;
    let token = format!("{}\n", apex_token(claims("SCOTT", &["emp*"])));
    let encoded: String = form_urlencoded::byte_serialize(token.as_bytes()).collect();
    let mut ws = connect(&server.ws_url(&format!("/ws?token={encoded}"))).await;
    subscribe(&mut ws, "emp").await;
    let mut ws = connect(&server.ws_url("/ws")).await;
    send_json(&mut ws, json!({"op": "auth", "token": format!(" {token}")})).await;
    let reply = next_json(&mut ws).await;
    assert_eq!((reply["type"].as_str(), reply["sub"].as_str()), (Some("auth"), Some("SCOTT")), "{reply}");
    server.stop().await.unwrap();
}

/// `target_user` matches the token's user without regard to case by default, and exactly with `auth.user_case = "sensitive"`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_user_matching_follows_user_case() {
    for (user_case, reaches_scott) in [(None, true), (Some("sensitive"), false)] {
        let server = Server::start_with(|s| {
            hs256(s);
            if let Some(case) = user_case {
                s.auth.user_case =
                    <orapush::config::UserCase as orapush::config::Named>::parse(case).unwrap();
            }
        })
        .await;
        // APEX's :APP_USER is upper-case; the DBA wrote lower case.
        let token = apex_token(claims("SCOTT", &["emp"]));
        let mut scott = connect(&server.ws_url(&format!("/ws?token={token}&channel=emp"))).await;
        assert_eq!(next_json(&mut scott).await["type"], "subscribed");
        let ids = insert_targeted(&server.db, &[("emp", "for you", Some("scott")), ("emp", "for all", None)]);
        let first = next_json(&mut scott).await;
        let expected = if reaches_scott { ids[0] } else { ids[1] };
        assert_eq!(first["id"], expected.to_string(), "user_case {user_case:?}: {first}");
        server.stop().await.unwrap();
    }
}
