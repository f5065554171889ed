//! The host agent's `config.toml`: every key optional, unknown keys refused by name.
//!
//! ```toml
//! listen = "0.0.0.0:7422"          # UDP address sessions are served on
//! trusted_ca_keys = ["…52 chars…"] # CA keys grants are checked against (until enrollment)
//! default_shell = "/bin/bash"      # for accounts whose shell field is empty
//! allowed_logins = ["deploy"]      # accounts sessions may run as (default: any when root,
//!                                  # else only the agent's own account)
//!
//! [limits]
//! max_sessions = 16                # sessions at once on this host
//! max_sessions_per_user = 8        # sessions at once per mesh user
//! idle_timeout = "30m"             # end sessions with no traffic for this long ("off": never)
//! max_duration = "12h"             # end sessions after this long (a grant may say less)
//!
//! [audit]
//! spool_limit = "64MiB"            # disk for events the coordinator has not acknowledged
//! allow_sessions_without_audit = false  # when the spool is full: refuse sessions (false) or
//!                                  # run them and record how many events were dropped (true)
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use mesh_proto::{CaKeySet, NodeId};
use serde::Deserialize;

use crate::error::Error;
use crate::session::limits::Limits;

/// The UDP port the agent listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 7422;

/// The agent's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// Where to serve sessions.
    pub listen: SocketAddr,
    /// CA keys to check grants against.
    pub trusted_ca_keys: Vec<NodeId>,
    /// Shell for accounts that name none.
    pub default_shell: Option<PathBuf>,
    /// Accounts sessions may run as; `None`: the default for how the agent runs.
    pub allowed_logins: Option<Vec<String>>,
    /// Session limits.
    pub limits: Limits,
    /// The audit spool.
    pub audit: AuditConfig,
}

/// The `[audit]` table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditConfig {
    /// Bytes the spool may take.
    pub spool_limit: u64,
    /// Whether a full spool admits sessions (counting the events it drops) instead of
    /// refusing them.
    pub allow_sessions_without_audit: bool,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            spool_limit: crate::audit::DEFAULT_SPOOL_LIMIT,
            allow_sessions_without_audit: false,
        }
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)),
            trusted_ca_keys: Vec::new(),
            default_shell: None,
            allowed_logins: None,
            limits: Limits::default(),
            audit: AuditConfig::default(),
        }
    }
}

/// `config.toml` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    listen: Option<SocketAddr>,
    #[serde(default)]
    trusted_ca_keys: Vec<String>,
    default_shell: Option<PathBuf>,
    allowed_logins: Option<Vec<String>>,
    #[serde(default)]
    limits: LimitsFile,
    #[serde(default)]
    audit: AuditFile,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditFile {
    spool_limit: Option<String>,
    allow_sessions_without_audit: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsFile {
    max_sessions: Option<usize>,
    max_sessions_per_user: Option<usize>,
    idle_timeout: Option<String>,
    max_duration: Option<String>,
}

impl AgentConfig {
    /// Reads `path`; a missing file means every default.
    pub fn load(path: &Path) -> Result<Self, Error> {
        let Some(text) = crate::durable::read_if_exists(path)? else {
            return Ok(Self::default());
        };
        Self::parse(&text).map_err(|reason| Error::Config {
            path: path.to_owned(),
            reason,
        })
    }

    /// Parses the text of a `config.toml`; the error is one line.
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: File = toml::from_str(text).map_err(|e| {
            // toml's message spans several lines with a source excerpt; keep its first.
            e.message()
                .lines()
                .next()
                .unwrap_or("invalid TOML")
                .to_owned()
        })?;
        let defaults = Self::default();
        let trusted_ca_keys = file
            .trusted_ca_keys
            .iter()
            .map(|key| {
                key.parse::<NodeId>()
                    .map_err(|e| format!("trusted_ca_keys: {key:?}: {e}"))
            })
            .collect::<Result<_, _>>()?;
        let limits = Limits {
            max_sessions: positive("limits.max_sessions", file.limits.max_sessions)?
                .unwrap_or(defaults.limits.max_sessions),
            max_sessions_per_user: positive(
                "limits.max_sessions_per_user",
                file.limits.max_sessions_per_user,
            )?
            .unwrap_or(defaults.limits.max_sessions_per_user),
            idle_timeout: match file.limits.idle_timeout.as_deref() {
                None | Some("off") => None,
                Some(text) => Some(duration("limits.idle_timeout", text)?),
            },
            max_duration: match file.limits.max_duration.as_deref() {
                None => defaults.limits.max_duration,
                Some(text) => duration("limits.max_duration", text)?,
            },
        };
        if let Some(shell) = &file.default_shell {
            if !shell.is_absolute() {
                return Err(format!(
                    "default_shell: {} is not an absolute path",
                    shell.display()
                ));
            }
        }
        let audit = AuditConfig {
            spool_limit: match file.audit.spool_limit.as_deref() {
                None => defaults.audit.spool_limit,
                Some(text) => byte_size("audit.spool_limit", text)?,
            },
            allow_sessions_without_audit: file
                .audit
                .allow_sessions_without_audit
                .unwrap_or(defaults.audit.allow_sessions_without_audit),
        };
        Ok(Self {
            listen: file.listen.unwrap_or(defaults.listen),
            trusted_ca_keys,
            default_shell: file.default_shell,
            allowed_logins: file.allowed_logins,
            limits,
            audit,
        })
    }

    /// The trusted CA keys as a set, or an error saying how to get one.
    pub fn ca_keys(&self) -> Result<CaKeySet, String> {
        let mut keys = self.trusted_ca_keys.iter();
        let first = keys.next().ok_or(
            "no trusted CA key: enroll this host (`mesh node join`) or list the CA's key \
             in trusted_ca_keys in config.toml",
        )?;
        let mut set = CaKeySet::single(*first);
        for key in keys {
            set.pin(*key);
        }
        Ok(set)
    }
}

fn positive(key: &str, value: Option<usize>) -> Result<Option<usize>, String> {
    match value {
        Some(0) => Err(format!("{key} must be at least 1")),
        other => Ok(other),
    }
}

/// A size like "64MiB", "512KiB", "1GiB" or a plain number of bytes.
fn byte_size(key: &str, text: &str) -> Result<u64, String> {
    let text = text.trim();
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let multiplier: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        _ => 0,
    };
    let size = number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(multiplier))
        .filter(|n| *n > 0);
    size.ok_or_else(|| {
        format!("{key}: {text:?} is not a size like \"64MiB\", \"512KiB\" or a number of bytes")
    })
}

fn duration(key: &str, text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(d) if !d.is_zero() => Ok(d),
        Ok(_) => Err(format!("{key} must be longer than zero (or \"off\")")),
        Err(e) => Err(format!(
            "{key}: {text:?} is not a duration like \"30m\" or \"12h\": {e}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_is_every_default() {
        assert_eq!(AgentConfig::parse("").unwrap(), AgentConfig::default());
        assert_eq!(AgentConfig::default().limits.max_sessions, 16);
    }

    #[test]
    fn every_key_is_read() {
        let ca = mesh_proto::SecretKey::from_seed(&[3; 32]).node_id();
        let text = format!(
            r#"
            listen = "127.0.0.1:9000"
            trusted_ca_keys = ["{ca}"]
            default_shell = "/bin/bash"
            allowed_logins = ["deploy"]
            [limits]
            max_sessions = 4
            max_sessions_per_user = 2
            idle_timeout = "90s"
            max_duration = "2h"
            [audit]
            spool_limit = "2MiB"
            allow_sessions_without_audit = true
            "#
        );
        let config = AgentConfig::parse(&text).unwrap();
        assert_eq!(config.listen, "127.0.0.1:9000".parse().unwrap());
        assert_eq!(config.trusted_ca_keys, vec![ca]);
        assert_eq!(config.default_shell, Some("/bin/bash".into()));
        assert_eq!(config.allowed_logins, Some(vec!["deploy".into()]));
        assert_eq!(
            config.limits,
            Limits {
                max_sessions: 4,
                max_sessions_per_user: 2,
                idle_timeout: Some(Duration::from_secs(90)),
                max_duration: Duration::from_secs(7200),
            }
        );
        assert_eq!(
            config.audit,
            AuditConfig {
                spool_limit: 2 << 20,
                allow_sessions_without_audit: true,
            }
        );
        assert!(config.ca_keys().is_ok());
    }

    #[test]
    fn unknown_keys_are_refused_by_name_even_in_a_table() {
        let err = AgentConfig::parse("lisen = \"0.0.0.0:1\"").unwrap_err();
        assert!(err.contains("lisen"), "{err}");
        let err = AgentConfig::parse("[limits]\nmax_session = 3").unwrap_err();
        assert!(err.contains("max_session"), "{err}");
        assert!(!err.contains('\n'), "one line: {err}");
    }

    #[test]
    fn bad_values_say_which_key() {
        for (text, key) in [
            ("[limits]\nidle_timeout = \"soon\"", "limits.idle_timeout"),
            ("[limits]\nmax_sessions = 0", "limits.max_sessions"),
            ("trusted_ca_keys = [\"abc\"]", "trusted_ca_keys"),
            ("default_shell = \"bash\"", "default_shell"),
            ("[audit]\nspool_limit = \"lots\"", "audit.spool_limit"),
            ("[audit]\nspool_limit = \"0MiB\"", "audit.spool_limit"),
            ("[audit]\nspool_limt = \"1MiB\"", "spool_limt"),
        ] {
            let err = AgentConfig::parse(text).unwrap_err();
            assert!(err.contains(key), "{text}: {err}");
        }
        assert_eq!(
            AgentConfig::parse("[limits]\nidle_timeout = \"off\"")
                .unwrap()
                .limits
                .idle_timeout,
            None
        );
        assert!(
            AgentConfig::default()
                .ca_keys()
                .unwrap_err()
                .contains("trusted_ca_keys")
        );
    }
}
