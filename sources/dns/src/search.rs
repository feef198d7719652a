//! Lookups of one name through the resolver's search path, grouped.
//!
//! A resolver asked for `api` in a pod with `search default.svc.cluster.local svc.cluster.local
//! cluster.local` and `ndots:5` queries `api.default.svc.cluster.local`,
//! `api.svc.cluster.local`, `api.cluster.local` and `api` in turn, until one is answered. Every
//! name but the right one gets NXDOMAIN, which is how the search path works, not a failure.
//!
//! [`SearchGroups`] holds an NXDOMAIN for `window` after its lookup ended. When the same
//! process (or, without one, the same client address) then finishes a lookup of the same type
//! whose name has the same first label, the held one is folded into it: only the later lookup
//! is reported, with `search_expansions` counting the names folded into it. An NXDOMAIN that
//! nothing follows within `window` is reported then, as the lookup's real outcome, with the
//! names folded into it counted the same way.

use std::collections::HashMap;
use std::net::IpAddr;

/// Who asked and what: the lookups of one search sequence share it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct GroupKey {
    /// The querying process (pid) when known, else 0.
    pub pid: u32,
    /// The client address (used when the pid is unknown).
    pub client: IpAddr,
    /// The socket's cgroup id.
    pub cgroup_id: u64,
    /// The query type.
    pub qtype: u16,
    /// The name's first label, lower case.
    pub first_label: String,
}

impl GroupKey {
    /// The key of a lookup of `name` (any case).
    pub fn new(pid: u32, client: IpAddr, cgroup_id: u64, qtype: u16, name: &str) -> GroupKey {
        let first = name.split('.').next().unwrap_or_default();
        GroupKey {
            pid,
            client,
            cgroup_id,
            qtype,
            first_label: first.to_ascii_lowercase(),
        }
    }
}

/// A held NXDOMAIN lookup.
#[derive(Debug)]
struct Held<T> {
    item: T,
    expansions: u16,
    due_ns: u64,
    ended_ns: u64,
}

/// Groups the lookups of one name through the search path; `T` is the caller's lookup.
#[derive(Debug)]
pub struct SearchGroups<T> {
    window_ns: u64,
    held: HashMap<GroupKey, Held<T>>,
    /// Lookups folded into a later one of the same search sequence.
    pub folded: u64,
}

impl<T> SearchGroups<T> {
    /// Groups with a hold of `window_ns` (0: every lookup is reported on its own).
    pub fn new(window_ns: u64) -> SearchGroups<T> {
        SearchGroups {
            window_ns,
            held: HashMap::new(),
            folded: 0,
        }
    }

    /// Takes a lookup that ended at `ended_ns`, with NXDOMAIN or not. Pushes onto `out` what
    /// can be reported now, each with the number of names folded into it.
    pub fn ended(
        &mut self,
        key: GroupKey,
        item: T,
        nxdomain: bool,
        ended_ns: u64,
        out: &mut Vec<(T, u16)>,
    ) {
        if self.window_ns == 0 {
            out.push((item, 0));
            return;
        }
        let expansions = match self.held.remove(&key) {
            Some(earlier) if ended_ns <= earlier.due_ns => {
                self.folded += 1;
                earlier.expansions.saturating_add(1)
            }
            Some(earlier) => {
                out.push((earlier.item, earlier.expansions));
                0
            }
            None => 0,
        };
        if nxdomain {
            self.held.insert(
                key,
                Held {
                    item,
                    expansions,
                    due_ns: ended_ns.saturating_add(self.window_ns),
                    ended_ns,
                },
            );
        } else {
            out.push((item, expansions));
        }
    }

    /// Pushes onto `out` every held lookup whose window has passed at `now_ns`.
    pub fn expire(&mut self, now_ns: u64, out: &mut Vec<(T, u16)>) {
        if self.held.values().all(|held| held.due_ns >= now_ns) {
            return;
        }
        let due: Vec<GroupKey> = self
            .held
            .iter()
            .filter(|(_, held)| held.due_ns < now_ns)
            .map(|(key, _)| key.clone())
            .collect();
        let mut ready: Vec<Held<T>> = due
            .into_iter()
            .filter_map(|key| self.held.remove(&key))
            .collect();
        ready.sort_by_key(|held| held.ended_ns);
        out.extend(ready.into_iter().map(|held| (held.item, held.expansions)));
    }

    /// When the earliest held lookup ended, if one is held: nothing at or after it is
    /// complete yet.
    pub fn earliest(&self) -> Option<u64> {
        self.held.values().map(|held| held.ended_ns).min()
    }

    /// Lookups held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(name: &str, qtype: u16) -> GroupKey {
        GroupKey::new(7, "10.0.0.1".parse().unwrap(), 3, qtype, name)
    }

    #[test]
    fn search_expansions_fold_into_the_answered_name() {
        let mut groups = SearchGroups::new(1_000);
        let mut out = Vec::new();
        for (at, name) in [
            (10, "api.default.svc.cluster.local"),
            (20, "api.svc.cluster.local"),
            (30, "api.cluster.local"),
        ] {
            groups.ended(key(name, 1), name, true, at, &mut out);
        }
        // An AAAA lookup of the same name is its own sequence.
        groups.ended(key("api.cluster.local", 28), "aaaa", true, 35, &mut out);
        assert!(out.is_empty());
        groups.ended(key("api", 1), "api", false, 40, &mut out);
        assert_eq!(out, [("api", 3)]);
        assert_eq!(groups.folded, 2 + 1);
        // The AAAA NXDOMAIN is reported when its window passes.
        groups.expire(1_035, &mut out);
        assert_eq!(out.len(), 1);
        groups.expire(1_036, &mut out);
        assert_eq!(out, [("api", 3), ("aaaa", 0)]);
        assert!(groups.is_empty());
    }

    #[test]
    fn a_lookup_that_fails_everywhere_is_reported_once_with_its_expansions() {
        let mut groups = SearchGroups::new(1_000);
        let mut out = Vec::new();
        groups.ended(key("db.ns.svc.cluster.local", 1), "a", true, 10, &mut out);
        groups.ended(key("db.svc.cluster.local", 1), "b", true, 20, &mut out);
        groups.ended(key("db", 1), "c", true, 30, &mut out);
        assert_eq!(groups.earliest(), Some(30));
        groups.expire(2_000, &mut out);
        assert_eq!(out, [("c", 2)]);
        // Another name, or a lookup after the window, is not folded.
        groups.ended(key("web", 1), "d", true, 3_000, &mut out);
        groups.ended(key("db", 1), "e", false, 3_010, &mut out);
        groups.ended(key("web", 1), "f", false, 4_500, &mut out);
        assert_eq!(out, [("c", 2), ("e", 0), ("d", 0), ("f", 0)]);
        // Without a window everything is reported as it ends.
        let mut plain = SearchGroups::new(0);
        plain.ended(key("db", 1), "g", true, 1, &mut out);
        assert_eq!(out.last(), Some(&("g", 0)));
    }
}
