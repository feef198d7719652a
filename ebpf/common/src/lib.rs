//! Record layouts shared by Tapio's eBPF programs and their userspace readers (layer L0;
//! depends on nothing internal).
//!
//! Every struct here is a `#[repr(C)]` mirror of a struct in `ebpf/programs/tapio_events.h`,
//! the header the C programs are compiled against. The layout test parses the header's
//! `TAPIO_ASSERT_SIZE`/`TAPIO_ASSERT_OFFSET` lines (which clang checks on the C side) and
//! compares them with these structs, so the two sides cannot drift apart silently.
//!
//! [`decode`] turns the bytes of one ring-buffer record into a [`Record`]. It never panics:
//! short records and unknown kinds are errors, which the reader counts and skips.
//!
//! ```
//! use tapio_ebpf_common::{DecodeError, decode};
//! assert!(matches!(decode(&[1, 2, 3]), Err(DecodeError::TooShort { .. })));
//! ```

#![allow(
    unsafe_code,
    reason = "records are viewed in place in ring-buffer bytes, and the `user` feature \
              implements aya::Pod; each use has a SAFETY comment"
)]

pub mod dns;

use std::mem::size_of;

/// Length of a kernel `comm`.
pub const COMM_LEN: usize = 16;
/// Bytes kept of an exec's filename.
pub const FILENAME_LEN: usize = 256;
/// Exec arguments kept.
pub const MAX_ARGS: usize = 6;
/// Bytes kept of each exec argument (including the NUL).
pub const ARG_LEN: usize = 64;
/// Bytes kept of each cgroup directory name.
pub const CGROUP_NAME_LEN: usize = 96;
/// Cgroup levels (leaf, parent, grandparent) on process records.
pub const CGROUP_LEVELS: usize = 3;
/// Cgroup levels on OOM records.
pub const OOM_CGROUP_LEVELS: usize = 8;
/// Bytes kept of a file path.
pub const PATH_LEN: usize = 256;
/// Path prefixes the file hooks can filter on.
pub const MAX_PREFIXES: usize = 8;
/// Longest path prefix, in bytes.
pub const PREFIX_LEN: usize = 64;
/// 64-bit words in a prefix.
pub const PREFIX_WORDS: usize = PREFIX_LEN / 8;

/// `Header::kind` of an [`ExecEvent`].
pub const EV_EXEC: u32 = 1;
/// `Header::kind` of a [`ForkEvent`].
pub const EV_FORK: u32 = 2;
/// `Header::kind` of an [`ExitEvent`].
pub const EV_EXIT: u32 = 3;
/// `Header::kind` of an [`OomEvent`].
pub const EV_OOM: u32 = 4;
/// `Header::kind` of a [`TcpEvent`].
pub const EV_TCP: u32 = 5;
/// `Header::kind` of a [`FileEvent`].
pub const EV_FILE: u32 = 6;
/// `Header::kind` of a [`CgroupEvent`].
pub const EV_CGROUP_EMPTY: u32 = 7;

/// `ExecEvent::flags`: more arguments than [`MAX_ARGS`], or one was cut at [`ARG_LEN`].
pub const EXEC_ARGS_TRUNCATED: u32 = 1;

/// `TcpEvent::op`: an outgoing connection attempt ended (see `outcome`).
pub const TCP_CONNECT: u8 = 1;
/// `TcpEvent::op`: an incoming connection was established.
pub const TCP_ACCEPT: u8 = 2;
/// `TcpEvent::op`: a connection closed.
pub const TCP_CLOSE: u8 = 3;
/// `TcpEvent::op`: segments were retransmitted (`count` of them).
pub const TCP_RETRANSMIT: u8 = 4;

/// Connect outcome: the handshake completed.
pub const CONNECT_ESTABLISHED: u8 = 1;
/// Connect outcome: the peer answered with a reset.
pub const CONNECT_REFUSED: u8 = 2;
/// Connect outcome: no answer before the SYN retries ran out.
pub const CONNECT_TIMED_OUT: u8 = 3;
/// Connect outcome: another error (`error` holds it).
pub const CONNECT_FAILED: u8 = 4;
/// Connect outcome: the owner closed the socket before any answer.
pub const CONNECT_ABORTED: u8 = 5;

/// `TcpEvent::flags`: `pid`, `comm` and `start_ns` name the owning process.
pub const TCP_OWNER_KNOWN: u32 = 1;
/// `TcpEvent::flags`: a reset was received on the socket.
pub const TCP_RESET_SEEN: u32 = 2;

/// `FileEvent::op`: an `openat` that failed with ENOENT or EACCES.
pub const FILE_OPEN: u32 = 1;
/// `FileEvent::op`: a successful unlink.
pub const FILE_UNLINK: u32 = 2;
/// `FileEvent::op`: a successful rename.
pub const FILE_RENAME: u32 = 3;

/// Index of the first per-kind drop counter in `COUNTERS` (add the record kind).
pub const CTR_DROP_BASE: u32 = 0;
/// `COUNTERS` index: file events folded into an earlier identical one.
pub const CTR_FILE_AGGREGATED: u32 = 8;
/// `COUNTERS` index: retransmits folded into an earlier retransmit event.
pub const CTR_RETRANSMIT_AGGREGATED: u32 = 9;
/// Number of entries in `COUNTERS`.
pub const CTR_COUNT: u32 = 16;

/// Start of every record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Header {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC.
    pub ts_ns: u64,
    /// One of the `EV_*` constants.
    pub kind: u32,
    /// CPU the record was written on.
    pub cpu: u32,
}

/// A process as the kernel sees it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Task {
    /// Group leader's `task->start_time` (CLOCK_MONOTONIC).
    pub start_ns: u64,
    /// cgroup v2 id.
    pub cgroup_id: u64,
    /// Thread-group id.
    pub pid: u32,
    /// Thread id.
    pub tid: u32,
    /// Real parent's thread-group id.
    pub ppid: u32,
    /// Real uid.
    pub uid: u32,
    /// Command name, NUL-padded.
    pub comm: [u8; COMM_LEN],
}

/// `sched_process_exec`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecEvent {
    /// Record header.
    pub hdr: Header,
    /// The process after exec.
    pub task: Task,
    /// Argument count of the exec.
    pub argc: u32,
    /// How many entries of `args` are filled.
    pub args_read: u32,
    /// `EXEC_*` flags.
    pub flags: u32,
    /// Padding.
    pub _pad: u32,
    /// Executed file, NUL-terminated.
    pub filename: [u8; FILENAME_LEN],
    /// First arguments, each NUL-terminated.
    pub args: [[u8; ARG_LEN]; MAX_ARGS],
    /// Memory-cgroup directory names: leaf, parent, grandparent.
    pub cgroup: [[u8; CGROUP_NAME_LEN]; CGROUP_LEVELS],
}

/// `sched_process_fork` of a new process (threads are skipped in the kernel).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ForkEvent {
    /// Record header.
    pub hdr: Header,
    /// Parent's start time (CLOCK_MONOTONIC).
    pub parent_start_ns: u64,
    /// Child's start time (CLOCK_MONOTONIC).
    pub child_start_ns: u64,
    /// Parent's thread-group id.
    pub parent_pid: u32,
    /// Child's pid.
    pub child_pid: u32,
    /// Command name (inherited from the parent).
    pub comm: [u8; COMM_LEN],
}

/// `sched_process_exit` of the last thread of a process.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitEvent {
    /// Record header.
    pub hdr: Header,
    /// The exiting process.
    pub task: Task,
    /// `task->exit_code`: `(status << 8) | signal`, `0x80` when it dumped core.
    pub exit_code: i32,
    /// Padding.
    pub _pad: u32,
    /// Memory-cgroup directory names: leaf, parent, grandparent.
    pub cgroup: [[u8; CGROUP_NAME_LEN]; CGROUP_LEVELS],
}

/// `cgroup:cgroup_notify_populated` with val 0: a cgroup lost its last process.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CgroupEvent {
    /// Record header.
    pub hdr: Header,
    /// Kernfs id of the cgroup.
    pub cgroup_id: u64,
    /// Hierarchy id: 0 is cgroup v2, others are v1 hierarchies.
    pub root: i32,
    /// Depth below the hierarchy's root.
    pub level: i32,
    /// Path from the hierarchy's root.
    pub path: [u8; PATH_LEN],
}

/// `oom:mark_victim`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OomEvent {
    /// Record header.
    pub hdr: Header,
    /// The victim.
    pub task: Task,
    /// Anonymous + file + shmem pages of the victim.
    pub rss_pages: u64,
    /// Victim's virtual size, in pages.
    pub total_vm_pages: u64,
    /// The uid passed to the tracepoint.
    pub uid: u32,
    /// How many entries of `cgroup` are filled.
    pub levels: u32,
    /// Memory-cgroup directory names from the leaf up to the root (`/`).
    pub cgroup: [[u8; CGROUP_NAME_LEN]; OOM_CGROUP_LEVELS],
}

/// A TCP connection event. `saddr`/`sport` are the local end, `daddr`/`dport` the remote end.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TcpEvent {
    /// Record header.
    pub hdr: Header,
    /// Owner's start time (with `TCP_OWNER_KNOWN`).
    pub start_ns: u64,
    /// Connect: time to the outcome; close: connection lifetime (0 when unknown).
    pub duration_ns: u64,
    /// Close: payload bytes sent, retransmits included.
    pub bytes_sent: u64,
    /// Close: payload bytes received.
    pub bytes_received: u64,
    /// Local address; IPv4 in the first 4 bytes, network order.
    pub saddr: [u8; 16],
    /// Remote address.
    pub daddr: [u8; 16],
    /// Owner's thread-group id.
    pub pid: u32,
    /// Owner's uid.
    pub uid: u32,
    /// Owner's command name.
    pub comm: [u8; COMM_LEN],
    /// Local port.
    pub sport: u16,
    /// Remote port.
    pub dport: u16,
    /// `AF_INET` (2) or `AF_INET6` (10).
    pub family: u16,
    /// One of the `TCP_*` operation constants.
    pub op: u8,
    /// One of the `CONNECT_*` constants for connects, 0 otherwise.
    pub outcome: u8,
    /// `sk_err` of a failed connect or a close.
    pub error: i32,
    /// Retransmit: retransmits this event stands for; close: total retransmits.
    pub count: u32,
    /// `TCP_OWNER_KNOWN` | `TCP_RESET_SEEN`.
    pub flags: u32,
    /// Padding.
    pub _pad: u32,
}

/// A failed open, or a successful unlink or rename, under a configured prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileEvent {
    /// Record header.
    pub hdr: Header,
    /// The calling process.
    pub task: Task,
    /// Syscall result: 0 or `-errno`.
    pub ret: i32,
    /// One of the `FILE_*` constants.
    pub op: u32,
    /// Identical events (same process, op, result and path) this record stands for.
    pub count: u32,
    /// Reserved.
    pub flags: u32,
    /// Path as passed to the syscall.
    pub path: [u8; PATH_LEN],
    /// Rename: the new path.
    pub path2: [u8; PATH_LEN],
}

/// The value of the `CONFIG` map, written by the loader before it attaches the programs.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Identical file events within this window are folded into one.
    pub file_window_ns: u64,
    /// At most one retransmit event per socket per window.
    pub retransmit_window_ns: u64,
    /// Number of prefixes in use; 0 turns the file events off.
    pub prefix_count: u32,
    /// 1: wake the reader for the first record after it caught up; 0 (the default): the reader
    /// reads on its own timer and is woken only when the ring buffer passes a quarter full.
    pub wake_reader: u32,
    /// Prefix bytes, as little-endian words.
    pub prefix_value: [[u64; PREFIX_WORDS]; MAX_PREFIXES],
    /// `0xff` for every byte that belongs to the prefix.
    pub prefix_mask: [[u64; PREFIX_WORDS]; MAX_PREFIXES],
}

/// A prefix that [`Config::new`] cannot hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PrefixError {
    /// More than [`MAX_PREFIXES`] prefixes.
    TooMany {
        /// How many were given.
        given: usize,
    },
    /// An empty prefix, or one longer than [`PREFIX_LEN`] bytes.
    BadLength {
        /// The prefix.
        prefix: String,
    },
}

impl std::fmt::Display for PrefixError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PrefixError::TooMany { given } => {
                write!(
                    f,
                    "{given} path prefixes given, at most {MAX_PREFIXES} are supported"
                )
            }
            PrefixError::BadLength { prefix } => write!(
                f,
                "path prefix `{prefix}` must be between 1 and {PREFIX_LEN} bytes long"
            ),
        }
    }
}

impl std::error::Error for PrefixError {}

impl Config {
    /// A configuration with these windows and path prefixes.
    ///
    /// # Errors
    /// Too many prefixes, or an empty or too long one.
    pub fn new(
        file_window_ns: u64,
        retransmit_window_ns: u64,
        prefixes: &[String],
    ) -> Result<Config, PrefixError> {
        if prefixes.len() > MAX_PREFIXES {
            return Err(PrefixError::TooMany {
                given: prefixes.len(),
            });
        }
        let mut config = Config {
            file_window_ns,
            retransmit_window_ns,
            prefix_count: prefixes.len() as u32,
            wake_reader: 0,
            prefix_value: [[0; PREFIX_WORDS]; MAX_PREFIXES],
            prefix_mask: [[0; PREFIX_WORDS]; MAX_PREFIXES],
        };
        for (i, prefix) in prefixes.iter().enumerate() {
            let bytes = prefix.as_bytes();
            if bytes.is_empty() || bytes.len() > PREFIX_LEN {
                return Err(PrefixError::BadLength {
                    prefix: prefix.clone(),
                });
            }
            for (j, byte) in bytes.iter().enumerate() {
                config.prefix_value[i][j / 8] |= u64::from(*byte) << ((j % 8) * 8);
                config.prefix_mask[i][j / 8] |= 0xff << ((j % 8) * 8);
            }
        }
        Ok(config)
    }

    /// This configuration with the reader woken for the first record after it caught up
    /// (`true`), or only when the ring buffer passes a quarter full (`false`, the default: the
    /// reader reads on its own timer).
    pub fn waking_the_reader(mut self, wake: bool) -> Config {
        self.wake_reader = u32::from(wake);
        self
    }

    /// Whether `path` is selected, exactly as the kernel decides it.
    pub fn selects(&self, path: &[u8]) -> bool {
        let mut padded = [0u8; PATH_LEN];
        let n = path.len().min(PATH_LEN - 1);
        padded[..n].copy_from_slice(&path[..n]);
        (0..(self.prefix_count as usize).min(MAX_PREFIXES)).any(|i| {
            (0..PREFIX_WORDS).all(|w| {
                let mut word = [0u8; 8];
                word.copy_from_slice(&padded[w * 8..w * 8 + 8]);
                u64::from_le_bytes(word) & self.prefix_mask[i][w] == self.prefix_value[i][w]
            })
        })
    }
}

#[cfg(feature = "user")]
mod pod {
    use super::{
        CgroupEvent, Config, ExecEvent, ExitEvent, FileEvent, ForkEvent, Header, OomEvent, TcpEvent,
    };

    // SAFETY: each type is #[repr(C)], made only of integers and integer arrays, with explicit
    // padding fields (the layout test checks there are no hidden gaps), so every bit pattern is
    // a valid value and there is no uninitialized padding.
    unsafe impl aya::Pod for Header {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ExecEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ForkEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for ExitEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for OomEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for TcpEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for FileEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for CgroupEvent {}
    // SAFETY: as above.
    unsafe impl aya::Pod for Config {}
}

/// One decoded ring-buffer record: a view of the bytes it was decoded from, so reading a
/// record copies nothing and allocates nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Record<'a> {
    /// A process exec.
    Exec(&'a ExecEvent),
    /// A new process.
    Fork(&'a ForkEvent),
    /// A process exit.
    Exit(&'a ExitEvent),
    /// An OOM kill.
    Oom(&'a OomEvent),
    /// A TCP connection event.
    Tcp(&'a TcpEvent),
    /// A file event.
    File(&'a FileEvent),
    /// A cgroup lost its last process.
    CgroupEmpty(&'a CgroupEvent),
}

impl Record<'_> {
    /// The record's header.
    pub fn header(&self) -> &Header {
        match self {
            Record::Exec(e) => &e.hdr,
            Record::Fork(e) => &e.hdr,
            Record::Exit(e) => &e.hdr,
            Record::Oom(e) => &e.hdr,
            Record::Tcp(e) => &e.hdr,
            Record::File(e) => &e.hdr,
            Record::CgroupEmpty(e) => &e.hdr,
        }
    }
}

/// Why a ring-buffer record could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Fewer bytes than the record's kind needs.
    TooShort {
        /// The kind read from the header (0 when even the header is cut).
        kind: u32,
        /// Bytes available.
        len: usize,
        /// Bytes needed.
        needed: usize,
    },
    /// A kind this reader does not know.
    UnknownKind {
        /// The kind read from the header.
        kind: u32,
    },
    /// The bytes do not start at a multiple of 8, as every ring-buffer record does.
    Misaligned {
        /// The kind read from the header.
        kind: u32,
    },
}

impl std::fmt::Display for DecodeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DecodeError::TooShort { kind, len, needed } => {
                write!(f, "record of kind {kind} has {len} bytes, needs {needed}")
            }
            DecodeError::UnknownKind { kind } => write!(f, "unknown record kind {kind}"),
            DecodeError::Misaligned { kind } => {
                write!(
                    f,
                    "record of kind {kind} does not start on an 8-byte boundary"
                )
            }
        }
    }
}

impl std::error::Error for DecodeError {}

/// Marker for the record structs: `#[repr(C)]`, integers and integer arrays only.
trait Plain: Copy {}
impl Plain for Header {}
impl Plain for ExecEvent {}
impl Plain for ForkEvent {}
impl Plain for ExitEvent {}
impl Plain for OomEvent {}
impl Plain for TcpEvent {}
impl Plain for FileEvent {}
impl Plain for CgroupEvent {}

fn check<T: Plain>(bytes: &[u8], kind: u32) -> Result<(), DecodeError> {
    if bytes.len() < size_of::<T>() {
        return Err(DecodeError::TooShort {
            kind,
            len: bytes.len(),
            needed: size_of::<T>(),
        });
    }
    Ok(())
}

fn read<T: Plain>(bytes: &[u8], kind: u32) -> Result<T, DecodeError> {
    check::<T>(bytes, kind)?;
    // SAFETY: `bytes` holds at least size_of::<T>() bytes (checked above); read_unaligned has
    // no alignment requirement; T is `Plain`: #[repr(C)] integers and integer arrays only, so
    // every bit pattern is a valid T.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

fn view<T: Plain>(bytes: &[u8], kind: u32) -> Result<&T, DecodeError> {
    check::<T>(bytes, kind)?;
    if !bytes.as_ptr().cast::<T>().is_aligned() {
        return Err(DecodeError::Misaligned { kind });
    }
    // SAFETY: `bytes` holds at least size_of::<T>() bytes (checked above) and starts at an
    // address aligned for T (checked above); T is `Plain`: #[repr(C)] integers and integer
    // arrays only, so every bit pattern is a valid T; the reference borrows `bytes`, so the
    // memory outlives it and is not written through another reference meanwhile.
    Ok(unsafe { &*bytes.as_ptr().cast::<T>() })
}

/// Decodes one ring-buffer record without copying it. Extra trailing bytes are ignored.
///
/// # Errors
/// [`DecodeError`] for a short record, an unknown kind, or bytes that do not start on an
/// 8-byte boundary (ring-buffer records always do).
pub fn decode(bytes: &[u8]) -> Result<Record<'_>, DecodeError> {
    let header: Header = read(bytes, 0)?;
    Ok(match header.kind {
        EV_EXEC => Record::Exec(view(bytes, header.kind)?),
        EV_FORK => Record::Fork(view(bytes, header.kind)?),
        EV_EXIT => Record::Exit(view(bytes, header.kind)?),
        EV_OOM => Record::Oom(view(bytes, header.kind)?),
        EV_TCP => Record::Tcp(view(bytes, header.kind)?),
        EV_FILE => Record::File(view(bytes, header.kind)?),
        EV_CGROUP_EMPTY => Record::CgroupEmpty(view(bytes, header.kind)?),
        kind => return Err(DecodeError::UnknownKind { kind }),
    })
}

/// The text of a NUL-terminated byte buffer (lossy UTF-8; the whole buffer if no NUL).
pub fn c_str(bytes: &[u8]) -> String {
    let bytes = c_bytes(bytes);
    match std::str::from_utf8(bytes) {
        Ok(text) => text.to_owned(),
        Err(_) => String::from_utf8_lossy(bytes).into_owned(),
    }
}

/// The bytes of a NUL-terminated byte buffer before its NUL (the whole buffer if none).
pub fn c_bytes(bytes: &[u8]) -> &[u8] {
    // CStr's search for the NUL looks at a word at a time.
    std::ffi::CStr::from_bytes_until_nul(bytes).map_or(bytes, std::ffi::CStr::to_bytes)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::mem::offset_of;

    use super::*;

    const HEADER: &str = include_str!("../../programs/tapio_events.h");

    macro_rules! layout {
        ($map:ident, $c:literal, $rust:ty, [$($field:ident),* $(,)?]) => {
            $map.insert(($c.to_string(), None), size_of::<$rust>());
            $( $map.insert(($c.to_string(), Some(stringify!($field).to_string())),
                           offset_of!($rust, $field)); )*
        };
    }

    fn rust_layouts() -> HashMap<(String, Option<String>), usize> {
        let mut map = HashMap::new();
        layout!(map, "tapio_header", Header, [ts_ns, kind, cpu]);
        layout!(
            map,
            "tapio_task",
            Task,
            [start_ns, cgroup_id, pid, tid, ppid, uid, comm]
        );
        layout!(
            map,
            "tapio_exec_event",
            ExecEvent,
            [
                hdr, task, argc, args_read, flags, _pad, filename, args, cgroup
            ]
        );
        layout!(
            map,
            "tapio_fork_event",
            ForkEvent,
            [
                hdr,
                parent_start_ns,
                child_start_ns,
                parent_pid,
                child_pid,
                comm
            ]
        );
        layout!(
            map,
            "tapio_exit_event",
            ExitEvent,
            [hdr, task, exit_code, _pad, cgroup]
        );
        layout!(
            map,
            "tapio_oom_event",
            OomEvent,
            [hdr, task, rss_pages, total_vm_pages, uid, levels, cgroup]
        );
        layout!(
            map,
            "tapio_tcp_event",
            TcpEvent,
            [
                hdr,
                start_ns,
                duration_ns,
                bytes_sent,
                bytes_received,
                saddr,
                daddr,
                pid,
                uid,
                comm,
                sport,
                dport,
                family,
                op,
                outcome,
                error,
                count,
                flags,
                _pad
            ]
        );
        layout!(
            map,
            "tapio_file_event",
            FileEvent,
            [hdr, task, ret, op, count, flags, path, path2]
        );
        layout!(
            map,
            "tapio_cgroup_event",
            CgroupEvent,
            [hdr, cgroup_id, root, level, path]
        );
        layout!(
            map,
            "tapio_config",
            Config,
            [
                file_window_ns,
                retransmit_window_ns,
                prefix_count,
                wake_reader,
                prefix_value,
                prefix_mask
            ]
        );
        map
    }

    /// `(struct, field or None for the size, value)` from the header's assert lines.
    fn c_layouts() -> Vec<(String, Option<String>, usize)> {
        let mut found = Vec::new();
        for line in HEADER.lines() {
            let line = line.trim();
            let (is_size, rest) = if let Some(rest) = line.strip_prefix("TAPIO_ASSERT_SIZE(") {
                (true, rest)
            } else if let Some(rest) = line.strip_prefix("TAPIO_ASSERT_OFFSET(") {
                (false, rest)
            } else {
                continue;
            };
            let args: Vec<&str> = rest
                .trim_end_matches(");")
                .split(',')
                .map(str::trim)
                .collect();
            let value = args.last().unwrap().parse().unwrap();
            let field = (!is_size).then(|| args[1].to_string());
            found.push((args[0].to_string(), field, value));
        }
        found
    }

    #[test]
    fn rust_layouts_match_the_c_header() {
        let rust = rust_layouts();
        let c = c_layouts();
        assert_eq!(
            c.len(),
            rust.len(),
            "every Rust field has a C assert and back"
        );
        for (ty, field, value) in c {
            let key = (ty.clone(), field.clone());
            assert_eq!(rust.get(&key), Some(&value), "{ty}.{field:?}");
        }
    }

    #[test]
    fn header_constants_match() {
        for (name, value) in [
            ("TAPIO_EV_EXEC", EV_EXEC as usize),
            ("TAPIO_EV_FORK", EV_FORK as usize),
            ("TAPIO_EV_EXIT", EV_EXIT as usize),
            ("TAPIO_EV_OOM", EV_OOM as usize),
            ("TAPIO_EV_TCP", EV_TCP as usize),
            ("TAPIO_EV_FILE", EV_FILE as usize),
            ("TAPIO_EV_CGROUP_EMPTY", EV_CGROUP_EMPTY as usize),
            ("TAPIO_TCP_CONNECT", TCP_CONNECT as usize),
            ("TAPIO_TCP_ACCEPT", TCP_ACCEPT as usize),
            ("TAPIO_TCP_CLOSE", TCP_CLOSE as usize),
            ("TAPIO_TCP_RETRANSMIT", TCP_RETRANSMIT as usize),
            ("TAPIO_CONNECT_ESTABLISHED", CONNECT_ESTABLISHED as usize),
            ("TAPIO_CONNECT_REFUSED", CONNECT_REFUSED as usize),
            ("TAPIO_CONNECT_TIMED_OUT", CONNECT_TIMED_OUT as usize),
            ("TAPIO_CONNECT_FAILED", CONNECT_FAILED as usize),
            ("TAPIO_CONNECT_ABORTED", CONNECT_ABORTED as usize),
            ("TAPIO_TCP_OWNER_KNOWN", TCP_OWNER_KNOWN as usize),
            ("TAPIO_TCP_RESET_SEEN", TCP_RESET_SEEN as usize),
            ("TAPIO_FILE_OPEN", FILE_OPEN as usize),
            ("TAPIO_FILE_UNLINK", FILE_UNLINK as usize),
            ("TAPIO_FILE_RENAME", FILE_RENAME as usize),
            ("TAPIO_EXEC_ARGS_TRUNCATED", EXEC_ARGS_TRUNCATED as usize),
            ("TAPIO_CTR_DROP_BASE", CTR_DROP_BASE as usize),
            ("TAPIO_CTR_FILE_AGGREGATED", CTR_FILE_AGGREGATED as usize),
            (
                "TAPIO_CTR_RETRANSMIT_AGGREGATED",
                CTR_RETRANSMIT_AGGREGATED as usize,
            ),
            ("TAPIO_CTR_COUNT", CTR_COUNT as usize),
            ("TAPIO_COMM_LEN", COMM_LEN),
            ("TAPIO_FILENAME_LEN", FILENAME_LEN),
            ("TAPIO_MAX_ARGS", MAX_ARGS),
            ("TAPIO_ARG_LEN", ARG_LEN),
            ("TAPIO_CGROUP_NAME_LEN", CGROUP_NAME_LEN),
            ("TAPIO_CGROUP_LEVELS", CGROUP_LEVELS),
            ("TAPIO_OOM_CGROUP_LEVELS", OOM_CGROUP_LEVELS),
            ("TAPIO_PATH_LEN", PATH_LEN),
            ("TAPIO_MAX_PREFIXES", MAX_PREFIXES),
            ("TAPIO_PREFIX_LEN", PREFIX_LEN),
        ] {
            let line = HEADER
                .lines()
                .find(|l| l.split_whitespace().nth(1) == Some(name))
                .unwrap_or_else(|| panic!("{name} defined in the header"));
            let c_value: usize = line.split_whitespace().nth(2).unwrap().parse().unwrap();
            assert_eq!(c_value, value, "{name}");
        }
    }

    /// Bytes on an 8-byte boundary, as ring-buffer records are.
    #[repr(C, align(8))]
    struct Aligned([u8; 1200]);

    fn exec_bytes() -> Box<Aligned> {
        let mut aligned = Box::new(Aligned([0; 1200]));
        let bytes = &mut aligned.0;
        bytes[0..8].copy_from_slice(&123u64.to_le_bytes());
        bytes[8..12].copy_from_slice(&EV_EXEC.to_le_bytes());
        bytes[16 + 16..16 + 20].copy_from_slice(&4242u32.to_le_bytes());
        bytes[80..89].copy_from_slice(b"/bin/true");
        aligned
    }

    #[test]
    fn decodes_an_exec_record() {
        let bytes = exec_bytes();
        let Record::Exec(exec) = decode(&bytes.0[..size_of::<ExecEvent>()]).unwrap() else {
            panic!("not an exec")
        };
        assert_eq!(exec.hdr.ts_ns, 123);
        assert_eq!(exec.task.pid, 4242);
        assert_eq!(c_str(&exec.filename), "/bin/true");
    }

    #[test]
    fn short_garbled_unknown_and_misaligned_records_are_errors_not_panics() {
        let aligned = exec_bytes();
        let bytes = &aligned.0[..size_of::<ExecEvent>()];
        for len in 0..bytes.len() {
            assert!(decode(&bytes[..len]).is_err(), "{len} bytes");
        }
        let mut unknown = exec_bytes();
        unknown.0[8] = 99;
        assert_eq!(
            decode(&unknown.0),
            Err(DecodeError::UnknownKind { kind: 99 })
        );
        let mut shifted = Box::new(Aligned([0; 1200]));
        shifted.0[1..1 + bytes.len()].copy_from_slice(bytes);
        assert_eq!(
            decode(&shifted.0[1..]),
            Err(DecodeError::Misaligned { kind: EV_EXEC })
        );
        // Pseudo-random garbage of every length decodes or fails, never panics.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for len in 0..1200 {
            let garbage: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x % 8) as u8
                })
                .collect();
            drop(decode(&garbage));
        }
    }

    #[test]
    fn prefixes_select_like_the_kernel() {
        let config = Config::new(1, 1, &["/etc/".into(), "/var/run/secrets/".into()]).unwrap();
        assert!(config.selects(b"/etc/passwd"));
        assert!(config.selects(b"/etc/"));
        assert!(!config.selects(b"/etc"));
        assert!(config.selects(b"/var/run/secrets/kubernetes.io/token"));
        assert!(!config.selects(b"/var/run/other"));
        assert!(!config.selects(b"etc/passwd"));
        let none = Config::new(1, 1, &[]).unwrap();
        assert!(!none.selects(b"/etc/passwd"));
        assert!(Config::new(1, 1, &["".into()]).is_err());
        assert!(Config::new(1, 1, &["x".repeat(65)]).is_err());
        assert!(Config::new(1, 1, &vec!["/a".to_string(); 9]).is_err());
        let long = "/".repeat(64);
        let config = Config::new(1, 1, std::slice::from_ref(&long)).unwrap();
        assert!(config.selects(format!("{long}x").as_bytes()));
    }

    #[test]
    fn c_str_stops_at_nul() {
        assert_eq!(c_str(b"abc\0def"), "abc");
        assert_eq!(c_str(b"abc"), "abc");
        assert_eq!(c_str(b""), "");
        assert_eq!(c_str(b"a\xffb\0"), "a\u{fffd}b");
        assert_eq!(c_bytes(b"abc\0def"), b"abc");
    }
}
