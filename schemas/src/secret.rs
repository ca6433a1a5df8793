//! Secrets (tokens, passwords, signing keys) read from an environment variable or a file at start,
//! and kept in a type that never shows its value in logs, `Debug` output or error messages. Shared by
//! the connectors (sink credentials) and the schema registry client (its password).

use std::fmt;
use std::path::PathBuf;

/// A secret value. `Debug` and `Display` print `<redacted>`; only [`Secret::expose`] gives the value.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value (from a test, or a custom sink's own source).
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value, for the one place that sends it (an auth header, a signature key).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Reads the secret `what` ("pagerduty routing_key") from the environment variable `env` or the file
/// `file` (trailing newline trimmed); exactly one must be set. Errors name the variable or path,
/// never the value.
pub fn load_secret(what: &str, env: Option<&str>, file: Option<&PathBuf>) -> Result<Secret, String> {
    let value = match (env, file) {
        (Some(_), Some(_)) => return Err(format!("{what}: set either the _env or the _file setting, not both")),
        (None, None) => return Err(format!("{what}: not configured (set the _env or the _file setting)")),
        (Some(variable), None) => std::env::var(variable)
            .map_err(|error| format!("{what}: environment variable {variable} is not usable: {error}"))?,
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|error| format!("{what}: cannot read {}: {error}", path.display()))?
            .trim_end_matches(['\n', '\r'])
            .to_owned(),
    };
    if value.is_empty() {
        return Err(format!("{what}: the configured value is empty"));
    }
    Ok(Secret(value))
}

/// Like [`load_secret`], but `None` when neither setting is given.
pub fn load_optional_secret(what: &str, env: Option<&str>, file: Option<&PathBuf>) -> Result<Option<Secret>, String> {
    if env.is_none() && file.is_none() {
        return Ok(None);
    }
    load_secret(what, env, file).map(Some)
}

/// Whether a setting or header name suggests it carries a credential ("Authorization", "X-Api-Key").
pub fn looks_secret(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    ["authorization", "token", "secret", "password", "api-key", "apikey", "api_key"].iter().any(|s| name.contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_never_print_their_value() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?} {secret}"), "<redacted> <redacted>");
        assert_eq!(secret.expose(), "hunter2");
    }

    #[test]
    fn secrets_load_from_files_or_the_environment_and_errors_do_not_leak_them() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cr3t\n").expect("write");
        assert_eq!(load_secret("t", None, Some(&path)).expect("file").expose(), "s3cr3t");
        std::env::set_var("PEERGRAPH_SECRET_TEST_TOKEN", "from-env");
        assert_eq!(load_secret("t", Some("PEERGRAPH_SECRET_TEST_TOKEN"), None).expect("env").expose(), "from-env");
        let error = load_secret("jira api_token", Some("PEERGRAPH_SECRET_TEST_UNSET"), None).expect_err("unset");
        assert!(error.contains("PEERGRAPH_SECRET_TEST_UNSET") && error.contains("jira api_token"), "{error}");
        assert!(load_secret("t", Some("A"), Some(&path)).is_err());
        assert!(load_secret("t", None, None).is_err());
        assert_eq!(load_optional_secret("t", None, None), Ok(None));
    }
}
