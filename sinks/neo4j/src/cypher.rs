//! Every Cypher statement the sink sends, in one place.
//!
//! A closed tick is one transaction: [`READ_STATE`] (the writer's cursor and which of the
//! batch's correlations are already in the graph), then [`APPLY`] (every change and the new
//! cursor). Both are split into as many statements as keep each message under the driver's
//! write buffer (see `wire`).

/// Constraints and indexes, created at start (idempotent).
pub const SCHEMA: &[&str] = &[
    "CREATE CONSTRAINT tapio_entity_id IF NOT EXISTS FOR (e:Entity) REQUIRE e.id IS UNIQUE",
    "CREATE CONSTRAINT tapio_fact_id IF NOT EXISTS FOR (f:Fact) REQUIRE f.id IS UNIQUE",
    "CREATE CONSTRAINT tapio_correlation_id IF NOT EXISTS FOR (c:Correlation) REQUIRE c.id IS UNIQUE",
    "CREATE CONSTRAINT tapio_cursor_writer IF NOT EXISTS FOR (w:TapioCursor) REQUIRE w.writer IS UNIQUE",
    "CREATE INDEX tapio_entity_kind IF NOT EXISTS FOR (e:Entity) ON (e.kind)",
    "CREATE INDEX tapio_fact_time IF NOT EXISTS FOR (f:Fact) ON (f.time)",
    "CREATE INDEX tapio_correlation_kind IF NOT EXISTS FOR (c:Correlation) ON (c.kind)",
];

/// The writer's cursor (`null` before its first batch) and which of `$ids` are in the graph.
pub const READ_STATE: &str = "\
OPTIONAL MATCH (w:TapioCursor {writer: $writer})
WITH w.tick AS tick
CALL {
  UNWIND $ids AS id
  MATCH (c:Correlation {id: id})
  RETURN collect(c.id) AS present
}
RETURN tick, present";

/// Everything a closed tick changes. The blocks run in order; a large tick runs this statement
/// several times in its transaction, each time on the next share of the rows, taken in block
/// order, so the result is that of one statement with all the rows.
///
/// The plan stays the same from one tick to the next: every list starts with a sentinel row
/// (empty id, skipped by the first `WHERE`), so the parameter types never change between an
/// empty and a filled list, and `replan=skip` keeps Neo4j from planning this large statement
/// again whenever the graph's statistics drift (planning it takes about a second).
/// `expressionEngine=interpreted` avoids the one-off compilation of its expressions once the
/// plan is hot, which stalled a commit for one to two seconds in the benchmark.
///
/// 1. `$entities` `{id, kind}`: entities mentioned by added correlations.
/// 2. `$facts` `{id, time, source, delta}`: fact support changes; a fact no hop cites any more
///    goes, with its ABOUT relationships.
/// 3. `$correlations` `{id, kind, root_cause, explanation, confidence, hops: [{index, entity,
///    fact_id, time, what}]}`: new correlations with their root cause and chain.
/// 4. `$about` `{fact, entity, what, delta}`: ABOUT support changes.
/// 5. `$owned_by`, `$caused` `{from, to, fact_id, time, what, delta}`: support changes of chain
///    steps.
/// 6. `$removed`: retracted correlations, with their HOP and ROOT_CAUSE relationships.
/// 7. `$touched`: entities a retraction touched; deleted when no relationship is left.
/// 8. The writer's cursor moves to `$time`, in the same transaction as the changes.
pub const APPLY: &str = "\
CYPHER replan=skip expressionEngine=interpreted
CALL {
  UNWIND $entities AS r
  WITH r WHERE r.id <> ''
  MERGE (e:Entity {id: r.id})
  ON CREATE SET e.kind = r.kind
}
CALL {
  UNWIND $facts AS r
  WITH r WHERE r.id <> ''
  MERGE (f:Fact {id: r.id})
  ON CREATE SET f.time = r.time, f.source = r.source, f.support = 0
  SET f.support = f.support + r.delta
  WITH f WHERE f.support <= 0
  DETACH DELETE f
}
CALL {
  UNWIND $correlations AS r
  WITH r WHERE r.id <> ''
  CREATE (c:Correlation {id: r.id, kind: r.kind, root_cause: r.root_cause,
                         explanation: r.explanation, confidence: r.confidence,
                         since: $time, hops: size(r.hops)})
  WITH c, r
  MATCH (root:Entity {id: r.root_cause})
  CREATE (c)-[:ROOT_CAUSE]->(root)
  WITH c, r
  UNWIND r.hops AS h
  MATCH (e:Entity {id: h.entity})
  CREATE (c)-[:HOP {index: h.index, fact_id: h.fact_id, time: h.time, what: h.what}]->(e)
}
CALL {
  UNWIND $about AS r
  WITH r WHERE r.fact <> ''
  MATCH (f:Fact {id: r.fact})
  MATCH (e:Entity {id: r.entity})
  MERGE (f)-[a:ABOUT]->(e)
  ON CREATE SET a.what = r.what, a.support = 0
  SET a.support = a.support + r.delta
  WITH a WHERE a.support <= 0
  DELETE a
}
CALL {
  UNWIND $owned_by AS r
  WITH r WHERE r.from <> ''
  MATCH (a:Entity {id: r.from})
  MATCH (b:Entity {id: r.to})
  MERGE (a)-[l:OWNED_BY {fact_id: r.fact_id}]->(b)
  ON CREATE SET l.time = r.time, l.what = r.what, l.support = 0
  SET l.support = l.support + r.delta
  WITH l WHERE l.support <= 0
  DELETE l
}
CALL {
  UNWIND $caused AS r
  WITH r WHERE r.from <> ''
  MATCH (a:Entity {id: r.from})
  MATCH (b:Entity {id: r.to})
  MERGE (a)-[l:CAUSED {fact_id: r.fact_id}]->(b)
  ON CREATE SET l.time = r.time, l.what = r.what, l.support = 0
  SET l.support = l.support + r.delta
  WITH l WHERE l.support <= 0
  DELETE l
}
CALL {
  UNWIND $removed AS id
  WITH id WHERE id <> ''
  MATCH (c:Correlation {id: id})
  DETACH DELETE c
}
CALL {
  UNWIND $touched AS id
  WITH id WHERE id <> ''
  MATCH (e:Entity {id: id})
  WHERE NOT (e)--()
  DELETE e
}
MERGE (w:TapioCursor {writer: $writer})
SET w.tick = $time, w.updated_at = datetime()";

/// The health check.
pub const PING: &str = "RETURN 1 AS ok";
