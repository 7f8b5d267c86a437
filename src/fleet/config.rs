//! The `fleet:` configuration section and the API token it points to.
//!
//! The token is never part of the config file: it comes from a file or an
//! environment variable, and lives in a [`Token`] whose `Debug` and `Display`
//! print `***`, so it cannot leak into logs or error messages by accident.

use std::{fmt, path::PathBuf, time::Duration};

use serde::Deserialize;

use super::FleetError;

/// The `fleet:` section: where Fleet is and how to sync from it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// Fleet's base URL, `http` or `https`.
    pub url: String,
    /// File holding the API token (exactly one of `token_file`, `token_env`).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Environment variable holding the API token.
    #[serde(default)]
    pub token_env: Option<String>,
    /// The saved query whose report holds `certificates.sha1` per host.
    pub certificate_query_id: u64,
    /// Time between full syncs.
    #[serde(
        default = "default_sync_interval",
        with = "crate::duration::serde_human"
    )]
    pub sync_interval: Duration,
    /// `per_page` for every paged request (1..=10000).
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    /// Deadline for one HTTP request, body included.
    #[serde(
        default = "default_request_timeout",
        with = "crate::duration::serde_human"
    )]
    pub request_timeout: Duration,
    /// Posture older than this is stale (the route's `stale_posture` decides).
    #[serde(
        default = "default_max_staleness",
        with = "crate::duration::serde_human"
    )]
    pub max_staleness: Duration,
    /// Extra PEM root(s) to trust for Fleet's TLS certificate.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The live recheck of a would-deny (DESIGN.md §1.5).
    #[serde(default)]
    pub recheck: RecheckConfig,
    /// How failing-policy membership is fetched; `auto` picks by catalogue size.
    #[serde(default)]
    pub membership: MembershipMode,
    /// The shrink guard: a cycle whose host or fingerprint count falls
    /// below `(1 - max_drop)` of the last good posture's is not published
    /// (`POST /v1/sync {"accept_drop": true}` publishes one). 1 turns it off.
    #[serde(default = "default_max_drop")]
    pub max_drop: f64,
    /// Largest answer body, counted after decompression, for every Fleet
    /// request (README, "Limits"). Past it reading stops and the request
    /// fails, so a broken or hostile Fleet cannot fill the memory.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    /// Most rows read from the certificate report, over all its pages.
    #[serde(default = "default_max_report_rows")]
    pub max_report_rows: u64,
}

/// `fleet.recheck`: bounded, single-flight fetch of one host on a would-deny.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecheckConfig {
    /// Whether denies may recheck at all.
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// Only posture older than this is rechecked.
    #[serde(default = "default_min_age", with = "crate::duration::serde_human")]
    pub min_age: Duration,
    /// How long a Check waits for the fresh host; keep it below Envoy's timeout.
    #[serde(default = "default_budget", with = "crate::duration::serde_human")]
    pub budget: Duration,
    /// Rechecks in flight at once, across all hosts.
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent: u32,
}

impl Default for RecheckConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            min_age: default_min_age(),
            budget: default_budget(),
            max_concurrent: default_max_concurrent(),
        }
    }
}

/// How a sync learns which hosts fail which policy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MembershipMode {
    /// `populate_policies` for small catalogues, `per_policy` for large ones.
    #[default]
    Auto,
    /// Every host row carries every policy result.
    PopulatePolicies,
    /// One paged `policy_response=failing` query per policy.
    PerPolicy,
}

fn default_sync_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_page_size() -> u32 {
    1000
}
fn default_request_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_staleness() -> Duration {
    Duration::from_secs(15 * 60)
}
fn default_max_drop() -> f64 {
    0.5
}
/// README, "Limits": the largest answer measured for 100,000 hosts shaped
/// like a real Fleet's is a hosts page of all 100,000 without policy
/// results, 164 MB (a page of 10,000 with every policy result: 129 MB);
/// this leaves 1.6× headroom (test
/// `the_default_body_cap_holds_the_answers_of_100_000_hosts_with_headroom`).
pub(super) fn default_max_body_bytes() -> u64 {
    256 * 1024 * 1024
}
/// 1,000,000 hosts with ten certificates each, one row per certificate.
pub(super) fn default_max_report_rows() -> u64 {
    10_000_000
}
fn default_true() -> bool {
    true
}
fn default_min_age() -> Duration {
    Duration::from_secs(30)
}
fn default_budget() -> Duration {
    Duration::from_millis(150)
}
fn default_max_concurrent() -> u32 {
    16
}

impl FleetConfig {
    /// A config with every default, for `url` and `certificate_query_id`; the
    /// token source is left unset (tests pass a [`Token`] directly).
    pub fn new(url: impl Into<String>, certificate_query_id: u64) -> Self {
        Self {
            url: url.into(),
            token_file: None,
            token_env: None,
            certificate_query_id,
            sync_interval: default_sync_interval(),
            page_size: default_page_size(),
            request_timeout: default_request_timeout(),
            max_staleness: default_max_staleness(),
            ca_file: None,
            recheck: RecheckConfig::default(),
            membership: MembershipMode::Auto,
            max_drop: default_max_drop(),
            max_body_bytes: default_max_body_bytes(),
            max_report_rows: default_max_report_rows(),
        }
    }

    /// Checks what serde cannot; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        validate_url(&self.url).map_err(|e| format!("fleet.url: {e}"))?;
        match (&self.token_file, &self.token_env) {
            (None, None) => return Err("fleet: one of token_file or token_env is required".into()),
            (Some(_), Some(_)) => {
                return Err("fleet: set only one of token_file or token_env, not both".into());
            }
            (None, Some(name)) if name.trim().is_empty() => {
                return Err("fleet.token_env: must name an environment variable".into());
            }
            _ => {}
        }
        if !(1..=10_000).contains(&self.page_size) {
            return Err("fleet.page_size: must be between 1 and 10000".into());
        }
        let positive = [
            ("fleet.sync_interval", self.sync_interval),
            ("fleet.request_timeout", self.request_timeout),
            ("fleet.max_staleness", self.max_staleness),
            ("fleet.recheck.budget", self.recheck.budget),
        ];
        if let Some((key, _)) = positive.iter().find(|(_, d)| d.is_zero()) {
            return Err(format!("{key}: must be greater than zero"));
        }
        let at_least_one = [
            ("fleet.max_body_bytes", self.max_body_bytes),
            ("fleet.max_report_rows", self.max_report_rows),
        ];
        if let Some((key, _)) = at_least_one.iter().find(|(_, n)| *n == 0) {
            return Err(format!("{key}: must be at least 1"));
        }
        if self.recheck.max_concurrent == 0 {
            return Err("fleet.recheck.max_concurrent: must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&self.max_drop) {
            return Err(format!(
                "fleet.max_drop: must be between 0 and 1 (a fraction: 0.5 = half), not {}",
                self.max_drop
            ));
        }
        Ok(())
    }

    /// Reads the API token from `token_file` or `token_env`. Errors name the
    /// file or variable, never the value.
    pub fn load_token(&self) -> Result<Token, FleetError> {
        let (raw, from) = match (&self.token_file, &self.token_env) {
            (Some(path), None) => {
                let raw = std::fs::read_to_string(path).map_err(|e| FleetError::Token {
                    from: format!("fleet.token_file {}", path.display()),
                    message: e.to_string(),
                })?;
                (raw, format!("fleet.token_file {}", path.display()))
            }
            (None, Some(name)) => {
                let raw = std::env::var(name).map_err(|e| FleetError::Token {
                    from: format!("fleet.token_env {name}"),
                    message: match e {
                        std::env::VarError::NotPresent => "environment variable is not set".into(),
                        std::env::VarError::NotUnicode(_) => "value is not valid unicode".into(),
                    },
                })?;
                (raw, format!("fleet.token_env {name}"))
            }
            _ => {
                return Err(FleetError::Token {
                    from: "fleet".into(),
                    message: "set exactly one of token_file or token_env".into(),
                });
            }
        };
        let token = raw.trim();
        if token.is_empty() {
            return Err(FleetError::Token {
                from,
                message: "token is empty".into(),
            });
        }
        Ok(Token::new(token))
    }
}

fn validate_url(url: &str) -> Result<(), String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a valid url ({e})"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "scheme must be http or https, not {}",
            parsed.scheme()
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err("url has no host".into());
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err("url must not have a query or fragment".into());
    }
    Ok(())
}

/// A Fleet API token. `Debug` and `Display` print `***`.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    /// Wraps a token value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the `Authorization` header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Token(***)")
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<FleetConfig, String> {
        yaml_serde::from_str::<FleetConfig>(yaml).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_apply_and_durations_parse() {
        let c = parse("url: https://fleet.example.com\ntoken_env: FLEET_API_TOKEN\ncertificate_query_id: 42\nrecheck: {budget: 100ms}\n").unwrap();
        assert_eq!(c.sync_interval, Duration::from_secs(60));
        assert_eq!(c.page_size, 1000);
        assert_eq!(c.request_timeout, Duration::from_secs(10));
        assert_eq!(c.max_staleness, Duration::from_secs(900));
        assert_eq!(c.recheck.budget, Duration::from_millis(100));
        assert_eq!(c.recheck.min_age, Duration::from_secs(30));
        assert_eq!(c.recheck.max_concurrent, 16);
        assert!(c.recheck.enabled);
        assert_eq!(c.membership, MembershipMode::Auto);
        assert_eq!(c.max_drop, 0.5);
        assert_eq!(c.max_body_bytes, 256 << 20);
        assert_eq!(c.max_report_rows, 10_000_000);
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn unknown_keys_and_bad_membership_are_rejected() {
        let err = parse("url: https://f\ntoken_env: T\ncertificate_query_id: 1\npage_sise: 5\n")
            .unwrap_err();
        assert!(err.contains("unknown field `page_sise`"), "{err}");
        let err = parse("url: https://f\ntoken_env: T\ncertificate_query_id: 1\nmembership: all\n")
            .unwrap_err();
        assert!(err.contains("unknown variant `all`"), "{err}");
        let c = parse(
            "url: https://f\ntoken_env: T\ncertificate_query_id: 1\nmembership: per_policy\n",
        )
        .unwrap();
        assert_eq!(c.membership, MembershipMode::PerPolicy);
    }

    #[test]
    fn validate_names_the_key() {
        let mut c = FleetConfig::new("https://fleet.example.com", 42);
        assert_eq!(
            c.validate().unwrap_err(),
            "fleet: one of token_file or token_env is required"
        );
        c.token_env = Some("T".into());
        c.page_size = 0;
        assert_eq!(
            c.validate().unwrap_err(),
            "fleet.page_size: must be between 1 and 10000"
        );
        c.page_size = 10_000;
        c.url = "ftp://fleet.example.com".into();
        assert_eq!(
            c.validate().unwrap_err(),
            "fleet.url: scheme must be http or https, not ftp"
        );
        c.url = "fleet.example.com".into();
        assert!(
            c.validate()
                .unwrap_err()
                .starts_with("fleet.url: not a valid url")
        );
        c.url = "http://127.0.0.1:8080".into();
        c.token_file = Some("/t".into());
        assert_eq!(
            c.validate().unwrap_err(),
            "fleet: set only one of token_file or token_env, not both"
        );
        c.token_file = None;
        c.recheck.max_concurrent = 0;
        assert_eq!(
            c.validate().unwrap_err(),
            "fleet.recheck.max_concurrent: must be at least 1"
        );
        c.recheck.max_concurrent = 1;
        for bad in [-0.1, 1.5, f64::NAN] {
            c.max_drop = bad;
            assert!(
                c.validate()
                    .unwrap_err()
                    .starts_with("fleet.max_drop: must be between 0 and 1"),
                "{bad}"
            );
        }
        c.max_drop = 1.0;
        assert_eq!(c.validate(), Ok(()));
        c.max_body_bytes = 0;
        assert_eq!(
            c.validate().unwrap_err(),
            "fleet.max_body_bytes: must be at least 1"
        );
        (c.max_body_bytes, c.max_report_rows) = (1, 0);
        assert_eq!(
            c.validate().unwrap_err(),
            "fleet.max_report_rows: must be at least 1"
        );
    }

    #[test]
    fn token_is_read_trimmed_and_never_printed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "s3cret-value\n").unwrap();
        let mut c = FleetConfig::new("https://f", 1);
        c.token_file = Some(path.clone());
        let token = c.load_token().unwrap();
        assert_eq!(token.expose(), "s3cret-value");
        assert_eq!(format!("{token} {token:?}"), "*** Token(***)");

        std::fs::write(&path, "  \n").unwrap();
        let err = c.load_token().unwrap_err().to_string();
        assert_eq!(
            err,
            format!("fleet.token_file {}: token is empty", path.display())
        );

        c.token_file = Some(dir.path().join("missing"));
        let err = c.load_token().unwrap_err().to_string();
        assert!(
            err.starts_with("fleet.token_file ") && err.contains("missing"),
            "{err}"
        );
    }

    #[test]
    fn missing_token_env_names_the_variable() {
        let mut c = FleetConfig::new("https://f", 1);
        c.token_env = Some("FLEET_AUTHZ_TEST_SURELY_UNSET_VAR".into());
        assert_eq!(
            c.load_token().unwrap_err().to_string(),
            "fleet.token_env FLEET_AUTHZ_TEST_SURELY_UNSET_VAR: environment variable is not set"
        );
    }
}
