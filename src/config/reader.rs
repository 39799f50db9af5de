//! The one typed reader of settings: each kind of value (a flag, a whole number in a range,
//! a non-empty path, a list of CIDR ranges) is parsed here, one way, and a bad value is one
//! [`ConfigError`] naming its setting.

use std::ops::RangeInclusive;
use std::path::PathBuf;

use super::ConfigError;

/// A setting that is wrong: its name and what is wrong with it (never its value when it may
/// be a secret).
pub fn bad(setting: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError {
        setting: setting.into(),
        problem: problem.into(),
    }
}

/// Settings read through a lookup (the process environment, or a test's own).
pub struct Settings<'a> {
    get: &'a dyn Fn(&str) -> Option<String>,
}

impl<'a> Settings<'a> {
    pub fn new(get: &'a dyn Fn(&str) -> Option<String>) -> Self {
        Settings { get }
    }

    /// The value as given, if set.
    pub fn raw(&self, setting: &str) -> Option<String> {
        (self.get)(setting)
    }

    /// `true`/`false` (also `1`/`0`, `yes`/`no`, `on`/`off`); `default` when unset.
    pub fn flag(&self, setting: &'static str, default: bool) -> Result<bool, ConfigError> {
        match self.raw(setting) {
            None => Ok(default),
            Some(v) => match v.trim().to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => Ok(true),
                "false" | "0" | "no" | "off" => Ok(false),
                _ => Err(bad(setting, "must be true or false")),
            },
        }
    }

    /// A whole number from `range`, or `None` when unset.
    pub fn optional_number(
        &self,
        setting: &'static str,
        range: RangeInclusive<u32>,
    ) -> Result<Option<u32>, ConfigError> {
        let Some(v) = self.raw(setting) else {
            return Ok(None);
        };
        v.trim()
            .parse::<u32>()
            .ok()
            .filter(|n| range.contains(n))
            .map(Some)
            .ok_or_else(|| {
                bad(
                    setting,
                    format!(
                        "must be a whole number from {} to {}",
                        range.start(),
                        range.end()
                    ),
                )
            })
    }

    /// A whole number from `range`, or `default` when unset.
    pub fn number(
        &self,
        setting: &'static str,
        default: u32,
        range: RangeInclusive<u32>,
    ) -> Result<u32, ConfigError> {
        Ok(self.optional_number(setting, range)?.unwrap_or(default))
    }

    /// A path, which must not be blank when set.
    pub fn path(&self, setting: &'static str) -> Result<Option<PathBuf>, ConfigError> {
        match self.raw(setting) {
            Some(v) if v.trim().is_empty() => Err(bad(setting, "must not be empty")),
            v => Ok(v.map(|v| PathBuf::from(v.trim()))),
        }
    }

    /// A comma-separated list of CIDR ranges (empty entries ignored); `default` when unset.
    pub fn cidrs(
        &self,
        setting: &'static str,
        default: Vec<ipnet::IpNet>,
    ) -> Result<Vec<ipnet::IpNet>, ConfigError> {
        match self.raw(setting) {
            None => Ok(default),
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .map(|c| {
                    c.parse::<ipnet::IpNet>().map_err(|_| {
                        bad(
                            setting,
                            format!("`{c}` is not a CIDR range such as 127.0.0.1/32"),
                        )
                    })
                })
                .collect(),
        }
    }
}
