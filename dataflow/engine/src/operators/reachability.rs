//! Seeded reachability: from a set of seed nodes, every node reachable along directed edges
//! within a number of steps, with the fewest steps it takes from each seed ([`reach`]), or
//! with the path itself and the evidence of every edge on it ([`reach_paths`]).
//!
//! Seeded, not all-pairs: the cost follows what the seeds reach. Both the edges and the seeds
//! may change; the result follows them incrementally, in both directions. A dependency rule
//! reaches a failing service's dependents this way, with edges reversed ("who depends on me").
//!
//! ```
//! use differential_dataflow::input::Input;
//! use tapio_dataflow::operators::reachability::reach;
//!
//! let found = timely::execute_directly(|worker| {
//!     let (mut edges, mut seeds, probe, out) = worker.dataflow::<u64, _, _>(|scope| {
//!         let (edges_in, edges) = scope.new_collection::<(char, char), isize>();
//!         let (seeds_in, seeds) = scope.new_collection::<char, isize>();
//!         let (out_tx, out_rx) = std::sync::mpsc::channel();
//!         let reached = reach(edges, seeds, 8);
//!         let (probe, reached) = reached.probe();
//!         reached.inspect(move |(data, _, diff)| out_tx.send((*data, *diff)).unwrap());
//!         (edges_in, seeds_in, probe, out_rx)
//!     });
//!     edges.insert(('d', 'a')); // the API (a) depends on the database (d): d reaches a
//!     edges.insert(('a', 'w')); // the web front end (w) depends on the API
//!     seeds.insert('d'); // the database fails
//!     edges.advance_to(1);
//!     seeds.advance_to(1);
//!     edges.flush();
//!     seeds.flush();
//!     while probe.less_than(edges.time()) {
//!         worker.step();
//!     }
//!     let mut found: Vec<_> = out.try_iter().collect();
//!     found.sort();
//!     found
//! });
//! assert_eq!(found, vec![(('a', ('d', 1)), 1), (('w', ('d', 2)), 1)]);
//! ```

use differential_dataflow::operators::Iterate;
use differential_dataflow::{ExchangeData, VecCollection};

use crate::clock::Tick;

/// `(node, (seed, steps))` for every node other than the seed that `seed` reaches along
/// `edges` (`(from, to)`) in at most `max_steps`, with the fewest steps.
pub fn reach<'scope, N>(
    edges: VecCollection<'scope, Tick, (N, N), isize>,
    seeds: VecCollection<'scope, Tick, N, isize>,
    max_steps: u32,
) -> VecCollection<'scope, Tick, (N, (N, u32)), isize>
where
    N: ExchangeData + std::hash::Hash,
{
    let start = seeds.distinct().map(|seed| ((seed.clone(), seed), 0u32));
    let reached = start.clone().iterate(|scope, reached| {
        let edges = edges.enter(scope);
        let start = start.enter(scope);
        reached
            .map(|((node, seed), steps)| (node, (seed, steps)))
            .join_map(edges, |_from, (seed, steps), to| {
                ((to.clone(), seed.clone()), steps + 1)
            })
            .filter(move |(_, steps)| *steps <= max_steps)
            .concat(start)
            .reduce(|_, steps, output| output.push((*steps[0].0, 1isize)))
    });
    reached
        .filter(|((node, seed), _)| node != seed)
        .map(|((node, seed), steps)| (node, (seed, steps)))
}

/// A path from a seed: each step's node and the evidence of the edge into it.
pub type Path<N, E> = Vec<(N, E)>;

/// What [`reach_paths`] finds: `(node, (seed, path))`.
pub type Paths<'scope, N, E> = VecCollection<'scope, Tick, (N, (N, Path<N, E>)), isize>;

/// `(node, (seed, path))` for every node other than the seed that `seed` reaches along `edges`
/// (`(from, (to, evidence))`) in at most `max_steps`: of the paths with the fewest steps, the
/// smallest (compared step by step, node then evidence), so that every edge on it is named with
/// its evidence.
///
/// The path to a node extends the path to the node before it, so the best route (its nodes) to
/// every node is found from the best routes to its predecessors. The iteration follows the
/// edges' ends only: evidence that changes on an edge whose ends stay (a busy connection's
/// newest period) does not make it search again. Each step's evidence, the smallest on that
/// edge, is attached to the routes afterwards; since a step's evidence does not constrain the
/// steps after it, that is the smallest path compared node then evidence.
pub fn reach_paths<'scope, N, E>(
    edges: VecCollection<'scope, Tick, (N, (N, E)), isize>,
    seeds: VecCollection<'scope, Tick, N, isize>,
    max_steps: u32,
) -> Paths<'scope, N, E>
where
    N: ExchangeData + std::hash::Hash,
    E: ExchangeData + std::hash::Hash,
{
    let max = max_steps as usize;
    let links = edges.clone().map(|(from, (to, _))| (from, to)).distinct();
    let start = seeds
        .distinct()
        .map(|seed| ((seed.clone(), seed), Vec::<N>::new()));
    let routes = start.clone().iterate(|scope, reached| {
        let links = links.enter(scope);
        let start = start.enter(scope);
        reached
            .map(|((node, seed), route)| (node, (seed, route)))
            .join_map(links, |_from, (seed, route), to| {
                let mut longer = Vec::with_capacity(route.len() + 1);
                longer.extend(route.iter().cloned());
                longer.push(to.clone());
                ((to.clone(), seed.clone()), longer)
            })
            .filter(move |(_, route)| route.len() <= max)
            .concat(start)
            .reduce(|_, routes, output| {
                let best = routes
                    .iter()
                    .map(|(route, _)| *route)
                    .min_by(|a, b| a.len().cmp(&b.len()).then_with(|| a.cmp(b)));
                if let Some(best) = best {
                    output.push((best.clone(), 1isize));
                }
            })
    });

    // Every step of every route, by its edge, with the smallest evidence on that edge.
    let steps =
        routes
            .filter(|((node, seed), _)| node != seed)
            .flat_map(|((node, seed), route)| {
                let mut from = seed.clone();
                let mut steps = Vec::with_capacity(route.len());
                for (index, to) in route.into_iter().enumerate() {
                    let edge = (from, to.clone());
                    from = to;
                    steps.push((edge, (node.clone(), seed.clone(), index)));
                }
                steps
            });
    let evidence = edges
        .map(|(from, (to, evidence))| ((from, to), evidence))
        .reduce(|_, evidence, output| {
            if let Some((smallest, _)) = evidence.iter().find(|(_, count)| *count > 0) {
                output.push(((*smallest).clone(), 1isize));
            }
        });
    steps
        .join_map(evidence, |(_, to), (node, seed, index), evidence| {
            (
                (node.clone(), seed.clone()),
                (*index, to.clone(), evidence.clone()),
            )
        })
        .reduce(|_, steps, output| {
            // Sorted by index: a route's steps in order, one each.
            let complete = steps
                .iter()
                .enumerate()
                .all(|(position, ((index, _, _), _))| *index == position);
            if complete {
                let path: Path<N, E> = steps
                    .iter()
                    .map(|((_, to, evidence), _)| (to.clone(), evidence.clone()))
                    .collect();
                output.push((path, 1isize));
            }
        })
        .map(|((node, seed), path)| (node, (seed, path)))
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::{reach, reach_paths};
    use crate::operators::oracle::{Rng, at, run2, times};

    /// At every time, what the seeds reach equals a breadth-first search from scratch over the
    /// edges and seeds held then.
    #[test]
    fn reaches_what_a_breadth_first_search_reaches_at_every_time() {
        for seed in 1..=20 {
            let mut rng = Rng::new(seed);
            let max_steps = 1 + rng.below(4) as u32;
            let mut edges = Vec::new();
            for _ in 0..20 {
                let edge = (rng.below(8) as u8, rng.below(8) as u8);
                let at = rng.below(10);
                edges.push((edge, at, 1isize));
                if rng.below(3) == 0 {
                    edges.push((edge, at + 1 + rng.below(8), -1));
                }
            }
            let mut seeds = Vec::new();
            for _ in 0..3 {
                let node = rng.below(8) as u8;
                let at = rng.below(10);
                seeds.push((node, at, 1isize));
                if rng.below(2) == 0 {
                    seeds.push((node, at + 1 + rng.below(8), -1));
                }
            }
            let output = run2(edges.clone(), seeds.clone(), move |edges, seeds| {
                reach(edges, seeds, max_steps)
            });
            for time in times(&edges, &seeds) {
                let held_edges = at(&edges, time);
                let held_seeds: BTreeSet<u8> = at(&seeds, time).into_keys().collect();
                let mut expected = BTreeMap::new();
                for &start in &held_seeds {
                    let mut seen = BTreeSet::from([start]);
                    let mut frontier = vec![start];
                    for steps in 1..=max_steps {
                        let mut next = Vec::new();
                        for node in &frontier {
                            for (from, to) in held_edges.keys() {
                                if from == node && seen.insert(*to) {
                                    next.push(*to);
                                    expected.insert((*to, (start, steps)), 1isize);
                                }
                            }
                        }
                        frontier = next;
                    }
                }
                assert_eq!(at(&output, time), expected, "seed {seed}, time {time}");
            }
        }
    }

    /// Every path of at most `max` steps from `from` over `edges`, by depth-first search.
    fn all_paths(
        edges: &[(u8, (u8, u8))],
        from: u8,
        max: usize,
        path: &mut Vec<(u8, u8)>,
        out: &mut Vec<Vec<(u8, u8)>>,
    ) {
        if path.len() == max {
            return;
        }
        let at = path.last().map_or(from, |(node, _)| *node);
        for (edge_from, step) in edges {
            if *edge_from == at {
                path.push(*step);
                out.push(path.clone());
                all_paths(edges, from, max, path, out);
                path.pop();
            }
        }
    }

    /// At every time, each node's path from each seed equals the smallest of the shortest paths
    /// found by enumerating every path from scratch, with parallel edges (same ends, different
    /// evidence) and cycles.
    #[test]
    fn paths_are_the_smallest_shortest_paths_at_every_time() {
        for seed in 1..=20 {
            let mut rng = Rng::new(seed);
            let max_steps = 1 + rng.below(4) as u32;
            let mut edges = Vec::new();
            for _ in 0..18 {
                let edge = (rng.below(7) as u8, (rng.below(7) as u8, rng.below(3) as u8));
                let at = rng.below(10);
                edges.push((edge, at, 1isize));
                if rng.below(3) == 0 {
                    edges.push((edge, at + 1 + rng.below(8), -1));
                }
            }
            let mut seeds = Vec::new();
            for _ in 0..4 {
                let start = rng.below(7) as u8;
                let at = rng.below(10);
                seeds.push((start, at, 1isize));
                if rng.below(2) == 0 {
                    seeds.push((start, at + 1 + rng.below(8), -1));
                }
            }
            let output = run2(edges.clone(), seeds.clone(), move |edges, seeds| {
                reach_paths(edges, seeds, max_steps)
            });
            for time in times(&edges, &seeds) {
                let held_edges: Vec<(u8, (u8, u8))> = at(&edges, time).into_keys().collect();
                let held_seeds: BTreeSet<u8> = at(&seeds, time).into_keys().collect();
                let mut expected = BTreeMap::new();
                for &start in &held_seeds {
                    let mut paths = Vec::new();
                    all_paths(
                        &held_edges,
                        start,
                        max_steps as usize,
                        &mut Vec::new(),
                        &mut paths,
                    );
                    let mut best: BTreeMap<u8, Vec<(u8, u8)>> = BTreeMap::new();
                    for path in paths {
                        let end = path.last().expect("a step").0;
                        if end == start {
                            continue;
                        }
                        let entry = best.entry(end).or_insert_with(|| path.clone());
                        if (path.len(), &path) < (entry.len(), &*entry) {
                            *entry = path;
                        }
                    }
                    for (end, path) in best {
                        expected.insert((end, (start, path)), 1isize);
                    }
                }
                assert_eq!(at(&output, time), expected, "seed {seed}, time {time}");
            }
        }
    }
}
