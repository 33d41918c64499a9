/**
 * The `run` flags of the kernel verdict cache (docs/rules.md "Verdict cache"), kept apart from
 * run.ts so the agent's flag table only spreads them in.
 */
import { DEFAULT_CACHE_MARK } from "../verdict/marks.ts";
import {
  cacheTargetFor,
  DEFAULT_CACHE_MAX_ENTRIES,
  DEFAULT_CACHE_TIMEOUT_SECONDS,
  MAX_CACHE_TIMEOUT_SECONDS,
  validateCacheOptions,
  type VerdictCacheRuleOptions,
} from "../rules/verdict_cache_rules.ts";
import type { RuleBackend } from "../rules/backend.ts";
import type { VerdictLoopOptions } from "../verdict/verdict_protocol.ts";
import { type FlagSpec, intFlag, parseDuration, UsageError } from "./args.ts";

export const VERDICT_CACHE_FLAGS: FlagSpec = {
  "verdict-cache": { type: "boolean", default: true },
  "verdict-cache-timeout": { type: "string", default: `${DEFAULT_CACHE_TIMEOUT_SECONDS}s` },
  "verdict-cache-max-entries": { type: "string", default: String(DEFAULT_CACHE_MAX_ENTRIES) },
  "verdict-cache-denies": { type: "boolean", default: true },
  "verdict-cache-mark": { type: "string", default: `0x${DEFAULT_CACHE_MARK.toString(16)}` },
};

export const VERDICT_CACHE_HELP: Record<string, string> = {
  "verdict-cache": "remember each verdict in the kernel for a while, so repeated connections " +
    "(same source, destination, protocol and port) skip the queue; emptied on every state change",
  "verdict-cache-timeout": "how long the kernel remembers a verdict (whole seconds); also the " +
    "window in which a denied source, destination and port is logged once",
  "verdict-cache-max-entries": "entries per cache set (allow/deny x IPv4/IPv6) at most; a full " +
    "set only means more connections are judged in user space",
  "verdict-cache-denies": "remember denies too (refused in the kernel, counted, logged once per " +
    "key and window); false logs every denied connection",
  "verdict-cache-mark": "packet mark bit for verdicts to remember; no other component may use it",
};

/** The cache options from parsed flags, or undefined with --verdict-cache=false. */
export function parseVerdictCacheFlags(
  values: Record<string, unknown>,
  denyMark: number,
  cutMark?: number,
): VerdictCacheRuleOptions | undefined {
  if (values["verdict-cache"] === false) return undefined;
  const timeoutMs = parseDuration(
    "verdict-cache-timeout",
    String(values["verdict-cache-timeout"]),
    1000,
    MAX_CACHE_TIMEOUT_SECONDS * 1000,
  );
  if (timeoutMs % 1000 !== 0) {
    throw new UsageError(
      `--verdict-cache-timeout must be whole seconds (the kernel's sets count in seconds), ` +
        `not ${values["verdict-cache-timeout"]}`,
    );
  }
  const cache: VerdictCacheRuleOptions = {
    mark: intFlag(values, "verdict-cache-mark", 1, 0xffffffff),
    timeoutSeconds: timeoutMs / 1000,
    maxEntries: intFlag(values, "verdict-cache-max-entries", 1, 1 << 24),
    denies: values["verdict-cache-denies"] !== false,
  };
  try {
    validateCacheOptions(cache, denyMark, cutMark);
  } catch (e) {
    throw new UsageError(`--verdict-cache-mark: ${(e as Error).message}`);
  }
  return cache;
}

/** What the verdict worker needs to know about the cache, for the backend the rules chose. */
export function workerCacheOptions(
  cache: VerdictCacheRuleOptions | undefined,
  backend: RuleBackend["name"],
): Pick<VerdictLoopOptions, "verdictCache"> {
  if (!cache) return {};
  return {
    verdictCache: {
      mark: cache.mark,
      denies: cache.denies,
      target: cacheTargetFor(backend, cache),
    },
  };
}
