/**
 * Command-line parsing on node:util parseArgs (jsr:@std/cli cannot be fetched here), with the
 * conveniences users of the Go original expect: single-dash long flags (`-v=2`,
 * `-metrics-bind-address :9080`) and booleans written `--fail-open=false`.
 */
import { parseArgs, type ParseArgsConfig } from "node:util";

export class UsageError extends Error {
  override name = "UsageError";
}

export type FlagSpec = Record<
  string,
  { type: "string" | "boolean"; multiple?: boolean; short?: string; default?: string | boolean }
>;

/** Rewrite Go-style `-flag` and `-v=2` into the `--flag` form parseArgs understands. */
export function normalizeGoFlags(args: string[], spec: FlagSpec): string[] {
  const out: string[] = [];
  let rest = false;
  for (const a of args) {
    if (rest || a === "--") {
      rest = true;
      out.push(a);
      continue;
    }
    const m = /^-([A-Za-z][\w-]*)(=.*)?$/.exec(a);
    if (m && !a.startsWith("--") && (m[1]!.length > 1 || m[2] !== undefined)) {
      if (m[1]! in spec || m[1] === "v") {
        out.push(`--${m[1]}${m[2] ?? ""}`);
        continue;
      }
    }
    out.push(a);
  }
  return out;
}

function closest(name: string, candidates: string[]): string | undefined {
  // A truncated flag ("--nfqueue" for "--nfqueue-id") is the commonest slip.
  const prefixed = candidates.filter((c) => c.startsWith(name));
  if (prefixed.length === 1) return prefixed[0];
  let best: string | undefined;
  let bestScore = Infinity;
  for (const c of candidates) {
    const d = editDistance(name, c);
    if (d < bestScore) [best, bestScore] = [c, d];
  }
  return bestScore <= Math.max(2, Math.floor(name.length / 3)) ? best : undefined;
}

function editDistance(a: string, b: string): number {
  const row = Array.from({ length: b.length + 1 }, (_, i) => i);
  for (let i = 1; i <= a.length; i++) {
    let prev = row[0]!;
    row[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const tmp = row[j]!;
      row[j] = Math.min(row[j]! + 1, row[j - 1]! + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = tmp;
    }
  }
  return row[b.length]!;
}

/**
 * Parse `args` against `spec`. Booleans accept `--x`, `--x=true` and `--x=false` (they are parsed
 * as strings underneath for that reason). Unknown flags raise a UsageError with a suggestion.
 */
export function parseFlags(
  args: string[],
  spec: FlagSpec,
): { values: Record<string, string | boolean | string[] | undefined>; positionals: string[] } {
  const booleans = new Set(
    Object.entries(spec).filter(([, s]) => s.type === "boolean").map(([k]) => k),
  );
  // `--flag` alone for a boolean becomes `--flag=true`; parseArgs then sees only strings.
  const expanded = normalizeGoFlags(args, spec).map((a) => {
    const name = a.startsWith("--") ? a.slice(2) : "";
    return booleans.has(name) ? `${a}=true` : a;
  });
  const options: ParseArgsConfig["options"] = {};
  for (const [name, s] of Object.entries(spec)) {
    options[name] = {
      type: "string",
      ...(s.multiple ? { multiple: true } : {}),
      ...(s.short ? { short: s.short } : {}),
    };
  }
  let parsed;
  try {
    parsed = parseArgs({ args: expanded, options, allowPositionals: true, strict: true });
  } catch (e) {
    const msg = (e as Error).message;
    const unknown = /Unknown option '(-{1,2})([^']+)'/.exec(msg);
    if (unknown) {
      const hint = closest(unknown[2]!.split("=")[0]!, Object.keys(spec));
      throw new UsageError(
        `unknown flag ${unknown[1]}${unknown[2]}` + (hint ? ` (did you mean --${hint}?)` : "") +
          "; see --help",
      );
    }
    throw new UsageError(msg);
  }
  const values: Record<string, string | boolean | string[] | undefined> = {};
  for (const [name, s] of Object.entries(spec)) {
    const raw = (parsed.values as Record<string, string | string[] | undefined>)[name];
    if (s.type === "boolean") {
      const v = typeof raw === "string" ? raw : undefined;
      if (v === undefined) values[name] = s.default ?? false;
      else if (/^(true|1|yes)$/i.test(v)) values[name] = true;
      else if (/^(false|0|no)$/i.test(v)) values[name] = false;
      else throw new UsageError(`--${name} takes true or false, not ${JSON.stringify(v)}`);
    } else {
      values[name] = raw ?? s.default;
    }
  }
  return { values, positionals: parsed.positionals };
}

const DURATION_UNITS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** An integer flag within [min, max] (parseArgs hands every value over as a string). */
export function intFlag(
  values: Record<string, unknown>,
  name: string,
  min: number,
  max: number,
): number {
  const text = String(values[name]);
  const n = Number(text);
  if (!Number.isInteger(n) || n < min || n > max) {
    throw new UsageError(
      `--${name} must be an integer from ${min} to ${max}, not ${JSON.stringify(text)}`,
    );
  }
  return n;
}

/**
 * A Go-style duration (`10s`, `1m30s`, `500ms`) in milliseconds; a bare number is seconds.
 * Throws a UsageError naming `flag` for anything else or for values outside `minMs..maxMs`.
 */
export function parseDuration(flag: string, text: string, minMs: number, maxMs: number): number {
  let ms: number;
  if (/^\d+(\.\d+)?$/.test(text)) ms = Number(text) * 1000;
  else if (/^(\d+(\.\d+)?(ms|s|m|h))+$/.test(text)) {
    ms = 0;
    for (const m of text.matchAll(/(\d+(?:\.\d+)?)(ms|s|m|h)/g)) {
      ms += Number(m[1]) * DURATION_UNITS[m[2]!]!;
    }
  } else {
    throw new UsageError(
      `--${flag} must be a duration like 10s, 1m30s or 500ms, not ${JSON.stringify(text)}`,
    );
  }
  if (ms < minMs || ms > maxMs) {
    throw new UsageError(
      `--${flag} must be between ${minMs / 1000}s and ${maxMs / 1000}s, not ${text}`,
    );
  }
  return Math.round(ms);
}

/** Render flag help lines with defaults. */
export function flagHelp(spec: FlagSpec, help: Record<string, string>): string {
  return Object.entries(spec).map(([name, s]) => {
    const flag = `${s.short ? `-${s.short}, ` : "    "}--${name}${
      s.type === "string" ? " <value>" : ""
    }`;
    const def = s.default !== undefined ? ` (default ${JSON.stringify(s.default)})` : "";
    return `  ${flag.padEnd(34)} ${help[name] ?? ""}${def}`;
  }).join("\n");
}
