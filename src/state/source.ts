/**
 * A source of cluster state: the Kubernetes informers or a manifest directory. Both deliver the
 * same StateEvent stream, so everything downstream is identical with or without a cluster.
 */
import type { ObjectError } from "../policy/types.ts";
import type { StateEvent } from "./events.ts";

export interface SourceHealth {
  ok: boolean;
  /** Human-readable detail for /readyz, e.g. "pods informer restarting (attempt 3)". */
  detail: string;
}

export interface ClusterSource {
  /** Start delivering events to `sink`, in order, one object change at a time. */
  start(sink: (ev: StateEvent) => void): Promise<void>;
  /** True once the first complete view of every kind has been delivered (nothing judged before). */
  synced(): boolean;
  health(): SourceHealth;
  /** Objects the source could not deliver (unreadable, unrecognised): counted as invalid. */
  errors?(): ObjectError[];
  /** Stop watching; idempotent. */
  stop(): Promise<void>;
}
