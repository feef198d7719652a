//! Credentials come from the environment and from files, authenticate against a real
//! `nats-server` that requires them, and never appear in anything the binary prints: the
//! agent runs with every log at `trace`, and its whole output, and `tapio config check`'s, are
//! searched for each secret.

use std::path::Path;
use std::process::Output;

use tapio_tests::nats::NatsServer;

use crate::support::{kspan_recording, scratch, succeed, tapio};

const NATS_PASSWORD: &str = "nats-pw-5b8d02c6e1f4";
const NATS_TOKEN: &str = "nats-token-9a1e4f7c2b3d";
const NEO4J_PASSWORD: &str = "neo4j-pw-3c7e9b1d5a2f";

/// An agent configuration: the kspan recording published to `url`, plus `extra` keys of the
/// `integrations.nats` section.
fn agent_config(dir: &Path, url: &str, nats_extra: &str) -> std::path::PathBuf {
    let path = dir.join("agent.yaml");
    std::fs::write(
        &path,
        format!(
            "node_name: agent-1\ncollectors:\n  kernel:\n    enabled: false\n  recording:\n    \
             enabled: true\n    path: {}\nintegrations:\n  neo4j:\n    password_file: {}\n  \
             nats:\n    url: {url}\n    spool_path: {}\n{nats_extra}",
            kspan_recording().display(),
            dir.join("neo4j-password").display(),
            dir.join("spool.jsonl").display(),
        ),
    )
    .expect("write the configuration");
    std::fs::write(dir.join("neo4j-password"), format!("{NEO4J_PASSWORD}\n"))
        .expect("write the password file");
    path
}

/// Runs the agent for a few seconds with every log on, returning its output.
fn run_agent(config: &Path, env: &[(&str, &str)]) -> Output {
    let mut command = tapio();
    command
        .env("TAPIO_LOG", "trace")
        .args(["run", "--mode", "collectors", "--for", "3s", "--config"])
        .arg(config);
    for (name, value) in env {
        command.env(name, value);
    }
    succeed(&mut command)
}

fn assert_never_printed(output: &Output, secrets: &[&str], what: &str) {
    for stream in [&output.stdout, &output.stderr] {
        let text = String::from_utf8_lossy(stream);
        for secret in secrets {
            assert!(!text.contains(secret), "{what} printed a secret:\n{text}");
        }
    }
}

/// Observations stored in the stream, read by a client with `options`.
fn stored(url: &str, options: async_nats::ConnectOptions) -> u64 {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            let client = options.connect(url).await.expect("an authenticated client");
            let js = async_nats::jetstream::new(client);
            let mut stream = js.get_stream("TAPIO").await.expect("the stream");
            stream.info().await.expect("its state").state.messages
        })
}

#[test]
fn a_user_and_password_from_the_environment_authenticate_and_are_never_printed() {
    let nats = NatsServer::start_with(
        "secrets-user",
        &format!("authorization {{\n  user: agent\n  password: {NATS_PASSWORD:?}\n}}"),
    );
    let dir = scratch("secrets-user");
    let config = agent_config(&dir, &nats.url(), "");
    let output = run_agent(
        &config,
        &[
            ("TAPIO_NATS_USER", "agent"),
            ("TAPIO_NATS_PASSWORD", NATS_PASSWORD),
        ],
    );
    assert_never_printed(&output, &[NATS_PASSWORD, NEO4J_PASSWORD], "the agent");
    let messages = stored(
        &nats.url(),
        async_nats::ConnectOptions::new().user_and_password("agent".into(), NATS_PASSWORD.into()),
    );
    assert!(messages > 0, "the agent published nothing");

    // The server refuses a client without the credentials: they were needed.
    let refused = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async_nats::connect(nats.url()));
    assert!(
        refused.is_err(),
        "the server accepted a client without credentials"
    );

    // A wrong password is not printed either.
    let wrong = run_agent(
        &config,
        &[
            ("TAPIO_NATS_USER", "agent"),
            ("TAPIO_NATS_PASSWORD", "wrong-pw-71c3e0a9"),
        ],
    );
    assert_never_printed(
        &wrong,
        &["wrong-pw-71c3e0a9", NEO4J_PASSWORD],
        "the refused agent",
    );
    std::fs::remove_dir_all(dir).expect("clean scratch dir");
}

#[test]
fn a_token_from_a_file_authenticates_and_is_never_printed() {
    let nats = NatsServer::start_with(
        "secrets-token",
        &format!("authorization {{\n  token: {NATS_TOKEN:?}\n}}"),
    );
    let dir = scratch("secrets-token");
    std::fs::write(dir.join("token"), format!("{NATS_TOKEN}\n")).expect("write the token");
    let config = agent_config(
        &dir,
        &nats.url(),
        &format!("    token_file: {}\n", dir.join("token").display()),
    );
    let output = run_agent(&config, &[]);
    assert_never_printed(&output, &[NATS_TOKEN, NEO4J_PASSWORD], "the agent");
    let messages = stored(
        &nats.url(),
        async_nats::ConnectOptions::new().token(NATS_TOKEN.into()),
    );
    assert!(messages > 0, "the agent published nothing");
    std::fs::remove_dir_all(dir).expect("clean scratch dir");
}

#[test]
fn config_check_redacts_the_neo4j_password_and_refuses_credentials_in_urls() {
    let dir = scratch("secrets-check");
    let config = dir.join("tapio.yaml");
    std::fs::write(
        &config,
        format!(
            "integrations:\n  neo4j:\n    uri: bolt://127.0.0.1:7687\n    password: {NEO4J_PASSWORD}\n"
        ),
    )
    .expect("write the configuration");
    let output = succeed(tapio().args(["config", "check"]).arg(&config));
    assert_never_printed(&output, &[NEO4J_PASSWORD], "config check");
    assert!(String::from_utf8_lossy(&output.stdout).contains("password: <redacted>"));

    std::fs::write(
        &config,
        format!("integrations:\n  nats:\n    url: nats://agent:{NATS_PASSWORD}@127.0.0.1:4222\n"),
    )
    .expect("write the configuration");
    let output = tapio()
        .args(["config", "check"])
        .arg(&config)
        .output()
        .expect("run tapio");
    assert!(!output.status.success());
    assert_never_printed(&output, &[NATS_PASSWORD], "config check of a bad URL");
    let error = String::from_utf8_lossy(&output.stderr);
    assert!(
        error.contains("integrations.nats.url") && error.contains("must not hold a password"),
        "{error}"
    );
    std::fs::remove_dir_all(dir).expect("clean scratch dir");
}
