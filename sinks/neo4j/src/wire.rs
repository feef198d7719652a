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
//! Each statement also carries a string table, `$s`: a row refers to a string by its index
//! there, so an entity or fact id, or a piece of typed evidence (JSON), that several rows mention is
//! sent once per statement rather than once per mention.
//!
//! Every statement has the same parameter shape, so that Neo4j plans it once. Neo4j 5 caches a
//! plan per query text *and* per parameter type, where the type of a list or string includes a
//! size bucket (0, 1, up to 10, up to 100, up to 1000, …): a statement whose lists change
//! bucket is planned again, and planning the sink's write statement takes about a second. So
//! all of a statement's rows travel in one list, `$rows`, block after block, with the blocks'
//! boundaries in `$at` (one offset more than the statement has blocks); `$rows` and `$s` are
//! padded to at least 101 entries and hold at most 1000, which keeps both in the 101–1000
//! bucket. The padding (the integer 0 after the last block, empty strings at the end of `$s`)
//! costs a byte an entry and only in small statements.
//!
//! Sizes follow the PackStream encoding (<https://neo4j.com/docs/bolt/current/packstream/>):
//! values are counted at their exact size, and the headers of the lists that grow while a
//! statement is filled (`$rows` and `$s`) at their largest, so an estimate never falls below
//! the real size.

use std::borrow::Cow;
use std::collections::HashMap;

use neo4rs::{BoltList, BoltType, Query};

/// neo4rs's write buffer (tokio's default `BufStream` capacity).
const WRITE_BUFFER: usize = 8 * 1024;

/// The largest estimated `RUN` message the sink sends: the write buffer less the chunk header
/// and end marker (2 bytes each), the message's `extra` map (`{db: name}`, database names are
/// at most 63 characters) and a margin.
pub const MESSAGE_BUDGET: usize = WRITE_BUFFER - 4 - 80 - 100;

/// Largest header of a PackStream string, list or map (marker and 32-bit size).
const LARGEST_HEADER: usize = 5;

/// The name of the string table parameter.
const STRINGS: &str = "s";

/// The name of the parameter holding every row.
const ROWS: &str = "rows";

/// The name of the parameter holding the blocks' boundaries in `$rows`.
const AT: &str = "at";

/// Fewest entries of `$rows` and `$s`: the smallest size of Neo4j's 101–1000 bucket.
pub(crate) const MIN_LIST: usize = 101;

/// Most entries of `$rows` and `$s`: the largest size of that bucket.
pub(crate) const MAX_LIST: usize = 1000;

/// Size of the header of a PackStream string, list or map of `len` bytes or entries.
fn header(len: usize) -> usize {
    match len {
        0..16 => 1,
        16..256 => 2,
        256..65_536 => 3,
        _ => 5,
    }
}

/// Size of a PackStream integer.
fn int_len(value: i64) -> usize {
    match value {
        -16..=127 => 1,
        -128..=-17 => 2,
        -32_768..=32_767 => 3,
        -2_147_483_648..=2_147_483_647 => 5,
        _ => 9,
    }
}

fn string_len(value: &str) -> usize {
    header(value.len()) + value.len()
}

/// `value`'s PackStream size.
///
/// The sink sends strings, integers, lists and maps only; any other value is counted as a whole
/// [`MESSAGE_BUDGET`].
///
/// ```
/// use neo4rs::BoltType;
/// use tapio_sinks_neo4j::wire::encoded_len;
///
/// assert_eq!(encoded_len(&BoltType::from("pod")), 1 + 3);
/// assert_eq!(encoded_len(&BoltType::from(vec![1i64, 200])), 1 + 1 + 3);
/// ```
pub fn encoded_len(value: &BoltType) -> usize {
    match value {
        BoltType::String(string) => string_len(&string.value),
        BoltType::Integer(integer) => int_len(integer.value),
        BoltType::Float(_) => 9,
        BoltType::Boolean(_) | BoltType::Null(_) => 1,
        BoltType::List(list) => {
            header(list.value.len()) + list.value.iter().map(encoded_len).sum::<usize>()
        }
        BoltType::Map(map) => {
            header(map.value.len())
                + map
                    .value
                    .iter()
                    .map(|(key, value)| string_len(&key.value) + encoded_len(value))
                    .sum::<usize>()
        }
        _ => MESSAGE_BUDGET,
    }
}

/// A value of a row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Cell<'a> {
    /// A string, sent as its index in the statement's string table.
    Text(Cow<'a, str>),
    /// An integer.
    Int(i64),
    /// A list.
    List(Vec<Cell<'a>>),
}

impl<'a> From<&'a str> for Cell<'a> {
    fn from(value: &'a str) -> Cell<'a> {
        Cell::Text(Cow::Borrowed(value))
    }
}

impl From<String> for Cell<'_> {
    fn from(value: String) -> Self {
        Cell::Text(Cow::Owned(value))
    }
}

impl From<i64> for Cell<'_> {
    fn from(value: i64) -> Self {
        Cell::Int(value)
    }
}

/// A statement's string table.
struct Table<'a> {
    strings: Vec<Cow<'a, str>>,
    index: HashMap<Cow<'a, str>, i64>,
}

impl<'a> Table<'a> {
    fn new() -> Table<'a> {
        Table {
            index: HashMap::new(),
            strings: Vec::new(),
        }
    }

    /// The table's size as sent, padded to [`MIN_LIST`] entries with empty strings (1 byte).
    fn size(&self) -> usize {
        LARGEST_HEADER
            + self.strings.iter().map(|s| string_len(s)).sum::<usize>()
            + MIN_LIST.saturating_sub(self.strings.len())
    }

    fn len(&self) -> usize {
        self.strings.len()
    }

    /// How many bytes `cell` adds to the statement's rows, with every string as an index, and
    /// how many strings it adds to the table, with their size.
    fn added(&self, cell: &Cell<'a>) -> (usize, usize, usize) {
        let mut new = Vec::new();
        let structure = self.structure_len(cell, &mut new);
        let strings = new.iter().map(|text| string_len(text)).sum::<usize>();
        (structure, new.len(), strings)
    }

    /// `cell`'s encoding with every string as an index; collects the strings not in the table
    /// yet into `new`, in the order they would be added.
    fn structure_len<'c>(&self, cell: &'c Cell<'a>, new: &mut Vec<&'c str>) -> usize {
        match cell {
            Cell::Int(value) => int_len(*value),
            Cell::List(cells) => {
                header(cells.len())
                    + cells
                        .iter()
                        .map(|cell| self.structure_len(cell, new))
                        .sum::<usize>()
            }
            Cell::Text(text) => {
                let index = match self.index.get(text.as_ref()) {
                    Some(index) => *index,
                    None => {
                        let position = new
                            .iter()
                            .position(|seen| *seen == text.as_ref())
                            .unwrap_or_else(|| {
                                new.push(text.as_ref());
                                new.len() - 1
                            });
                        (self.strings.len() + position) as i64
                    }
                };
                int_len(index)
            }
        }
    }

    /// `cell` as sent: strings replaced by their indexes, added to the table when new.
    fn insert(&mut self, cell: Cell<'a>) -> BoltType {
        match cell {
            Cell::Int(value) => BoltType::from(value),
            Cell::List(cells) => BoltType::List(BoltList {
                value: cells.into_iter().map(|cell| self.insert(cell)).collect(),
            }),
            Cell::Text(text) => {
                let next = self.strings.len() as i64;
                let index = *self.index.entry(text.clone()).or_insert(next);
                if index == next {
                    self.strings.push(text);
                }
                BoltType::from(index)
            }
        }
    }

    fn into_param(self) -> BoltType {
        let padding = MIN_LIST.saturating_sub(self.strings.len());
        BoltType::List(BoltList {
            value: self
                .strings
                .into_iter()
                .map(|text| BoltType::from(text.into_owned()))
                .chain(std::iter::repeat_n(BoltType::from(""), padding))
                .collect(),
        })
    }
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

    /// The size of its `RUN` message with `text`, without the `extra` map.
    #[cfg(test)]
    pub(crate) fn encoded_len(&self, text: &str) -> usize {
        2 + string_len(text)
            + header(self.params.len())
            + self
                .params
                .iter()
                .map(|(name, value)| string_len(name) + encoded_len(value))
                .sum::<usize>()
    }
}

/// The rows of one statement, by block, as sent.
struct Rows {
    blocks: Vec<Vec<BoltType>>,
    /// Size of the rows, without padding or the list header.
    size: usize,
    count: usize,
}

impl Rows {
    fn new(blocks: usize) -> Rows {
        Rows {
            blocks: vec![Vec::new(); blocks],
            size: 0,
            count: 0,
        }
    }

    /// `$rows` as sent: the blocks in order, then padding up to [`MIN_LIST`] entries; and
    /// `$at`, where each block starts, and where the last one ends.
    fn into_params(self) -> (BoltType, BoltType) {
        let mut at = Vec::with_capacity(self.blocks.len() + 1);
        let mut rows = Vec::with_capacity(self.count.max(MIN_LIST));
        for block in self.blocks {
            at.push(BoltType::from(rows.len() as i64));
            rows.extend(block);
        }
        at.push(BoltType::from(rows.len() as i64));
        let padding = MIN_LIST.saturating_sub(rows.len());
        rows.extend(std::iter::repeat_n(BoltType::from(0i64), padding));
        (
            BoltType::List(BoltList { value: rows }),
            BoltType::List(BoltList { value: at }),
        )
    }
}

/// Splits a tick's rows, `N` lists in the order the statement's blocks take them, into
/// as few statements of `text` as keep every message under [`MESSAGE_BUDGET`] and every list
/// within [`MAX_LIST`] entries.
///
/// Rows keep their order: the blocks are taken in the order given and the statements run in the
/// order returned, so a statement's blocks see everything the rows before them did, as in one
/// statement. Every statement carries the `fixed` parameters, `$s`, `$rows` and `$at`. A row too
/// large to share a statement goes alone; such a statement is larger than the write buffer and
/// may wait on the delayed acknowledgement, but it is still written. With no rows at all, one
/// statement with empty blocks is returned.
pub(crate) fn split<'a, const N: usize>(
    text: &str,
    fixed: &[(&'static str, BoltType)],
    blocks: [Vec<Cell<'a>>; N],
) -> Vec<Statement> {
    // RUN: structure marker and tag, the text, the parameter map: the fixed parameters, then
    // `$s`, `$rows` (largest list headers) and `$at` (N + 1 offsets up to MAX_LIST, at
    // most 3 bytes each).
    let envelope = 2
        + string_len(text)
        + header(fixed.len() + 3)
        + fixed
            .iter()
            .map(|(name, value)| string_len(name) + encoded_len(value))
            .sum::<usize>()
        + string_len(STRINGS)
        + string_len(ROWS)
        + LARGEST_HEADER
        + string_len(AT)
        + header(N + 1)
        + 3 * (N + 1);
    let size = |table: &Table<'_>, rows: &Rows| {
        envelope + table.size() + rows.size + MIN_LIST.saturating_sub(rows.count)
    };
    let statement = |table: Table<'a>, rows: Rows| {
        let mut params = fixed.to_vec();
        let (all, at) = rows.into_params();
        params.push((STRINGS, table.into_param()));
        params.push((ROWS, all));
        params.push((AT, at));
        Statement { params }
    };
    let mut statements = Vec::new();
    let mut table = Table::new();
    let mut rows = Rows::new(N);
    for (block, cells) in blocks.into_iter().enumerate() {
        for cell in cells {
            let (len, new_strings, strings_len) = table.added(&cell);
            let grown = size(&table, &rows) + len + strings_len;
            let full = grown > MESSAGE_BUDGET
                || rows.count + 1 > MAX_LIST
                || table.len() + new_strings > MAX_LIST;
            if full && rows.count > 0 {
                let done = std::mem::replace(&mut table, Table::new());
                statements.push(statement(done, std::mem::replace(&mut rows, Rows::new(N))));
            }
            let sent = table.insert(cell);
            rows.size += encoded_len(&sent);
            rows.count += 1;
            rows.blocks[block].push(sent);
        }
    }
    if rows.count > 0 || statements.is_empty() {
        statements.push(statement(table, rows));
    }
    statements
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "UNWIND $rows[$at[0]..$at[1]] AS r RETURN 1";

    /// Blocks of the statements in these tests.
    const BLOCKS: usize = 7;

    /// Row `id`: its name, a text shared by every row, its own text of `text_len` bytes, and
    /// `id` as an integer.
    fn row(id: usize, text_len: usize) -> Cell<'static> {
        Cell::List(vec![
            format!("row-{id}").into(),
            "shared by every row".into(),
            format!("{id:0>text_len$}").into(),
            (id as i64).into(),
        ])
    }

    fn blocks(rows: Vec<(usize, Cell<'static>)>) -> [Vec<Cell<'static>>; BLOCKS] {
        let mut blocks: [Vec<Cell<'static>>; BLOCKS] = Default::default();
        for (block, row) in rows {
            blocks[block].push(row);
        }
        blocks
    }

    fn param<'s>(statement: &'s Statement, name: &str) -> &'s [BoltType] {
        match statement.params.iter().find(|(param, _)| *param == name) {
            Some((_, BoltType::List(list))) => &list.value[..],
            other => panic!("{name}: {other:?}"),
        }
    }

    fn int(value: &BoltType) -> i64 {
        match value {
            BoltType::Integer(int) => int.value,
            other => panic!("not an integer: {other:?}"),
        }
    }

    /// The rows of each block as they were given, strings looked up in the table.
    fn rows_of(statement: &Statement) -> Vec<Vec<Cell<'static>>> {
        let strings: Vec<String> = param(statement, STRINGS)
            .iter()
            .map(|value| match value {
                BoltType::String(text) => text.value.clone(),
                other => panic!("not a string: {other:?}"),
            })
            .collect();
        let rows = param(statement, ROWS);
        let at: Vec<usize> = param(statement, AT)
            .iter()
            .map(|v| int(v) as usize)
            .collect();
        assert_eq!(at.len(), BLOCKS + 1);
        assert!(
            rows[at[BLOCKS]..].iter().all(|pad| int(pad) == 0),
            "padding"
        );
        at.windows(2)
            .map(|range| {
                rows[range[0]..range[1]]
                    .iter()
                    .map(|row| match row {
                        BoltType::List(cells) => {
                            let text = |i: usize| {
                                Cell::from(strings[int(&cells.value[i]) as usize].clone())
                            };
                            Cell::List(vec![text(0), text(1), text(2), int(&cells.value[3]).into()])
                        }
                        other => panic!("not a row: {other:?}"),
                    })
                    .collect()
            })
            .collect()
    }

    /// The size bucket Neo4j 5 puts a list of `len` entries in (`SizeBucket.computeBucket`).
    fn bucket(len: usize) -> usize {
        match len {
            0 | 1 => len,
            _ => 10usize.pow((len as f64).log10().ceil() as u32),
        }
    }

    #[test]
    fn sizes_are_packstream_sizes() {
        // Examples from the PackStream specification.
        assert_eq!(encoded_len(&BoltType::from("")), 1);
        assert_eq!(encoded_len(&BoltType::from("A")), 2);
        assert_eq!(encoded_len(&BoltType::from("a".repeat(26))), 2 + 26);
        assert_eq!(encoded_len(&BoltType::from(1i64)), 1);
        assert_eq!(encoded_len(&BoltType::from(-16i64)), 1);
        assert_eq!(encoded_len(&BoltType::from(-17i64)), 2);
        assert_eq!(encoded_len(&BoltType::from(1234i64)), 3);
        assert_eq!(encoded_len(&BoltType::from(1i64 << 40)), 9);
        let list = BoltType::List(BoltList {
            value: vec![1i64.into(), 2i64.into(), 3i64.into()],
        });
        assert_eq!(encoded_len(&list), 4);
    }

    #[test]
    fn rows_are_split_in_order_and_every_statement_fits_with_one_shape() {
        let given: Vec<(usize, Cell<'static>)> = (0..400)
            .map(|i| (i * BLOCKS / 400, row(i, if i % 3 == 0 { 300 } else { 20 })))
            .collect();
        let fixed = [("time", BoltType::from(7i64))];
        let statements = split(TEXT, &fixed, blocks(given.clone()));
        assert!(statements.len() >= 4, "{} statements", statements.len());
        let mut sent: Vec<(usize, Cell<'static>)> = Vec::new();
        for (i, statement) in statements.iter().enumerate() {
            let len = statement.encoded_len(TEXT);
            assert!(len <= MESSAGE_BUDGET, "{len} bytes");
            assert!(
                len > MESSAGE_BUDGET * 3 / 4 || i + 1 == statements.len(),
                "statement {i} is only {len} bytes"
            );
            let names: Vec<&str> = statement.params.iter().map(|(name, _)| *name).collect();
            assert_eq!(names, ["time", STRINGS, ROWS, AT]);
            for list in [STRINGS, ROWS] {
                assert_eq!(bucket(param(statement, list).len()), 1000, "{list}");
            }
            let strings = param(statement, STRINGS);
            let shared = strings
                .iter()
                .filter(|s| **s == BoltType::from("shared by every row"))
                .count();
            assert_eq!(shared, 1, "a string is sent once per statement");
            for (block, rows) in rows_of(statement).into_iter().enumerate() {
                sent.extend(rows.into_iter().map(|row| (block, row)));
            }
        }
        assert_eq!(sent, given, "every row once, in order, in its block");
    }

    #[test]
    fn lists_stay_within_their_bucket() {
        // Many tiny rows: the row count, not the size, ends a statement.
        let given: Vec<(usize, Cell<'static>)> = (0..2500)
            .map(|i| (6, Cell::from(format!("{}", i % 7))))
            .collect();
        let statements = split(TEXT, &[], blocks(given));
        assert_eq!(statements.len(), 3);
        for statement in &statements {
            assert!(param(statement, ROWS).len() <= MAX_LIST);
            assert_eq!(bucket(param(statement, ROWS).len()), 1000);
        }
    }

    #[test]
    fn the_size_of_a_row_is_what_it_adds() {
        let mut table = Table::new();
        for i in 0..300 {
            let row = Cell::List(vec![
                row(i, i % 40),
                row(i % 7, 3),
                Cell::List(vec![
                    format!("again {}", i % 5).into(),
                    format!("again {}", i % 5).into(),
                ]),
            ]);
            let strings_before: usize = table.strings.iter().map(|s| string_len(s)).sum();
            let (len, new, strings_len) = table.added(&row);
            let count_before = table.len();
            let sent = table.insert(row);
            let strings_after: usize = table.strings.iter().map(|s| string_len(s)).sum();
            assert_eq!(len, encoded_len(&sent), "row {i}");
            assert_eq!(new, table.len() - count_before, "row {i}");
            assert_eq!(strings_len, strings_after - strings_before, "row {i}");
        }
    }

    #[test]
    fn an_oversized_row_goes_alone_and_no_rows_is_one_statement() {
        let given = vec![
            (0, row(1, 10)),
            (0, row(2, MESSAGE_BUDGET)),
            (1, row(3, 10)),
        ];
        let statements = split(TEXT, &[], blocks(given));
        let counts: Vec<usize> = statements
            .iter()
            .map(|s| rows_of(s).iter().map(Vec::len).sum())
            .collect();
        assert_eq!(counts, vec![1, 1, 1]);
        let empty = split::<BLOCKS>(TEXT, &[], Default::default());
        assert_eq!(empty.len(), 1);
        assert!(rows_of(&empty[0]).iter().all(Vec::is_empty));
        assert_eq!(param(&empty[0], STRINGS).len(), MIN_LIST);
        assert_eq!(param(&empty[0], ROWS).len(), MIN_LIST);
    }
}
