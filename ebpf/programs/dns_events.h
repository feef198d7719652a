/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Records that Tapio's DNS programs (dns.bpf.c) write to the DNS_EVENTS ring buffer, and the
 * indices of the DNS_COUNTERS map. Mirrored by `ebpf/common/src/dns.rs` (crate
 * `tapio-ebpf-common`); the size and offsets are pinned on both sides: change them together.
 */
#ifndef TAPIO_DNS_EVENTS_H
#define TAPIO_DNS_EVENTS_H

/* Bytes of a DNS message copied into a record; longer messages are cut (flag CUT). */
#define TAPIO_DNS_MAX 1024

/* struct tapio_dns_event.direction */
#define TAPIO_DNS_EGRESS 0  /* sent by a local socket: a query */
#define TAPIO_DNS_INGRESS 1 /* received by a local socket: a response */

/* struct tapio_dns_event.flags */
#define TAPIO_DNS_CUT 1 /* the message is longer than what was copied */

/* Indices into the per-CPU DNS_COUNTERS array. */
#define TAPIO_DNS_CTR_MESSAGES 0 /* DNS messages recorded */
#define TAPIO_DNS_CTR_DROPPED 1  /* messages lost: the ring buffer was full */
#define TAPIO_DNS_CTR_COUNT 4

struct tapio_dns_event {
	__u64 ts_ns;     /* bpf_ktime_get_ns(): CLOCK_MONOTONIC */
	__u64 cgroup_id; /* cgroup v2 id of the socket's cgroup */
	__u64 pid_tgid;  /* sending task (tgid << 32 | pid) for queries; 0 for responses */
	__u64 start_ns;  /* sending process's start time (group leader's start_time, CLOCK_MONOTONIC) */
	char comm[16];   /* sending task's comm for queries */
	__u8 saddr[16];  /* IPv4 in the first 4 bytes */
	__u8 daddr[16];
	__u16 sport;     /* host byte order */
	__u16 dport;
	__u16 msg_len;   /* the DNS message's length (TCP: its length prefix) */
	__u16 cap_len;   /* bytes copied into data */
	__u8 family;     /* 4 or 6 */
	__u8 protocol;   /* 17 (UDP) or 6 (TCP) */
	__u8 direction;  /* TAPIO_DNS_EGRESS or TAPIO_DNS_INGRESS */
	__u8 flags;      /* TAPIO_DNS_CUT */
	__u32 _pad;
	__u8 data[TAPIO_DNS_MAX];
};

_Static_assert(sizeof(struct tapio_dns_event) == 1120, "tapio_dns_event size");
_Static_assert(__builtin_offsetof(struct tapio_dns_event, saddr) == 48, "saddr offset");
_Static_assert(__builtin_offsetof(struct tapio_dns_event, sport) == 80, "sport offset");
_Static_assert(__builtin_offsetof(struct tapio_dns_event, family) == 88, "family offset");
_Static_assert(__builtin_offsetof(struct tapio_dns_event, data) == 96, "data offset");

#endif
