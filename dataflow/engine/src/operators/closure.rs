//! Transitive closure of a graph of links: for every node with a link, the whole chain of
//! links up to the top, computed with `iterate` and kept up to date as links come and go.
//!
//! Each node has at most one meaningful link at each depth (ownership: a child has one
//! controlling owner); where bad data gives a node several, the smallest link is taken at each
//! depth, so the chain is a function of the set of links. Chains are cut at `max_depth`, so a
//! cycle cannot run away; a chain stops at the first depth with no link.
//!
//! ```
//! use differential_dataflow::input::Input;
//! use tapio_dataflow::operators::closure::chains;
//!
//! let found = timely::execute_directly(|worker| {
//!     let (mut links, probe, out) = worker.dataflow::<u64, _, _>(|scope| {
//!         let (links_in, links) = scope.new_collection::<(char, (char, u8)), isize>();
//!         let (out_tx, out_rx) = std::sync::mpsc::channel();
//!         let closed = chains(links, 8);
//!         let (probe, closed) = closed.probe();
//!         closed.inspect(move |(data, _, diff)| out_tx.send((data.clone(), *diff)).unwrap());
//!         (links_in, probe, out_rx)
//!     });
//!     links.insert(('c', ('p', 1))); // container c is in pod p, by evidence 1
//!     links.insert(('p', ('r', 2))); // pod p is owned by ReplicaSet r, by evidence 2
//!     links.advance_to(1);
//!     links.flush();
//!     while probe.less_than(links.time()) {
//!         worker.step();
//!     }
//!     let mut found: Vec<_> = out.try_iter().collect();
//!     found.sort();
//!     found
//! });
//! assert_eq!(
//!     found,
//!     vec![(('c', vec![('p', 1), ('r', 2)]), 1), (('p', vec![('r', 2)]), 1)]
//! );
//! ```

use differential_dataflow::operators::Iterate;
use differential_dataflow::{ExchangeData, VecCollection};

use crate::clock::Tick;

/// Every node's chain of links: `(node, [(parent, evidence), (grandparent, evidence), ...])`.
pub type Chains<'scope, N, E> = VecCollection<'scope, Tick, (N, Vec<(N, E)>), isize>;

/// For every node with a link `(node, (parent, evidence))`, its chain
/// `[(parent, evidence), (grandparent, evidence), ...]`, at most `max_depth` long.
pub fn chains<'scope, N, E>(
    links: VecCollection<'scope, Tick, (N, (N, E)), isize>,
    max_depth: u32,
) -> Chains<'scope, N, E>
where
    N: ExchangeData + std::hash::Hash,
    E: ExchangeData + std::hash::Hash,
{
    let first = links.clone().map(|(child, link)| (child, (1u32, link)));
    let reach = first.clone().iterate(|scope, reach| {
        let links = links.enter(scope);
        let first = first.enter(scope);
        reach
            .map(|(child, (depth, (parent, _)))| (parent, (child, depth)))
            .join_map(links, |_owner, (child, depth), next| {
                (child.clone(), (depth + 1, next.clone()))
            })
            .filter(move |(_, (depth, _))| *depth <= max_depth)
            .concat(first)
            .distinct()
    });
    reach.reduce(|_, ancestors, output| {
        // `ancestors` is sorted by (depth, link): take the first link at each depth, following
        // it, and stop at the first depth with none that continues the chain.
        let mut chain: Vec<(N, E)> = Vec::with_capacity(ancestors.len());
        let mut expected = 1;
        for ((depth, link), _) in ancestors {
            if *depth < expected {
                continue;
            }
            if *depth > expected {
                break;
            }
            chain.push(link.clone());
            expected += 1;
        }
        if !chain.is_empty() {
            output.push((chain, 1isize));
        }
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::chains;
    use crate::operators::oracle::{Rng, at, run1, times};

    /// At every time, the chains equal a walk from scratch over the links held then: from each
    /// node, the smallest link at each step, up to the depth bound; cycles included.
    #[test]
    fn chains_equal_a_walk_over_the_links_at_every_time() {
        for seed in 1..=20 {
            let mut rng = Rng::new(seed);
            let max_depth = 1 + rng.below(5) as u32;
            let mut input = Vec::new();
            for evidence in 0..25u32 {
                let child = rng.below(10) as u8;
                let parent = rng.below(10) as u8;
                if child == parent {
                    continue;
                }
                let at = rng.below(10);
                input.push(((child, (parent, evidence)), at, 1isize));
                if rng.below(3) == 0 {
                    input.push(((child, (parent, evidence)), at + 1 + rng.below(8), -1));
                }
            }
            let output = run1(input.clone(), move |links| chains(links, max_depth));
            for time in times(&input, &output) {
                let held = at(&input, time);
                let mut expected = BTreeMap::new();
                for child in held.keys().map(|(child, _)| *child) {
                    // Reference semantics: the set of (depth, link) pairs reachable by any path,
                    // then the smallest link at each depth, stopping at the first gap.
                    let mut frontier: Vec<(u8, (u8, u32))> =
                        held.keys().filter(|(c, _)| *c == child).cloned().collect();
                    let mut by_depth: Vec<Vec<(u8, u32)>> = Vec::new();
                    for _ in 0..max_depth {
                        if frontier.is_empty() {
                            break;
                        }
                        let mut links: Vec<(u8, u32)> =
                            frontier.iter().map(|(_, link)| *link).collect();
                        links.sort_unstable();
                        links.dedup();
                        frontier = links
                            .iter()
                            .flat_map(|(parent, _)| {
                                held.keys().filter(move |(c, _)| c == parent).cloned()
                            })
                            .collect();
                        by_depth.push(links);
                    }
                    let chain: Vec<(u8, u32)> = by_depth.iter().map(|links| links[0]).collect();
                    expected.insert((child, chain), 1isize);
                }
                assert_eq!(at(&output, time), expected, "seed {seed}, time {time}");
            }
        }
    }
}
