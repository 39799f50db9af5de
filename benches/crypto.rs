//! Micro-benchmarks of the per-request cryptography: `cargo bench --bench crypto`.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use secrecy::{ExposeSecret, SecretString};

use hazina::auth::jwt::{TokenKeys, TokenType};
use hazina::crypto::{envelope, Aad, Keyring};
use hazina::domain::UserId;

fn aad() -> Aad<'static> {
    Aad {
        owner_id: 42,
        credential_id: 4242,
        provider: "mpesa",
        environment: "live",
        version: 3,
        profile: None,
    }
}

fn envelope_benches(c: &mut Criterion) {
    let keyring = Keyring::generate();
    let secret = SecretString::from("sk_live_0123456789abcdef0123456789abcdef".to_owned());
    let sealed = envelope::seal(&keyring, &aad(), &secret).unwrap();

    c.bench_function("envelope seal (new DEK, wrap, verifier)", |b| {
        b.iter(|| envelope::seal(black_box(&keyring), &aad(), &secret).unwrap())
    });
    c.bench_function("envelope open (unwrap DEK, decrypt)", |b| {
        b.iter(|| envelope::open(black_box(&keyring), &aad(), &sealed).unwrap())
    });
    c.bench_function("verifier (unwrap DEK, HMAC, constant-time compare)", |b| {
        b.iter(|| envelope::verify(black_box(&keyring), &aad(), &sealed, &secret).unwrap())
    });
}

fn token_benches(c: &mut Criterion) {
    let keyring = Arc::new(Keyring::generate());
    let keys = TokenKeys::from_keyring(keyring).unwrap();
    let now = chrono::Utc::now().timestamp();
    let (token, _) = keys
        .issue(UserId::generate(), "session", TokenType::Access, now)
        .unwrap();

    c.bench_function("access token validation (HS256 + every claim)", |b| {
        b.iter(|| {
            keys.validate(black_box(token.expose_secret()), TokenType::Access, now)
                .unwrap()
        })
    });
}

criterion_group!(benches, envelope_benches, token_benches);
criterion_main!(benches);
