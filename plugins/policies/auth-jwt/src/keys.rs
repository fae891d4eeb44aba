//! Verification keys and the JWS algorithms they verify.
//!
//! Every [`Key`] is bound to one algorithm family by what it is: an HMAC
//! secret verifies only `HS*`, an RSA public key only `RS*`/`PS*`, a P-256
//! key only `ES256`, a P-384 key only `ES384`, an Ed25519 key only `EdDSA`.
//! That binding is what defeats algorithm confusion: an `HS256` token is never
//! checked against the bytes of an RSA or EC public key. A key may narrow
//! itself further to a single algorithm (`alg` in config or in its JWK).
//!
//! Keys come from PEM text (SPKI `PUBLIC KEY`, or PKCS#1 `RSA PUBLIC KEY`),
//! from JWKs (RFC 7517/7518/8037), or from a raw HMAC secret. Nothing here
//! signs, so nothing needs randomness.

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{KeyInit, Mac};
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::pkcs8::DecodePublicKey;
use rsa::signature::Verifier;
use rsa::traits::PublicKeyParts;
use serde_json::{Map, Value};
use sha2::{Sha256, Sha384, Sha512};

/// Smallest RSA modulus accepted, in bits (NIST SP 800-131A).
const MIN_RSA_BITS: usize = 2048;

/// A JWS signature algorithm this plugin verifies (RFC 7518 §3, RFC 8037).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Alg {
    Hs256,
    Hs384,
    Hs512,
    Rs256,
    Rs384,
    Rs512,
    Ps256,
    Ps384,
    Ps512,
    Es256,
    Es384,
    EdDsa,
}

impl Alg {
    /// Every supported algorithm, in the order they are listed to operators.
    pub(crate) const ALL: [Alg; 12] = [
        Alg::Hs256,
        Alg::Hs384,
        Alg::Hs512,
        Alg::Rs256,
        Alg::Rs384,
        Alg::Rs512,
        Alg::Ps256,
        Alg::Ps384,
        Alg::Ps512,
        Alg::Es256,
        Alg::Es384,
        Alg::EdDsa,
    ];

    /// The algorithm named `name` exactly as JOSE spells it (`"RS256"`).
    pub(crate) fn parse(name: &str) -> Option<Alg> {
        Alg::ALL.into_iter().find(|a| a.name() == name)
    }

    /// The JOSE name.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Alg::Hs256 => "HS256",
            Alg::Hs384 => "HS384",
            Alg::Hs512 => "HS512",
            Alg::Rs256 => "RS256",
            Alg::Rs384 => "RS384",
            Alg::Rs512 => "RS512",
            Alg::Ps256 => "PS256",
            Alg::Ps384 => "PS384",
            Alg::Ps512 => "PS512",
            Alg::Es256 => "ES256",
            Alg::Es384 => "ES384",
            Alg::EdDsa => "EdDSA",
        }
    }

    /// `"HS256, HS384, ..."`, for error messages.
    pub(crate) fn list() -> String {
        Alg::ALL.map(Alg::name).join(", ")
    }

    fn is_hmac(self) -> bool {
        matches!(self, Alg::Hs256 | Alg::Hs384 | Alg::Hs512)
    }

    /// RFC 7518 §3.2: an HMAC key must be at least as long as the hash output.
    fn min_secret_len(self) -> usize {
        match self {
            Alg::Hs384 => 48,
            Alg::Hs512 => 64,
            _ => 32,
        }
    }
}

impl fmt::Display for Alg {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The key material, which fixes the algorithm family.
#[derive(Clone)]
pub(crate) enum Material {
    Hmac(Vec<u8>),
    Rsa(Box<rsa::PublicKey>),
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
    Ed25519(ed25519_dalek::VerifyingKey),
}

impl Material {
    fn kind(&self) -> &'static str {
        match self {
            Material::Hmac(_) => "an HMAC secret",
            Material::Rsa(_) => "an RSA key",
            Material::P256(_) => "an EC P-256 key",
            Material::P384(_) => "an EC P-384 key",
            Material::Ed25519(_) => "an Ed25519 key",
        }
    }

    /// Whether this material can verify `alg` at all.
    fn fits(&self, alg: Alg) -> bool {
        match self {
            Material::Hmac(secret) => alg.is_hmac() && secret.len() >= alg.min_secret_len(),
            Material::Rsa(_) => matches!(
                alg,
                Alg::Rs256 | Alg::Rs384 | Alg::Rs512 | Alg::Ps256 | Alg::Ps384 | Alg::Ps512
            ),
            Material::P256(_) => alg == Alg::Es256,
            Material::P384(_) => alg == Alg::Es384,
            Material::Ed25519(_) => alg == Alg::EdDsa,
        }
    }
}

/// One verification key.
#[derive(Clone)]
pub(crate) struct Key {
    /// The key id tokens name in their `kid` header.
    pub(crate) kid: Option<String>,
    /// When set, the only algorithm this key verifies.
    pub(crate) alg: Option<Alg>,
    pub(crate) material: Material,
}

impl Key {
    /// A key, checking that `alg` (when given) fits the material.
    pub(crate) fn new(
        kid: Option<String>,
        alg: Option<Alg>,
        material: Material,
    ) -> Result<Key, String> {
        if let Some(alg) = alg
            && !material.fits(alg)
        {
            return Err(match &material {
                Material::Hmac(s) if alg.is_hmac() => format!(
                    "{alg} needs a secret of at least {} bytes (RFC 7518 §3.2), this one has {}",
                    alg.min_secret_len(),
                    s.len()
                ),
                m => format!("{} cannot verify {alg}", m.kind()),
            });
        }
        if let Material::Hmac(s) = &material
            && s.len() < Alg::Hs256.min_secret_len()
        {
            return Err(format!(
                "an HMAC secret must have at least 32 bytes (RFC 7518 §3.2), this one has {}",
                s.len()
            ));
        }
        Ok(Key { kid, alg, material })
    }

    /// Whether this key may verify a token signed with `alg`.
    pub(crate) fn accepts(&self, alg: Alg) -> bool {
        self.alg.is_none_or(|a| a == alg) && self.material.fits(alg)
    }

    /// Whether `signature` is a valid `alg` signature of `message` by this
    /// key. False whenever the key does not accept `alg`.
    pub(crate) fn verify(&self, alg: Alg, message: &[u8], signature: &[u8]) -> bool {
        if !self.accepts(alg) {
            return false;
        }
        match &self.material {
            Material::Hmac(secret) => match alg {
                Alg::Hs256 => hmac_ok::<hmac::Hmac<Sha256>>(secret, message, signature),
                Alg::Hs384 => hmac_ok::<hmac::Hmac<Sha384>>(secret, message, signature),
                Alg::Hs512 => hmac_ok::<hmac::Hmac<Sha512>>(secret, message, signature),
                _ => false,
            },
            Material::Rsa(key) => rsa_ok(key, alg, message, signature),
            Material::P256(key) => p256::ecdsa::Signature::from_slice(signature)
                .is_ok_and(|sig| key.verify(message, &sig).is_ok()),
            Material::P384(key) => p384::ecdsa::Signature::from_slice(signature)
                .is_ok_and(|sig| key.verify(message, &sig).is_ok()),
            Material::Ed25519(key) => <[u8; 64]>::try_from(signature).is_ok_and(|bytes| {
                let sig = ed25519_dalek::Signature::from_bytes(&bytes);
                key.verify_strict(message, &sig).is_ok()
            }),
        }
    }
}

fn hmac_ok<M: Mac + KeyInit>(secret: &[u8], message: &[u8], signature: &[u8]) -> bool {
    let Ok(mut mac) = <M as KeyInit>::new_from_slice(secret) else {
        return false;
    };
    mac.update(message);
    // Constant-time comparison inside `verify_slice`.
    mac.verify_slice(signature).is_ok()
}

fn rsa_ok(key: &rsa::PublicKey, alg: Alg, message: &[u8], signature: &[u8]) -> bool {
    use rsa::{pkcs1v15, pss};
    // A signature is exactly as long as the modulus (RFC 8017 §8.2.2).
    if signature.len() != key.size() {
        return false;
    }
    let key = key.clone();
    match alg {
        Alg::Rs256 | Alg::Rs384 | Alg::Rs512 => {
            let Ok(sig) = pkcs1v15::Signature::try_from(signature) else {
                return false;
            };
            match alg {
                Alg::Rs256 => pkcs1v15::VerifyingKey::<Sha256>::new(key).verify(message, &sig),
                Alg::Rs384 => pkcs1v15::VerifyingKey::<Sha384>::new(key).verify(message, &sig),
                _ => pkcs1v15::VerifyingKey::<Sha512>::new(key).verify(message, &sig),
            }
            .is_ok()
        }
        Alg::Ps256 | Alg::Ps384 | Alg::Ps512 => {
            let Ok(sig) = pss::Signature::try_from(signature) else {
                return false;
            };
            // `new` fixes the salt length to the hash length, as RFC 7518 §3.5 requires.
            match alg {
                Alg::Ps256 => pss::VerifyingKey::<Sha256>::new(key).verify(message, &sig),
                Alg::Ps384 => pss::VerifyingKey::<Sha384>::new(key).verify(message, &sig),
                _ => pss::VerifyingKey::<Sha512>::new(key).verify(message, &sig),
            }
            .is_ok()
        }
        _ => false,
    }
}

fn rsa_key(key: rsa::PublicKey) -> Result<Material, String> {
    let bits = key.size() * 8;
    if bits < MIN_RSA_BITS {
        return Err(format!(
            "RSA key of {bits} bits is too small (at least {MIN_RSA_BITS})"
        ));
    }
    Ok(Material::Rsa(Box::new(key)))
}

/// Key material from PEM text: an SPKI `PUBLIC KEY` (RSA, EC P-256/P-384 or
/// Ed25519) or a PKCS#1 `RSA PUBLIC KEY`.
pub(crate) fn material_from_pem(pem: &str) -> Result<Material, String> {
    let pem = pem.trim();
    if pem.starts_with("-----BEGIN RSA PUBLIC KEY-----") {
        return rsa::PublicKey::from_pkcs1_pem(pem)
            .map_err(|e| format!("not a valid PKCS#1 RSA public key: {e}"))
            .and_then(rsa_key);
    }
    if !pem.starts_with("-----BEGIN PUBLIC KEY-----") {
        return Err(
            "expected a PEM public key (`-----BEGIN PUBLIC KEY-----` or \
             `-----BEGIN RSA PUBLIC KEY-----`); private keys and certificates are not accepted"
                .to_string(),
        );
    }
    // Each decoder checks the SPKI algorithm identifier, so at most one succeeds.
    if let Ok(key) = rsa::PublicKey::from_public_key_pem(pem) {
        return rsa_key(key);
    }
    if let Ok(key) = p256::ecdsa::VerifyingKey::from_public_key_pem(pem) {
        return Ok(Material::P256(key));
    }
    if let Ok(key) = p384::ecdsa::VerifyingKey::from_public_key_pem(pem) {
        return Ok(Material::P384(key));
    }
    if let Ok(key) = ed25519_dalek::VerifyingKey::from_public_key_pem(pem) {
        return Ok(Material::Ed25519(key));
    }
    Err("not a valid RSA, EC P-256, EC P-384 or Ed25519 public key".to_string())
}

/// A key from one JWK (RFC 7517). `kid` and `alg` come from the JWK; `use`,
/// when present, must be `sig`.
pub(crate) fn key_from_jwk(jwk: &Map<String, Value>) -> Result<Key, String> {
    let text = |name: &str| -> Result<Option<&str>, String> {
        match jwk.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(format!("`{name}` must be a string")),
        }
    };
    let required = |name: &str| -> Result<&str, String> {
        text(name)?.ok_or_else(|| format!("`{name}` is missing"))
    };
    let bytes = |name: &str| -> Result<Vec<u8>, String> {
        URL_SAFE_NO_PAD
            .decode(required(name)?)
            .map_err(|_| format!("`{name}` is not base64url without padding"))
    };
    if let Some(u) = text("use")?
        && u != "sig"
    {
        return Err(format!("`use` is {u:?}, not \"sig\""));
    }
    let kid = text("kid")?.map(str::to_string);
    let alg = match text("alg")? {
        None => None,
        Some(name) => {
            Some(Alg::parse(name).ok_or_else(|| format!("`alg` {name:?} is not supported"))?)
        }
    };
    let material = match required("kty")? {
        "oct" => Material::Hmac(bytes("k")?),
        "RSA" => {
            let n = bytes("n")?;
            let e = bytes("e")?;
            let (n, e) = (strip_zeros(&n), strip_zeros(&e));
            if n.is_empty() || e.is_empty() {
                return Err("`n` and `e` must be non-zero".to_string());
            }
            let n = rsa::BoxedUint::from_be_slice_vartime(n);
            let e = rsa::BoxedUint::from_be_slice_vartime(e);
            let key = rsa::PublicKey::new(n, e).map_err(|e| format!("bad RSA key: {e}"))?;
            rsa_key(key)?
        }
        "EC" => {
            let crv = required("crv")?;
            let mut point = vec![0x04];
            point.extend(bytes("x")?);
            point.extend(bytes("y")?);
            match crv {
                "P-256" => Material::P256(
                    p256::ecdsa::VerifyingKey::from_sec1_bytes(&point)
                        .map_err(|_| "`x`/`y` is not a P-256 point".to_string())?,
                ),
                "P-384" => Material::P384(
                    p384::ecdsa::VerifyingKey::from_sec1_bytes(&point)
                        .map_err(|_| "`x`/`y` is not a P-384 point".to_string())?,
                ),
                other => return Err(format!("EC curve {other:?} is not supported")),
            }
        }
        "OKP" => match required("crv")? {
            "Ed25519" => {
                let x = <[u8; 32]>::try_from(bytes("x")?)
                    .map_err(|_| "`x` must be 32 bytes".to_string())?;
                Material::Ed25519(
                    ed25519_dalek::VerifyingKey::from_bytes(&x)
                        .map_err(|_| "`x` is not an Ed25519 point".to_string())?,
                )
            }
            other => return Err(format!("OKP curve {other:?} is not supported")),
        },
        other => return Err(format!("`kty` {other:?} is not supported")),
    };
    Key::new(kid, alg, material)
}

/// `bytes` without leading zero bytes (some issuers pad `n`), so the
/// integer's precision matches its real size.
fn strip_zeros(bytes: &[u8]) -> &[u8] {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    &bytes[start..]
}

/// Every usable signing key of a JWK Set (`{"keys": [...]}`), plus one
/// message per key that was skipped.
pub(crate) fn keys_from_jwks(doc: &Value) -> Result<(Vec<Key>, Vec<String>), String> {
    let keys = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or("not a JWK Set: no `keys` array")?;
    let mut usable = Vec::new();
    let mut skipped = Vec::new();
    for (i, jwk) in keys.iter().enumerate() {
        let result = jwk
            .as_object()
            .ok_or_else(|| "not an object".to_string())
            .and_then(key_from_jwk);
        match result {
            Ok(key) => usable.push(key),
            Err(e) => skipped.push(format!("keys[{i}]: {e}")),
        }
    }
    Ok((usable, skipped))
}
