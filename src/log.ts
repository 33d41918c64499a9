/**
 * Structured logging with klog-style verbosity: errors, warnings and `info` always show; `v(n)`
 * lines show only when the agent runs with `-v` >= n (2 is what operators run, 4 is debug).
 *
 * Two formats, one line per record:
 *   text: `I0523 14:03:07.123456] rules synced backend=iptables took="3.1ms"` (time in UTC)
 *   json: `{"ts":"2025-05-23T14:03:07.123Z","level":"info","v":2,"msg":"rules synced",...}`
 * JSON fields sit at the top level (what log pipelines index); a field whose name clashes with
 * ts/level/v/msg is written as `field.<name>` so it can never overwrite the record's own keys.
 *
 * Logging must never break or stall the verdict loop: a failing write is swallowed, and hot paths
 * guard their calls with `v(n).enabled` and a RateLimiter.
 */

export type LogFormat = "text" | "json";
export const LOG_FORMATS: readonly LogFormat[] = ["text", "json"];

export type Fields = Record<string, unknown>;

export interface VerboseLogger {
  /** True when lines at this level are written; check it before building costly fields. */
  enabled: boolean;
  info(msg: string, fields?: Fields): void;
}

export interface Logger {
  info(msg: string, fields?: Fields): void;
  warn(msg: string, fields?: Fields): void;
  error(msg: string, fields?: Fields): void;
  v(level: number): VerboseLogger;
  with(fields: Fields): Logger;
}

export interface LoggerOptions {
  /** klog `-v`: a non-negative integer; default 0. */
  verbosity?: number;
  format?: LogFormat;
  /** Receives each record as one line without the trailing newline; default appends to stderr. */
  write?: (line: string) => void;
}

type Level = "info" | "warn" | "error";
const LEVEL_LETTER: Record<Level, string> = { info: "I", warn: "W", error: "E" };
const RESERVED_JSON_KEYS = new Set(["ts", "level", "v", "msg"]);

const encoder = new TextEncoder();

function writeStderr(line: string): void {
  try {
    Deno.stderr.writeSync(encoder.encode(line + "\n"));
  } catch {
    // stderr closed or full: dropping a log line beats crashing the agent.
  }
}

/** Turns values JSON cannot carry (Error, bigint, Map, Set) into something readable. */
function toPlain(value: unknown): unknown {
  if (value instanceof Error) return value.message;
  if (typeof value === "bigint") return value.toString();
  if (value instanceof Map) return Object.fromEntries(value);
  if (value instanceof Set) return [...value];
  return value;
}

function jsonReplacer(_key: string, value: unknown): unknown {
  return toPlain(value);
}

/** The value itself when JSON can encode it, else a description (circular structures...). */
function serializable(value: unknown): unknown {
  try {
    JSON.stringify(value, jsonReplacer);
    return value;
  } catch (e) {
    return `<unserializable: ${(e as Error).message}>`;
  }
}

function safeJSON(value: unknown): string {
  try {
    return JSON.stringify(value, jsonReplacer) ?? String(value);
  } catch {
    return JSON.stringify(String(value)); // circular structures and the like
  }
}

// Plain words stay bare in text output; anything a reader could mis-split is quoted.
const BARE_VALUE = /^[A-Za-z0-9_.:/@+,\-\[\]]+$/;

function textValue(value: unknown): string {
  const v = toPlain(value);
  if (typeof v === "string") return BARE_VALUE.test(v) ? v : JSON.stringify(v);
  if (typeof v === "number" || typeof v === "boolean" || v === null || v === undefined) {
    return String(v);
  }
  return safeJSON(v);
}

function pad(n: number, width: number): string {
  return String(n).padStart(width, "0");
}

/** klog-like header time: MMDD hh:mm:ss.uuuuuu in UTC (microseconds from the monotonic clock). */
function textTime(nowMs: number): string {
  const d = new Date(nowMs);
  const micros = Math.floor((nowMs % 1000) * 1000);
  return `${pad(d.getUTCMonth() + 1, 2)}${pad(d.getUTCDate(), 2)} ${pad(d.getUTCHours(), 2)}:` +
    `${pad(d.getUTCMinutes(), 2)}:${pad(d.getUTCSeconds(), 2)}.${pad(micros, 6)}`;
}

function now(): number {
  return performance.timeOrigin + performance.now();
}

interface Sink {
  verbosity: number;
  format: LogFormat;
  write: (line: string) => void;
}

function render(
  sink: Sink,
  level: Level,
  v: number | undefined,
  msg: string,
  base: Fields,
  fields: Fields | undefined,
): string {
  const merged: Fields = fields ? { ...base, ...fields } : base;
  const t = now();
  if (sink.format === "json") {
    const record: Fields = { ts: new Date(t).toISOString(), level };
    if (v !== undefined) record.v = v;
    record.msg = msg;
    for (const [k, val] of Object.entries(merged)) {
      record[RESERVED_JSON_KEYS.has(k) ? `field.${k}` : k] = val;
    }
    try {
      return JSON.stringify(record, jsonReplacer);
    } catch {
      // Only the offending fields lose their value; the record itself is still written.
      for (const [k, val] of Object.entries(record)) record[k] = serializable(val);
      return JSON.stringify(record, jsonReplacer);
    }
  }
  // One record per line, always: newlines inside the message are escaped.
  let line = `${LEVEL_LETTER[level]}${textTime(t)}] ${msg.replaceAll("\n", "\\n")}`;
  for (const [k, val] of Object.entries(merged)) line += ` ${k}=${textValue(val)}`;
  return line;
}

class StructuredLogger implements Logger {
  // One VerboseLogger per level, built once: `log.v(4).enabled` on a hot path allocates nothing.
  readonly #verbose: VerboseLogger[] = [];

  constructor(private readonly sink: Sink, private readonly base: Fields) {}

  #emit(level: Level, v: number | undefined, msg: string, fields?: Fields): void {
    let line: string;
    try {
      line = render(this.sink, level, v, msg, this.base, fields);
    } catch (e) {
      line = `${LEVEL_LETTER.error}${textTime(now())}] log record could not be rendered: ${e}`;
    }
    try {
      this.sink.write(line);
    } catch {
      // A broken writer must not take the caller down with it.
    }
  }

  info(msg: string, fields?: Fields): void {
    this.#emit("info", undefined, msg, fields);
  }
  warn(msg: string, fields?: Fields): void {
    this.#emit("warn", undefined, msg, fields);
  }
  error(msg: string, fields?: Fields): void {
    this.#emit("error", undefined, msg, fields);
  }

  v(level: number): VerboseLogger {
    const cached = this.#verbose[level];
    if (cached) return cached;
    const enabled = level <= this.sink.verbosity;
    const verbose: VerboseLogger = {
      enabled,
      info: enabled ? (msg, fields) => this.#emit("info", level, msg, fields) : () => {},
    };
    if (Number.isInteger(level) && level >= 0 && level < 16) this.#verbose[level] = verbose;
    return verbose;
  }

  with(fields: Fields): Logger {
    return new StructuredLogger(this.sink, { ...this.base, ...fields });
  }
}

export function createLogger(opts: LoggerOptions = {}): Logger {
  const verbosity = opts.verbosity ?? 0;
  if (!Number.isInteger(verbosity) || verbosity < 0) {
    throw new RangeError(`log verbosity must be a non-negative integer, not ${verbosity}`);
  }
  const format = opts.format ?? "text";
  if (!LOG_FORMATS.includes(format)) {
    throw new RangeError(`log format must be one of ${LOG_FORMATS.join(", ")}, not ${format}`);
  }
  return new StructuredLogger({ verbosity, format, write: opts.write ?? writeStderr }, {});
}

const disabled: VerboseLogger = { enabled: false, info: () => {} };

/** Discards everything; for tests and library use. */
export const nullLogger: Logger = {
  info: () => {},
  warn: () => {},
  error: () => {},
  v: () => disabled,
  with: () => nullLogger,
};

/**
 * Token bucket: `burst` tokens, refilled at `perSecond`. Used so a flood of denied packets costs
 * one comparison each instead of a write per packet; the suppressed count is reported later
 * ("... and 1234 more") so nothing disappears silently.
 */
export class RateLimiter {
  #tokens: number;
  #last: number;
  #suppressed = 0;

  /** `clock` (milliseconds, monotonic) exists for tests; it defaults to performance.now. */
  constructor(
    private readonly perSecond: number,
    private readonly burst: number,
    private readonly clock: () => number = () => performance.now(),
  ) {
    if (!(perSecond >= 0) || !Number.isFinite(perSecond)) {
      throw new RangeError(`rate must be a finite number >= 0, not ${perSecond}`);
    }
    if (!(burst >= 1) || !Number.isFinite(burst)) {
      throw new RangeError(`burst must be a finite number >= 1, not ${burst}`);
    }
    this.#tokens = burst;
    this.#last = clock();
  }

  take(): boolean {
    const t = this.clock();
    const elapsed = t - this.#last;
    if (elapsed > 0) {
      this.#tokens = Math.min(this.burst, this.#tokens + (elapsed / 1000) * this.perSecond);
      this.#last = t;
    }
    if (this.#tokens >= 1) {
      this.#tokens -= 1;
      return true;
    }
    this.#suppressed++;
    return false;
  }

  /** How many take() calls were refused since the last call to this. */
  drainSuppressed(): number {
    const n = this.#suppressed;
    this.#suppressed = 0;
    return n;
  }
}
