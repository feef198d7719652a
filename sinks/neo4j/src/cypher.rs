//! Every Cypher statement the sink sends, in one place.
//!
//! The writer reads its state once, at start and again after any failed transaction:
//! [`READ_CURSOR`] (its cursor) and [`READ_CORRELATIONS`] (which correlations are in the
//! graph). From then on it keeps both in memory, so a closed tick is one transaction of
//! [`APPLY`] statements and nothing else: every change, and the new cursor. [`APPLY`] is split
//! into as many statements as keep each message under the driver's write buffer (see `wire`).

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

/// The writer's cursor: one row, `tick` is `null` before its first batch. `$writer`.
pub const READ_CURSOR: &str = "\
OPTIONAL MATCH (w:TapioCursor {writer: $writer})
RETURN w.tick AS tick";

/// The id of every correlation in the graph.
pub const READ_CORRELATIONS: &str = "MATCH (c:Correlation) RETURN c.id AS id";

/// Everything a closed tick changes, and the cursor. The blocks run in order; a large tick runs
/// this statement several times in its transaction, each time on the next share of the rows,
/// taken in block order, so the result is that of one statement with all the rows. Each run
/// also moves the cursor to `$time` (the same value every time), so the cursor commits with the
/// changes.
///
/// Rows are lists rather than maps: map keys would be sent again in every row, and the rows are
/// most of what a tick sends. The plan stays the same from one tick to the next: every list
/// starts with a sentinel row (empty id, skipped by the first `WHERE`), so the parameter types
/// never change between an empty and a filled list, and `replan=skip` keeps Neo4j from planning
/// this statement again whenever the graph's statistics drift. `expressionEngine=interpreted`
/// avoids the one-off compilation of its expressions once the plan is hot, which stalled a
/// commit for one to two seconds in the benchmark.
///
/// 1. `$entities` `[id, kind]`: entities mentioned by added correlations.
/// 2. `$facts` `[id, time, delta]`: fact support changes (`source` is the id's first part); a
///    fact no hop cites any more goes, with its ABOUT relationships.
/// 3. `$correlations` `[id, kind, root_cause, explanation, confidence, [[entity, fact_id,
///    time, what], …]]`: new correlations with their root cause and chain (a hop's `index` is
///    its position).
/// 4. `$about` `[fact, entity, what, delta]`: ABOUT support changes.
/// 5. `$owned_by`, `$caused` `[from, to, fact_id, time, what, delta]`: support changes of chain
///    steps.
/// 6. `$removed`: ids of retracted correlations, deleted with their HOP and ROOT_CAUSE
///    relationships.
/// 7. `$touched`: ids of entities a retraction touched; deleted when no relationship is left.
/// 8. The writer's cursor moves to `$time`.
pub const APPLY: &str = "\
CYPHER replan=skip expressionEngine=interpreted
CALL {
UNWIND $entities AS r WITH r WHERE r[0] <> ''
MERGE (e:Entity {id: r[0]}) ON CREATE SET e.kind = r[1]
}
CALL {
UNWIND $facts AS r WITH r WHERE r[0] <> ''
MERGE (f:Fact {id: r[0]})
ON CREATE SET f.time = r[1], f.source = split(r[0], '/')[0], f.support = 0
SET f.support = f.support + r[2]
WITH f WHERE f.support <= 0 DETACH DELETE f
}
CALL {
UNWIND $correlations AS r WITH r WHERE r[0] <> ''
CREATE (c:Correlation {id: r[0], kind: r[1], root_cause: r[2], explanation: r[3],
 confidence: r[4], since: $time, hops: size(r[5])})
WITH c, r MATCH (root:Entity {id: r[2]}) CREATE (c)-[:ROOT_CAUSE]->(root)
WITH c, r UNWIND range(0, size(r[5]) - 1) AS i
WITH c, i, r[5][i] AS h MATCH (e:Entity {id: h[0]})
CREATE (c)-[:HOP {index: i, fact_id: h[1], time: h[2], what: h[3]}]->(e)
}
CALL {
UNWIND $about AS r WITH r WHERE r[0] <> ''
MATCH (f:Fact {id: r[0]}) MATCH (e:Entity {id: r[1]})
MERGE (f)-[a:ABOUT]->(e) ON CREATE SET a.what = r[2], a.support = 0
SET a.support = a.support + r[3]
WITH a WHERE a.support <= 0 DELETE a
}
CALL {
UNWIND $owned_by AS r WITH r WHERE r[0] <> ''
MATCH (a:Entity {id: r[0]}) MATCH (b:Entity {id: r[1]})
MERGE (a)-[l:OWNED_BY {fact_id: r[2]}]->(b)
ON CREATE SET l.time = r[3], l.what = r[4], l.support = 0
SET l.support = l.support + r[5]
WITH l WHERE l.support <= 0 DELETE l
}
CALL {
UNWIND $caused AS r WITH r WHERE r[0] <> ''
MATCH (a:Entity {id: r[0]}) MATCH (b:Entity {id: r[1]})
MERGE (a)-[l:CAUSED {fact_id: r[2]}]->(b)
ON CREATE SET l.time = r[3], l.what = r[4], l.support = 0
SET l.support = l.support + r[5]
WITH l WHERE l.support <= 0 DELETE l
}
CALL {
UNWIND $removed AS id WITH id WHERE id <> ''
MATCH (c:Correlation {id: id}) DETACH DELETE c
}
CALL {
UNWIND $touched AS id WITH id WHERE id <> ''
MATCH (e:Entity {id: id}) WHERE NOT (e)--() DELETE e
}
MERGE (w:TapioCursor {writer: $writer})
SET w.tick = $time, w.updated_at = datetime()";

/// The health check.
pub const PING: &str = "RETURN 1 AS ok";
