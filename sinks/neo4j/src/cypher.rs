//! Every Cypher statement the sink sends, in one place.
//!
//! A closed tick is one transaction: [`READ_STATE`] first (the writer's cursor and which of the
//! batch's correlations are already in the graph), then the `UNWIND` statements below in the
//! order they are listed, each sent only when it has rows, then [`SET_CURSOR`].

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

/// Entities mentioned by added correlations. Rows: `{id, kind}`.
pub const MERGE_ENTITIES: &str = "\
UNWIND $rows AS r
MERGE (e:Entity {id: r.id})
ON CREATE SET e.kind = r.kind";

/// Fact support changes; a fact no hop cites any more goes, with its ABOUT relationships.
/// Rows: `{id, time, source, delta}`.
pub const UPDATE_FACTS: &str = "\
UNWIND $rows AS r
MERGE (f:Fact {id: r.id})
ON CREATE SET f.time = r.time, f.source = r.source, f.support = 0
SET f.support = f.support + r.delta
WITH f WHERE f.support <= 0
DETACH DELETE f";

/// New correlations with their root cause and chain.
/// Rows: `{id, kind, root_cause, explanation, confidence, hops: [{index, entity, fact_id, time, what}]}`.
pub const CREATE_CORRELATIONS: &str = "\
UNWIND $rows AS r
CREATE (c:Correlation {id: r.id, kind: r.kind, root_cause: r.root_cause,
                       explanation: r.explanation, confidence: r.confidence,
                       since: $time, hops: size(r.hops)})
WITH c, r
MATCH (root:Entity {id: r.root_cause})
CREATE (c)-[:ROOT_CAUSE]->(root)
WITH c, r
UNWIND r.hops AS h
MATCH (e:Entity {id: h.entity})
CREATE (c)-[:HOP {index: h.index, fact_id: h.fact_id, time: h.time, what: h.what}]->(e)";

/// ABOUT support changes. Rows: `{fact, entity, what, delta}`.
pub const UPDATE_ABOUT: &str = "\
UNWIND $rows AS r
MATCH (f:Fact {id: r.fact})
MATCH (e:Entity {id: r.entity})
MERGE (f)-[a:ABOUT]->(e)
ON CREATE SET a.what = r.what, a.support = 0
SET a.support = a.support + r.delta
WITH a WHERE a.support <= 0
DELETE a";

/// Support changes of `OWNED_BY` steps. Rows: `{from, to, fact_id, time, what, delta}`.
pub const UPDATE_OWNED_BY: &str = "\
UNWIND $rows AS r
MATCH (a:Entity {id: r.from})
MATCH (b:Entity {id: r.to})
MERGE (a)-[l:OWNED_BY {fact_id: r.fact_id}]->(b)
ON CREATE SET l.time = r.time, l.what = r.what, l.support = 0
SET l.support = l.support + r.delta
WITH l WHERE l.support <= 0
DELETE l";

/// Support changes of `CAUSED` steps. Rows as for [`UPDATE_OWNED_BY`].
pub const UPDATE_CAUSED: &str = "\
UNWIND $rows AS r
MATCH (a:Entity {id: r.from})
MATCH (b:Entity {id: r.to})
MERGE (a)-[l:CAUSED {fact_id: r.fact_id}]->(b)
ON CREATE SET l.time = r.time, l.what = r.what, l.support = 0
SET l.support = l.support + r.delta
WITH l WHERE l.support <= 0
DELETE l";

/// Retracted correlations, with their HOP and ROOT_CAUSE relationships. `$ids`.
pub const DELETE_CORRELATIONS: &str = "\
UNWIND $ids AS id
MATCH (c:Correlation {id: id})
DETACH DELETE c";

/// Entities a retraction touched that have no relationship left. `$ids`.
pub const DELETE_ORPHANS: &str = "\
UNWIND $ids AS id
MATCH (e:Entity {id: id})
WHERE NOT (e)--()
DELETE e";

/// The writer's cursor: the last tick applied, in the same transaction as its changes.
pub const SET_CURSOR: &str = "\
MERGE (w:TapioCursor {writer: $writer})
SET w.tick = $time, w.updated_at = datetime()";

/// The health check.
pub const PING: &str = "RETURN 1 AS ok";
