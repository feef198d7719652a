//! The reusable incremental operators every rule is built from, one module each: the
//! temporal window ([`window::retain`]), the sequence join ([`sequence::earliest_within`]),
//! the transitive closure of a graph of links ([`closure::chains`]), seeded reachability
//! ([`reachability::reach`]) and runs of items folded over time ([`runs::runs`]). Each is
//! checked against a computation from scratch.

pub mod closure;
pub mod reachability;
pub mod runs;
pub mod sequence;
pub mod window;

#[cfg(test)]
pub(crate) mod oracle;
