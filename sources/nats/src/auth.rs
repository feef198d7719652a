//! The credentials and TLS settings of a NATS client.

use async_nats::ConnectOptions;
use tapio_config::{NatsAuth, NatsSecurity};

/// `options` with the credentials (resolved by `NatsConfig::resolve_auth`) and the TLS files
/// of `config`. A CA file requires TLS.
///
/// # Errors
/// When the `.creds` file cannot be read or parsed; the error names the file.
pub async fn with_credentials(
    mut options: ConnectOptions,
    config: &NatsSecurity,
) -> Result<ConnectOptions, CredentialsError> {
    options = match &config.auth {
        NatsAuth::None => options,
        NatsAuth::UserPassword { user, password } => {
            options.user_and_password(user.clone(), password.expose().to_owned())
        }
        NatsAuth::Token(token) => options.token(token.expose().to_owned()),
        NatsAuth::NkeySeed(seed) => options.nkey(seed.expose().to_owned()),
        NatsAuth::CredentialsFile(path) => {
            options
                .credentials_file(path)
                .await
                .map_err(|source| CredentialsError {
                    path: path.display().to_string(),
                    source,
                })?
        }
    };
    if !config.tls_ca_file.is_empty() {
        options = options
            .add_root_certificates(config.tls_ca_file.clone().into())
            .require_tls(true);
    }
    if !config.tls_cert_file.is_empty() {
        options = options.add_client_certificate(
            config.tls_cert_file.clone().into(),
            config.tls_key_file.clone().into(),
        );
    }
    Ok(options)
}

/// A `.creds` file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("cannot read the NATS credentials file {path}")]
pub struct CredentialsError {
    /// The file.
    pub path: String,
    /// Why.
    #[source]
    pub source: std::io::Error,
}
