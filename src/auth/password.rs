//! Password hashing with argon2id at the OWASP-recommended parameters.

use std::sync::OnceLock;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use rand::rngs::OsRng;
use secrecy::{ExposeSecret, SecretString};

/// 19 MiB, two passes, one lane (OWASP Password Storage Cheat Sheet, argon2id).
pub const MEMORY_KIB: u32 = 19 * 1024;
pub const ITERATIONS: u32 = 2;
pub const PARALLELISM: u32 = 1;

fn hasher() -> Result<Argon2<'static>, argon2::Error> {
    Ok(Argon2::new(
        Algorithm::Argon2id,
        Version::V0x13,
        Params::new(MEMORY_KIB, ITERATIONS, PARALLELISM, None)?,
    ))
}

#[derive(Debug, thiserror::Error)]
#[error("password hashing failed")]
pub struct HashError;

/// A PHC-format argon2id hash of `password` with a fresh random salt. CPU-heavy: call it
/// from a blocking thread.
pub fn hash(password: &SecretString) -> Result<String, HashError> {
    let salt = SaltString::generate(&mut OsRng);
    let h = hasher().map_err(|_| HashError)?;
    h.hash_password(password.expose_secret().as_bytes(), &salt)
        .map(|p| p.to_string())
        .map_err(|_| HashError)
}

/// A hash of a random password, computed once, to spend the same time on unknown users.
fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let random = SecretString::from(uuid::Uuid::new_v4().to_string());
        hash(&random).unwrap_or_default()
    })
}

/// Whether `password` matches `stored`. With `stored = None` (unknown user) it verifies
/// against a dummy hash, so both paths cost one argon2id evaluation, and answers `false`.
pub fn verify(password: &SecretString, stored: Option<&str>) -> bool {
    let candidate = stored.unwrap_or_else(|| dummy_hash());
    let ok = match PasswordHash::new(candidate) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.expose_secret().as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    };
    ok && stored.is_some()
}

/// Computes the dummy hash ahead of the first login, so that first unknown-user login is
/// not faster than the rest.
pub fn warm_up() {
    let _ = dummy_hash();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_argon2id_at_owasp_parameters_and_verify() {
        let pw = SecretString::from("correct horse battery".to_owned());
        let h = hash(&pw).unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify(&pw, Some(&h)));
        assert!(!verify(&SecretString::from("wrong".to_owned()), Some(&h)));
        assert!(!verify(&pw, None));
        assert!(!verify(&pw, Some("not a hash")));
    }
}

/// Threads that do nothing but argon2. A login flood queues here (and past the queue bound
/// is refused with 503) instead of occupying the blocking threads database calls need, or
/// more cores than it is given: reveals stay fast while logins flood.
pub struct HashPool {
    jobs: std::sync::mpsc::SyncSender<Job>,
}

type Job = Box<dyn FnOnce() + Send>;

/// The hash pool is saturated or gone; the caller should answer 503.
#[derive(Debug, thiserror::Error)]
#[error("password hashing is saturated")]
pub struct HashPoolBusy;

impl HashPool {
    /// `threads` hashing threads and at most `queue` waiting jobs.
    pub fn start(threads: usize, queue: usize) -> std::io::Result<Self> {
        let (jobs, rx) = std::sync::mpsc::sync_channel::<Job>(queue);
        let rx = std::sync::Arc::new(std::sync::Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("hazina-argon2-{i}"))
                .spawn(move || loop {
                    let job = match rx.lock() {
                        Ok(guard) => guard.recv(),
                        Err(_) => return,
                    };
                    match job {
                        Ok(job) => job(),
                        Err(_) => return,
                    }
                })?;
        }
        Ok(HashPool { jobs })
    }

    /// Runs `f` on a hashing thread; resolves with its result.
    pub async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, HashPoolBusy> {
        let (done, wait) = tokio::sync::oneshot::channel();
        self.jobs
            .try_send(Box::new(move || {
                let _ = done.send(f());
            }))
            .map_err(|_| HashPoolBusy)?;
        wait.await.map_err(|_| HashPoolBusy)
    }
}

impl std::fmt::Debug for HashPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HashPool").finish_non_exhaustive()
    }
}
