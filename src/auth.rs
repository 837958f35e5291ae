//! Token verification and channel permissions (`auth.mode = "jwt"`).
//!
//! - One key decides the algorithm: `auth.hs256_secret` → HS256 only (the
//!   key is those bytes, exactly what APEX_JWT signs with);
//!   `auth.public_key_pem` → RS256 for an RSA key, ES256 for a P-256 key.
//!   Only that algorithm is accepted: no `none`, and no HS256 token signed
//!   with the public key (RS/HS confusion).
//! - `exp` is required, with `auth.leeway_seconds` of clock skew; `iss` and
//!   `aud` are checked when configured.
//! - Claims: `sub` (matched against a message's `target_user`) and
//!   `channels` (exact names or `prefix*` patterns the user may subscribe to).
//!   Anyone, with or without a token, may subscribe to `auth.public_channels`.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tracing::warn;

use crate::config::{AuthMode, AuthSettings, ConfigError, UserCase};
use crate::message::ChannelPattern;

/// Who a connection is, once its token was verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub sub: Option<String>,
    pub channels: Vec<ChannelPattern>,
    /// Unix seconds after which the token is no longer valid (leeway included).
    pub expires_at: u64,
}

/// A refused token, with a reason fit for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AuthError(pub String);

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    exp: u64,
    #[serde(default)]
    channels: Vec<String>,
}

/// Decides who may connect and subscribe to what. Cheap to clone.
#[derive(Clone)]
pub struct Access {
    inner: Arc<AccessInner>,
}

struct AccessInner {
    verifier: Option<Verifier>,
    public: Vec<ChannelPattern>,
    user_case: UserCase,
    refusals: RefusalLog,
}

struct Verifier {
    key: DecodingKey,
    validation: Validation,
    leeway: u64,
}

impl Access {
    /// Builds from the settings; the error names the key at fault.
    pub fn from_settings(auth: &AuthSettings) -> Result<Self, ConfigError> {
        let public = auth.public_channels.iter().filter_map(|p| ChannelPattern::parse(p).ok()).collect();
        let verifier = match auth.mode {
            AuthMode::None => None,
            AuthMode::Jwt => Some(Verifier::from_settings(auth)?),
        };
        let refusals = RefusalLog::default();
        Ok(Self { inner: Arc::new(AccessInner { verifier, public, user_case: auth.user_case, refusals }) })
    }

    /// True when tokens are checked at all.
    pub fn enabled(&self) -> bool {
        self.inner.verifier.is_some()
    }

    /// Verifies a token (surrounding whitespace ignored: APEX's `htp.p`
    /// appends a newline). Without `auth.mode = "jwt"`, tokens are refused:
    /// there is nothing to check them against.
    pub fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        match &self.inner.verifier {
            Some(v) => v.verify(token.trim()),
            None => Err(AuthError("tokens are not accepted: auth.mode is \"none\"".into())),
        }
    }

    /// The form of a token's `sub` that `target_user` is matched against.
    pub fn user_key(&self, sub: &str) -> Arc<str> {
        Arc::from(self.inner.user_case.key(sub))
    }

    /// Logs a refused token at `warn`, with the reason and the peer, never
    /// the token; at most [`RefusalLog::PER_WINDOW`] lines per window, then
    /// one line counting the rest.
    pub fn log_refusal(&self, peer: SocketAddr, reason: &AuthError) {
        self.inner.refusals.log(peer, reason);
    }

    /// May this connection subscribe to `channel`?
    pub fn may_subscribe(&self, identity: Option<&Identity>, channel: &str) -> bool {
        if self.inner.verifier.is_none() {
            return true;
        }
        self.inner.public.iter().any(|p| p.matches(channel))
            || identity.is_some_and(|id| id.channels.iter().any(|p| p.matches(channel)))
    }

    /// The channel patterns a connection may receive (for the legacy `/`
    /// endpoint, which has no subscribe step); `None` means all.
    pub fn permits(&self, identity: Option<&Identity>) -> Option<Vec<ChannelPattern>> {
        self.inner.verifier.as_ref()?;
        let mut patterns = self.inner.public.clone();
        if let Some(id) = identity {
            patterns.extend(id.channels.iter().cloned());
        }
        Some(patterns)
    }
}

impl Verifier {
    fn from_settings(auth: &AuthSettings) -> Result<Self, ConfigError> {
        let (key, algorithm) = match (&auth.hs256_secret, &auth.public_key_pem) {
            (Some(secret), _) => (DecodingKey::from_secret(secret.expose().as_bytes()), Algorithm::HS256),
            (None, Some(path)) => {
                let pem = std::fs::read(path).map_err(|e| {
                    ConfigError::key("auth.public_key_pem", format!("cannot read {}: {e}", path.display()))
                })?;
                if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
                    (key, Algorithm::RS256)
                } else if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
                    (key, Algorithm::ES256)
                } else {
                    return Err(ConfigError::key(
                        "auth.public_key_pem",
                        format!("{} is neither an RSA nor a P-256 public key in PEM", path.display()),
                    ));
                }
            }
            (None, None) => {
                return Err(ConfigError::key(
                    "auth.mode",
                    "= \"jwt\" needs auth.hs256_secret or auth.public_key_pem",
                ))
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = auth.leeway_seconds;
        validation.set_required_spec_claims(&["exp"]);
        validation.validate_exp = true;
        match &auth.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &auth.issuer {
            validation.set_issuer(&[iss]);
        }
        Ok(Self { key, validation, leeway: auth.leeway_seconds })
    }

    fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        let header = decode_header(token).map_err(|e| AuthError(format!("malformed token: {e}")))?;
        if !self.validation.algorithms.contains(&header.alg) {
            return Err(AuthError(format!("token algorithm {:?} is not accepted here", header.alg)));
        }
        let data = decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| AuthError(format!("invalid token: {e}")))?;
        let claims = data.claims;
        Ok(Identity {
            sub: claims.sub,
            channels: claims.channels.iter().filter_map(|p| ChannelPattern::parse(p).ok()).collect(),
            expires_at: claims.exp.saturating_add(self.leeway),
        })
    }
}

/// Rate-limited logging of refused tokens: a client that retries a bad
/// token in a loop must not flood the log.
#[derive(Default)]
struct RefusalLog {
    /// Start of the current window, lines logged in it, lines suppressed.
    window: Mutex<Option<(Instant, u32, u64)>>,
}

impl RefusalLog {
    const WINDOW: Duration = Duration::from_secs(60);
    const PER_WINDOW: u32 = 10;

    fn log(&self, peer: SocketAddr, reason: &AuthError) {
        let mut window = self.window.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let (started, logged, suppressed) = window.get_or_insert((now, 0, 0));
        if now.duration_since(*started) >= Self::WINDOW {
            if *suppressed > 0 {
                warn!(suppressed = *suppressed, "more tokens were refused in the last minute (not logged)");
            }
            (*started, *logged, *suppressed) = (now, 0, 0);
        }
        if *logged < Self::PER_WINDOW {
            *logged += 1;
            warn!(%peer, %reason, "token refused");
        } else {
            *suppressed += 1;
        }
    }
}

/// Seconds since the Unix epoch, now.
pub fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;

    fn hs_access() -> Access {
        Access::from_settings(&AuthSettings {
            mode: AuthMode::Jwt,
            hs256_secret: Some(Secret::new("0123456789abcdef-apex-key")),
            public_channels: vec!["news".into(), "public.*".into()],
            ..AuthSettings::default()
        })
        .unwrap()
    }

    fn token(claims: serde_json::Value) -> String {
        let key = jsonwebtoken::EncodingKey::from_secret(b"0123456789abcdef-apex-key");
        jsonwebtoken::encode(&jsonwebtoken::Header::new(Algorithm::HS256), &claims, &key).unwrap()
    }

    /// Permissions: token patterns plus public channels; everything when auth is off.
    #[test]
    fn subscribe_permissions() {
        let access = hs_access();
        let id = access
            .verify(&token(serde_json::json!({"sub":"scott","exp": now_unix() + 60,"channels":["emp*"]})))
            .unwrap();
        assert_eq!(id.sub.as_deref(), Some("scott"));
        assert!(access.may_subscribe(Some(&id), "emp.dept"));
        assert!(!access.may_subscribe(Some(&id), "hr"));
        assert!(access.may_subscribe(None, "news") && access.may_subscribe(None, "public.x"));
        assert!(!access.may_subscribe(None, "emp"));
        let open = Access::from_settings(&AuthSettings::default()).unwrap();
        assert!(open.may_subscribe(None, "anything") && open.permits(None).is_none());
        assert_eq!(access.permits(None).unwrap().len(), 2);
    }

    /// Expired beyond the leeway, or without exp: refused.
    #[test]
    fn exp_is_required_and_checked() {
        let access = hs_access();
        assert!(access.verify(&token(serde_json::json!({"sub":"a","exp": now_unix() - 3600}))).is_err());
        assert!(access.verify(&token(serde_json::json!({"sub":"a","exp": now_unix() - 10}))).is_ok());
        assert!(access.verify(&token(serde_json::json!({"sub":"a"}))).is_err());
    }
}
