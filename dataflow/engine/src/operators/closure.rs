//! Transitive closure of a graph of links: for every node with a link, the whole chain of
//! links up to the top, computed with `iterate` and kept up to date as links come and go.
//!
//! A node normally has one link (ownership: a child has one controlling owner). Where it has
//! several (two records overlapping during an update, or bad data), the chain follows the
//! smallest link out of each node it reaches, so the chain is a function of the set of links
//! and every step in it is a real link from the node before. Chains are cut at `max_depth`, so
//! a cycle cannot run away.
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
    // Every (depth, node the link leaves from, link) reachable from each node, by any path.
    let first = links
        .clone()
        .map(|(child, link)| (child.clone(), (1u32, child, link)));
    let reach = first.clone().iterate(|scope, reach| {
        let links = links.enter(scope);
        let first = first.enter(scope);
        reach
            .map(|(start, (depth, _, (parent, _)))| (parent, (start, depth)))
            .join_map(links, |parent, (start, depth), next| {
                (start.clone(), (depth + 1, parent.clone(), next.clone()))
            })
            .filter(move |(_, (depth, _, _))| *depth <= max_depth)
            .concat(first)
            .distinct()
    });
    reach.reduce(move |start, reachable, output| {
        // `reachable` is sorted by (depth, from, link). Walk from the node itself: at each
        // depth take the smallest link that leaves the node reached so far, and stop at the
        // first depth where none does.
        let mut chain: Vec<(N, E)> = Vec::new();
        let mut holder = start.clone();
        let mut at = 0;
        for depth in 1..=max_depth {
            while at < reachable.len() && reachable[at].0.0 < depth {
                at += 1;
            }
            let next = reachable[at..]
                .iter()
                .take_while(|((d, _, _), _)| *d == depth)
                .find(|((_, from, _), _)| *from == holder);
            let Some(((_, _, link), _)) = next else {
                break;
            };
            holder = link.0.clone();
            chain.push(link.clone());
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
    /// node, the smallest link out of each node reached, up to the depth bound; cycles and
    /// nodes with several links included.
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
                    // Reference semantics: from the node, follow the smallest link out of
                    // each node reached, up to the depth bound.
                    let mut chain: Vec<(u8, u32)> = Vec::new();
                    let mut holder = child;
                    while chain.len() < max_depth as usize {
                        let Some((_, link)) = held.keys().filter(|(c, _)| *c == holder).min()
                        else {
                            break;
                        };
                        holder = link.0;
                        chain.push(*link);
                    }
                    expected.insert((child, chain), 1isize);
                }
                assert_eq!(at(&output, time), expected, "seed {seed}, time {time}");
            }
        }
    }
}
