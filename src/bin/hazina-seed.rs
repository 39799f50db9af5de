//! `hazina-seed`: fills a database with synthetic merchants and credentials for the
//! benchmarks (`scripts/bench.sh`). Not part of the product: it writes rows directly, in bulk
//! (one transaction per chunk), with real envelopes sealed under the configured keyring.
//!
//! Merchants are `<prefix>000000`, `<prefix>000001`, …, each holding up to ten credentials
//! (five providers × two environments); all share the password from `HAZINA_SEED_PASSWORD`
//! (hashed once). Reads the same configuration as `hazina` (`HAZINA_DATABASE_URL`,
//! `HAZINA_KEYRING`).

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use diesel::prelude::*;
use secrecy::SecretString;

use hazina::audit::{chain, Action, Actor, Event, RequestMeta, Target};
use hazina::auth::password;
use hazina::clock::Clock;
use hazina::config::{self, Config};
use hazina::crypto::{envelope, Aad};
use hazina::db::schema::{credential_versions as cv, credentials as c};
use hazina::db::DbConn;
use hazina::domain::{CredentialId, Provider, Role, Username};
use hazina::repo;
use hazina::startup;

#[derive(Parser)]
#[command(
    name = "hazina-seed",
    about = "Seed synthetic credentials for benchmarks"
)]
struct Args {
    /// How many credentials to create (ten per merchant).
    #[arg(long)]
    credentials: usize,
    /// Username prefix of the synthetic merchants.
    #[arg(long, default_value = "bench")]
    prefix: String,
    /// Also append this many synthetic audit entries (reveals and reads of the seeded
    /// credentials, in turn, by the command line), chained and added to the Merkle tree as the
    /// vault itself does, in batches.
    #[arg(long, default_value_t = 0)]
    audit_entries: u64,
}

const ENVIRONMENTS: [&str; 2] = ["sandbox", "live"];
const CHUNK: usize = 1000;

fn main() -> ExitCode {
    match run(Args::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("hazina-seed: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<()> {
    config::load_dotenv()?;
    let config = Config::from_env()?;
    let startup::Vault { pool, keyring, .. } = startup::open_vault(&config, &Clock::System)?;
    let mut pooled = pool.get()?;
    let conn: &mut DbConn = &mut pooled;
    let pw = SecretString::from(
        std::env::var("HAZINA_SEED_PASSWORD").context("set HAZINA_SEED_PASSWORD")?,
    );
    let hash = password::hash(&pw)?;
    let now = Clock::System.now();
    let owners = args.credentials.div_ceil(10);

    let mut owner_ids = Vec::with_capacity(owners);
    // Rows are signed only inside an audited change: one entry per chunk names its rows.
    let seeded = |action| {
        Event::new(
            Clock::System.now_micros(),
            Actor::system(),
            &RequestMeta::default(),
            action,
        )
    };
    for chunk in (0..owners).collect::<Vec<_>>().chunks(CHUNK) {
        chain::with_entry(
            conn,
            |tx| {
                for i in chunk {
                    let name = Username::parse(&format!("{}{i:06}", args.prefix))?;
                    owner_ids.push(
                        repo::users::create(tx, &keyring, &name, &hash, Role::User, None, now)?
                            .get(),
                    );
                }
                Ok(())
            },
            |_| Some(seeded(Action::AdminUserCreate)),
        )?;
    }

    let slots: Vec<(i64, Provider, &str)> = owner_ids
        .iter()
        .flat_map(|o| {
            Provider::ALL
                .into_iter()
                .flat_map(move |p| ENVIRONMENTS.into_iter().map(move |e| (*o, p, e)))
        })
        .take(args.credentials)
        .collect();
    let kek_version = repo::key_versions::sealing_version(conn, &keyring)?;
    let mut targets = Vec::with_capacity(slots.len());
    for chunk in slots.chunks(CHUNK) {
        let mut creds = Vec::with_capacity(chunk.len());
        let mut versions = Vec::with_capacity(chunk.len());
        let mut ids = Vec::with_capacity(chunk.len());
        for (n, (owner, provider, env)) in chunk.iter().enumerate() {
            let id = CredentialId::generate().get();
            ids.push(id);
            let secret = SecretString::from(format!("bench-{}-{env}-{id}-{n}", provider.as_str()));
            let aad = Aad {
                owner_id: *owner,
                credential_id: id,
                provider: provider.as_str(),
                environment: env,
                version: 1,
                profile: None,
            };
            let sealed = envelope::seal_under(&keyring, kek_version, &aad, &secret)?;
            targets.push(Target {
                credential_id: Some(id),
                owner_id: Some(*owner),
                provider: Some(provider.as_str().to_owned()),
                environment: Some((*env).to_owned()),
            });
            creds.push((
                c::id.eq(id),
                c::owner_id.eq(*owner),
                c::provider.eq(provider.as_str()),
                c::environment.eq(*env),
                c::api_key.eq(Some(format!("bench-api-{id}"))),
                c::is_active.eq(true),
                c::current_version.eq(1),
                c::created_at.eq(now),
                c::updated_at.eq(now),
            ));
            versions.push((
                cv::credential_id.eq(id),
                cv::version.eq(1),
                cv::environment.eq(*env),
                cv::format.eq(sealed.format),
                cv::kek_version.eq(sealed.kek_version),
                cv::wrapped_dek.eq(sealed.wrapped_dek),
                cv::ciphertext.eq(sealed.ciphertext),
                cv::verifier.eq(sealed.verifier),
                cv::created_at.eq(now),
                cv::created_by.eq(*owner),
            ));
        }
        let n = chunk.len() as i64;
        chain::with_entry(
            conn,
            |tx| {
                match tx {
                    DbConn::Sqlite(s) => {
                        diesel::insert_into(c::table).values(&creds).execute(s)?;
                        diesel::insert_into(cv::table)
                            .values(&versions)
                            .execute(s)?;
                    }
                    DbConn::Postgres(p) => {
                        diesel::insert_into(c::table).values(&creds).execute(p)?;
                        diesel::insert_into(cv::table)
                            .values(&versions)
                            .execute(p)?;
                    }
                }
                let rows: Vec<repo::credentials::CredentialRow> = c::table
                    .filter(c::id.eq_any(&ids))
                    .select(repo::credentials::CredentialRow::as_select())
                    .load(tx)?;
                for row in rows {
                    repo::credentials::store_state(tx, &keyring, row)?;
                }
                repo::keys::bump_wear(tx, &keyring, kek_version, n)
            },
            |_| Some(seeded(Action::CredentialCreate)),
        )?;
    }
    seed_audit(conn, args.audit_entries, &targets)?;
    println!(
        "{{\"merchants\":{owners},\"credentials\":{},\"first_merchant\":\"{}000000\",\"audit_entries\":{}}}",
        slots.len(),
        args.prefix,
        args.audit_entries
    );
    Ok(())
}

/// Appends `count` audit entries through the vault's own append (chain and tree), in batches:
/// reveals and reads of `targets` in turn (entries with no target when there are none).
fn seed_audit(conn: &mut DbConn, count: u64, targets: &[Target]) -> anyhow::Result<()> {
    const BATCH: u64 = 5000;
    let meta = RequestMeta::default();
    let mut done = 0;
    while done < count {
        let n = BATCH.min(count - done);
        let events: Vec<Event> = (done..done + n)
            .map(|i| {
                let action = if i % 2 == 0 {
                    Action::CredentialReveal
                } else {
                    Action::CredentialRead
                };
                let e = Event::new(Clock::System.now_micros(), Actor::system(), &meta, action);
                match targets.get((i as usize) % targets.len().max(1)) {
                    Some(t) => e.target(t.clone()),
                    None => e,
                }
            })
            .collect();
        let refs: Vec<&Event> = events.iter().collect();
        chain::append(conn, &refs)?;
        done += n;
    }
    Ok(())
}
