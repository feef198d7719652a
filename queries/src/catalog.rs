//! The Cypher text of every question, in one place. Each query reads the graph the Neo4j sink
//! writes (see the README's "Neo4j" section and the sink's `model` module):
//!
//! | element | properties |
//! | --- | --- |
//! | `(:Entity)` | `id` |
//! | `(:Fact)` | `id`, `time` |
//! | `(:Correlation)` | `id`, `kind`, `family`, `confidence` (percent), `since`, `data` (the correlation's typed JSON) |
//! | `HOP` (correlation to entity) | `index`, `fact_id`, `relation` |
//! | `ROOT_CAUSE` (correlation to its root cause) | |
//! | `ABOUT` (fact to entity) | `observed` (the hop's typed observation as JSON) |
//! | `OWNED_BY`, `CAUSED`, `FOLLOWED_BY`, `DEPENDS_ON`, `AFFECTS` (entity to entity) | `fact_id` |
//!
//! An entity-to-entity relationship's type is the relation of the hop it leads to, one type per
//! relation that joins hops ([`Relation::LINKS`]), and its evidence is that hop's fact: its time
//! is on the `Fact` node, what it observed on the fact's `ABOUT` relationship to the
//! relationship's end node. The graph holds no sentences: the questions render them from
//! `data` and `observed` with `tapio_model::render`, as the in-process output does. Statements
//! that list every relationship type ([`PATH`]) are built from [`Relation::LINKS`], so a new
//! relation needs no edit here.

use std::sync::LazyLock;

use tapio_model::Relation;

/// Every relationship type between entities, as a Cypher type alternation:
/// `OWNED_BY|CAUSED|FOLLOWED_BY|DEPENDS_ON|AFFECTS`.
pub fn link_types() -> String {
    Relation::LINKS
        .into_iter()
        .map(|relation| relation.as_str().to_ascii_uppercase())
        .collect::<Vec<_>>()
        .join("|")
}

/// Whether an entity is in the graph. `$entity`.
pub const ENTITY_EXISTS: &str = "\
MATCH (e:Entity {id: $entity})
RETURN split(e.id, '/')[0] AS kind";

/// `why ENTITY`: every current correlation whose chain passes through the entity, with its
/// typed data (`data`, the chain and its evidence included); surest and newest first.
/// Ownership chains and the service graph's edges are not causes and are left out (a failure
/// that reached the entity along them is: `blast_radius`). `$entity`.
pub const WHY: &str = "\
MATCH (:Entity {id: $entity})<-[:HOP]-(c:Correlation)
WHERE c.family <> 'ownership' AND c.kind <> 'service_dependency'
WITH DISTINCT c
RETURN c.id AS id, c.data AS data, c.confidence AS confidence, c.since AS since
ORDER BY confidence DESC, since DESC, id";

/// `blast-radius ENTITY`: what the entity takes down with it. Six ways to be hit, each the
/// shortest way found, nearest first:
///
/// - `caused`: reached from the entity along `CAUSED` (the container an OOM-killed process
///   stopped);
/// - `inside`: owned by the entity, directly or not (a Deployment's ReplicaSets, pods and
///   containers);
/// - `inside affected`: owned by something it caused (the containers of a pod a rule says it
///   affected);
/// - `owner of affected`: an owner of something it caused (the pod, ReplicaSet and Deployment of
///   a restarted container);
/// - `affected`: reached along `AFFECTS` from the entity, from what it caused or from what
///   it is in (a blast radius: the Service and clients of a pod whose container was
///   OOM-killed);
/// - `dependent`: depends on the entity, or on something in it, along `DEPENDS_ON` (the service
///   graph: what would be hit if it failed).
///
/// `$entity`.
pub const BLAST_RADIUS: &str = "\
MATCH (e:Entity {id: $entity})
CALL {
  WITH e
  MATCH p = (e)-[:CAUSED*1..8]->(x:Entity)
  RETURN x, 'caused' AS how, p
  UNION ALL
  WITH e
  MATCH p = (e)<-[:OWNED_BY*1..8]-(x:Entity)
  RETURN x, 'inside' AS how, p
  UNION ALL
  WITH e
  MATCH p = (e)-[:CAUSED*1..8]->(:Entity)<-[:OWNED_BY*1..8]-(x:Entity)
  RETURN x, 'inside affected' AS how, p
  UNION ALL
  WITH e
  MATCH p = (e)-[:CAUSED*1..8]->(:Entity)-[:OWNED_BY*1..8]->(x:Entity)
  RETURN x, 'owner of affected' AS how, p
  UNION ALL
  WITH e
  MATCH p = (e)-[:CAUSED|OWNED_BY*0..8]->(:Entity)-[:AFFECTS*1..8]->(x:Entity)
  RETURN x, 'affected' AS how, p
  UNION ALL
  WITH e
  MATCH p = (e)<-[:OWNED_BY*0..8]-(:Entity)<-[:DEPENDS_ON*1..8]-(x:Entity)
  RETURN x, 'dependent' AS how, p
}
WITH e, x, how, p WHERE x <> e
WITH x, how, p ORDER BY length(p), how, [r IN relationships(p) | r.fact_id]
WITH x, collect({how: how, p: p})[0] AS best
RETURN x.id AS entity, split(x.id, '/')[0] AS kind, best.how AS how, length(best.p) AS distance,
       [r IN relationships(best.p) | r.fact_id] AS evidence
ORDER BY distance, entity";

/// `timeline ENTITY [--since T]`: every fact about the entity, anything it owns, and the
/// entities that caused something to those (the OOM-killed process of a container: processes
/// have no ownership of their own in the graph), oldest first, with what it observed there (`observed`) and the entity of the hop before it
/// (`previous`: the start of a step into the entity with that fact as evidence, if any), which
/// the text of some observations names. `$entity`, `$since` (ns since the Unix epoch; 0 for
/// everything).
pub const TIMELINE: &str = "\
MATCH (e:Entity {id: $entity})
MATCH (e)<-[:OWNED_BY*0..8]-(owned:Entity)
OPTIONAL MATCH (cause:Entity)-[:CAUSED]->(owned)
WITH [owned, cause] AS both
UNWIND both AS x
WITH DISTINCT x WHERE x IS NOT NULL
MATCH (f:Fact)-[a:ABOUT]->(x)
WHERE f.time >= $since
RETURN f.time AS time, x.id AS entity, f.id AS fact_id, a.observed AS observed,
       COLLECT { MATCH (p:Entity)-[l]->(x) WHERE l.fact_id = f.id
                 RETURN p.id ORDER BY p.id }[0] AS previous
ORDER BY time, fact_id, entity";

/// `path A B`: the shortest chain of entity-to-entity relationships of any type
/// ([`link_types`]) between two entities, in either direction, with the evidence of each step:
/// its fact's time and what it observed at the step's end node. `$from`, `$to`.
pub static PATH: LazyLock<String> = LazyLock::new(|| {
    format!(
        "\
MATCH (a:Entity {{id: $from}}), (b:Entity {{id: $to}})
MATCH p = shortestPath((a)-[:{types}*..16]-(b))
RETURN [n IN nodes(p) | n.id] AS nodes,
       [r IN relationships(p) | {{relation: type(r), from: startNode(r).id, to: endNode(r).id,
                                 fact_id: r.fact_id,
                                 time: COLLECT {{ MATCH (f:Fact {{id: r.fact_id}}) RETURN f.time }}[0],
                                 observed: COLLECT {{
                                   MATCH (:Fact {{id: r.fact_id}})-[about:ABOUT]->(subject:Entity)
                                   WHERE subject = endNode(r)
                                   RETURN about.observed }}[0]}}] AS steps",
        types = link_types()
    )
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_follows_every_relationship_type() {
        let types = link_types();
        assert!(types.starts_with("OWNED_BY|CAUSED|"), "{types}");
        for relation in Relation::LINKS {
            let kind = relation.as_str().to_ascii_uppercase();
            assert_eq!(types.split('|').filter(|t| *t == kind).count(), 1, "{kind}");
        }
        assert!(PATH.contains(&format!("shortestPath((a)-[:{types}*..16]-(b))")));
        assert_eq!(PATH.matches('{').count(), PATH.matches('}').count());
    }
}
