/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Records that Tapio's eBPF programs write to the EVENTS ring buffer, and the values of the
 * CONFIG and COUNTERS maps.
 *
 * Mirrored field by field by `ebpf/common/src/lib.rs` (crate `tapio-ebpf-common`). Every
 * size and offset is pinned below with a TAPIO_ASSERT_* line: clang checks them when the
 * programs are built, and the Rust crate's layout test parses these same lines and checks its
 * `#[repr(C)]` structs against them. Change both sides and these lines together.
 *
 * Every record starts with a `struct tapio_header`; `kind` says which record follows. All
 * structs have explicit padding so that no byte is left to the compiler.
 */
#ifndef TAPIO_EVENTS_H
#define TAPIO_EVENTS_H

#define TAPIO_COMM_LEN 16
#define TAPIO_FILENAME_LEN 256
#define TAPIO_MAX_ARGS 6
#define TAPIO_ARG_LEN 64
#define TAPIO_CGROUP_NAME_LEN 96
#define TAPIO_CGROUP_LEVELS 3
#define TAPIO_OOM_CGROUP_LEVELS 8
#define TAPIO_PATH_LEN 256
#define TAPIO_MAX_PREFIXES 8
#define TAPIO_PREFIX_LEN 64
#define TAPIO_PREFIX_WORDS (TAPIO_PREFIX_LEN / 8)

/* struct tapio_header.kind */
#define TAPIO_EV_EXEC 1
#define TAPIO_EV_FORK 2
#define TAPIO_EV_EXIT 3
#define TAPIO_EV_OOM 4
#define TAPIO_EV_TCP 5
#define TAPIO_EV_FILE 6
#define TAPIO_EV_CGROUP_EMPTY 7

/* struct tapio_exec_event.flags */
#define TAPIO_EXEC_ARGS_TRUNCATED 1 /* more args than TAPIO_MAX_ARGS, or one was cut */

/* struct tapio_tcp_event.op */
#define TAPIO_TCP_CONNECT 1
#define TAPIO_TCP_ACCEPT 2
#define TAPIO_TCP_CLOSE 3
#define TAPIO_TCP_RETRANSMIT 4

/* struct tapio_tcp_event.outcome (connect only) */
#define TAPIO_CONNECT_ESTABLISHED 1
#define TAPIO_CONNECT_REFUSED 2
#define TAPIO_CONNECT_TIMED_OUT 3
#define TAPIO_CONNECT_FAILED 4  /* another error, in `error` */
#define TAPIO_CONNECT_ABORTED 5 /* closed by its owner before an answer */

/* struct tapio_tcp_event.flags */
#define TAPIO_TCP_OWNER_KNOWN 1 /* pid/comm/start_ns name the owning process */
#define TAPIO_TCP_RESET_SEEN 2  /* a RST was received on this socket */

/* struct tapio_file_event.op */
#define TAPIO_FILE_OPEN 1
#define TAPIO_FILE_UNLINK 2
#define TAPIO_FILE_RENAME 3

/* Indices into the per-CPU COUNTERS array. */
#define TAPIO_CTR_DROP_BASE 0 /* + kind: bpf_ringbuf_reserve failed for a record of that kind */
#define TAPIO_CTR_FILE_AGGREGATED 8 /* file events folded into an earlier one */
#define TAPIO_CTR_RETRANSMIT_AGGREGATED 9 /* retransmits folded into an earlier event */
#define TAPIO_CTR_COUNT 16

struct tapio_header {
	__u64 ts_ns; /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u32 kind;  /* TAPIO_EV_* */
	__u32 cpu;
};

/* A process as the kernel sees it. */
struct tapio_task {
	__u64 start_ns;  /* group leader's task->start_time (CLOCK_MONOTONIC) */
	__u64 cgroup_id; /* cgroup v2 id (kernfs id of task->cgroups->dfl_cgrp) */
	__u32 pid;       /* thread-group id */
	__u32 tid;       /* thread id */
	__u32 ppid;      /* real parent's thread-group id */
	__u32 uid;       /* real uid */
	char comm[TAPIO_COMM_LEN];
};

struct tapio_exec_event {
	struct tapio_header hdr;
	struct tapio_task task;
	__u32 argc;      /* argument count of the exec */
	__u32 args_read; /* how many of `args` are filled */
	__u32 flags;     /* TAPIO_EXEC_* */
	__u32 _pad;
	char filename[TAPIO_FILENAME_LEN];
	char args[TAPIO_MAX_ARGS][TAPIO_ARG_LEN];
	/* memory cgroup (v1 or v2) directory names: [0] leaf, [1] parent, [2] grandparent */
	char cgroup[TAPIO_CGROUP_LEVELS][TAPIO_CGROUP_NAME_LEN];
};

struct tapio_fork_event {
	struct tapio_header hdr;
	__u64 parent_start_ns;
	__u64 child_start_ns;
	__u32 parent_pid;
	__u32 child_pid;
	char comm[TAPIO_COMM_LEN];
};

struct tapio_exit_event {
	struct tapio_header hdr;
	struct tapio_task task;
	__s32 exit_code; /* task->exit_code: (status << 8) | signal, 0x80 = core dumped */
	__u32 _pad;
	char cgroup[TAPIO_CGROUP_LEVELS][TAPIO_CGROUP_NAME_LEN];
};

struct tapio_oom_event {
	struct tapio_header hdr;
	struct tapio_task task; /* the victim */
	__u64 rss_pages;        /* anon + file + shmem pages of the victim's mm */
	__u64 total_vm_pages;
	__u32 uid;    /* uid passed to mark_victim */
	__u32 levels; /* how many entries of `cgroup` are filled */
	/* memory cgroup directory names from the leaf up to the root ("/") */
	char cgroup[TAPIO_OOM_CGROUP_LEVELS][TAPIO_CGROUP_NAME_LEN];
};

/* Addresses: `saddr`/`sport` are always the local end, `daddr`/`dport` the remote end. */
struct tapio_tcp_event {
	struct tapio_header hdr;
	__u64 start_ns;    /* owning process start (when TAPIO_TCP_OWNER_KNOWN) */
	__u64 duration_ns; /* connect: time to the outcome; close: connection lifetime */
	__u64 bytes_sent;  /* close only: payload bytes sent, retransmits included */
	__u64 bytes_received; /* close only: payload bytes received */
	__u8 saddr[16]; /* IPv4 in the first 4 bytes, network order */
	__u8 daddr[16];
	__u32 pid;
	__u32 uid;
	char comm[TAPIO_COMM_LEN];
	__u16 sport; /* host order */
	__u16 dport; /* host order */
	__u16 family; /* AF_INET or AF_INET6 */
	__u8 op;      /* TAPIO_TCP_* */
	__u8 outcome; /* TAPIO_CONNECT_* for connects, 0 otherwise */
	__s32 error;  /* sk_err at the end of a failed connect */
	__u32 count;  /* retransmit: retransmits this event stands for; close: total retransmits */
	__u32 flags;  /* TAPIO_TCP_OWNER_KNOWN | TAPIO_TCP_RESET_SEEN */
	__u32 _pad;
};

struct tapio_file_event {
	struct tapio_header hdr;
	struct tapio_task task;
	__s32 ret;   /* syscall result: 0 or -errno */
	__u32 op;    /* TAPIO_FILE_* */
	__u32 count; /* identical events (same process, op, result, path) this record stands for */
	__u32 flags;
	char path[TAPIO_PATH_LEN];  /* as passed to the syscall (may be relative) */
	char path2[TAPIO_PATH_LEN]; /* rename: the new name */
};

/* A cgroup lost its last process (cgroup:cgroup_notify_populated with val 0). For a container's
 * cgroup this is the container's end, seen by the kernel. */
struct tapio_cgroup_event {
	struct tapio_header hdr;
	__u64 cgroup_id; /* kernfs id of the cgroup */
	__s32 root;      /* hierarchy id: 0 is cgroup v2, others are v1 hierarchies */
	__s32 level;     /* depth below the hierarchy's root */
	char path[TAPIO_PATH_LEN]; /* path from the hierarchy's root */
};

/* The single value of the CONFIG array map, written by the loader before attaching. */
struct tapio_config {
	__u64 file_window_ns;       /* identical file events within this window are folded */
	__u64 retransmit_window_ns; /* at most one retransmit event per socket per window */
	__u32 prefix_count;         /* file events only for paths starting with one of these */
	/* 1: wake the reader for the first record after it caught up (the ring buffer's default);
	 * 0: it reads on its own timer, wake it only when the ring passes a quarter full. */
	__u32 wake_reader;
	/* Prefix i matches a zero-filled path p when (word(p, w) & mask[i][w]) == value[i][w] for
	 * every word w: the prefix bytes, little-endian, and 0xff for each byte of the prefix. */
	__u64 prefix_value[TAPIO_MAX_PREFIXES][TAPIO_PREFIX_WORDS];
	__u64 prefix_mask[TAPIO_MAX_PREFIXES][TAPIO_PREFIX_WORDS];
};

#define TAPIO_ASSERT_SIZE(type, size) _Static_assert(sizeof(struct type) == size, #type " size")
#define TAPIO_ASSERT_OFFSET(type, field, off)                                                      \
	_Static_assert(__builtin_offsetof(struct type, field) == off, #type "." #field " offset")

TAPIO_ASSERT_SIZE(tapio_cgroup_event, 288);
TAPIO_ASSERT_OFFSET(tapio_cgroup_event, hdr, 0);
TAPIO_ASSERT_OFFSET(tapio_cgroup_event, cgroup_id, 16);
TAPIO_ASSERT_OFFSET(tapio_cgroup_event, root, 24);
TAPIO_ASSERT_OFFSET(tapio_cgroup_event, level, 28);
TAPIO_ASSERT_OFFSET(tapio_cgroup_event, path, 32);

TAPIO_ASSERT_SIZE(tapio_header, 16);
TAPIO_ASSERT_OFFSET(tapio_header, ts_ns, 0);
TAPIO_ASSERT_OFFSET(tapio_header, kind, 8);
TAPIO_ASSERT_OFFSET(tapio_header, cpu, 12);

TAPIO_ASSERT_SIZE(tapio_task, 48);
TAPIO_ASSERT_OFFSET(tapio_task, start_ns, 0);
TAPIO_ASSERT_OFFSET(tapio_task, cgroup_id, 8);
TAPIO_ASSERT_OFFSET(tapio_task, pid, 16);
TAPIO_ASSERT_OFFSET(tapio_task, tid, 20);
TAPIO_ASSERT_OFFSET(tapio_task, ppid, 24);
TAPIO_ASSERT_OFFSET(tapio_task, uid, 28);
TAPIO_ASSERT_OFFSET(tapio_task, comm, 32);

TAPIO_ASSERT_SIZE(tapio_exec_event, 1008);
TAPIO_ASSERT_OFFSET(tapio_exec_event, hdr, 0);
TAPIO_ASSERT_OFFSET(tapio_exec_event, task, 16);
TAPIO_ASSERT_OFFSET(tapio_exec_event, argc, 64);
TAPIO_ASSERT_OFFSET(tapio_exec_event, args_read, 68);
TAPIO_ASSERT_OFFSET(tapio_exec_event, flags, 72);
TAPIO_ASSERT_OFFSET(tapio_exec_event, _pad, 76);
TAPIO_ASSERT_OFFSET(tapio_exec_event, filename, 80);
TAPIO_ASSERT_OFFSET(tapio_exec_event, args, 336);
TAPIO_ASSERT_OFFSET(tapio_exec_event, cgroup, 720);

TAPIO_ASSERT_SIZE(tapio_fork_event, 56);
TAPIO_ASSERT_OFFSET(tapio_fork_event, hdr, 0);
TAPIO_ASSERT_OFFSET(tapio_fork_event, parent_start_ns, 16);
TAPIO_ASSERT_OFFSET(tapio_fork_event, child_start_ns, 24);
TAPIO_ASSERT_OFFSET(tapio_fork_event, parent_pid, 32);
TAPIO_ASSERT_OFFSET(tapio_fork_event, child_pid, 36);
TAPIO_ASSERT_OFFSET(tapio_fork_event, comm, 40);

TAPIO_ASSERT_SIZE(tapio_exit_event, 360);
TAPIO_ASSERT_OFFSET(tapio_exit_event, hdr, 0);
TAPIO_ASSERT_OFFSET(tapio_exit_event, task, 16);
TAPIO_ASSERT_OFFSET(tapio_exit_event, exit_code, 64);
TAPIO_ASSERT_OFFSET(tapio_exit_event, _pad, 68);
TAPIO_ASSERT_OFFSET(tapio_exit_event, cgroup, 72);

TAPIO_ASSERT_SIZE(tapio_oom_event, 856);
TAPIO_ASSERT_OFFSET(tapio_oom_event, hdr, 0);
TAPIO_ASSERT_OFFSET(tapio_oom_event, task, 16);
TAPIO_ASSERT_OFFSET(tapio_oom_event, rss_pages, 64);
TAPIO_ASSERT_OFFSET(tapio_oom_event, total_vm_pages, 72);
TAPIO_ASSERT_OFFSET(tapio_oom_event, uid, 80);
TAPIO_ASSERT_OFFSET(tapio_oom_event, levels, 84);
TAPIO_ASSERT_OFFSET(tapio_oom_event, cgroup, 88);

TAPIO_ASSERT_SIZE(tapio_tcp_event, 128);
TAPIO_ASSERT_OFFSET(tapio_tcp_event, hdr, 0);
TAPIO_ASSERT_OFFSET(tapio_tcp_event, start_ns, 16);
TAPIO_ASSERT_OFFSET(tapio_tcp_event, duration_ns, 24);
TAPIO_ASSERT_OFFSET(tapio_tcp_event, bytes_sent, 32);
TAPIO_ASSERT_OFFSET(tapio_tcp_event, bytes_received, 40);
TAPIO_ASSERT_OFFSET(tapio_tcp_event, saddr, 48);
TAPIO_ASSERT_OFFSET(tapio_tcp_event, daddr, 64);
TAPIO_ASSERT_OFFSET(tapio_tcp_event, pid, 80);
TAPIO_ASSERT_OFFSET(tapio_tcp_event, uid, 84);
TAPIO_ASSERT_OFFSET(tapio_tcp_event, comm, 88);
TAPIO_ASSERT_OFFSET(tapio_tcp_event, sport, 104);
TAPIO_ASSERT_OFFSET(tapio_tcp_event, dport, 106);
TAPIO_ASSERT_OFFSET(tapio_tcp_event, family, 108);
TAPIO_ASSERT_OFFSET(tapio_tcp_event, op, 110);
TAPIO_ASSERT_OFFSET(tapio_tcp_event, outcome, 111);
TAPIO_ASSERT_OFFSET(tapio_tcp_event, error, 112);
TAPIO_ASSERT_OFFSET(tapio_tcp_event, count, 116);
TAPIO_ASSERT_OFFSET(tapio_tcp_event, flags, 120);
TAPIO_ASSERT_OFFSET(tapio_tcp_event, _pad, 124);

TAPIO_ASSERT_SIZE(tapio_file_event, 592);
TAPIO_ASSERT_OFFSET(tapio_file_event, hdr, 0);
TAPIO_ASSERT_OFFSET(tapio_file_event, task, 16);
TAPIO_ASSERT_OFFSET(tapio_file_event, ret, 64);
TAPIO_ASSERT_OFFSET(tapio_file_event, op, 68);
TAPIO_ASSERT_OFFSET(tapio_file_event, count, 72);
TAPIO_ASSERT_OFFSET(tapio_file_event, flags, 76);
TAPIO_ASSERT_OFFSET(tapio_file_event, path, 80);
TAPIO_ASSERT_OFFSET(tapio_file_event, path2, 336);

TAPIO_ASSERT_SIZE(tapio_config, 1048);
TAPIO_ASSERT_OFFSET(tapio_config, file_window_ns, 0);
TAPIO_ASSERT_OFFSET(tapio_config, retransmit_window_ns, 8);
TAPIO_ASSERT_OFFSET(tapio_config, prefix_count, 16);
TAPIO_ASSERT_OFFSET(tapio_config, wake_reader, 20);
TAPIO_ASSERT_OFFSET(tapio_config, prefix_value, 24);
TAPIO_ASSERT_OFFSET(tapio_config, prefix_mask, 536);

#endif /* TAPIO_EVENTS_H */
