// SPDX-License-Identifier: GPL-2.0
/*
 * Tapio's DNS capture: cgroup_skb programs on the root of the cgroup v2 hierarchy.
 *
 * A cgroup_skb program attached to a cgroup runs for every packet sent or received by a socket
 * of that cgroup or of any cgroup below it, in whatever network namespace the socket lives: on
 * the root it sees every pod's traffic, and the socket's cgroup id names its container. It
 * runs where the socket is known (after the socket lookup on ingress), so loopback traffic and
 * traffic between namespaces on the same node is seen once per socket.
 *
 * Only DNS on the configured ports is recorded: queries (QR = 0) as a local socket sends them
 * (egress, in the sending task's context, so its pid and comm are the querying process) and
 * responses (QR = 1) as a local socket receives them (ingress). A DNS server on the node sees
 * the other halves (queries in, responses out), which are not recorded, so every lookup is
 * recorded once, at its client. Over TCP, a segment that starts with the 2-byte length prefix
 * is recorded; a message split across segments is cut. The programs never drop a packet:
 * they always return 1 (allow).
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_core_read.h>

#include "dns_events.h"

#define ETH_P_IP 0x0800
#define ETH_P_IPV6 0x86DD

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 8 * 1024 * 1024); /* the loader sets the configured size */
} DNS_EVENTS SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, TAPIO_DNS_CTR_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} DNS_COUNTERS SEC(".maps");

/* The DNS ports (host byte order) → 1; written by the loader. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u16);
	__type(value, __u8);
} DNS_PORTS SEC(".maps");

static __always_inline void count(__u32 index)
{
	__u64 *slot = bpf_map_lookup_elem(&DNS_COUNTERS, &index);
	if (slot)
		*slot += 1;
}

static __always_inline int is_dns_port(__u16 port)
{
	return bpf_map_lookup_elem(&DNS_PORTS, &port) != 0;
}

/*
 * The reader is not woken for every record (a wakeup costs several microseconds): it reads on
 * its own timer, and is woken by the record that takes the ring past a quarter full.
 */
static __always_inline void submit(void *record)
{
	__u64 flags = BPF_RB_NO_WAKEUP;
	__u64 mark = bpf_ringbuf_query(&DNS_EVENTS, BPF_RB_RING_SIZE) / 4;
	__u64 avail = bpf_ringbuf_query(&DNS_EVENTS, BPF_RB_AVAIL_DATA);
	if (avail >= mark && avail < mark + sizeof(struct tapio_dns_event) + 8)
		flags = BPF_RB_FORCE_WAKEUP;
	bpf_ringbuf_submit(record, flags);
}

static __always_inline int capture(struct __sk_buff *skb, __u8 direction)
{
	__u8 family, protocol;
	__u32 l4;
	__u8 addrs[32];
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		__u8 ip[20];
		if (bpf_skb_load_bytes(skb, 0, ip, sizeof(ip)))
			return 1;
		/* Fragments after the first carry no ports. */
		if (((ip[6] & 0x1f) | ip[7]) != 0)
			return 1;
		family = 4;
		protocol = ip[9];
		l4 = (ip[0] & 0x0f) * 4;
		__builtin_memset(addrs, 0, sizeof(addrs));
		__builtin_memcpy(addrs, ip + 12, 4);
		__builtin_memcpy(addrs + 16, ip + 16, 4);
	} else if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		__u8 ip[40];
		if (bpf_skb_load_bytes(skb, 0, ip, sizeof(ip)))
			return 1;
		family = 6;
		protocol = ip[6];
		l4 = 40;
		__builtin_memcpy(addrs, ip + 8, 32);
	} else {
		return 1;
	}
	if (protocol != IPPROTO_UDP && protocol != IPPROTO_TCP)
		return 1;
	__u8 ports[4];
	if (bpf_skb_load_bytes(skb, l4, ports, sizeof(ports)))
		return 1;
	__u16 sport = ((__u16)ports[0] << 8) | ports[1];
	__u16 dport = ((__u16)ports[2] << 8) | ports[3];
	/* A query goes to a DNS port, a response comes from one. */
	if (!is_dns_port(direction == TAPIO_DNS_EGRESS ? dport : sport))
		return 1;

	__u32 msg, msg_len;
	if (protocol == IPPROTO_UDP) {
		msg = l4 + 8;
		if (skb->len <= msg)
			return 1;
		msg_len = skb->len - msg;
	} else {
		__u8 off;
		if (bpf_skb_load_bytes(skb, l4 + 12, &off, 1))
			return 1;
		__u32 data = l4 + (off >> 4) * 4;
		if (skb->len < data + 2 + 12)
			return 1; /* no payload, or too little to be a message */
		__u8 prefix[2];
		if (bpf_skb_load_bytes(skb, data, prefix, 2))
			return 1;
		msg = data + 2;
		msg_len = ((__u32)prefix[0] << 8) | prefix[1];
	}
	/* QR is the top bit of the third byte. */
	__u8 flags;
	if (bpf_skb_load_bytes(skb, msg + 2, &flags, 1))
		return 1;
	__u8 qr = flags >> 7;
	if (qr != (direction == TAPIO_DNS_EGRESS ? 0 : 1))
		return 1;

	struct tapio_dns_event *e = bpf_ringbuf_reserve(&DNS_EVENTS, sizeof(*e), 0);
	if (!e) {
		count(TAPIO_DNS_CTR_DROPPED);
		return 1;
	}
	e->ts_ns = bpf_ktime_get_ns();
	e->cgroup_id = bpf_skb_cgroup_id(skb);
	if (direction == TAPIO_DNS_EGRESS) {
		e->pid_tgid = bpf_get_current_pid_tgid();
		struct task_struct *task = (struct task_struct *)bpf_get_current_task();
		e->start_ns = BPF_CORE_READ(task, group_leader, start_time);
		bpf_get_current_comm(e->comm, sizeof(e->comm));
	} else {
		e->pid_tgid = 0;
		e->start_ns = 0;
		__builtin_memset(e->comm, 0, sizeof(e->comm));
	}
	__builtin_memcpy(e->saddr, addrs, 16);
	__builtin_memcpy(e->daddr, addrs + 16, 16);
	e->sport = sport;
	e->dport = dport;
	e->family = family;
	e->protocol = protocol;
	e->direction = direction;
	e->_pad = 0;

	__u32 available = skb->len - msg;
	__u64 n = msg_len < available ? msg_len : available;
	e->flags = n < msg_len ? TAPIO_DNS_CUT : 0;
	if (n > TAPIO_DNS_MAX) {
		n = TAPIO_DNS_MAX;
		e->flags = TAPIO_DNS_CUT;
	}
	e->msg_len = msg_len;
	/* Bounds the verifier can follow, in the register the helper gets: 1..=TAPIO_DNS_MAX. */
	asm volatile("%[n] &= 0x7ff" : [n] "+r"(n));
	if (n < 1 || n > TAPIO_DNS_MAX || bpf_skb_load_bytes(skb, msg, e->data, n)) {
		bpf_ringbuf_discard(e, 0);
		return 1;
	}
	e->cap_len = n;
	count(TAPIO_DNS_CTR_MESSAGES);
	submit(e);
	return 1;
}

SEC("cgroup_skb/egress")
int tapio_dns_egress(struct __sk_buff *skb)
{
	return capture(skb, TAPIO_DNS_EGRESS);
}

SEC("cgroup_skb/ingress")
int tapio_dns_ingress(struct __sk_buff *skb)
{
	return capture(skb, TAPIO_DNS_INGRESS);
}

char LICENSE[] SEC("license") = "GPL";
