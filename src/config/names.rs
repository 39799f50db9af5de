//! Which `HAZINA_*` names exist: a misspelled setting (`HAZINA_BIDN`) is refused at start in
//! one line naming it, never ignored while the default quietly applies.
//!
//! The settings are the names [`SETTINGS_HELP`](super::SETTINGS_HELP) lists (what `serve
//! --help` prints, and a test keeps it complete); the caller adds the names it knows besides
//! (the command line's: the seeding tool's password, the benchmark switch) and the prefixes of
//! names that belong to tooling around hazina, which it never reads.

use std::borrow::Cow;

use super::ConfigError;

/// Every setting name `serve` reads.
pub fn settings() -> impl Iterator<Item = &'static str> {
    super::SETTINGS_HELP
        .split_whitespace()
        .map(|word| word.trim_end_matches(','))
        .filter(|word| word.starts_with("HAZINA_") && word.len() > "HAZINA_".len())
}

/// The first name in `names` that starts with `HAZINA_` and is neither a setting nor in
/// `also_known`, and starts with none of `tooling`, as an error that names it (and the
/// setting it most resembles, when one is close).
pub fn refuse_unknown<I, S>(
    names: I,
    also_known: &[&str],
    tooling: &[&str],
) -> Result<(), ConfigError>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut unknown: Vec<String> = names
        .into_iter()
        .map(|n| n.as_ref().to_owned())
        .filter(|n| n.starts_with("HAZINA_"))
        .filter(|n| !tooling.iter().any(|p| n.starts_with(p)))
        .filter(|n| !settings().any(|k| k == n) && !also_known.contains(&n.as_str()))
        .collect();
    unknown.sort();
    let Some(name) = unknown.into_iter().next() else {
        return Ok(());
    };
    let problem = match closest(&name) {
        Some(near) => format!("is not a setting hazina knows (did you mean {near}?)"),
        None => "is not a setting hazina knows (`hazina serve --help` lists them)".into(),
    };
    Err(ConfigError {
        setting: Cow::Owned(name),
        problem,
    })
}

/// The setting nearest `name`, if it is a likely typo of it.
fn closest(name: &str) -> Option<&'static str> {
    settings()
        .map(|k| (strsim::damerau_levenshtein(name, k), k))
        .filter(|(distance, _)| *distance <= 3)
        .min()
        .map(|(_, k)| k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_is_accepted_and_a_typo_of_one_refused_with_it_named() {
        let all: Vec<&str> = settings().collect();
        assert!(all.len() > 30, "{all:?}");
        refuse_unknown(all.iter().copied(), &[], &[]).unwrap();
        for setting in all {
            // One letter dropped: refused, and the setting it came from is suggested.
            let typo = format!(
                "{}{}",
                &setting[..setting.len() - 2],
                &setting[setting.len() - 1..]
            );
            let e = refuse_unknown([typo.as_str()], &[], &[]).unwrap_err();
            assert_eq!(e.setting, typo);
            assert!(e.problem.contains("did you mean"), "{e}");
        }
        let prefix = format!("{}X_", "HAZINA_");
        refuse_unknown([format!("{prefix}ANYTHING")], &[], &[&prefix]).unwrap();
    }
}
