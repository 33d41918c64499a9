/**
 * Every Prometheus metric kube-netpol exports, defined in one place on one Registry of our own
 * (prom-client's default process metrics read zeroes under Deno, so they are not collected).
 *
 * Names users of the original project have dashboards on are kept as they were (microseconds, no
 * `_total`); everything added follows Prometheus conventions (base units, `_total` counters).
 * No label ever carries a pod name or an IP address: cardinality stays fixed.
 */
import { Counter, Gauge, Histogram, Registry, Summary } from "prom-client";

/** Microsecond buckets for the original packet_process_time histogram. */
const PACKET_MICROS_BUCKETS = [5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000];

export class AgentMetrics {
  readonly registry = new Registry();

  // --- names kept from the original project ---
  readonly packetProcessTime = new Histogram({
    name: "packet_process_time",
    help: "Time it has taken to process each packet (microseconds)",
    labelNames: ["verdict", "protocol", "family"] as const,
    buckets: PACKET_MICROS_BUCKETS,
    registers: [this.registry],
  });
  readonly packetProcessDuration = new Summary({
    name: "packet_process_duration_microseconds",
    help: "A summary of the packet processing durations in microseconds",
    percentiles: [0.5, 0.9, 0.99],
    maxAgeSeconds: 600,
    ageBuckets: 5,
    registers: [this.registry],
  });
  readonly packetCount = new Counter({
    name: "packet_count",
    help: "Number of packets",
    labelNames: ["verdict", "protocol", "family"] as const,
    registers: [this.registry],
  });
  readonly nfqueueQueueTotal = new Gauge({
    name: "nfqueue_queue_total",
    help: "The number of packets currently queued and waiting to be processed by the application",
    labelNames: ["queue"] as const,
    registers: [this.registry],
  });
  readonly nfqueueQueueDropped = new Gauge({
    name: "nfqueue_queue_dropped",
    help: "Number of packets that had to be dropped by the kernel because too many packets are " +
      "already waiting for user space to send back the mandatory accept/drop verdicts",
    labelNames: ["queue"] as const,
    registers: [this.registry],
  });
  readonly nfqueueUserDropped = new Gauge({
    name: "nfqueue_user_dropped",
    help: "Number of packets that were dropped within the netlink subsystem. Such drops usually " +
      "happen when the corresponding socket buffer is full; that is, user space is not able to " +
      "read messages fast enough",
    labelNames: ["queue"] as const,
    registers: [this.registry],
  });
  readonly nfqueuePacketId = new Gauge({
    name: "nfqueue_packet_id",
    help: "ID of the most recent packet queued",
    labelNames: ["queue"] as const,
    registers: [this.registry],
  });

  // --- added, Prometheus conventions ---
  readonly verdicts = new Counter({
    name: "kube_netpol_verdicts_total",
    help: "Per-direction policy verdicts on queued packets",
    labelNames: ["direction", "verdict"] as const,
    registers: [this.registry],
  });
  readonly parseFailures = new Counter({
    name: "kube_netpol_packet_parse_failures_total",
    help: "Queued packets denied without a policy decision, by reason: a parse failure " +
      "(truncated, bad-header, ...) or evaluation-error; --fail-open does not apply to them",
    labelNames: ["reason"] as const,
    registers: [this.registry],
  });
  readonly ruleSyncDuration = new Histogram({
    name: "kube_netpol_rule_sync_duration_seconds",
    help: "Time to bring the kernel's queue rules and sets in line with policy state",
    labelNames: ["backend"] as const,
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5],
    registers: [this.registry],
  });
  readonly ruleSyncErrors = new Counter({
    name: "kube_netpol_rule_sync_errors_total",
    help: "Rule syncs that failed (they are retried)",
    labelNames: ["backend"] as const,
    registers: [this.registry],
  });
  readonly policies = new Gauge({
    name: "kube_netpol_policies",
    help: "NetworkPolicies currently enforced",
    registers: [this.registry],
  });
  readonly invalidObjects = new Gauge({
    name: "kube_netpol_invalid_objects",
    help: "Objects currently rejected as invalid (see the logs for file, object and field)",
    registers: [this.registry],
  });
  readonly queuedPods = new Gauge({
    name: "kube_netpol_queued_pod_ips",
    help: "Local pod IPs whose new connections are queued to user space, by direction",
    labelNames: ["direction"] as const,
    registers: [this.registry],
  });
  readonly informerUp = new Gauge({
    name: "kube_netpol_informer_up",
    help: "1 when the informer for a kind is running and synced, else 0",
    labelNames: ["kind"] as const,
    registers: [this.registry],
  });
  readonly informerRestarts = new Counter({
    name: "kube_netpol_informer_restarts_total",
    help: "Informer restarts after errors or stalled watches",
    labelNames: ["kind", "cause"] as const,
    registers: [this.registry],
  });
  readonly buildInfo = new Gauge({
    name: "kube_netpol_build_info",
    help: "Always 1; the label says which kube-netpol version runs",
    labelNames: ["version"] as const,
    registers: [this.registry],
  });

  // --- the HTTP server (src/http_server.ts) ---
  readonly httpConnectionsRejected = new Counter({
    name: "kube_netpol_http_connections_rejected_total",
    help: "HTTP connections closed at once because the server was at its connection cap " +
      "(reason limit) or the peer at its own (reason peer_limit)",
    labelNames: ["reason"] as const,
    registers: [this.registry],
  });
  readonly httpHeaderTimeouts = new Counter({
    name: "kube_netpol_http_header_timeouts_total",
    help: "HTTP connections closed because the request headers did not arrive in time",
    registers: [this.registry],
  });
  readonly httpAcceptErrors = new Counter({
    name: "kube_netpol_http_accept_errors_total",
    help: "Failed accepts on the HTTP port by errno (EMFILE, ENFILE, ECONNABORTED, ..., other); " +
      "the server pauses briefly and keeps accepting",
    labelNames: ["code"] as const,
    registers: [this.registry],
  });
  readonly httpOpenConnections = new Gauge({
    name: "kube_netpol_http_open_connections",
    help: "HTTP connections currently open",
    registers: [this.registry],
  });

  // --- the process, by the Prometheus client conventions; read from /proc by the verdict Worker
  // (src/verdict/process_stats.ts), since Deno's file API cannot read /proc without --allow-all ---
  readonly processResidentMemory = new Gauge({
    name: "process_resident_memory_bytes",
    help: "Resident memory size in bytes",
    registers: [this.registry],
  });
  readonly processCpuSeconds = new Counter({
    name: "process_cpu_seconds_total",
    help: "User and system CPU time spent, in seconds (all threads)",
    registers: [this.registry],
  });
  readonly processOpenFds = new Gauge({
    name: "process_open_fds",
    help: "Open file descriptors",
    registers: [this.registry],
  });
  readonly processMaxFds = new Gauge({
    name: "process_max_fds",
    help: "Maximum number of open file descriptors (soft limit)",
    registers: [this.registry],
  });
  readonly processStartTime = new Gauge({
    name: "process_start_time_seconds",
    help: "Start time of the process since the Unix epoch, in seconds",
    registers: [this.registry],
  });
  readonly dataplaneRepairs = new Counter({
    name: "kube_netpol_dataplane_repairs_total",
    help: "Re-installs after the periodic check found our rules or sets changed behind our back, " +
      "by kind of damage (table, chain, rules, jump, set, members)",
    labelNames: ["reason"] as const,
    registers: [this.registry],
  });
  readonly dataplaneIntact = new Gauge({
    name: "kube_netpol_dataplane_intact",
    help: "1 when the last dataplane check found our rules and sets as installed, else 0",
    registers: [this.registry],
  });
  readonly unjudgedPackets = new Counter({
    name: "kube_netpol_unjudged_packets_total",
    help: "Packets the queue rules matched that the agent never received and the kernel did not " +
      "count as dropped: let through unjudged (fail-open with a full queue)",
    registers: [this.registry],
  });
  // --- the pod-start race (src/verdict/held_verdicts.ts), reported by the verdict Worker ---
  readonly heldPackets = new Counter({
    name: "kube_netpol_held_packets_total",
    help: "Queued packets whose verdict waited for a pod the agent did not know yet (an address " +
      "of this node's pod CIDRs that no known pod owns)",
    registers: [this.registry],
  });
  readonly heldPacketTimeouts = new Counter({
    name: "kube_netpol_held_packet_timeouts_total",
    help: "Held packets released without a policy decision by the --fail-open rule, by reason: " +
      "timeout (no pod appeared within --unknown-pod-timeout) or overflow (too many held)",
    labelNames: ["reason"] as const,
    registers: [this.registry],
  });
  readonly heldPacketWait = new Histogram({
    name: "kube_netpol_held_packet_wait_seconds",
    help: "Time a held packet waited until its pod appeared and it was judged",
    buckets: [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10],
    registers: [this.registry],
  });
  readonly heldPacketsNow = new Gauge({
    name: "kube_netpol_held_packets",
    help: "Packets held right now, waiting for their pod",
    registers: [this.registry],
  });
  // --- strict mode (src/verdict/strict_cuts.ts), reported by the verdict Worker ---
  readonly connectionsCut = new Counter({
    name: "kube_netpol_connections_cut_total",
    help: "Established connections cut because a state change denies them (strict mode), by " +
      "the side that denies them (egress of the source pod, else ingress of the destination)",
    labelNames: ["direction"] as const,
    registers: [this.registry],
  });
  readonly connectionsUncut = new Counter({
    name: "kube_netpol_connections_uncut_total",
    help: "Cut connections a later state change allows again (their cut mark cleared)",
    registers: [this.registry],
  });
  readonly connectionCutLatency = new Histogram({
    name: "kube_netpol_connection_cut_latency_seconds",
    help: "Time from a state change being applied to a connection it denies being cut",
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
    registers: [this.registry],
  });
  // --- the kernel verdict cache (src/rules/verdict_cache_rules.ts, verdict/verdict_cache.ts) ---
  readonly verdictCacheHits = new Counter({
    name: "kube_netpol_verdict_cache_hits_total",
    help: "First packets the kernel verdict cache answered without queueing, by verdict (read " +
      "from the hit rules' counters at each dataplane check)",
    labelNames: ["verdict"] as const,
    registers: [this.registry],
  });
  readonly verdictCacheMisses = new Counter({
    name: "kube_netpol_verdict_cache_misses_total",
    help: "First packets judged in user space while the verdict cache is on (they missed it)",
    registers: [this.registry],
  });
  readonly verdictCacheInvalidations = new Counter({
    name: "kube_netpol_verdict_cache_invalidations_total",
    help: "Times the verdict cache was emptied because the cluster state changed",
    registers: [this.registry],
  });
  readonly verdictCacheInvalidationFailures = new Counter({
    name: "kube_netpol_verdict_cache_invalidation_failures_total",
    help: "Failed attempts to empty the verdict cache (nothing is cached until one works)",
    registers: [this.registry],
  });
  /** Set by the Kubernetes source: seconds since each kind's watch last delivered a line. */
  watchAges?: () => Record<string, number>;
  readonly watchLastEventAge = new Gauge({
    name: "kube_netpol_watch_last_event_age_seconds",
    help: "Seconds since the watch of a kind last delivered an event or bookmark (or was listed)",
    labelNames: ["kind"] as const,
    registers: [this.registry],
    collect: () => {
      for (const [kind, seconds] of Object.entries(this.watchAges?.() ?? {})) {
        this.watchLastEventAge.set({ kind }, seconds);
      }
    },
  });

  // --- the cluster-scoped tiers (network-policy-api) ---
  readonly apiKindServed = new Gauge({
    name: "kube_netpol_api_kind_served",
    help:
      "For the kinds a cluster may not serve (the network-policy-api CRDs, nodes): 1 when the " +
      "API server lists it, 0 when it answers 404 (CRD not installed; looked for again " +
      "periodically, and kube_netpol_informer_up has no series for it meanwhile)",
    labelNames: ["kind"] as const,
    registers: [this.registry],
  });
  readonly clusterPolicies = new Gauge({
    name: "kube_netpol_cluster_policies",
    help: "Cluster-scoped policies enforced (ClusterNetworkPolicy, AdminNetworkPolicy, " +
      "BaselineAdminNetworkPolicy), by tier (Admin, Baseline)",
    labelNames: ["tier"] as const,
    registers: [this.registry],
  });
}
