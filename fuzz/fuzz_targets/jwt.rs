//! Access-token verification (`chorus_signal::auth::KeyRing::verify`), which every join, WHIP
//! and WHEP request runs on attacker-supplied text before anything else.
//!
//! The first byte picks the form: the raw input as the token (mode 0), or header and claims
//! JSON taken from the input, base64url-encoded into a token and either left unsigned, given
//! the input's bytes as signature, or signed with a configured key's secret (modes 1-3), so
//! the claims checks run on arbitrary JSON that carries a valid signature.
#![no_main]

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chorus_fuzz::Input;
use chorus_signal::auth::KeyRing;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;

const KEY: &str = "k1";
const SECRET: &str = "fuzz-secret-0123456789-abcdefghijklmnop";

fuzz_target!(|data: &[u8]| {
    let ring = KeyRing::new([
        (KEY.to_owned(), SECRET.to_owned()),
        (
            "k2".to_owned(),
            "another-secret-0123456789-abcdefghijkl".to_owned(),
        ),
    ]);
    let mut input = Input::new(data);
    let Some(mode) = input.u8() else { return };
    let token = match mode % 4 {
        0 => match std::str::from_utf8(input.rest()) {
            Ok(t) => t.to_owned(),
            Err(_) => return,
        },
        mode => {
            let header = URL_SAFE_NO_PAD.encode(input.chunk(512));
            let claims = URL_SAFE_NO_PAD.encode(input.chunk(1024));
            let message = format!("{header}.{claims}");
            let signature = match mode {
                1 => String::new(),
                2 => URL_SAFE_NO_PAD.encode(input.rest()),
                _ => jsonwebtoken::crypto::sign(
                    message.as_bytes(),
                    &EncodingKey::from_secret(SECRET.as_bytes()),
                    Algorithm::HS256,
                )
                .expect("HMAC signs"),
            };
            format!("{message}.{signature}")
        }
    };
    if let Ok(claims) = ring.verify(&token) {
        // Only the two configured keys can have signed it, and `iss` must name the signer.
        assert!(claims.iss == KEY || claims.iss == "k2", "{claims:?}");
        // Unsigned or wrongly signed tokens never pass.
        assert!(
            mode % 4 == 0 || mode % 4 == 3,
            "mode {mode} verified: {token}"
        );
    }
});
