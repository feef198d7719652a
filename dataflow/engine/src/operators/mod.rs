//! The reusable incremental operators every rule is built from, one module each: the
//! temporal window ([`window::retain`]), the sequence join ([`sequence::earliest_within`]),
//! the transitive closure of a graph of links ([`closure::chains`]), seeded reachability
//! ([`reachability::reach`]), runs of items folded over time ([`runs::runs`]) and values that
//! lapsed from a good one ([`lapse::lapses`]); the last two run on a tick-by-tick state
//! machine (`ticked`). Each is checked against a computation from scratch.

pub mod closure;
pub mod lapse;
pub mod reachability;
pub mod runs;
pub mod sequence;
pub(crate) mod ticked;
pub mod window;

#[cfg(test)]
pub(crate) mod oracle;
