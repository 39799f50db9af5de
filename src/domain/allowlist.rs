//! IP allowlists: the CIDR ranges a user or a service may call from.

use super::ValidationError;

/// Parses a CIDR allowlist into its stored form (comma-separated, canonical).
pub fn parse_allowlist(cidrs: &[String]) -> Result<Option<String>, ValidationError> {
    if cidrs.is_empty() {
        return Ok(None);
    }
    if cidrs.len() > 64 {
        return Err(ValidationError("at most 64 CIDR ranges".into()));
    }
    let parsed = cidrs
        .iter()
        .map(|c| {
            c.trim()
                .parse::<ipnet::IpNet>()
                .map(|n| n.to_string())
                .map_err(|_| {
                    ValidationError("allowed_cidrs must be CIDR ranges such as 10.0.0.0/8".into())
                })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Some(parsed.join(",")))
}
