//! Every Cypher statement the sink sends, in one place.
//!
//! The writer reads its state once, at start and again after any failed transaction:
//! [`READ_CURSOR`] (its cursor), [`READ_VERSION`] (the graph's version) and
//! [`READ_CORRELATIONS`] (the correlations in the graph, with what the reference counts of the
//! shared elements are rebuilt from). From then on it keeps all of it in memory, so a closed
//! tick is one transaction of [`APPLY`] statements (every change, the version check and the new
//! cursor), split into as many statements as keep each message under the driver's write buffer
//! (see `wire`).

/// The schema, set up at start (idempotent): a uniqueness constraint (and with it an index) on
/// each key the sink and the questions look nodes up by, and nothing else; and the graph's
/// version node.
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
    "CREATE CONSTRAINT tapio_graph_key IF NOT EXISTS FOR (g:TapioGraph) REQUIRE g.key IS UNIQUE",
    "MERGE (g:TapioGraph {key: 'graph'}) ON CREATE SET g.version = 0",
    "DROP INDEX tapio_entity_kind IF EXISTS",
    "DROP INDEX tapio_fact_time IF EXISTS",
    "DROP INDEX tapio_correlation_kind IF EXISTS",
];

/// The writer's cursor: one row, `tick` is `null` before its first batch. `$writer`.
pub const READ_CURSOR: &str = "\
OPTIONAL MATCH (w:TapioCursor {writer: $writer})
RETURN w.tick AS tick";

/// The graph's version: one row, `version` is `null` if the version node is missing (it is then
/// created, at 0, by the next [`APPLY`]).
///
/// Every transaction of every writer adds one to it ([`APPLY`]), so a writer that finds it where
/// it left it knows that nobody else changed the correlations since, and with them the
/// reference counts it keeps in memory. The writer reads it before and after
/// [`READ_CORRELATIONS`]: equal values mean no transaction committed in between.
pub const READ_VERSION: &str = "\
OPTIONAL MATCH (g:TapioGraph {key: 'graph'})
RETURN g.version AS version";

/// Every correlation in the graph with what its reference counts are rebuilt from (see
/// `model::Chain`): `id`, `kind`, `root` (the entity id its `ROOT_CAUSE` points at) and `hops`
/// (`[entity id, fact id]` per `HOP`, in chain order).
pub const READ_CORRELATIONS: &str = "\
MATCH (c:Correlation)
RETURN c.id AS id, c.kind AS kind,
       COLLECT { MATCH (c)-[:ROOT_CAUSE]->(r:Entity) RETURN r.id } AS root,
       COLLECT { MATCH (c)-[h:HOP]->(e:Entity) WITH h, e ORDER BY h.index
                 RETURN [e.id, h.fact_id] } AS hops";

/// Everything a closed tick changes, the version check and the cursor. The blocks run in order;
/// a large tick runs this statement several times in its transaction, each time on the next
/// share of the rows, taken in block order, so the result is that of one statement with all
/// the rows. The first run (`$bump` = 1, 0 in the others) adds one to the graph's version and
/// every run returns it: the writer commits only if the first returns one more than the version
/// it knows, that is, if no other transaction changed the graph since the writer last read or
/// wrote it. The version node's write lock, taken first, is held until the transaction ends, so
/// two writers' transactions run one after the other and the second sees the first's version.
/// The last run (`$last`) also moves the cursor to `$time`, so the cursor commits with the
/// changes.
///
/// The writer keeps the reference counts of the shared elements (entities, facts, ABOUT,
/// OWNED_BY, CAUSED) in memory (see `model::Counts`), so a shared element is written only when
/// it is created (no current correlation supported it before) or deleted (none does any more).
/// New elements are created with the correlation that first needs them, from the nodes its
/// chain has at hand, rather than looked up again in blocks of their own: each hop merges its
/// entity; a hop that is the first to cite its fact at its entity also merges the fact and
/// creates their ABOUT; and each new step is created between the entities of the two hops it
/// joins. Relationships are created with `CREATE`: the writer knows they are absent. Nodes are
/// created with `MERGE`, which costs the same index lookup as the uniqueness check of a
/// `CREATE` and leaves alone a node that something other than the sink's correlations keeps.
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
/// The blocks and their rows, with `"…"` for a string's index in `$s`; deletions first, then
/// creations:
///
/// 1. `"id"`: retracted correlations, deleted with their HOP and ROOT_CAUSE relationships.
/// 2. and 3. `["from", "to", "fact_id"]`: OWNED_BY, then CAUSED steps no chain makes any more.
/// 4. `["fact", "entity"]`: ABOUT relationships no hop supports any more, of facts that stay.
/// 5. `"id"`: facts no hop cites any more, deleted with their ABOUT relationships.
/// 6. `"id"`: entities no correlation mentions any more, deleted unless something else holds
///    them (a relationship the sink did not write).
/// 7. `["id", "kind", "root_cause", "explanation", confidence, hops, steps]`: new
///    correlations with their ROOT_CAUSE and chain (a hop's `index` is its position; its time
///    is its fact's, and what it says is on the fact's ABOUT relationship to the hop's entity).
///    A hop is `["entity", "fact_id"]`, or `["entity", "fact_id", time, "what"]` when it
///    creates the fact's ABOUT to its entity (and the fact, at `time`, if it is new). A step is
///    `[from, to, "fact_id", type]`: the indexes of the hops it joins, and 0 for OWNED_BY or
///    1 for CAUSED (what its evidence says is on the fact's ABOUT relationship to the owned
///    entity, or to the effect).
pub const APPLY: &str = "\
CYPHER replan=skip
MERGE(g:TapioGraph{key:'graph'})ON CREATE SET g.version=0
SET g.version=g.version+$bump
WITH g.version AS version
CALL{UNWIND $rows[$at[0]..$at[1]] AS r
MATCH(c:Correlation{id:$s[r]})DETACH DELETE c}
CALL{UNWIND $rows[$at[1]..$at[2]] AS r
MATCH(:Entity{id:$s[r[0]]})-[l:OWNED_BY{fact_id:$s[r[2]]}]->(:Entity{id:$s[r[1]]})DELETE l}
CALL{UNWIND $rows[$at[2]..$at[3]] AS r
MATCH(:Entity{id:$s[r[0]]})-[l:CAUSED{fact_id:$s[r[2]]}]->(:Entity{id:$s[r[1]]})DELETE l}
CALL{UNWIND $rows[$at[3]..$at[4]] AS r
MATCH(:Fact{id:$s[r[0]]})-[a:ABOUT]->(:Entity{id:$s[r[1]]})DELETE a}
CALL{UNWIND $rows[$at[4]..$at[5]] AS r
MATCH(f:Fact{id:$s[r]})DETACH DELETE f}
CALL{UNWIND $rows[$at[5]..$at[6]] AS r
MATCH(e:Entity{id:$s[r]})WHERE NOT(e)--()DELETE e}
CALL{UNWIND $rows[$at[6]..$at[7]] AS r
CREATE(c:Correlation{id:$s[r[0]],kind:$s[r[1]],explanation:$s[r[3]],confidence:r[4],
since:$time})
WITH c,r MERGE(x:Entity{id:$s[r[2]]})
CREATE(c)-[:ROOT_CAUSE]->(x)
WITH c,r UNWIND range(0,size(r[5])-1) AS i
WITH c,r,i,r[5][i] AS h MERGE(e:Entity{id:$s[h[0]]})
CREATE(c)-[:HOP{index:i,fact_id:$s[h[1]]}]->(e)
FOREACH(_ IN CASE WHEN size(h)>2 THEN [1] ELSE [] END|
MERGE(f:Fact{id:$s[h[1]]})ON CREATE SET f.time=h[2]
CREATE(f)-[:ABOUT{what:$s[h[3]]}]->(e))
WITH r,collect([i,e]) AS es
UNWIND r[6] AS l
WITH l,[p IN es WHERE p[0]=l[0]][0][1] AS a,[p IN es WHERE p[0]=l[1]][0][1] AS b
FOREACH(_ IN CASE WHEN l[3]=0 THEN [1] ELSE [] END|
CREATE(a)-[:OWNED_BY{fact_id:$s[l[2]]}]->(b))
FOREACH(_ IN CASE WHEN l[3]=1 THEN [1] ELSE [] END|
CREATE(a)-[:CAUSED{fact_id:$s[l[2]]}]->(b))}
FOREACH(_ IN CASE WHEN $last THEN [1] ELSE [] END|
MERGE(w:TapioCursor{writer:$writer})SET w.tick=$time,w.updated_at=datetime())
RETURN version";

/// The health check.
pub const PING: &str = "RETURN 1 AS ok";
