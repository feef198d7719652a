// SPDX-License-Identifier: GPL-2.0
/*
 * Tapio's kernel collector: process lifecycle, OOM kills, TCP connections and file events.
 *
 * Hooks (this kernel has tracepoints, raw_tp and tp_btf, but no kprobes and no fentry):
 *   tp_btf sched_process_exec / sched_process_fork / sched_process_exit, tp_btf mark_victim,
 *   tp_btf inet_sock_set_state / tcp_receive_reset / tcp_retransmit_skb, and classic syscall
 *   tracepoints for openat, unlink(at) and rename(at,at2) (exit only, see "Files").
 *
 * Every record goes to the EVENTS ring buffer (layouts in tapio_events.h). A failed
 * bpf_ringbuf_reserve is counted per kind in the per-CPU COUNTERS array, so userspace can
 * report drops. Nothing here logs: the programs report only through records and counters.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>

#include "tapio_events.h"

#define AF_INET 2
#define AF_INET6 10
#define ECONNREFUSED 111
#define ETIMEDOUT 110
#define ENOENT 2
#define EACCES 13

char LICENSE[] SEC("license") = "GPL";

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 * 1024 * 1024); /* the loader sets the configured size */
} EVENTS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, TAPIO_CTR_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} COUNTERS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct tapio_config);
} CONFIG SEC(".maps");

/* What we know about a TCP socket: its owner and its retransmits. Keyed by the sock address. */
struct sock_info {
	__u64 start_ns;       /* owner's start time */
	__u64 since_ns;       /* connect start / accept time */
	__u64 last_retrans_ns;
	__u32 pid;
	__u32 uid;
	__u32 retrans_pending;
	__u32 retrans_total;
	__u32 flags; /* TAPIO_TCP_OWNER_KNOWN | TAPIO_TCP_RESET_SEEN */
	__u32 _pad;
	char comm[TAPIO_COMM_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct sock_info);
} SOCKS SEC(".maps");

/* Owner of a listening port, so accepted connections (set up in softirq) name a process. */
struct listener_key {
	__u32 netns;
	__u16 port;
	__u16 family;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, struct listener_key);
	__type(value, struct sock_info);
} LISTENERS SEC(".maps");

/* Folding of identical file events (same process, op, result and path) within a window. */
struct file_agg_key {
	__u64 path_hash;
	__u32 tgid;
	__u32 op;
	__s32 ret;
	__u32 _pad;
};

struct file_agg {
	__u64 last_emit_ns;
	__u32 pending; /* events folded since the last emitted one */
	__u32 _pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct file_agg_key);
	__type(value, struct file_agg);
} FILE_AGG SEC(".maps");

/* Scratch space too large for the 512-byte BPF stack. */
struct scratch {
	char path[TAPIO_PATH_LEN];
	char skip[TAPIO_PATH_LEN];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} SCRATCH SEC(".maps");

/* Older kernels name kernfs_node.__parent `parent`. */
struct kernfs_node___old {
	struct kernfs_node *parent;
} __attribute__((preserve_access_index));

static __always_inline void count(__u32 index)
{
	__u64 *value = bpf_map_lookup_elem(&COUNTERS, &index);
	if (value)
		*value += 1;
}

static __always_inline void *reserve(__u64 size, __u32 kind)
{
	void *record = bpf_ringbuf_reserve(&EVENTS, size, 0);
	if (!record) {
		count(TAPIO_CTR_DROP_BASE + kind);
		return 0;
	}
	struct tapio_header *hdr = record;
	hdr->ts_ns = bpf_ktime_get_ns();
	hdr->kind = kind;
	hdr->cpu = bpf_get_smp_processor_id();
	return record;
}

/*
 * Waking the reader is the most expensive part of a record: irq_work, a self-IPI and a
 * scheduler wakeup (several microseconds on a VM). Unless configured otherwise
 * (`wake_reader`), the reader reads on its own timer and records are submitted without a
 * wakeup, except the one that takes the ring past a quarter full, so a burst cannot overflow a
 * small ring between two reads. `size` is the record's size.
 */
static __always_inline void submit(void *record, __u64 size)
{
	__u32 zero = 0;
	struct tapio_config *cfg = bpf_map_lookup_elem(&CONFIG, &zero);
	__u64 flags = 0;
	if (!cfg || !cfg->wake_reader) {
		flags = BPF_RB_NO_WAKEUP;
		__u64 mark = bpf_ringbuf_query(&EVENTS, BPF_RB_RING_SIZE) / 4;
		__u64 avail = bpf_ringbuf_query(&EVENTS, BPF_RB_AVAIL_DATA);
		/* `avail` includes this record and its 8-byte ring header. */
		if (avail >= mark && avail < mark + size + 8)
			flags = BPF_RB_FORCE_WAKEUP;
	}
	bpf_ringbuf_submit(record, flags);
}

/*
 * `task` is a BTF pointer (a tp_btf argument or bpf_get_current_task_btf()): its fields, and
 * the structs they point to, are read with plain loads, which the verifier turns into guarded
 * loads (a fault reads 0). That is far cheaper than a bpf_probe_read_kernel call per field.
 */
static __always_inline void fill_task(struct tapio_task *t, struct task_struct *task)
{
	t->start_ns = task->group_leader->start_time;
	t->cgroup_id = task->cgroups->dfl_cgrp->kn->id;
	t->pid = task->tgid;
	t->tid = task->pid;
	t->ppid = task->real_parent->tgid;
	t->uid = task->real_cred->uid.val;
	/* comm is NUL-padded (set with strscpy_pad). */
	__builtin_memcpy(t->comm, task->comm, TAPIO_COMM_LEN);
}

static __always_inline struct kernfs_node *kn_parent(struct kernfs_node *kn)
{
	if (bpf_core_field_exists(kn->__parent))
		return kn->__parent;
	struct kernfs_node___old *old = (void *)kn;
	return old->parent;
}

/* The cgroup whose names identify a container: the memory controller's one (cgroup v1 memory
 * hierarchy on hybrid hosts, the v2 cgroup on unified hosts), else the v2 cgroup. */
static __always_inline struct kernfs_node *identity_cgroup(struct task_struct *task)
{
	struct css_set *cset = task->cgroups;
	if (!cset)
		return 0;
	if (bpf_core_enum_value_exists(enum cgroup_subsys_id, memory_cgrp_id)) {
		/* A load-time constant, so the verifier sees a fixed offset into subsys[]. */
		__u32 id = bpf_core_enum_value(enum cgroup_subsys_id, memory_cgrp_id);
		struct cgroup_subsys_state *css = 0;
		if (id < bpf_core_enum_value(enum cgroup_subsys_id, CGROUP_SUBSYS_COUNT))
			css = cset->subsys[id];
		if (css)
			return css->cgroup->kn;
	}
	return cset->dfl_cgrp->kn;
}

/* Reads `levels` directory names, leaf first; returns how many were read. */
static __always_inline __u32 read_cgroup_names(struct task_struct *task,
					       char names[][TAPIO_CGROUP_NAME_LEN], __u32 levels)
{
	struct kernfs_node *kn = identity_cgroup(task);
	__u32 read = 0;
	for (__u32 i = 0; i < TAPIO_OOM_CGROUP_LEVELS; i++) {
		if (i >= levels)
			break;
		names[i][0] = 0;
		if (!kn)
			continue;
		const char *name = kn->name;
		if (bpf_probe_read_kernel_str(names[i], TAPIO_CGROUP_NAME_LEN, name) < 0)
			names[i][0] = 0;
		else
			read = i + 1;
		kn = kn_parent(kn);
	}
	return read;
}

/* ===== Processes ===== */

SEC("tp_btf/sched_process_exec")
int BPF_PROG(tapio_exec, struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
{
	struct tapio_exec_event *e = reserve(sizeof(*e), TAPIO_EV_EXEC);
	if (!e)
		return 0;
	fill_task(&e->task, p);
	e->argc = bprm->argc;
	e->args_read = 0;
	e->flags = 0;
	e->_pad = 0;
	if (bpf_probe_read_kernel_str(e->filename, sizeof(e->filename), bprm->filename) < 0)
		e->filename[0] = 0;

	__u32 zero = 0;
	struct scratch *s = bpf_map_lookup_elem(&SCRATCH, &zero);
	struct mm_struct *mm = p->mm;
	__u64 arg = mm->arg_start;
	__u64 end = mm->arg_end;
	for (__u32 i = 0; i < TAPIO_MAX_ARGS; i++) {
		e->args[i][0] = 0;
		if (arg >= end)
			continue;
		long n = bpf_probe_read_user_str(e->args[i], TAPIO_ARG_LEN, (void *)arg);
		if (n <= 0) {
			arg = end;
			continue;
		}
		e->args_read = i + 1;
		if (n < TAPIO_ARG_LEN) {
			arg += n;
			continue;
		}
		/* n == TAPIO_ARG_LEN: exactly 63 bytes, or cut. Skip to the end of this one. */
		arg += TAPIO_ARG_LEN - 1;
		if (!s) {
			arg = end;
			e->flags |= TAPIO_EXEC_ARGS_TRUNCATED;
			continue;
		}
		for (__u32 j = 0; j < 16; j++) {
			long m = bpf_probe_read_user_str(s->skip, TAPIO_PATH_LEN, (void *)arg);
			if (m <= 0) {
				arg = end;
				break;
			}
			if (m > 1)
				e->flags |= TAPIO_EXEC_ARGS_TRUNCATED;
			if (m < TAPIO_PATH_LEN) {
				arg += m;
				break;
			}
			arg += TAPIO_PATH_LEN - 1;
		}
	}
	if (e->argc > e->args_read)
		e->flags |= TAPIO_EXEC_ARGS_TRUNCATED;
	read_cgroup_names(p, e->cgroup, TAPIO_CGROUP_LEVELS);
	submit(e, sizeof(*e));
	return 0;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(tapio_fork, struct task_struct *parent, struct task_struct *child)
{
	/* Threads are not processes. */
	if (child->pid != child->tgid)
		return 0;
	struct tapio_fork_event *e = reserve(sizeof(*e), TAPIO_EV_FORK);
	if (!e)
		return 0;
	e->parent_start_ns = parent->group_leader->start_time;
	e->child_start_ns = child->start_time;
	e->parent_pid = parent->tgid;
	e->child_pid = child->tgid;
	__builtin_memcpy(e->comm, child->comm, TAPIO_COMM_LEN);
	submit(e, sizeof(*e));
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(tapio_exit, struct task_struct *p)
{
	/* Only the last thread of a thread group ends the process: signal->live is 0 then. */
	if (p->signal->live.counter != 0)
		return 0;
	struct tapio_exit_event *e = reserve(sizeof(*e), TAPIO_EV_EXIT);
	if (!e)
		return 0;
	fill_task(&e->task, p);
	e->exit_code = p->exit_code;
	e->_pad = 0;
	read_cgroup_names(p, e->cgroup, TAPIO_CGROUP_LEVELS);
	submit(e, sizeof(*e));
	return 0;
}

/* ===== Containers ===== */

/* A cgroup that becomes empty. Container cgroups sit at least three levels deep
 * (kubepods/<qos>/pod<uid>/<id> or the systemd slices), so shallower ones are skipped here and
 * userspace keeps only paths that name a container. */
SEC("tp_btf/cgroup_notify_populated")
int BPF_PROG(tapio_cgroup_empty, struct cgroup *cgrp, const char *path, int val)
{
	if (val != 0)
		return 0;
	int level = BPF_CORE_READ(cgrp, level);
	if (level < 2)
		return 0;
	struct tapio_cgroup_event *e = reserve(sizeof(*e), TAPIO_EV_CGROUP_EMPTY);
	if (!e)
		return 0;
	e->cgroup_id = BPF_CORE_READ(cgrp, kn, id);
	e->root = BPF_CORE_READ(cgrp, root, hierarchy_id);
	e->level = level;
	if (bpf_probe_read_kernel_str(e->path, sizeof(e->path), path) < 0)
		e->path[0] = 0;
	submit(e, sizeof(*e));
	return 0;
}

/* ===== OOM ===== */

SEC("tp_btf/mark_victim")
int BPF_PROG(tapio_oom, struct task_struct *task, uid_t uid)
{
	struct tapio_oom_event *e = reserve(sizeof(*e), TAPIO_EV_OOM);
	if (!e)
		return 0;
	fill_task(&e->task, task);
	struct mm_struct *mm = BPF_CORE_READ(task, mm);
	e->rss_pages = 0;
	e->total_vm_pages = 0;
	if (mm) {
		/* What the kernel's own get_mm_counter() reads: the percpu_counter's count. */
		__s64 anon = BPF_CORE_READ(mm, rss_stat[MM_ANONPAGES].count);
		__s64 file = BPF_CORE_READ(mm, rss_stat[MM_FILEPAGES].count);
		__s64 shmem = BPF_CORE_READ(mm, rss_stat[MM_SHMEMPAGES].count);
		__s64 rss = (anon > 0 ? anon : 0) + (file > 0 ? file : 0) + (shmem > 0 ? shmem : 0);
		e->rss_pages = rss;
		e->total_vm_pages = BPF_CORE_READ(mm, total_vm);
	}
	e->uid = uid;
	e->levels = read_cgroup_names(task, e->cgroup, TAPIO_OOM_CGROUP_LEVELS);
	submit(e, sizeof(*e));
	return 0;
}

/* ===== TCP ===== */

static __always_inline void owner_from_current(struct sock_info *info)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task_btf();
	__builtin_memset(info, 0, sizeof(*info));
	info->start_ns = BPF_CORE_READ(task, group_leader, start_time);
	info->pid = bpf_get_current_pid_tgid() >> 32;
	info->uid = (__u32)bpf_get_current_uid_gid();
	info->flags = TAPIO_TCP_OWNER_KNOWN;
	bpf_get_current_comm(info->comm, sizeof(info->comm));
}

static __always_inline void fill_addresses(struct tapio_tcp_event *e, const struct sock *sk,
					   __u16 family)
{
	__builtin_memset(e->saddr, 0, sizeof(e->saddr));
	__builtin_memset(e->daddr, 0, sizeof(e->daddr));
	e->family = family;
	/* inet_sport, not skc_num: at TCP_CLOSE the port has already been released (skc_num 0). */
	const struct inet_sock *inet = (const struct inet_sock *)sk;
	e->sport = bpf_ntohs(BPF_CORE_READ(inet, inet_sport));
	e->dport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	if (family == AF_INET) {
		BPF_CORE_READ_INTO((__u32 *)e->saddr, sk, __sk_common.skc_rcv_saddr);
		BPF_CORE_READ_INTO((__u32 *)e->daddr, sk, __sk_common.skc_daddr);
	} else {
		BPF_CORE_READ_INTO(&e->saddr, sk, __sk_common.skc_v6_rcv_saddr.in6_u.u6_addr8);
		BPF_CORE_READ_INTO(&e->daddr, sk, __sk_common.skc_v6_daddr.in6_u.u6_addr8);
	}
}

static __always_inline void emit_tcp(const struct sock *sk, __u16 family, __u8 op, __u8 outcome,
				     __s32 error, struct sock_info *info, __u64 duration,
				     __u32 count_value, int with_bytes)
{
	struct tapio_tcp_event *e = reserve(sizeof(*e), TAPIO_EV_TCP);
	if (!e)
		return;
	fill_addresses(e, sk, family);
	e->op = op;
	e->outcome = outcome;
	e->error = error;
	e->count = count_value;
	e->duration_ns = duration;
	e->_pad = 0;
	e->bytes_sent = 0;
	e->bytes_received = 0;
	if (with_bytes) {
		const struct tcp_sock *tp = (const struct tcp_sock *)sk;
		/* Payload bytes: bytes_sent counts data segments (retransmits included);
		 * bytes_received counts sequence space, which includes a received FIN. */
		e->bytes_sent = BPF_CORE_READ(tp, bytes_sent);
		e->bytes_received = BPF_CORE_READ(tp, bytes_received);
		if (e->bytes_received > 0 && (BPF_CORE_READ(sk, sk_shutdown) & 1 /* RCV_SHUTDOWN */))
			e->bytes_received -= 1;
	}
	if (info) {
		e->start_ns = info->start_ns;
		e->pid = info->pid;
		e->uid = info->uid;
		e->flags = info->flags;
		__builtin_memcpy(e->comm, info->comm, sizeof(e->comm));
	} else {
		e->start_ns = 0;
		e->pid = 0;
		e->uid = 0;
		e->flags = 0;
		e->comm[0] = 0;
	}
	submit(e, sizeof(*e));
}

static __always_inline struct listener_key listener_of(const struct sock *sk, __u16 family)
{
	struct listener_key key = {};
	key.netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	key.port = BPF_CORE_READ(sk, __sk_common.skc_num);
	key.family = family;
	return key;
}

SEC("tp_btf/inet_sock_set_state")
int BPF_PROG(tapio_sock_state, const struct sock *sk, const int oldstate, const int newstate)
{
	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP)
		return 0;
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family != AF_INET && family != AF_INET6)
		return 0;
	__u64 key = (__u64)sk;
	__u64 now = bpf_ktime_get_ns();

	if (newstate == TCP_SYN_SENT) {
		/* connect(2), in the owner's context. */
		struct sock_info info;
		owner_from_current(&info);
		info.since_ns = now;
		bpf_map_update_elem(&SOCKS, &key, &info, BPF_ANY);
		return 0;
	}
	if (newstate == TCP_LISTEN) {
		/* listen(2), in the owner's context. */
		struct listener_key lkey = listener_of(sk, family);
		struct sock_info info;
		owner_from_current(&info);
		info.since_ns = now;
		bpf_map_update_elem(&LISTENERS, &lkey, &info, BPF_ANY);
		return 0;
	}
	if (oldstate == TCP_LISTEN && newstate == TCP_CLOSE) {
		struct listener_key lkey = listener_of(sk, family);
		bpf_map_delete_elem(&LISTENERS, &lkey);
		return 0;
	}
	if (oldstate == TCP_SYN_SENT && (newstate == TCP_ESTABLISHED || newstate == TCP_CLOSE)) {
		struct sock_info *info = bpf_map_lookup_elem(&SOCKS, &key);
		__u64 duration = info ? now - info->since_ns : 0;
		if (newstate == TCP_ESTABLISHED) {
			emit_tcp(sk, family, TAPIO_TCP_CONNECT, TAPIO_CONNECT_ESTABLISHED, 0, info,
				 duration, 0, 0);
			if (info)
				info->since_ns = now;
			return 0;
		}
		__s32 err = BPF_CORE_READ(sk, sk_err);
		__u8 outcome = TAPIO_CONNECT_ABORTED;
		if (err == ECONNREFUSED || (info && (info->flags & TAPIO_TCP_RESET_SEEN)))
			outcome = TAPIO_CONNECT_REFUSED;
		else if (err == ETIMEDOUT)
			outcome = TAPIO_CONNECT_TIMED_OUT;
		else if (err != 0)
			outcome = TAPIO_CONNECT_FAILED;
		emit_tcp(sk, family, TAPIO_TCP_CONNECT, outcome, err, info, duration,
			 info ? info->retrans_total : 0, 0);
		bpf_map_delete_elem(&SOCKS, &key);
		return 0;
	}
	if (oldstate == TCP_SYN_RECV && newstate == TCP_ESTABLISHED) {
		/* Passive open completed (softirq): the owner is whoever listens on the port. */
		struct listener_key lkey = listener_of(sk, family);
		struct sock_info *owner = bpf_map_lookup_elem(&LISTENERS, &lkey);
		struct sock_info info = {};
		if (owner)
			info = *owner;
		info.since_ns = now;
		info.retrans_pending = 0;
		info.retrans_total = 0;
		info.last_retrans_ns = 0;
		emit_tcp(sk, family, TAPIO_TCP_ACCEPT, 0, 0, owner ? &info : 0, 0, 0, 0);
		bpf_map_update_elem(&SOCKS, &key, &info, BPF_ANY);
		return 0;
	}
	if (newstate == TCP_CLOSE && oldstate != TCP_SYN_RECV && oldstate != TCP_NEW_SYN_RECV) {
		struct sock_info *info = bpf_map_lookup_elem(&SOCKS, &key);
		__u64 duration = info ? now - info->since_ns : 0;
		emit_tcp(sk, family, TAPIO_TCP_CLOSE, 0, BPF_CORE_READ(sk, sk_err), info, duration,
			 info ? info->retrans_total : 0, 1);
		if (info)
			bpf_map_delete_elem(&SOCKS, &key);
		return 0;
	}
	return 0;
}

SEC("tp_btf/tcp_receive_reset")
int BPF_PROG(tapio_tcp_reset, struct sock *sk)
{
	__u64 key = (__u64)sk;
	struct sock_info *info = bpf_map_lookup_elem(&SOCKS, &key);
	if (info)
		info->flags |= TAPIO_TCP_RESET_SEEN;
	return 0;
}

SEC("tp_btf/tcp_retransmit_skb")
int BPF_PROG(tapio_tcp_retransmit, const struct sock *sk)
{
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family != AF_INET && family != AF_INET6)
		return 0;
	__u64 key = (__u64)sk;
	__u64 now = bpf_ktime_get_ns();
	struct sock_info *info = bpf_map_lookup_elem(&SOCKS, &key);
	if (!info) {
		/* A connection older than the agent: remember it, owner unknown. */
		struct sock_info fresh = {};
		fresh.since_ns = now;
		bpf_map_update_elem(&SOCKS, &key, &fresh, BPF_NOEXIST);
		info = bpf_map_lookup_elem(&SOCKS, &key);
		if (!info)
			return 0;
	}
	__u32 zero = 0;
	struct tapio_config *cfg = bpf_map_lookup_elem(&CONFIG, &zero);
	__u64 window = cfg ? cfg->retransmit_window_ns : 1000000000ULL;
	__sync_fetch_and_add(&info->retrans_total, 1);
	if (info->last_retrans_ns != 0 && now - info->last_retrans_ns < window) {
		__sync_fetch_and_add(&info->retrans_pending, 1);
		count(TAPIO_CTR_RETRANSMIT_AGGREGATED);
		return 0;
	}
	__u32 folded = info->retrans_pending;
	info->retrans_pending = 0;
	info->last_retrans_ns = now;
	/* An unknown owner has pid 0 and no TAPIO_TCP_OWNER_KNOWN flag. */
	emit_tcp(sk, family, TAPIO_TCP_RETRANSMIT, 0, 0, info, 0, folded + 1, 0);
	return 0;
}

/* ===== Files ===== */

/*
 * Only the sys_exit tracepoints are attached. The result is checked first, so the common case
 * (an open that succeeded, an unlink or rename that failed) costs one comparison and reads
 * nothing. Only then are the arguments read back from the syscall's saved user registers
 * (bpf_task_pt_regs: they are unchanged at sys_exit) and the path compared with the prefixes.
 * Nothing is kept between enter and exit, and no sys_enter program runs on every open.
 */

/* Prefixes are compared a word at a time against masks prepared by the loader: no data-dependent
 * branches, so the verifier walks it once instead of once per possible mismatch position.
 * `path` must be zero-filled past its NUL (see read_path). */
static __always_inline int path_selected(const struct scratch *s, const struct tapio_config *cfg)
{
	__u32 n = cfg->prefix_count;
	const __u64 *words = (const __u64 *)s->path;
	int selected = 0;
	for (__u32 i = 0; i < TAPIO_MAX_PREFIXES; i++) {
		__u64 diff = 0;
		for (__u32 w = 0; w < TAPIO_PREFIX_WORDS; w++)
			diff |= (words[w] & cfg->prefix_mask[i][w]) ^ cfg->prefix_value[i][w];
		if (i < n && diff == 0)
			selected = 1;
	}
	return selected;
}

/* A cheap first look: the path's first 8 bytes against each prefix's first word, which is
 * necessary for a match (bytes past the path's NUL are either masked out or come after a NUL
 * that already differs from the prefix). Most paths stop here, before the whole path is read. */
static __always_inline int maybe_selected(const struct tapio_config *cfg, __u64 ptr)
{
	__u64 word = 0;
	if (!ptr)
		return 0;
	/* A short path at the very end of a mapping cannot be read as 8 bytes: the full read
	 * decides then. */
	if (bpf_probe_read_user(&word, sizeof(word), (void *)ptr) < 0)
		return 1;
	__u32 n = cfg->prefix_count;
	int maybe = 0;
	for (__u32 i = 0; i < TAPIO_MAX_PREFIXES; i++)
		if (i < n && (word & cfg->prefix_mask[i][0]) == cfg->prefix_value[i][0])
			maybe = 1;
	return maybe;
}

/* Reads a user path into scratch, zero-filled past the NUL. */
static __always_inline long read_path(struct scratch *s, __u64 ptr)
{
	__builtin_memset(s->path, 0, sizeof(s->path));
	if (!ptr)
		return -1;
	long n = bpf_probe_read_user_str(s->path, TAPIO_PATH_LEN, (void *)ptr);
	if (n <= 0)
		__builtin_memset(s->path, 0, sizeof(s->path));
	return n;
}

static __always_inline int user_path_selected(struct scratch *s, const struct tapio_config *cfg,
					      __u64 ptr)
{
	if (read_path(s, ptr) <= 0)
		return 0;
	return path_selected(s, cfg);
}

/* FNV-1a over the zero-filled path, a word at a time. */
static __always_inline __u64 hash_path(const struct scratch *s)
{
	const __u64 *words = (const __u64 *)s->path;
	__u64 hash = 0xcbf29ce484222325ULL;
	for (__u32 w = 0; w < TAPIO_PATH_LEN / 8; w++) {
		hash ^= words[w];
		hash *= 0x100000001b3ULL;
	}
	return hash;
}

/* The user registers the running syscall was entered with. */
static __always_inline struct pt_regs *syscall_regs(void)
{
	return (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
}

/* A file syscall whose result is worth reporting: filter on the paths, fold, emit. `path2` is
 * the new name of a rename, 0 otherwise. */
static __always_inline int file_event(__u32 op, long ret, __u64 path, __u64 path2)
{
	__u32 zero = 0;
	struct tapio_config *cfg = bpf_map_lookup_elem(&CONFIG, &zero);
	struct scratch *s = bpf_map_lookup_elem(&SCRATCH, &zero);
	if (!cfg || !s || cfg->prefix_count == 0)
		return 0;
	if (!maybe_selected(cfg, path) && !(path2 && maybe_selected(cfg, path2)))
		return 0;
	/* A rename is selected by either name; `s->path` ends up holding the first one. */
	int selected = path2 && user_path_selected(s, cfg, path2);
	if (!user_path_selected(s, cfg, path) && !selected)
		return 0;

	__u64 now = bpf_ktime_get_ns();
	struct file_agg_key akey = {};
	akey.path_hash = hash_path(s);
	akey.tgid = bpf_get_current_pid_tgid() >> 32;
	akey.op = op;
	akey.ret = ret;
	struct file_agg *agg = bpf_map_lookup_elem(&FILE_AGG, &akey);
	__u32 folded = 0;
	if (agg) {
		if (now - agg->last_emit_ns < cfg->file_window_ns) {
			__sync_fetch_and_add(&agg->pending, 1);
			count(TAPIO_CTR_FILE_AGGREGATED);
			return 0;
		}
		folded = agg->pending;
		agg->pending = 0;
		agg->last_emit_ns = now;
	} else {
		struct file_agg fresh = {.last_emit_ns = now};
		bpf_map_update_elem(&FILE_AGG, &akey, &fresh, BPF_ANY);
	}

	struct tapio_file_event *e = reserve(sizeof(*e), TAPIO_EV_FILE);
	if (!e)
		return 0;
	fill_task(&e->task, (struct task_struct *)bpf_get_current_task_btf());
	e->ret = ret;
	e->op = op;
	e->count = folded + 1;
	e->flags = 0;
	if (bpf_probe_read_kernel_str(e->path, TAPIO_PATH_LEN, s->path) < 0)
		e->path[0] = 0;
	e->path2[0] = 0;
	if (path2 && bpf_probe_read_user_str(e->path2, TAPIO_PATH_LEN, (void *)path2) < 0)
		e->path2[0] = 0;
	submit(e, sizeof(*e));
	return 0;
}

/* Failed opens: only "not there" and "not allowed". */
static __always_inline int open_failed(long ret)
{
	return ret == -ENOENT || ret == -EACCES;
}

SEC("tracepoint/syscalls/sys_exit_openat")
int tapio_openat_exit(struct trace_event_raw_sys_exit *ctx)
{
	long ret = ctx->ret;
	if (!open_failed(ret))
		return 0;
	struct pt_regs *regs = syscall_regs();
	return file_event(TAPIO_FILE_OPEN, ret, PT_REGS_PARM2_SYSCALL(regs), 0);
}

/* Unlinks and renames: only what happened. */
SEC("tracepoint/syscalls/sys_exit_unlink")
int tapio_unlink_exit(struct trace_event_raw_sys_exit *ctx)
{
	if (ctx->ret != 0)
		return 0;
	struct pt_regs *regs = syscall_regs();
	return file_event(TAPIO_FILE_UNLINK, 0, PT_REGS_PARM1_SYSCALL(regs), 0);
}

SEC("tracepoint/syscalls/sys_exit_unlinkat")
int tapio_unlinkat_exit(struct trace_event_raw_sys_exit *ctx)
{
	if (ctx->ret != 0)
		return 0;
	struct pt_regs *regs = syscall_regs();
	return file_event(TAPIO_FILE_UNLINK, 0, PT_REGS_PARM2_SYSCALL(regs), 0);
}

SEC("tracepoint/syscalls/sys_exit_rename")
int tapio_rename_exit(struct trace_event_raw_sys_exit *ctx)
{
	if (ctx->ret != 0)
		return 0;
	struct pt_regs *regs = syscall_regs();
	return file_event(TAPIO_FILE_RENAME, 0, PT_REGS_PARM1_SYSCALL(regs),
			  PT_REGS_PARM2_SYSCALL(regs));
}

SEC("tracepoint/syscalls/sys_exit_renameat")
int tapio_renameat_exit(struct trace_event_raw_sys_exit *ctx)
{
	if (ctx->ret != 0)
		return 0;
	struct pt_regs *regs = syscall_regs();
	return file_event(TAPIO_FILE_RENAME, 0, PT_REGS_PARM2_SYSCALL(regs),
			  PT_REGS_PARM4_SYSCALL(regs));
}

SEC("tracepoint/syscalls/sys_exit_renameat2")
int tapio_renameat2_exit(struct trace_event_raw_sys_exit *ctx)
{
	if (ctx->ret != 0)
		return 0;
	struct pt_regs *regs = syscall_regs();
	return file_event(TAPIO_FILE_RENAME, 0, PT_REGS_PARM2_SYSCALL(regs),
			  PT_REGS_PARM4_SYSCALL(regs));
}
