//! The Cypher text of every question, in one place. Each query reads the graph the Neo4j sink
//! writes (see the README's "Neo4j" section): `(:Entity {id})`, `(:Fact {id, time})`,
//! `(:Correlation {id, kind, explanation, confidence, since})`, and the relationships
//! `HOP {index, fact_id}`, `ROOT_CAUSE` (to the correlation's root cause), `ABOUT {what}`,
//! `OWNED_BY {fact_id}` and `CAUSED {fact_id}`. The time of a piece of evidence is on its `Fact`
//! node, found by `fact_id`, and what it says about an entity on the fact's `ABOUT`
//! relationship to that entity (for an `OWNED_BY` step, the owned entity; for a `CAUSED` step,
//! the effect).

/// Whether an entity is in the graph. `$entity`.
pub const ENTITY_EXISTS: &str = "\
MATCH (e:Entity {id: $entity})
RETURN split(e.id, '/')[0] AS kind";

/// `why ENTITY`: every current causal correlation whose chain passes through the entity, with
/// its whole chain and the evidence of each hop; surest and newest first. Ownership chains are
/// not causes and are left out. `$entity`.
pub const WHY: &str = "\
MATCH (:Entity {id: $entity})<-[:HOP]-(c:Correlation)
WHERE c.kind <> 'ownership'
WITH DISTINCT c
MATCH (c)-[:ROOT_CAUSE]->(root:Entity)
MATCH (c)-[h:HOP]->(x:Entity)
MATCH (f:Fact {id: h.fact_id})-[a:ABOUT]->(x)
WITH c, root, h, x, f, a ORDER BY h.index
WITH c, root, collect({entity: x.id, fact_id: h.fact_id, time: f.time, what: a.what}) AS chain
RETURN c.id AS id, c.kind AS kind, root.id AS root_cause, c.confidence AS confidence,
       c.explanation AS explanation, c.since AS since, chain
ORDER BY confidence DESC, since DESC, id";

/// `blast-radius ENTITY`: what the entity takes down with it. Four ways to be hit, each the
/// shortest way found, nearest first:
///
/// - `caused`: reached from the entity along `CAUSED` (the container an OOM-killed process
///   stopped);
/// - `inside`: owned by the entity, directly or not (a Deployment's ReplicaSets, pods,
///   containers and processes);
/// - `inside affected`: owned by something it caused (the other processes of a restarted
///   container);
/// - `owner of affected`: an owner of something it caused (the pod, ReplicaSet and Deployment of
///   a restarted container).
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
}
WITH e, x, how, p WHERE x <> e
WITH x, how, p ORDER BY length(p), how
WITH x, collect({how: how, p: p})[0] AS best
RETURN x.id AS entity, split(x.id, '/')[0] AS kind, best.how AS how, length(best.p) AS distance,
       [r IN relationships(best.p) | r.fact_id] AS evidence
ORDER BY distance, entity";

/// `timeline ENTITY [--since T]`: every fact about the entity or anything it owns, oldest
/// first. `$entity`, `$since` (ns since the Unix epoch; 0 for everything).
pub const TIMELINE: &str = "\
MATCH (e:Entity {id: $entity})
MATCH (e)<-[:OWNED_BY*0..8]-(x:Entity)
WITH DISTINCT x
MATCH (f:Fact)-[a:ABOUT]->(x)
WHERE f.time >= $since
RETURN f.time AS time, x.id AS entity, f.id AS fact_id, a.what AS what
ORDER BY time, fact_id, entity";

/// `path A B`: the shortest chain of `OWNED_BY` and `CAUSED` relationships between two
/// entities, in either direction, with the evidence of each step. `$from`, `$to`.
pub const PATH: &str = "\
MATCH (a:Entity {id: $from}), (b:Entity {id: $to})
MATCH p = shortestPath((a)-[:OWNED_BY|CAUSED*..16]-(b))
RETURN [n IN nodes(p) | n.id] AS nodes,
       [r IN relationships(p) | {relation: type(r), from: startNode(r).id, to: endNode(r).id,
                                 fact_id: r.fact_id,
                                 time: COLLECT { MATCH (f:Fact {id: r.fact_id}) RETURN f.time }[0],
                                 what: COLLECT {
                                   MATCH (:Fact {id: r.fact_id})-[about:ABOUT]->(subject:Entity)
                                   WHERE subject = CASE type(r) WHEN 'CAUSED' THEN endNode(r)
                                                                ELSE startNode(r) END
                                   RETURN about.what }[0]}] AS steps";
