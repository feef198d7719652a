//! The reusable incremental operators every rule is built from, one module each: the
//! temporal window ([`window::retain`]), the sequence join ([`sequence::earliest_within`]),
//! the transitive closure of a graph of links ([`closure::chains`]) and seeded reachability
//! ([`reachability::reach`]). Each is checked against a computation from scratch.

pub mod closure;
pub mod reachability;
pub mod sequence;
pub mod window;

#[cfg(test)]
pub(crate) mod oracle;
