//! Splitting a tick's `UNWIND` rows into statements small enough to leave in one write.
//!
//! neo4rs 0.8 wraps the Bolt socket in a tokio `BufStream` with an 8 KiB write buffer and never
//! sets `TCP_NODELAY`. A message that fits the buffer leaves in one `write` at the flush. A
//! larger one leaves in several: the buffered chunk header, then the chunk itself (written past
//! the buffer), then the end marker at the flush. With Nagle's algorithm on, each small write
//! after the first waits until the server acknowledges the data already in flight, and the
//! server delays that acknowledgement (about 40 ms on Linux loopback), so every large statement
//! stalls for about 40 ms. The sink therefore sends a tick as several statements, each under
//! the buffer, all in the tick's one transaction: atomicity and the cursor are unchanged, and
//! none of the writes waits.
//!
//! Sizes are upper bounds of the PackStream encoding (<https://neo4j.com/docs/bolt/current/packstream/>):
//! every string, list and map header is counted at its largest (5 bytes) and every integer at 9
//! bytes, so an estimate never falls below the real size.

use neo4rs::{BoltList, BoltType, Query};

/// neo4rs's write buffer (tokio's default `BufStream` capacity).
const WRITE_BUFFER: usize = 8 * 1024;

/// The largest estimated `RUN` message the sink sends: the write buffer less the chunk header
/// and end marker (2 bytes each), the message's `extra` map (`{db: name}`, database names are
/// at most 63 characters) and a margin.
pub(crate) const MESSAGE_BUDGET: usize = WRITE_BUFFER - 4 - 80 - 100;

/// Largest header of a PackStream string, list or map (marker and 32-bit size).
const HEADER: usize = 5;

/// An upper bound of `value`'s PackStream size.
///
/// The sink sends strings, integers, lists and maps only; any other value is counted as a whole
/// [`MESSAGE_BUDGET`], so a row holding one goes alone in its statement.
pub(crate) fn encoded_len(value: &BoltType) -> usize {
    match value {
        BoltType::String(string) => HEADER + string.value.len(),
        BoltType::Integer(_) | BoltType::Float(_) => 9,
        BoltType::Boolean(_) | BoltType::Null(_) => 1,
        BoltType::List(list) => HEADER + list.value.iter().map(encoded_len).sum::<usize>(),
        BoltType::Map(map) => {
            HEADER
                + map
                    .value
                    .iter()
                    .map(|(key, value)| HEADER + key.value.len() + encoded_len(value))
                    .sum::<usize>()
        }
        _ => MESSAGE_BUDGET,
    }
}

/// One `UNWIND` list parameter of a statement.
pub(crate) struct Rows {
    /// Parameter name.
    pub(crate) name: &'static str,
    /// A row the statement skips, sent first in every statement so that the parameter's type
    /// is the same whether the statement has rows of this list or not (see
    /// [`crate::cypher::APPLY`]).
    pub(crate) sentinel: BoltType,
    /// The rows, in the order they must be applied.
    pub(crate) rows: Vec<BoltType>,
}

/// The parameters of one statement of a split.
#[derive(Debug)]
pub(crate) struct Statement {
    params: Vec<(&'static str, BoltType)>,
}

impl Statement {
    /// The statement as a query of `text`.
    pub(crate) fn query(self, text: &str) -> Query {
        self.params
            .into_iter()
            .fold(neo4rs::query(text), |query, (name, value)| {
                query.param(name, value)
            })
    }

    /// An upper bound of the size of its `RUN` message with `text`, without the `extra` map.
    #[cfg(test)]
    pub(crate) fn estimated_len(&self, text: &str) -> usize {
        2 + HEADER
            + text.len()
            + HEADER
            + self
                .params
                .iter()
                .map(|(name, value)| HEADER + name.len() + encoded_len(value))
                .sum::<usize>()
    }
}

/// Splits `lists` into as few statements of `text` as keep every message under
/// [`MESSAGE_BUDGET`].
///
/// Rows keep their order: the lists are taken in the order given and the statements run in the
/// order returned, so a statement's blocks see everything the rows before them did, as in one
/// statement. Every statement carries the `fixed` parameters and every list (its sentinel, then
/// its share of the rows, possibly none). A row too large to share a statement goes alone; such a
/// statement is larger than the write buffer and may wait on the delayed acknowledgement, but it
/// is still written. With no rows at all, one statement of sentinels is returned.
pub(crate) fn split(
    text: &str,
    fixed: &[(&'static str, BoltType)],
    lists: Vec<Rows>,
) -> Vec<Statement> {
    let envelope = 2
        + HEADER
        + text.len()
        + HEADER
        + fixed
            .iter()
            .map(|(name, value)| HEADER + name.len() + encoded_len(value))
            .sum::<usize>()
        + lists
            .iter()
            .map(|list| HEADER + list.name.len() + HEADER + encoded_len(&list.sentinel))
            .sum::<usize>();
    let heads: Vec<(&'static str, BoltType)> = lists
        .iter()
        .map(|list| (list.name, list.sentinel.clone()))
        .collect();
    let statement = |parts: &mut [Vec<BoltType>]| {
        let mut params = fixed.to_vec();
        for ((name, sentinel), rows) in heads.iter().zip(parts.iter_mut()) {
            let rows = std::mem::replace(rows, vec![sentinel.clone()]);
            params.push((name, BoltType::List(BoltList { value: rows })));
        }
        Statement { params }
    };
    let mut statements = Vec::new();
    let mut parts: Vec<Vec<BoltType>> = heads
        .iter()
        .map(|(_, sentinel)| vec![sentinel.clone()])
        .collect();
    let mut size = envelope;
    let mut empty = true;
    for (index, list) in lists.into_iter().enumerate() {
        for row in list.rows {
            let len = encoded_len(&row);
            if !empty && size + len > MESSAGE_BUDGET {
                statements.push(statement(&mut parts));
                size = envelope;
            }
            parts[index].push(row);
            size += len;
            empty = false;
        }
    }
    if !empty || statements.is_empty() {
        statements.push(statement(&mut parts));
    }
    statements
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: usize, text_len: usize) -> BoltType {
        BoltType::List(BoltList {
            value: vec![
                BoltType::from(format!("row-{id}")),
                BoltType::from("x".repeat(text_len)),
                BoltType::from(id as i64),
            ],
        })
    }

    fn rows_of(statement: &Statement, name: &str) -> Vec<BoltType> {
        statement
            .params
            .iter()
            .find(|(param, _)| *param == name)
            .map(|(_, value)| match value {
                BoltType::List(list) => list.value[1..].to_vec(),
                other => panic!("{name} is not a list: {other:?}"),
            })
            .unwrap_or_default()
    }

    #[test]
    fn sizes_are_upper_bounds_of_packstream() {
        // "abc" is 1 + 3 bytes in PackStream; 42 is 1 byte; [..] is 1 + its items.
        assert_eq!(encoded_len(&BoltType::from("abc")), 5 + 3);
        assert_eq!(encoded_len(&BoltType::from(42i64)), 9);
        assert_eq!(encoded_len(&row(1, 10)), 5 + (5 + 5) + (5 + 10) + 9);
    }

    #[test]
    fn rows_are_split_in_order_and_every_statement_fits() {
        let text = "UNWIND $a AS r CALL { UNWIND $b AS s RETURN 1 } RETURN 1";
        let a: Vec<BoltType> = (0..150).map(|i| row(i, 100)).collect();
        let b: Vec<BoltType> = (150..200).map(|i| row(i, 300)).collect();
        let lists = vec![
            Rows {
                name: "a",
                sentinel: row(0, 0),
                rows: a.clone(),
            },
            Rows {
                name: "b",
                sentinel: row(0, 0),
                rows: b.clone(),
            },
        ];
        let fixed = [("time", BoltType::from(7i64))];
        let statements = split(text, &fixed, lists);
        assert!(statements.len() >= 4, "{} statements", statements.len());
        for statement in &statements {
            assert!(statement.estimated_len(text) <= MESSAGE_BUDGET);
            assert!(statement.params.iter().any(|(name, _)| *name == "time"));
        }
        let sent_a: Vec<BoltType> = statements.iter().flat_map(|s| rows_of(s, "a")).collect();
        let sent_b: Vec<BoltType> = statements.iter().flat_map(|s| rows_of(s, "b")).collect();
        assert_eq!((sent_a, sent_b), (a, b));
        // Once `b` has begun, no later statement goes back to `a`.
        let first_b = statements
            .iter()
            .position(|s| !rows_of(s, "b").is_empty())
            .expect("b is sent");
        assert!(
            statements[first_b + 1..]
                .iter()
                .all(|s| rows_of(s, "a").is_empty())
        );
    }

    #[test]
    fn an_oversized_row_goes_alone_and_no_rows_is_one_statement() {
        let text = "UNWIND $a AS r RETURN 1";
        let lists = vec![Rows {
            name: "a",
            sentinel: row(0, 0),
            rows: vec![row(1, 10), row(2, MESSAGE_BUDGET), row(3, 10)],
        }];
        let statements = split(text, &[], lists);
        let counts: Vec<usize> = statements.iter().map(|s| rows_of(s, "a").len()).collect();
        assert_eq!(counts, vec![1, 1, 1]);
        let empty = split(
            text,
            &[],
            vec![Rows {
                name: "a",
                sentinel: row(0, 0),
                rows: Vec::new(),
            }],
        );
        assert_eq!(empty.len(), 1);
        assert!(rows_of(&empty[0], "a").is_empty());
    }
}
