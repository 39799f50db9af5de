//! What each payment provider's formats are, as the providers publish them: pure functions
//! with no database, no HTTP client and no clock of their own, below everything that uses
//! them.
//!
//! - [`compute`]: what a provider operation computes from opened secrets (SPEC §9.3): Daraja's
//!   STK password and timestamp, its security credential, webhook signatures and challenges,
//!   certificate parsing.
//! - [`exchange`]: what each provider's token endpoint is sent and answers (SPEC §9.4).
//!
//! A new provider operation adds its computation here, its vocabulary in
//! [`crate::domain::operation`], and its case in the release gate ([`crate::vault`]).

pub mod compute;
pub mod exchange;
