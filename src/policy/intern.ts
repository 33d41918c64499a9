/**
 * Values equal by content sharing one instance: labels, named ports and host IPs of pods alike,
 * compiled selectors, CIDRs and port lists that many policies repeat. A node agent holds every
 * pod and policy of the cluster twice (main thread and verdict worker), so duplicates are most of
 * its memory at scale. Entries are held weakly: one lives as long as something uses it. Only
 * immutable values may be interned.
 */
export class Interned<T extends object> {
  private readonly table = new Map<string, WeakRef<T>>();
  private readonly registry = new FinalizationRegistry<string>((key) => {
    if (this.table.get(key)?.deref() === undefined) this.table.delete(key);
  });

  /** The value stored under `key`, or `make()`'s, stored now. */
  get(key: string, make: () => T): T {
    const hit = this.lookup(key);
    return hit !== undefined ? hit : this.put(key, make());
  }

  lookup(key: string): T | undefined {
    return this.table.get(key)?.deref();
  }

  put(key: string, value: T): T {
    this.table.set(key, new WeakRef(value));
    this.registry.register(value, key);
    return value;
  }
}
