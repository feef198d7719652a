//! Every Cypher statement the sink sends, in one place.
//!
//! The writer reads its state once, at start and again after any failed transaction:
//! [`READ_CURSOR`] (its cursor), [`READ_VERSION`] (the graph's version) and
//! [`READ_CORRELATIONS`] (the correlations in the graph, with what the reference counts of the
//! shared elements are rebuilt from). From then on it keeps all of it in memory, so a closed
//! tick is one transaction of [`APPLY`] statements (every change, the version check and the new
//! cursor), split into as many statements as keep each message under the driver's write buffer
//! (see `wire`).
//!
//! Cypher cannot take a relationship type as a parameter, so the statements that touch the
//! entity-to-entity steps ([`APPLY`]) are built once from [`Relation::LINKS`], a block per
//! relationship type ([`crate::model::relationship_type`]): a new relation needs no edit here.
//! At start, [`READ_SCHEMA`] tells whether an earlier version of Tapio wrote the graph, and
//! [`CLEAR_EARLIER`] and [`SET_SCHEMA`] rebuild it (see `Neo4jWriter::ensure_schema`).

use std::fmt::Write;
use std::sync::LazyLock;

use tapio_model::Relation;

use crate::model::relationship_type;

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
/// `model::Chain`): `id`, `root` (the entity id its `ROOT_CAUSE` points at) and `hops`
/// (`[entity id, fact id, relation]` per `HOP`, in chain order).
pub const READ_CORRELATIONS: &str = "\
MATCH (c:Correlation)
RETURN c.id AS id,
       COLLECT { MATCH (c)-[:ROOT_CAUSE]->(r:Entity) RETURN r.id } AS root,
       COLLECT { MATCH (c)-[h:HOP]->(e:Entity) WITH h, e ORDER BY h.index
                 RETURN [e.id, h.fact_id, h.relation] } AS hops";

/// What the start needs to know of the graph's shape: `schema` (the graph node's, `null` when
/// an earlier version of Tapio wrote it, or nobody yet) and how many correlations and cursors
/// it holds (from Neo4j's count store: no scan).
pub const READ_SCHEMA: &str = "\
OPTIONAL MATCH (g:TapioGraph {key: 'graph'})
RETURN g.schema AS schema,
       COUNT { MATCH (:Correlation) } AS correlations,
       COUNT { MATCH (:TapioCursor) } AS cursors";

/// Deletes up to 10 000 of the nodes an earlier version's sink wrote (correlations, facts,
/// entities and cursors) with their relationships, and returns how many: run until it returns
/// 0, each run its own transaction, so a large graph never needs one huge transaction.
pub const CLEAR_EARLIER: &str = "\
MATCH (n) WHERE n:Correlation OR n:Fact OR n:Entity OR n:TapioCursor
WITH n LIMIT 10000
DETACH DELETE n
RETURN count(*) AS deleted";

/// Records that the graph has this version's shape (`$schema`, `model::SCHEMA_VERSION`), and
/// adds one to its version, so that a writer that kept counts of the graph before reads it
/// again.
pub const SET_SCHEMA: &str = "\
MERGE (g:TapioGraph {key: 'graph'}) ON CREATE SET g.version = 0
SET g.schema = $schema, g.version = g.version + 1";

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
/// The writer keeps the reference counts of the shared elements (entities, facts, ABOUT and the
/// entity-to-entity steps) in memory (see `model::Counts`), so a shared element is written only
/// when it is created (no current correlation supported it before) or deleted (none does any
/// more). New elements are created with the correlation that first needs them, from the nodes
/// its chain has at hand, rather than looked up again in blocks of their own: each hop merges
/// its entity; a hop that is the first to cite its fact at its entity also merges the fact and
/// creates their ABOUT; and each new step is created between the entities of the two hops it
/// joins. Relationships are created with `CREATE`: the writer knows they are absent. Nodes are
/// created with `MERGE`, which costs the same index lookup as the uniqueness check of a
/// `CREATE` and leaves alone a node that something other than the sink's correlations keeps.
///
/// The rows are kept small, because a tick's statements must each fit the driver's write
/// buffer and every statement costs a round trip and a run of every block: rows are lists
/// rather than maps (map keys would be repeated in every row), and every string is an index
/// into the statement's string table `$s` (ids and typed evidence recur across rows). The
/// parameters have the same shape in every statement, so Neo4j plans this statement once (see
/// `wire`): all rows are in `$rows`, block after block, and block *k* takes
/// `$rows[$at[k]..$at[k+1]]`. `replan=skip` keeps Neo4j from planning it again when the graph's
/// statistics drift (planning it takes about a second). Its expressions are left to Neo4j's
/// default engine, which compiles them once the plan has run a few times: with one plan that
/// is a single pause of under a second after start, and the compiled expressions cut the
/// server's CPU per tick by about a tenth in the benchmark.
///
/// The blocks and their rows, with `"…"` for a string's index in `$s`; deletions first, then
/// creations. *L* is the number of relationship types, `Relation::LINKS.len()` (5: `OWNED_BY`,
/// `CAUSED`, `FOLLOWED_BY`, `DEPENDS_ON`, `AFFECTS`, in that order):
///
/// 1. `"id"`: retracted correlations, deleted with their HOP and ROOT_CAUSE relationships.
/// 2. to *L*+1. `["from", "to", "fact_id"]`: steps of each type, in the order of
///    `Relation::LINKS`, that no chain makes any more.
/// 3. (*L*+2) `["fact", "entity"]`: ABOUT relationships no hop supports any more, of facts
///    that stay.
/// 4. (*L*+3) `"id"`: facts no hop cites any more, deleted with their ABOUT relationships.
/// 5. (*L*+4) `"id"`: entities no correlation mentions any more, deleted unless something else
///    holds them (a relationship the sink did not write).
/// 6. (*L*+5) `["id", "kind", "family", "root_cause", confidence, "data", hops, steps, since]`:
///    new correlations with their ROOT_CAUSE and chain (`since` is the tick the correlation
///    became current in: the batch's, or an earlier one of ticks folded into it; `data` is the correlation's typed JSON; a
///    hop's `index` is its position; its time is its fact's, and what it observed is on the
///    fact's ABOUT relationship to the hop's entity). A hop is `["entity", "fact_id",
///    "relation"]`, or `["entity", "fact_id", "relation", time, "observed"]` when it creates
///    the fact's ABOUT to its entity (and the fact, at `time`, if it is new). A step is
///    `[from, to, "fact_id", type]`: the indexes of the hops it joins, and the index of its
///    relation in `Relation::LINKS` (its evidence is the later hop's fact).
pub static APPLY: LazyLock<String> = LazyLock::new(apply);

/// Blocks of [`APPLY`]: retractions, a step block per relationship type, ABOUT, facts,
/// entities, new correlations.
pub const APPLY_BLOCKS: usize = 5 + Relation::LINKS.len();

/// The text of [`APPLY`].
fn apply() -> String {
    let mut text = String::with_capacity(4096);
    text.push_str(
        "\
CYPHER replan=skip
MERGE(g:TapioGraph{key:'graph'})ON CREATE SET g.version=0
SET g.version=g.version+$bump
WITH g.version AS version
CALL{UNWIND $rows[$at[0]..$at[1]] AS r
MATCH(c:Correlation{id:$s[r]})DETACH DELETE c}
",
    );
    let mut block = 1;
    for relation in Relation::LINKS {
        let _ = writeln!(
            text,
            "CALL{{UNWIND $rows[$at[{block}]..$at[{next}]] AS r\n\
             MATCH(:Entity{{id:$s[r[0]]}})-[l:{kind}{{fact_id:$s[r[2]]}}]->(:Entity{{id:$s[r[1]]}})DELETE l}}",
            next = block + 1,
            kind = relationship_type(relation),
        );
        block += 1;
    }
    let _ = write!(
        text,
        "\
CALL{{UNWIND $rows[$at[{b0}]..$at[{b1}]] AS r
MATCH(:Fact{{id:$s[r[0]]}})-[a:ABOUT]->(:Entity{{id:$s[r[1]]}})DELETE a}}
CALL{{UNWIND $rows[$at[{b1}]..$at[{b2}]] AS r
MATCH(f:Fact{{id:$s[r]}})DETACH DELETE f}}
CALL{{UNWIND $rows[$at[{b2}]..$at[{b3}]] AS r
MATCH(e:Entity{{id:$s[r]}})WHERE NOT(e)--()DELETE e}}
CALL{{UNWIND $rows[$at[{b3}]..$at[{b4}]] AS r
CREATE(c:Correlation{{id:$s[r[0]],kind:$s[r[1]],family:$s[r[2]],confidence:r[4],data:$s[r[5]],
since:r[8]}})
WITH c,r MERGE(x:Entity{{id:$s[r[3]]}})
CREATE(c)-[:ROOT_CAUSE]->(x)
WITH c,r UNWIND range(0,size(r[6])-1) AS i
WITH c,r,i,r[6][i] AS h MERGE(e:Entity{{id:$s[h[0]]}})
CREATE(c)-[:HOP{{index:i,fact_id:$s[h[1]],relation:$s[h[2]]}}]->(e)
FOREACH(_ IN CASE WHEN size(h)>3 THEN [1] ELSE [] END|
MERGE(f:Fact{{id:$s[h[1]]}})ON CREATE SET f.time=h[3]
CREATE(f)-[:ABOUT{{observed:$s[h[4]]}}]->(e))
WITH r,collect([i,e]) AS es
UNWIND r[7] AS l
WITH l,[p IN es WHERE p[0]=l[0]][0][1] AS a,[p IN es WHERE p[0]=l[1]][0][1] AS b
",
        b0 = block,
        b1 = block + 1,
        b2 = block + 2,
        b3 = block + 3,
        b4 = block + 4,
    );
    for (index, relation) in Relation::LINKS.into_iter().enumerate() {
        let _ = writeln!(
            text,
            "FOREACH(_ IN CASE WHEN l[3]={index} THEN [1] ELSE [] END|\n\
             CREATE(a)-[:{kind}{{fact_id:$s[l[2]]}}]->(b))",
            kind = relationship_type(relation),
        );
    }
    // Close the new correlations' block.
    text.pop();
    text.push_str(
        "}
FOREACH(_ IN CASE WHEN $last THEN [1] ELSE [] END|
MERGE(w:TapioCursor{writer:$writer})SET w.tick=$time,w.updated_at=datetime())
RETURN version",
    );
    text
}

/// The health check.
pub const PING: &str = "RETURN 1 AS ok";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apply_has_a_delete_and_a_create_per_relationship_type_and_every_block() {
        for relation in Relation::LINKS {
            let kind = relationship_type(relation);
            assert!(
                APPLY.contains(&format!("-[l:{kind}{{fact_id:$s[r[2]]}}]->")),
                "deletes {kind}"
            );
            assert!(
                APPLY.contains(&format!("CREATE(a)-[:{kind}{{fact_id:$s[l[2]]}}]->(b)")),
                "creates {kind}"
            );
        }
        for block in 0..APPLY_BLOCKS {
            assert_eq!(
                APPLY
                    .matches(&format!("$rows[$at[{block}]..$at[{}]]", block + 1))
                    .count(),
                1,
                "block {block} once:\n{}",
                *APPLY
            );
        }
        assert!(!APPLY.contains(&format!("$at[{}]..", APPLY_BLOCKS)));
        assert_eq!(APPLY.matches('{').count(), APPLY.matches('}').count());
    }
}
