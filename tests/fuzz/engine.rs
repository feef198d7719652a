//! The mutation fuzzer: seeded with real fixtures, it mutates them (bit flips, interesting
//! bytes and numbers, deletions, duplications, truncation, splicing with other seeds, tokens
//! taken from the seeds, and for JSON inputs edits of the parsed value tree), runs the parser
//! on each input and fails on a panic, a hang or an allocation out of proportion to the input.
//!
//! It is not coverage-guided (the coverage-guided fuzzers need a nightly compiler or an
//! instrumenting toolchain this project does not ship); its feedback is validity: an input the
//! parser accepts joins the corpus, so mutations build on inputs that reach past the first
//! checks. Runs are reproducible from their seed.
//!
//! Environment: `TAPIO_FUZZ_SECONDS` (time per target; when unset, `TAPIO_FUZZ_INPUTS`
//! inputs per target, 400 by default), `TAPIO_FUZZ_SEED` (the random seed, 1 by default).
//! Each finding is written under `target/tmp/fuzz-findings/`; a finding that was fixed is kept
//! in `tests/fuzz/regressions/<target>/` and replayed first on every run.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeSet;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tapio_tests::random::Rng;

/// Counts live heap bytes and their peak, so an input's allocation can be measured.
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

#[allow(unsafe_code)]
// SAFETY: every call is forwarded unchanged to the system allocator; the counters are only
// bookkeeping beside it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded with the caller's layout, under the caller's obligations.
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: `pointer` was allocated by `alloc` above with this layout.
        unsafe { System.dealloc(pointer, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged; `pointer` came from this allocator with `layout`.
        let moved = unsafe { System.realloc(pointer, layout, new_size) };
        if !moved.is_null() {
            if new_size >= layout.size() {
                let grown = new_size - layout.size();
                let live = LIVE.fetch_add(grown, Ordering::Relaxed) + grown;
                PEAK.fetch_max(live, Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        moved
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Targets run one at a time, so the allocation counters measure one input.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Heap growth allowed for one input beyond this multiple of its length.
const ALLOCATION_PER_INPUT_BYTE: usize = 512;
/// Heap growth allowed for any input, whatever its length.
const ALLOCATION_FLOOR: usize = 1 << 20;
/// An input running longer than this is a hang: the process is stopped with the input saved.
const HANG: Duration = Duration::from_secs(30);
/// Inputs are cut to this length.
const MAX_LEN: usize = 1 << 20;
/// Most inputs the corpus holds; an accepted input beyond that replaces a random one.
const CORPUS_MAX: usize = 4000;

/// What one target's run did.
#[derive(Debug)]
pub struct Figures {
    /// The target.
    pub target: &'static str,
    /// Inputs run (regressions and seeds included).
    pub inputs: u64,
    /// Inputs the parser accepted.
    pub accepted: u64,
    /// Seeds it started from.
    pub seeds: usize,
    /// Corpus size at the end.
    pub corpus: usize,
    /// How long it ran.
    pub elapsed: Duration,
    /// The slowest input.
    pub slowest: Duration,
    /// The largest heap growth of one input, bytes.
    pub largest_allocation: usize,
}

impl std::fmt::Display for Figures {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "fuzz {}: {} inputs ({} accepted) from {} seeds in {:.1?}, corpus {}, slowest input \
             {:.1?}, largest heap growth {} KiB, findings 0",
            self.target,
            self.inputs,
            self.accepted,
            self.seeds,
            self.elapsed,
            self.corpus,
            self.slowest,
            self.largest_allocation / 1024
        )
    }
}

/// How much of the input the mutations may treat as JSON.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Any bytes.
    Bytes,
    /// A JSON document: half of the mutations edit its value tree.
    Json,
}

fn budget() -> (Option<Duration>, u64) {
    let seconds = std::env::var("TAPIO_FUZZ_SECONDS")
        .ok()
        .and_then(|value| value.parse::<u64>().ok());
    let inputs = std::env::var("TAPIO_FUZZ_INPUTS")
        .ok()
        .and_then(|value| value.parse::<u64>().ok())
        .unwrap_or(400);
    (seconds.map(Duration::from_secs), inputs)
}

fn seed() -> u64 {
    std::env::var("TAPIO_FUZZ_SEED")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(1)
}

fn findings_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("fuzz-findings")
}

fn regressions(target: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|entries| entries.filter_map(|e| Some(e.ok()?.path())).collect())
        .unwrap_or_default();
    files.sort();
    files
        .iter()
        .map(|file| std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display())))
        .collect()
}

fn save(target: &str, input: &[u8]) -> PathBuf {
    let dir = findings_dir();
    std::fs::create_dir_all(&dir).expect("create the findings directory");
    let hash = input.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    });
    let path = dir.join(format!("{target}-{hash:016x}"));
    std::fs::write(&path, input).expect("write a finding");
    path
}

/// Stops the process when one input runs past [`HANG`], after saving it.
struct Watchdog {
    origin: Instant,
    started_ms: &'static AtomicU64,
    input: &'static Mutex<Vec<u8>>,
    done: &'static AtomicBool,
}

impl Watchdog {
    fn start(target: &'static str) -> Watchdog {
        let watchdog = Watchdog {
            origin: Instant::now(),
            started_ms: Box::leak(Box::new(AtomicU64::new(u64::MAX))),
            input: Box::leak(Box::new(Mutex::new(Vec::new()))),
            done: Box::leak(Box::new(AtomicBool::new(false))),
        };
        let (started_ms, input, done) = (watchdog.started_ms, watchdog.input, watchdog.done);
        let origin = watchdog.origin;
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(200));
                let started = started_ms.load(Ordering::Relaxed);
                let now = origin.elapsed().as_millis() as u64;
                if started != u64::MAX && now.saturating_sub(started) > HANG.as_millis() as u64 {
                    let input = input.lock().map(|i| i.clone()).unwrap_or_default();
                    let path = save(target, &input);
                    eprintln!(
                        "fuzz {target}: an input ran longer than {HANG:?}: a hang, saved in {}",
                        path.display()
                    );
                    std::process::abort();
                }
            }
        });
        watchdog
    }

    fn begin(&self, input: &[u8]) {
        if let Ok(mut saved) = self.input.lock() {
            saved.clear();
            saved.extend_from_slice(input);
        }
        self.started_ms
            .store(self.origin.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn end(&self) {
        self.started_ms.store(u64::MAX, Ordering::Relaxed);
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Relaxed);
    }
}

/// Held by a target's test from its start (seed loading included) to its end, so that no other
/// target allocates while an input is measured.
pub fn exclusive() -> MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// Fuzzes `parse` from `seeds` (call it holding [`exclusive`]): replays the target's regressions and seeds, then runs mutated
/// inputs for the budget. `parse` returns whether it accepted the input.
///
/// # Panics
/// On a finding: the parser panicked, or one input grew the heap out of proportion; the
/// message names the saved input.
pub fn fuzz(
    target: &'static str,
    seeds: Vec<Vec<u8>>,
    shape: Shape,
    parse: impl Fn(&[u8]) -> bool,
) -> Figures {
    assert!(!seeds.is_empty(), "fuzz {target}: no seeds");
    let (duration, max_inputs) = budget();
    let mut rng = Rng::new(
        seed()
            ^ target
                .bytes()
                .fold(0u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b))),
    );
    let dictionary = tokens(&seeds);
    let watchdog = Watchdog::start(target);
    let origin = Instant::now();
    let mut figures = Figures {
        target,
        inputs: 0,
        accepted: 0,
        seeds: seeds.len(),
        corpus: 0,
        elapsed: Duration::ZERO,
        slowest: Duration::ZERO,
        largest_allocation: 0,
    };
    let mut corpus: Vec<Vec<u8>> = Vec::new();
    let run_one = |input: &[u8], figures: &mut Figures| -> bool {
        watchdog.begin(input);
        let base = LIVE.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);
        let started = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| parse(input)));
        let took = started.elapsed();
        let grown = PEAK.load(Ordering::Relaxed).saturating_sub(base);
        watchdog.end();
        figures.inputs += 1;
        figures.slowest = figures.slowest.max(took);
        figures.largest_allocation = figures.largest_allocation.max(grown);
        match outcome {
            Ok(accepted) => {
                let allowed = ALLOCATION_FLOOR + ALLOCATION_PER_INPUT_BYTE * input.len();
                if grown > allowed {
                    let path = save(target, input);
                    panic!(
                        "fuzz {target}: one input of {} bytes grew the heap by {grown} bytes \
                         (allowed {allowed}); saved in {}",
                        input.len(),
                        path.display()
                    );
                }
                figures.accepted += u64::from(accepted);
                accepted
            }
            Err(panic) => {
                let path = save(target, input);
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_string()))
                    .unwrap_or_default();
                panic!(
                    "fuzz {target}: the parser panicked ({message}) on the input saved in {}",
                    path.display()
                );
            }
        }
    };
    for input in regressions(target) {
        run_one(&input, &mut figures);
    }
    for input in &seeds {
        run_one(input, &mut figures);
        corpus.push(input.clone());
    }
    loop {
        let out_of_budget = match duration {
            Some(duration) => origin.elapsed() >= duration,
            None => figures.inputs >= max_inputs + seeds.len() as u64,
        };
        if out_of_budget {
            break;
        }
        let parent = &corpus[rng.below(corpus.len() as u64) as usize];
        let mut input = parent.clone();
        if shape == Shape::Json && rng.below(2) == 0 {
            if let Some(edited) = mutate_json(&mut rng, &input) {
                input = edited;
            } else {
                mutate(&mut rng, &mut input, &corpus, &dictionary);
            }
        } else {
            mutate(&mut rng, &mut input, &corpus, &dictionary);
        }
        if run_one(&input, &mut figures) && input != *parent {
            if corpus.len() < CORPUS_MAX {
                corpus.push(input);
            } else {
                let slot = rng.below(corpus.len() as u64) as usize;
                corpus[slot] = input;
            }
        }
    }
    figures.corpus = corpus.len();
    figures.elapsed = origin.elapsed();
    eprintln!("{figures}");
    figures
}

/// Words of the seeds (runs of letters, digits and `_-./:`), as a dictionary of tokens the
/// mutations insert.
fn tokens(seeds: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut found = BTreeSet::new();
    for seed in seeds {
        for word in seed.split(|b| !(b.is_ascii_alphanumeric() || b"_-./:".contains(b))) {
            if (2..=40).contains(&word.len()) {
                found.insert(word.to_vec());
            }
            if found.len() >= 2000 {
                break;
            }
        }
    }
    let mut tokens: Vec<Vec<u8>> = found.into_iter().collect();
    for extra in [
        &b"\""[..],
        b"{",
        b"}",
        b"[",
        b"]",
        b",",
        b":",
        b"\\u0000",
        b"\\ud800",
        b"null",
        b"true",
        b"-",
        b"\n",
        b"\r\n",
        b"\t",
        b"- ",
        b": ",
        b"&a ",
        b"*a",
        b"!!binary ",
        b"---\n",
        b"~",
        b"\xff\xfe",
        b"\xc3\x28",
    ] {
        tokens.push(extra.to_vec());
    }
    tokens
}

const INTERESTING_BYTES: &[u8] = &[
    0, 1, 0x7f, 0x80, 0xff, b'"', b'{', b'}', b'[', b']', b',', b':', b'\\', b'\n', b'0', b'9',
    b'-', b'e', b'.', b' ', b'#', b'%', b'/',
];

const INTERESTING_NUMBERS: &[&str] = &[
    "0",
    "-1",
    "1",
    "-0",
    "255",
    "256",
    "65535",
    "65536",
    "2147483647",
    "-2147483648",
    "4294967295",
    "4294967296",
    "9223372036854775807",
    "-9223372036854775808",
    "18446744073709551615",
    "18446744073709551616",
    "1e308",
    "1e309",
    "-1e309",
    "0.5",
    "1.7976931348623157e308",
    "99999999999999999999999999999",
];

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, corpus: &[Vec<u8>], dictionary: &[Vec<u8>]) {
    let stacked = 1 + rng.below(6);
    for _ in 0..stacked {
        let len = input.len() as u64;
        let at = |rng: &mut Rng| rng.below(len + 1) as usize;
        match rng.below(12) {
            0 if len > 0 => {
                let i = rng.below(len) as usize;
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len) as usize;
                input[i] = INTERESTING_BYTES[rng.below(INTERESTING_BYTES.len() as u64) as usize];
            }
            2 if len > 0 => {
                let i = rng.below(len) as usize;
                input[i] = rng.next_u64() as u8;
            }
            3 if len > 0 => {
                let start = rng.below(len) as usize;
                let most = if rng.below(8) == 0 { len / 2 + 1 } else { 16 };
                let end = (start + 1 + rng.below(most) as usize).min(input.len());
                input.drain(start..end);
            }
            4 => {
                let i = at(rng);
                let count = 1 + rng.below(8) as usize;
                let bytes: Vec<u8> = (0..count).map(|_| rng.next_u64() as u8).collect();
                input.splice(i..i, bytes);
            }
            5 if len > 0 => {
                let start = rng.below(len) as usize;
                let end = (start + 1 + rng.below(64) as usize).min(input.len());
                let copy = input[start..end].to_vec();
                let i = at(rng);
                let times = if rng.below(16) == 0 {
                    1 + rng.below(64)
                } else {
                    1
                };
                for _ in 0..times {
                    input.splice(i..i, copy.iter().copied());
                }
            }
            6 => input.truncate(at(rng)),
            7 => {
                let other = &corpus[rng.below(corpus.len() as u64) as usize];
                let cut = at(rng);
                let from = rng.below(other.len() as u64 + 1) as usize;
                input.truncate(cut);
                input.extend_from_slice(&other[from..]);
            }
            8 => {
                let other = &corpus[rng.below(corpus.len() as u64) as usize];
                if !other.is_empty() {
                    let start = rng.below(other.len() as u64) as usize;
                    let end = (start + 1 + rng.below(256) as usize).min(other.len());
                    let i = at(rng);
                    input.splice(i..i, other[start..end].iter().copied());
                }
            }
            9 => {
                let digits: Vec<usize> = input
                    .iter()
                    .enumerate()
                    .filter(|(_, b)| b.is_ascii_digit())
                    .map(|(i, _)| i)
                    .collect();
                if let Some(&start) = digits.get(rng.below(digits.len() as u64) as usize) {
                    let end = input[start..]
                        .iter()
                        .position(|b| !b.is_ascii_digit())
                        .map_or(input.len(), |n| start + n);
                    let number =
                        INTERESTING_NUMBERS[rng.below(INTERESTING_NUMBERS.len() as u64) as usize];
                    input.splice(start..end, number.bytes());
                }
            }
            10 | 11 => {
                let token = &dictionary[rng.below(dictionary.len() as u64) as usize];
                let i = at(rng);
                if rng.below(2) == 0 || len == 0 {
                    input.splice(i..i, token.iter().copied());
                } else {
                    let end = (i + token.len()).min(input.len());
                    input.splice(i..end, token.iter().copied());
                }
            }
            _ => {}
        }
    }
    input.truncate(MAX_LEN);
}

/// Edits one node of the JSON value tree of `input`; `None` when it is not JSON.
fn mutate_json(rng: &mut Rng, input: &[u8]) -> Option<Vec<u8>> {
    let mut value: serde_json::Value = serde_json::from_slice(input).ok()?;
    let edits = 1 + rng.below(4);
    for _ in 0..edits {
        let donor = pick(rng, &mut value.clone()).clone();
        let node = pick(rng, &mut value);
        edit(rng, node, donor);
    }
    serde_json::to_vec(&value).ok()
}

/// A random node: descends from the root, stopping at each level with probability 1/4.
fn pick<'a>(rng: &mut Rng, value: &'a mut serde_json::Value) -> &'a mut serde_json::Value {
    let stop = rng.below(4) == 0;
    let children = match value {
        serde_json::Value::Array(items) => items.len(),
        serde_json::Value::Object(map) => map.len(),
        _ => 0,
    };
    if stop || children == 0 {
        return value;
    }
    let index = rng.below(children as u64) as usize;
    match value {
        serde_json::Value::Array(items) => pick(rng, &mut items[index]),
        serde_json::Value::Object(map) => {
            let child = map.values_mut().nth(index).expect("index below len");
            pick(rng, child)
        }
        _ => unreachable!("children > 0 only for arrays and objects"),
    }
}

const INTERESTING_STRINGS: &[&str] = &[
    "",
    " ",
    "-",
    "/",
    "://",
    "containerd://",
    "docker://",
    "a/b/c",
    "default",
    "Pod",
    "Node",
    "Deployment",
    "ReplicaSet",
    "Warning",
    "Normal",
    "True",
    "False",
    "Unknown",
    "1970-01-01T00:00:00Z",
    "1969-12-31T23:59:59Z",
    "9999-12-31T23:59:59.999999999Z",
    "2021-05-19T09:42:58Z",
    "0001-01-01T00:00:00Z",
    "1Ki",
    "-1Mi",
    "1e3",
    "999999999999999999999Gi",
    "NaN",
    "\u{0}",
    "\u{feff}",
    "é",
    "🦀",
];

fn edit(rng: &mut Rng, node: &mut serde_json::Value, donor: serde_json::Value) {
    use serde_json::Value;
    match rng.below(10) {
        0 => *node = Value::Null,
        1 => {
            let s = INTERESTING_STRINGS[rng.below(INTERESTING_STRINGS.len() as u64) as usize];
            *node = Value::String(s.to_string());
        }
        2 => {
            let n = INTERESTING_NUMBERS[rng.below(INTERESTING_NUMBERS.len() as u64) as usize];
            *node = serde_json::from_str(n).unwrap_or(Value::Null);
        }
        3 => *node = Value::Bool(rng.below(2) == 0),
        4 => *node = donor,
        5 => *node = Value::Array(vec![node.take()]),
        6 => *node = Value::Object(serde_json::Map::new()),
        7 => match node {
            Value::Object(map) if !map.is_empty() => {
                let key = map
                    .keys()
                    .nth(rng.below(map.len() as u64) as usize)
                    .cloned();
                if let Some(key) = key {
                    map.remove(&key);
                }
            }
            Value::Array(items) if !items.is_empty() => {
                items.remove(rng.below(items.len() as u64) as usize);
            }
            _ => *node = Value::Null,
        },
        8 => match node {
            Value::Array(items) if !items.is_empty() => {
                let copy = items[rng.below(items.len() as u64) as usize].clone();
                items.push(copy);
            }
            Value::Object(map) => {
                let s = INTERESTING_STRINGS[rng.below(INTERESTING_STRINGS.len() as u64) as usize];
                map.insert(s.to_string(), donor);
            }
            Value::String(text) => {
                let s = INTERESTING_STRINGS[rng.below(INTERESTING_STRINGS.len() as u64) as usize];
                text.push_str(s);
            }
            _ => {}
        },
        _ => {
            if let Value::String(text) = node {
                let repeat = 1 + rng.below(200) as usize;
                *text = text.repeat(repeat.min(8192 / text.len().max(1)));
            } else {
                *node = Value::String(node.to_string());
            }
        }
    }
}
