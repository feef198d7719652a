//! What can go wrong talking to Neo4j, and which failures are worth retrying.

use std::time::Duration;

/// A failure of the Neo4j writer.
#[derive(Debug, thiserror::Error)]
pub enum Neo4jError {
    /// Neo4j refused the user name or password.
    #[error(
        "Neo4j at {uri} refused the user name or password (user `{username}`): {message}; \
         check integrations.neo4j.username and integrations.neo4j.password"
    )]
    Unauthorized {
        /// Bolt URI.
        uri: String,
        /// The user name that was refused.
        username: String,
        /// The server's message.
        message: String,
    },
    /// No Neo4j answers at the URI (refused, unresolvable, reset).
    #[error("cannot reach Neo4j at {uri}; check integrations.neo4j.uri and that Neo4j is running")]
    Unreachable {
        /// Bolt URI.
        uri: String,
        /// The driver's error.
        #[source]
        source: neo4rs::Error,
    },
    /// Neo4j did not answer in time.
    #[error("Neo4j at {uri} did not answer within {after:?}")]
    Timeout {
        /// Bolt URI.
        uri: String,
        /// How long the writer waited.
        after: Duration,
    },
    /// A statement or the commit failed.
    #[error("Neo4j statement `{statement}` failed")]
    Query {
        /// Which statement.
        statement: &'static str,
        /// The driver's error.
        #[source]
        source: neo4rs::Error,
    },
    /// The graph does not hold what the writer expected: a correlation it is adding is there
    /// already, or one it is removing is gone, so someone else changed correlations. Retried
    /// after the writer reads its state again.
    #[error("the Neo4j graph changed under the writer: {what}")]
    GraphChanged {
        /// What was found.
        what: String,
    },
    /// The graph's version is below one this writer has seen: the graph was emptied or
    /// restored from an older backup under it. The sink re-writes its current correlations
    /// ([`crate::Neo4jWriter::rewrite`]).
    #[error(
        "the Neo4j graph went back in time under the writer: its version is {found}, below the \
         {expected} this writer has seen (emptied, or restored from an older backup)"
    )]
    GraphRewound {
        /// The version found.
        found: i64,
        /// The highest version the writer had seen.
        expected: i64,
    },
    /// A later version of Tapio wrote the graph, in a shape this version does not know; it is
    /// left alone rather than mixed with this version's.
    #[error(
        "the Neo4j graph at {uri} was written by a later version of Tapio (graph schema \
         {found}; this version writes {supported}): upgrade Tapio, or point \
         integrations.neo4j at another database"
    )]
    NewerSchema {
        /// Bolt URI.
        uri: String,
        /// The graph's schema version.
        found: i64,
        /// The schema version this writer writes.
        supported: i64,
    },
    /// A value that cannot be stored or read back.
    #[error("bad value: {what}")]
    BadValue {
        /// What and why.
        what: String,
    },
}

impl Neo4jError {
    /// Whether retrying later may succeed: connection trouble, time-outs and transient server
    /// errors, but not refused credentials, bad statements or bad values.
    pub fn is_retryable(&self) -> bool {
        match self {
            Neo4jError::Unreachable { .. }
            | Neo4jError::Timeout { .. }
            | Neo4jError::GraphChanged { .. }
            | Neo4jError::GraphRewound { .. } => true,
            Neo4jError::Unauthorized { .. }
            | Neo4jError::BadValue { .. }
            | Neo4jError::NewerSchema { .. } => false,
            Neo4jError::Query { source, .. } => driver_error_is_retryable(source),
        }
    }

    pub(crate) fn query(statement: &'static str, source: neo4rs::Error) -> Neo4jError {
        Neo4jError::Query { statement, source }
    }

    /// Sorts a driver error from connecting into refused credentials, an unreachable server, or
    /// anything else.
    pub(crate) fn classify(uri: &str, username: &str, error: neo4rs::Error) -> Neo4jError {
        match error {
            neo4rs::Error::AuthenticationError(message) => Neo4jError::Unauthorized {
                uri: uri.to_owned(),
                username: username.to_owned(),
                message,
            },
            neo4rs::Error::Neo4j(ref failure)
                if failure.code().starts_with("Neo.ClientError.Security.") =>
            {
                Neo4jError::Unauthorized {
                    uri: uri.to_owned(),
                    username: username.to_owned(),
                    message: failure.message().to_owned(),
                }
            }
            neo4rs::Error::IOError { .. }
            | neo4rs::Error::ConnectionError
            | neo4rs::Error::UrlParseError(_)
            | neo4rs::Error::UnsupportedScheme(_)
            | neo4rs::Error::InvalidDnsName(_) => Neo4jError::Unreachable {
                uri: uri.to_owned(),
                source: error,
            },
            other => Neo4jError::Query {
                statement: "connect",
                source: other,
            },
        }
    }
}

fn driver_error_is_retryable(error: &neo4rs::Error) -> bool {
    match error {
        neo4rs::Error::IOError { .. } | neo4rs::Error::ConnectionError => true,
        neo4rs::Error::Neo4j(failure) => {
            let code = failure.code();
            code.starts_with("Neo.TransientError.")
                || code.starts_with("Neo.ClientError.Cluster.")
                || code == "Neo.ClientError.Transaction.Terminated"
                || code == "Neo.ClientError.Transaction.LockClientStopped"
        }
        _ => false,
    }
}
