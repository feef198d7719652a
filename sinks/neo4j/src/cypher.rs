//! Every Cypher statement the sink sends, in one place.
//!
//! The writer reads its state once, at start and again after any failed transaction:
//! [`READ_CURSOR`] (its cursor) and [`READ_CORRELATIONS`] (which correlations are in the
//! graph). From then on it keeps both in memory, so a closed tick is one transaction of
//! [`APPLY`] statements (every change, and the new cursor), preceded by [`CHECK_REMOVED`] when
//! the tick retracts correlations. Both are split into as many statements as keep each message
//! under the driver's write buffer (see `wire`).

/// The schema, set up at start (idempotent): a uniqueness constraint (and with it an index) on
/// each key the sink and the questions look nodes up by, and nothing else.
///
/// Earlier versions also created the indexes `tapio_entity_kind`, `tapio_fact_time` and
/// `tapio_correlation_kind`. No statement of the sink and no question looks a node up by those
/// properties (every question starts from an entity id), yet Neo4j updated them on every node
/// written or deleted; they are dropped by name, which touches nothing else.
pub const SCHEMA: &[&str] = &[
    "CREATE CONSTRAINT tapio_entity_id IF NOT EXISTS FOR (e:Entity) REQUIRE e.id IS UNIQUE",
    "CREATE CONSTRAINT tapio_fact_id IF NOT EXISTS FOR (f:Fact) REQUIRE f.id IS UNIQUE",
    "CREATE CONSTRAINT tapio_correlation_id IF NOT EXISTS FOR (c:Correlation) REQUIRE c.id IS UNIQUE",
    "CREATE CONSTRAINT tapio_cursor_writer IF NOT EXISTS FOR (w:TapioCursor) REQUIRE w.writer IS UNIQUE",
    "DROP INDEX tapio_entity_kind IF EXISTS",
    "DROP INDEX tapio_fact_time IF EXISTS",
    "DROP INDEX tapio_correlation_kind IF EXISTS",
];

/// The writer's cursor: one row, `tick` is `null` before its first batch. `$writer`.
pub const READ_CURSOR: &str = "\
OPTIONAL MATCH (w:TapioCursor {writer: $writer})
RETURN w.tick AS tick";

/// The id of every correlation in the graph.
pub const READ_CORRELATIONS: &str = "MATCH (c:Correlation) RETURN c.id AS id";

/// Whether every correlation in `$rows[$at[0]..$at[1]]` (indexes into `$s`, as in [`APPLY`]) is
/// in the graph: one row, `present`.
///
/// A tick that retracts correlations runs this first, in its transaction: removing a
/// correlation that someone else removed already would take the support of what it cites down
/// twice. (A correlation to add that someone else added fails [`APPLY`]'s `CREATE` on the
/// uniqueness constraint instead.) Either way the writer rolls back, reads its state again and
/// retries.
pub const CHECK_REMOVED: &str = "\
CYPHER replan=skip
UNWIND $rows[$at[0]..$at[1]] AS r OPTIONAL MATCH(c:Correlation{id:$s[r]})
RETURN count(*)=count(c) AS present";

/// Everything a closed tick changes, and the cursor. The blocks run in order; a large tick runs
/// this statement several times in its transaction, each time on the next share of the rows,
/// taken in block order, so the result is that of one statement with all the rows. The last
/// run (`$last`) also moves the cursor to `$time`, so the cursor commits with the changes.
///
/// The rows are kept small, because a tick's statements must each fit the driver's write
/// buffer and every statement costs a round trip and a run of every block: rows are lists
/// rather than maps (map keys would be repeated in every row), and every string is an index
/// into the statement's string table `$s` (ids and evidence text recur across rows). The
/// parameters have the same shape in every statement, so Neo4j plans this statement once (see
/// `wire`): all rows are in `$rows`, block after block, and block *k* takes
/// `$rows[$at[k]..$at[k+1]]`. `replan=skip` keeps Neo4j from planning it again when the graph's
/// statistics drift (planning it takes about a second). Its expressions are left to Neo4j's
/// default engine, which compiles them once the plan has run a few times: with one plan that
/// is a single pause of under a second after start, and the compiled expressions cut the
/// server's CPU per tick by about a tenth in the benchmark.
///
/// The blocks and their rows, with `"…"` for a string's index in `$s`:
///
/// 1. `["id", time, delta]`: fact support changes; a fact no hop cites any more goes, with its
///    ABOUT relationships.
/// 2. `["id", "kind", "root_cause", "explanation", confidence, [["entity", "fact_id"], …]]`:
///    new correlations with their ROOT_CAUSE and chain (a hop's `index` is its position; its
///    time is its fact's, and what it says is on the fact's ABOUT relationship to the hop's
///    entity). The entities they mention are merged here; an entity's `kind` is its id's first
///    part.
/// 3. `["fact", "entity", "what", delta]`: ABOUT support changes.
/// 4. and 5. `["from", "to", "fact_id", delta]`: support changes of OWNED_BY, then CAUSED
///    steps (what their evidence says is on the fact's ABOUT relationship to the owned entity,
///    or to the effect).
/// 6. `"id"`: retracted correlations, deleted with their HOP and ROOT_CAUSE relationships.
/// 7. `"id"`: entities a retraction touched; deleted when no relationship is left.
pub const APPLY: &str = "\
CYPHER replan=skip
CALL{UNWIND $rows[$at[0]..$at[1]] AS r
MERGE(f:Fact{id:$s[r[0]]})
ON CREATE SET f.time=r[1],f.support=r[2]
ON MATCH SET f.support=f.support+r[2]
WITH f WHERE f.support<=0 DETACH DELETE f}
CALL{UNWIND $rows[$at[1]..$at[2]] AS r
CREATE(c:Correlation{id:$s[r[0]],kind:$s[r[1]],explanation:$s[r[3]],confidence:r[4],
since:$time})
WITH c,r MERGE(x:Entity{id:$s[r[2]]})ON CREATE SET x.kind=split($s[r[2]],'/')[0]
CREATE(c)-[:ROOT_CAUSE]->(x)
WITH c,r UNWIND range(0,size(r[5])-1) AS i
WITH c,i,r[5][i] AS h MERGE(e:Entity{id:$s[h[0]]})ON CREATE SET e.kind=split($s[h[0]],'/')[0]
CREATE(c)-[:HOP{index:i,fact_id:$s[h[1]]}]->(e)}
CALL{UNWIND $rows[$at[2]..$at[3]] AS r
MATCH(f:Fact{id:$s[r[0]]})MATCH(e:Entity{id:$s[r[1]]})
MERGE(f)-[a:ABOUT]->(e)ON CREATE SET a.what=$s[r[2]],a.support=r[3]
ON MATCH SET a.support=a.support+r[3]
WITH a WHERE a.support<=0 DELETE a}
CALL{UNWIND $rows[$at[3]..$at[4]] AS r
MATCH(a:Entity{id:$s[r[0]]})MATCH(b:Entity{id:$s[r[1]]})
MERGE(a)-[l:OWNED_BY{fact_id:$s[r[2]]}]->(b)ON CREATE SET l.support=r[3]
ON MATCH SET l.support=l.support+r[3]
WITH l WHERE l.support<=0 DELETE l}
CALL{UNWIND $rows[$at[4]..$at[5]] AS r
MATCH(a:Entity{id:$s[r[0]]})MATCH(b:Entity{id:$s[r[1]]})
MERGE(a)-[l:CAUSED{fact_id:$s[r[2]]}]->(b)ON CREATE SET l.support=r[3]
ON MATCH SET l.support=l.support+r[3]
WITH l WHERE l.support<=0 DELETE l}
CALL{UNWIND $rows[$at[5]..$at[6]] AS r
MATCH(c:Correlation{id:$s[r]})DETACH DELETE c}
CALL{UNWIND $rows[$at[6]..$at[7]] AS r
MATCH(e:Entity{id:$s[r]})WHERE NOT(e)--()DELETE e}
FOREACH(_ IN CASE WHEN $last THEN [1] ELSE [] END|
MERGE(w:TapioCursor{writer:$writer})SET w.tick=$time,w.updated_at=datetime())";

/// The health check.
pub const PING: &str = "RETURN 1 AS ok";
