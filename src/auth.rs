//! Who a client is: JWT verification for the connect-time `apikey`, a join's `access_token`,
//! later `access_token` pushes, and `Authorization: Bearer` on HTTP.
//!
//! Keys: an HS256 shared secret, an RS256/ES256 public key (PEM), or a JWKS file. With none
//! configured, auth is off (the relay says so loudly at startup) and every client is anonymous.
//! Claims used: `sub` (the `profiles.id` of the user), `role` (`anon`, `authenticated`,
//! `service_role`) and `exp`; `role` and `exp` are required, as Supabase requires them.

use std::path::Path;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::Value;

/// The verified identity of a token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    pub sub: Option<String>,
    pub role: String,
    /// Expiry, seconds since the epoch.
    pub exp: i64,
}

impl Claims {
    /// Seconds since the token expired, if it has.
    pub fn expired_for(&self, now: i64) -> Option<i64> {
        (self.exp <= now).then(|| now - self.exp)
    }
}

/// Why a token was refused, with Supabase's texts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("API key is missing")]
    Missing,
    #[error("Token has expired {0} seconds ago")]
    Expired(i64),
    #[error("The token provided is not a valid JWT")]
    Malformed,
    #[error("Failed to validate JWT signature")]
    Signature,
    #[error("Fields `role` and `exp` are required in JWT")]
    MissingFields,
    #[error("Field `exp` must be a time in seconds between 1970 and 9999")]
    BadExpiry,
}

impl AuthError {
    /// The PascalCase code Supabase puts in front of join errors.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing
            | AuthError::Expired(_)
            | AuthError::MissingFields
            | AuthError::BadExpiry => "InvalidJWTToken",
            AuthError::Malformed => "MalformedJWT",
            AuthError::Signature => "JwtSignatureError",
        }
    }

    /// `"<Code>: <message>"`, the join-reply reason.
    pub fn reason(&self) -> String {
        format!("{}: {self}", self.code())
    }
}

/// Verifies tokens against the configured keys.
pub struct Verifier {
    keys: Vec<(Option<String>, DecodingKey, Algorithm)>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl Verifier {
    /// Build from configuration; `Ok(None)` when no key is configured (auth off).
    ///
    /// # Errors
    /// A key file that cannot be read or parsed: a configuration error, fatal at startup.
    pub fn from_config(
        secret: Option<&str>,
        public_key: Option<&Path>,
        jwks: Option<&Path>,
    ) -> Result<Option<Verifier>, String> {
        let mut keys = Vec::new();
        if let Some(secret) = secret.filter(|s| !s.is_empty()) {
            keys.push((
                None,
                DecodingKey::from_secret(secret.as_bytes()),
                Algorithm::HS256,
            ));
        }
        if let Some(path) = public_key {
            let pem = std::fs::read(path)
                .map_err(|e| format!("cannot read JWT public key {}: {e}", path.display()))?;
            if let Ok(k) = DecodingKey::from_rsa_pem(&pem) {
                keys.push((None, k, Algorithm::RS256));
            } else {
                let k = DecodingKey::from_ec_pem(&pem).map_err(|e| {
                    format!(
                        "JWT public key {} is neither RSA nor EC PEM: {e}",
                        path.display()
                    )
                })?;
                keys.push((None, k, Algorithm::ES256));
            }
        }
        if let Some(path) = jwks {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read JWKS file {}: {e}", path.display()))?;
            let set: JwkSet = serde_json::from_str(&text)
                .map_err(|e| format!("JWKS file {} is not a JWK set: {e}", path.display()))?;
            for jwk in &set.keys {
                let alg = match &jwk.algorithm {
                    jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
                    jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(_) => Algorithm::ES256,
                    _ => continue,
                };
                let key = DecodingKey::from_jwk(jwk)
                    .map_err(|e| format!("JWKS file {}: bad key: {e}", path.display()))?;
                keys.push((jwk.common.key_id.clone(), key, alg));
            }
        }
        Ok((!keys.is_empty()).then_some(Verifier { keys }))
    }

    /// An HS256 verifier (tests, and the simple secret setup).
    pub fn hs256(secret: &str) -> Verifier {
        Verifier {
            keys: vec![(
                None,
                DecodingKey::from_secret(secret.as_bytes()),
                Algorithm::HS256,
            )],
        }
    }

    /// Verify a token and read its claims.
    ///
    /// # Errors
    /// Not a JWT, a signature no configured key validates, missing `role`/`exp`, or expired.
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        let mut last = AuthError::Signature;
        for (kid, key, alg) in &self.keys {
            if *alg != header.alg {
                continue;
            }
            if let (Some(want), Some(have)) = (kid, &header.kid) {
                if want != have {
                    continue;
                }
            }
            let mut v = Validation::new(*alg);
            // Expiry and required claims are checked below, to answer with Supabase's texts.
            v.validate_exp = false;
            v.validate_aud = false;
            v.required_spec_claims.clear();
            match jsonwebtoken::decode::<serde_json::Map<String, Value>>(token, key, &v) {
                Ok(data) => return claims(&data.claims, now),
                Err(e) => {
                    last = match e.kind() {
                        jsonwebtoken::errors::ErrorKind::InvalidSignature => AuthError::Signature,
                        _ => AuthError::Malformed,
                    }
                }
            }
        }
        Err(last)
    }
}

fn claims(map: &serde_json::Map<String, Value>, now: i64) -> Result<Claims, AuthError> {
    let role = map.get("role").and_then(Value::as_str);
    let exp = map.get("exp").and_then(Value::as_f64);
    let (Some(role), Some(exp)) = (role, exp) else {
        return Err(AuthError::MissingFields);
    };
    // A NumericDate this side of the year 10000: `1e300` is not "never expires", and
    // `-2^63` is not an expiry to subtract from now.
    if !(0.0..=MAX_EXP as f64).contains(&exp) {
        return Err(AuthError::BadExpiry);
    }
    let exp = exp as i64;
    let claims = Claims {
        sub: map.get("sub").and_then(Value::as_str).map(str::to_owned),
        role: role.to_owned(),
        exp,
    };
    match claims.expired_for(now) {
        Some(ago) => Err(AuthError::Expired(ago)),
        None => Ok(claims),
    }
}

/// 9999-12-31T23:59:59Z: the last `exp` accepted.
const MAX_EXP: i64 = 253_402_300_799;

/// Seconds since the epoch.
pub fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

/// Whether a token is a Supabase publishable/secret key (`sb_…`), which means "use the
/// connect-time identity" in a join's `access_token`.
pub fn is_project_key(token: &str) -> bool {
    token.starts_with("sb_")
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    fn token(secret: &str, claims: Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn verifies_and_explains_refusals() {
        let v = Verifier::hs256("s3cret");
        let now = 1_000_000;
        let ok = token(
            "s3cret",
            json!({"sub":"u1","role":"authenticated","exp":now + 60}),
        );
        assert_eq!(
            v.verify(&ok, now),
            Ok(Claims {
                sub: Some("u1".into()),
                role: "authenticated".into(),
                exp: now + 60
            })
        );
        let expired = token("s3cret", json!({"role":"anon","exp":now - 5}));
        assert_eq!(v.verify(&expired, now), Err(AuthError::Expired(5)));
        assert_eq!(
            v.verify(&expired, now).unwrap_err().reason(),
            "InvalidJWTToken: Token has expired 5 seconds ago"
        );
        for exp in [
            json!(1e300),
            json!(-9.223_372_036_854_776e18),
            json!(253_402_300_800_i64),
            json!(-1),
        ] {
            let odd = token("s3cret", json!({"role":"anon","exp":exp}));
            assert_eq!(v.verify(&odd, now), Err(AuthError::BadExpiry), "exp {exp}");
        }
        let forged = token("other", json!({"role":"service_role","exp":now + 60}));
        assert_eq!(v.verify(&forged, now), Err(AuthError::Signature));
        let no_role = token("s3cret", json!({"exp":now + 60}));
        assert_eq!(v.verify(&no_role, now), Err(AuthError::MissingFields));
        assert_eq!(v.verify("not.a.jwt", now), Err(AuthError::Malformed));
        assert_eq!(v.verify("", now), Err(AuthError::Malformed));
        assert_eq!(
            AuthError::Malformed.reason(),
            "MalformedJWT: The token provided is not a valid JWT"
        );
    }

    #[test]
    fn no_keys_means_auth_off() {
        assert!(Verifier::from_config(None, None, None).unwrap().is_none());
        assert!(Verifier::from_config(Some(""), None, None)
            .unwrap()
            .is_none());
        assert!(Verifier::from_config(None, Some(Path::new("/nonexistent.pem")), None).is_err());
    }
}
