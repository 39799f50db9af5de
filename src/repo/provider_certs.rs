//! Provider certificates (SPEC §9.2): Safaricom's public certificate per environment, which
//! the SecurityCredential is encrypted to. Each row carries a MAC over every column
//! (`crypto::rowmac`): a certificate swapped in the database would encrypt initiator passwords
//! to whoever holds its key, so a row that fails its check is refused, never used.

use diesel::prelude::*;

use super::users::sign;
use crate::audit::{chain, generation, Event, Target};
use crate::clock::UnixSeconds;
use crate::crypto::{rowmac, Keyring};
use crate::db::schema::provider_certificates as pc;
use crate::db::{DbConn, DbError};
use crate::domain::{CertificateInfo, Environment, Provider, ValidationError};

#[derive(Debug, Clone, Queryable, Selectable, Insertable)]
#[diesel(table_name = pc)]
pub struct CertificateRow {
    pub provider: String,
    pub environment: String,
    pub pem: String,
    pub sha256: String,
    pub subject: String,
    pub not_before: i64,
    pub not_after: i64,
    pub updated_at: i64,
    pub updated_by: String,
    pub mac: Vec<u8>,
    pub mac_version: i32,
    /// The audit entry of the certificate's last change (SPEC §14).
    pub generation: i64,
}

impl CertificateRow {
    fn mac_row(&self) -> rowmac::Row<'_> {
        rowmac::Row::ProviderCertificate {
            provider: &self.provider,
            environment: &self.environment,
            pem: &self.pem,
            sha256: &self.sha256,
            subject: &self.subject,
            not_before: self.not_before,
            not_after: self.not_after,
            updated_at: self.updated_at,
            updated_by: &self.updated_by,
            generation: self.generation,
        }
    }

    pub(crate) fn intact_format1(&self, keyring: &Keyring) -> bool {
        rowmac::verify_format1(
            keyring,
            Some(self.mac_version),
            Some(&self.mac),
            &self.mac_row(),
        )
    }

    pub(crate) fn subject(&self) -> String {
        generation::provider_cert(&self.provider, &self.environment)
    }

    /// Whether the row is as hazina last wrote it.
    pub fn intact(&self, keyring: &Keyring) -> bool {
        rowmac::verify(
            keyring,
            Some(self.mac_version),
            Some(&self.mac),
            &self.mac_row(),
        )
    }
}

/// What a lookup for an operation found.
#[derive(Debug)]
pub enum Found {
    Intact(CertificateRow),
    Tampered(CertificateRow),
    None,
}

pub fn get(
    conn: &mut DbConn,
    keyring: &Keyring,
    provider: &str,
    environment: &str,
) -> Result<Found, DbError> {
    let row = pc::table
        .filter(pc::provider.eq(provider))
        .filter(pc::environment.eq(environment))
        .select(CertificateRow::as_select())
        .first(conn)
        .optional()?;
    // A swapped certificate, or an older one written back (a replaced certificate whose key
    // may have leaked), is refused.
    let latest = generation::latest(conn, &generation::provider_cert(provider, environment))?;
    Ok(match row {
        Some(r) if rowmac::Verdict::of(r.intact(keyring), r.generation, latest).is_intact() => {
            Found::Intact(r)
        }
        Some(r) => Found::Tampered(r),
        None => Found::None,
    })
}

pub fn list(conn: &mut DbConn) -> Result<Vec<CertificateRow>, DbError> {
    Ok(pc::table
        .order((pc::provider.asc(), pc::environment.asc()))
        .select(CertificateRow::as_select())
        .load(conn)?)
}

/// Installs (or replaces) the certificate for `provider` and `environment`.
pub fn set(
    conn: &mut DbConn,
    keyring: &Keyring,
    (provider, environment): (&str, &str),
    pem: &str,
    info: &CertificateInfo,
    actor: &str,
    now: UnixSeconds,
) -> Result<CertificateRow, DbError> {
    let mut row = CertificateRow {
        provider: provider.into(),
        environment: environment.into(),
        pem: pem.into(),
        sha256: info.sha256.clone(),
        subject: info.subject.clone(),
        not_before: info.not_before,
        not_after: info.not_after,
        updated_at: now,
        updated_by: actor.into(),
        mac: Vec::new(),
        mac_version: 0,
        generation: 0,
    };
    conn.transaction(|tx| {
        row.generation = generation::generation_for(tx, row.subject())?;
        let (mac, version) = sign(keyring, &row.mac_row())?;
        row.mac = mac;
        row.mac_version = version;
        diesel::delete(
            pc::table
                .filter(pc::provider.eq(provider))
                .filter(pc::environment.eq(environment)),
        )
        .execute(tx)?;
        diesel::insert_into(pc::table).values(&row).execute(tx)?;
        Ok(row)
    })
}

/// Installs a provider certificate, shared by the API and the CLI: parsed and checked (one
/// PEM certificate with an RSA key), stored with its MAC, audited in the same transaction.
pub fn set_certificate(
    c: &mut DbConn,
    keyring: &Keyring,
    (provider, environment): (Provider, Environment),
    pem: &str,
    actor: &str,
    entry: Event,
    now: i64,
) -> Result<CertificateRow, DbError> {
    let info = crate::providers::compute::parse_certificate(pem)
        .map_err(|m| DbError::Rejected(ValidationError(m)))?;
    chain::with_entry(
        c,
        |tx| {
            set(
                tx,
                keyring,
                (provider.as_str(), environment.as_str()),
                pem,
                &info,
                actor,
                now,
            )
        },
        |_| {
            Some(entry.target(Target {
                provider: Some(provider.as_str().into()),
                environment: Some(environment.as_str().into()),
                ..Target::default()
            }))
        },
    )
}

/// Removes the certificate; `false` if there was none.
pub fn delete(conn: &mut DbConn, provider: &str, environment: &str) -> Result<bool, DbError> {
    let n = diesel::delete(
        pc::table
            .filter(pc::provider.eq(provider))
            .filter(pc::environment.eq(environment)),
    )
    .execute(conn)?;
    if n > 0 {
        // Named by the deletion's entry: the deleted row written back is a replay.
        generation::record(conn, generation::provider_cert(provider, environment))?;
    }
    Ok(n > 0)
}

/// Re-signs, under `target`, every certificate signed under an older version (the table is a
/// handful of rows: one batch). A row that fails its check is left as it is. Shaped like the
/// other tables' re-sign steps: the first call does the work, the next finds nothing.
pub fn resign_batch(
    tx: &mut DbConn,
    keyring: &Keyring,
    target: i32,
    after: i64,
    _limit: i64,
) -> Result<Option<i64>, DbError> {
    if after != i64::MIN {
        return Ok(None);
    }
    let rows: Vec<CertificateRow> = pc::table
        .filter(pc::mac_version.lt(target))
        .select(CertificateRow::as_select())
        .load(tx)?;
    for row in &rows {
        if !row.intact(keyring) {
            tracing::error!(
                provider = row.provider.as_str(),
                environment = row.environment.as_str(),
                "a provider certificate failed its integrity check: left unsigned"
            );
            continue;
        }
        let (mac, version) = sign(keyring, &row.mac_row())?;
        diesel::update(
            pc::table
                .filter(pc::provider.eq(&row.provider))
                .filter(pc::environment.eq(&row.environment)),
        )
        .set((pc::mac.eq(mac), pc::mac_version.eq(version)))
        .execute(tx)?;
    }
    Ok(Some(0))
}

/// How many certificates depend on master-key version `version`.
/// Signs the certificate row as it is (its generation included).
pub(crate) fn store(
    tx: &mut DbConn,
    keyring: &Keyring,
    row: &CertificateRow,
) -> Result<(), DbError> {
    let (mac, version) = sign(keyring, &row.mac_row())?;
    diesel::update(
        pc::table
            .filter(pc::provider.eq(&row.provider))
            .filter(pc::environment.eq(&row.environment)),
    )
    .set((
        pc::mac.eq(mac),
        pc::mac_version.eq(version),
        pc::generation.eq(row.generation),
    ))
    .execute(tx)?;
    Ok(())
}

pub fn signed_under(conn: &mut DbConn, version: i32) -> Result<i64, DbError> {
    Ok(pc::table
        .filter(pc::mac_version.eq(version))
        .count()
        .get_result(conn)?)
}
