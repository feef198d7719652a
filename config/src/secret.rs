//! Credentials: a [`Secret`] never prints its value, and [`NatsAuth`] is how Tapio
//! authenticates to NATS, resolved from environment variables and files (never from the YAML
//! itself, which is for reading and sharing).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A credential. `Debug` and `Display` print `<redacted>` (or `<empty>`), so a secret cannot
/// reach a log or an error message by formatting; only [`Secret::expose`] reads it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps `value`.
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The value, for handing to a client library.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether it is empty (no secret).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::fmt::Display for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "<empty>"
        } else {
            "<redacted>"
        })
    }
}

/// Written as the plain string, so that a configuration read back equals the one written;
/// `tapio config check` replaces it before printing.
impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Secret, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

/// How a client authenticates to NATS.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum NatsAuth {
    /// No credentials.
    #[default]
    None,
    /// `user` and `password`.
    UserPassword {
        /// The user.
        user: String,
        /// Its password.
        password: Secret,
    },
    /// An authorization token.
    Token(Secret),
    /// An NKey seed (`SU…`): the client signs the server's nonce with it.
    NkeySeed(Secret),
    /// A `.creds` file (a user JWT and its NKey seed), as `nsc` writes it.
    CredentialsFile(PathBuf),
}

/// What a NATS client needs beyond the URL: its credentials and TLS files.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NatsSecurity {
    /// The credentials.
    pub auth: NatsAuth,
    /// PEM certificate authority; set, TLS is required.
    pub tls_ca_file: String,
    /// PEM client certificate.
    pub tls_cert_file: String,
    /// PEM private key of the client certificate.
    pub tls_key_file: String,
}

/// Why credentials could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    /// A credential file could not be read.
    #[error("cannot read {what} from {path}: {source}")]
    File {
        /// What the file holds.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A credential file or variable is empty.
    #[error("{what} from {from} is empty")]
    Empty {
        /// What it holds.
        what: &'static str,
        /// The file or variable.
        from: String,
    },
    /// More than one way to authenticate was given.
    #[error("NATS credentials come from more than one of: {0}; give one")]
    Ambiguous(String),
    /// A password without a user, or a user without a password.
    #[error("{0}")]
    Incomplete(String),
}

/// Reads a credential file: its content without surrounding white space.
///
/// # Errors
/// When it cannot be read or is empty.
pub fn read_secret_file(path: &Path, what: &'static str) -> Result<Secret, SecretError> {
    let text = std::fs::read_to_string(path).map_err(|source| SecretError::File {
        what,
        path: path.to_path_buf(),
        source,
    })?;
    let text = text.trim();
    if text.is_empty() {
        return Err(SecretError::Empty {
            what,
            from: path.display().to_string(),
        });
    }
    Ok(Secret::new(text))
}

/// Environment variables read for NATS credentials.
pub mod env {
    /// The NATS user (with [`NATS_PASSWORD`]).
    pub const NATS_USER: &str = "TAPIO_NATS_USER";
    /// The NATS password.
    pub const NATS_PASSWORD: &str = "TAPIO_NATS_PASSWORD";
    /// A NATS authorization token.
    pub const NATS_TOKEN: &str = "TAPIO_NATS_TOKEN";
    /// A NATS NKey seed.
    pub const NATS_NKEY_SEED: &str = "TAPIO_NATS_NKEY_SEED";
    /// The Neo4j password.
    pub const NEO4J_PASSWORD: &str = "TAPIO_NEO4J_PASSWORD";
}

impl crate::NatsConfig {
    /// The resolved credentials and the TLS files, for a client.
    pub fn security(&self) -> NatsSecurity {
        NatsSecurity {
            auth: self.auth.clone(),
            tls_ca_file: self.tls_ca_file.clone(),
            tls_cert_file: self.tls_cert_file.clone(),
            tls_key_file: self.tls_key_file.clone(),
        }
    }

    /// Resolves [`NatsConfig::auth`](crate::NatsConfig::auth) from the environment (`var`
    /// reads a variable) and the credential files: a user with its password, a token, an NKey
    /// seed or a `.creds` file; at most one of them.
    ///
    /// # Errors
    /// A file that cannot be read or is empty, a user without a password (or the reverse), or
    /// more than one way to authenticate.
    pub fn resolve_auth(
        &mut self,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<(), SecretError> {
        let var = |name: &str| var(name).filter(|value| !value.trim().is_empty());
        let from = |variable: &'static str, file: &str, what: &'static str| match var(variable) {
            Some(value) => Ok(Some(Secret::new(value.trim()))),
            None if file.is_empty() => Ok(None),
            None => read_secret_file(Path::new(file), what).map(Some),
        };
        let user = var(env::NATS_USER).unwrap_or_else(|| self.user.clone());
        let password = from(env::NATS_PASSWORD, &self.password_file, "the NATS password")?;
        let token = from(env::NATS_TOKEN, &self.token_file, "the NATS token")?;
        let seed = from(
            env::NATS_NKEY_SEED,
            &self.nkey_seed_file,
            "the NATS NKey seed",
        )?;
        let mut ways = Vec::new();
        let mut auth = NatsAuth::None;
        match (user.is_empty(), password) {
            (true, None) => {}
            (false, Some(password)) => {
                ways.push("user and password");
                auth = NatsAuth::UserPassword { user, password };
            }
            (true, Some(_)) => {
                return Err(SecretError::Incomplete(format!(
                    "a NATS password is set but no user ({} or integrations.nats.user)",
                    env::NATS_USER
                )));
            }
            (false, None) => {
                return Err(SecretError::Incomplete(format!(
                    "the NATS user `{user}` has no password ({} or integrations.nats.password_file)",
                    env::NATS_PASSWORD
                )));
            }
        }
        if let Some(token) = token {
            ways.push("token");
            auth = NatsAuth::Token(token);
        }
        if let Some(seed) = seed {
            ways.push("NKey seed");
            auth = NatsAuth::NkeySeed(seed);
        }
        if !self.credentials_file.is_empty() {
            ways.push("credentials file");
            auth = NatsAuth::CredentialsFile(PathBuf::from(&self.credentials_file));
        }
        if ways.len() > 1 {
            return Err(SecretError::Ambiguous(ways.join(", ")));
        }
        self.auth = auth;
        Ok(())
    }
}

impl crate::Neo4jConfig {
    /// Replaces the password with the one of `TAPIO_NEO4J_PASSWORD` (`var` reads a variable)
    /// or, when that is unset or empty, of `password_file`.
    ///
    /// # Errors
    /// When the file cannot be read or is empty.
    pub fn resolve_password(
        &mut self,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<(), SecretError> {
        if let Some(password) = var(env::NEO4J_PASSWORD).filter(|value| !value.is_empty()) {
            self.password = Secret::new(password);
        } else if !self.password_file.is_empty() {
            self.password = read_secret_file(Path::new(&self.password_file), "the Neo4j password")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{NatsConfig, Neo4jConfig};

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        }
    }

    fn scratch(name: &str, content: &str) -> PathBuf {
        let path = std::env::temp_dir().join(format!("tapio-secret-{}-{name}", std::process::id()));
        std::fs::write(&path, content).unwrap();
        path
    }

    #[test]
    fn a_secret_never_formats_its_value() {
        let secret = Secret::new("hunter2");
        let config = NatsConfig {
            auth: NatsAuth::Token(secret.clone()),
            ..NatsConfig::default()
        };
        for text in [
            format!("{secret}"),
            format!("{secret:?}"),
            format!("{config:?}"),
        ] {
            assert!(!text.contains("hunter2"), "{text}");
        }
        assert!(format!("{config:?}").contains("<redacted>"));
        assert_eq!(secret.expose(), "hunter2");
    }

    #[test]
    fn nats_credentials_come_from_variables_or_files() {
        let mut config = NatsConfig::default();
        config
            .resolve_auth(vars(&[
                ("TAPIO_NATS_USER", "agent"),
                ("TAPIO_NATS_PASSWORD", "pw\n"),
            ]))
            .unwrap();
        assert_eq!(
            config.auth,
            NatsAuth::UserPassword {
                user: "agent".into(),
                password: Secret::new("pw")
            }
        );

        let token = scratch("token", "  t0ken \n");
        let mut config = NatsConfig {
            token_file: token.display().to_string(),
            ..NatsConfig::default()
        };
        config.resolve_auth(vars(&[])).unwrap();
        assert_eq!(config.auth, NatsAuth::Token(Secret::new("t0ken")));
        // The variable wins over the file.
        config
            .resolve_auth(vars(&[("TAPIO_NATS_TOKEN", "other")]))
            .unwrap();
        assert_eq!(config.auth, NatsAuth::Token(Secret::new("other")));
        std::fs::remove_file(token).unwrap();

        let mut config = NatsConfig {
            credentials_file: "/etc/tapio/agent.creds".into(),
            ..NatsConfig::default()
        };
        config.resolve_auth(vars(&[])).unwrap();
        assert_eq!(
            config.auth,
            NatsAuth::CredentialsFile("/etc/tapio/agent.creds".into())
        );
        let mut none = NatsConfig::default();
        none.resolve_auth(vars(&[])).unwrap();
        assert_eq!(none.auth, NatsAuth::None);
    }

    #[test]
    fn bad_nats_credentials_are_named_without_the_secret() {
        let mut config = NatsConfig::default();
        let mut messages = Vec::new();
        let mut refused = |config: &mut NatsConfig, pairs: &[(&str, &str)], wanted: &str| {
            let error = config.resolve_auth(vars(pairs)).unwrap_err().to_string();
            assert!(error.contains(wanted), "{error}");
            messages.push(error);
        };
        refused(
            &mut config,
            &[("TAPIO_NATS_PASSWORD", "s3cret")],
            "TAPIO_NATS_USER",
        );
        refused(
            &mut config,
            &[("TAPIO_NATS_USER", "agent")],
            "TAPIO_NATS_PASSWORD",
        );
        refused(
            &mut config,
            &[
                ("TAPIO_NATS_TOKEN", "s3cret"),
                ("TAPIO_NATS_NKEY_SEED", "SUAKEY"),
            ],
            "token, NKey seed",
        );
        config.token_file = "/nonexistent/token".into();
        refused(&mut config, &[], "/nonexistent/token");
        let empty = scratch("empty", "\n");
        config.token_file = empty.display().to_string();
        refused(&mut config, &[], "is empty");
        std::fs::remove_file(empty).unwrap();
        for message in messages {
            assert!(!message.contains("s3cret"), "{message}");
        }
    }

    #[test]
    fn the_neo4j_password_comes_from_the_variable_or_the_file() {
        let file = scratch("neo4j", "from-file\n");
        let mut config = Neo4jConfig {
            password_file: file.display().to_string(),
            ..Neo4jConfig::default()
        };
        config.resolve_password(vars(&[])).unwrap();
        assert_eq!(config.password.expose(), "from-file");
        config
            .resolve_password(vars(&[("TAPIO_NEO4J_PASSWORD", "from-env")]))
            .unwrap();
        assert_eq!(config.password.expose(), "from-env");
        std::fs::remove_file(file).unwrap();
    }
}
