/**
 * Expected-versus-observed connectivity matrices and their readable diff, for lab checks that
 * state their expectation as a rule ("everything into x is denied") rather than a table.
 */
import { type Observed, observedVerdict, type ProbeMatrix } from "./probe.ts";

export type Expectation = (from: string, to: string) => Observed;

export interface MatrixMismatch {
  from: string;
  to: string;
  expected: Observed;
  observed: Observed;
  /** What the probe saw, e.g. "timeout after 1501 ms" or "connected to y/b". */
  detail: string;
}

export function compareMatrix(observed: ProbeMatrix, expect: Expectation): MatrixMismatch[] {
  const out: MatrixMismatch[] = [];
  for (const [from, row] of observed) {
    for (const [to, res] of row) {
      const want = expect(from, to);
      const got = observedVerdict(res, to);
      if (want !== got) {
        const detail = res.outcome === "connected"
          ? `connected to ${res.server ?? "?"} in ${res.ms} ms`
          : `${res.outcome} after ${res.ms} ms${res.error ? ` (${res.error})` : ""}`;
        out.push({ from, to, expected: want, observed: got, detail });
      }
    }
  }
  return out;
}

/**
 * A table with rows = from, columns = to: "." allowed, "X" denied, "!" where the observation
 * differs from the expectation (followed by the list of differences).
 */
export function formatMatrix(observed: ProbeMatrix, expect?: Expectation): string {
  const froms = [...observed.keys()].sort();
  const tos = [...new Set([...observed.values()].flatMap((r) => [...r.keys()]))].sort();
  const w = Math.max(...tos.map((t) => t.length), ...froms.map((f) => f.length), 4);
  const lines = [["from\\to".padEnd(w), ...tos.map((t) => t.padEnd(w))].join(" ")];
  for (const f of froms) {
    const cells = tos.map((t) => {
      const res = observed.get(f)?.get(t);
      if (!res) return "-".padEnd(w);
      const got = observedVerdict(res, t);
      const mark = expect && expect(f, t) !== got
        ? `!${got === "allow" ? "." : "X"}`
        : got === "allow"
        ? "."
        : "X";
      return mark.padEnd(w);
    });
    lines.push([f.padEnd(w), ...cells].join(" "));
  }
  return lines.join("\n");
}

/** Throw with both the table and the list of differences when observed != expected. */
export function assertMatrix(label: string, observed: ProbeMatrix, expect: Expectation): void {
  const bad = compareMatrix(observed, expect);
  if (bad.length === 0) return;
  const list = bad.map((m) =>
    `  ${m.from} -> ${m.to}: expected ${m.expected}, observed ${m.observed} (${m.detail})`
  );
  throw new Error(
    `${label}: ${bad.length} connection(s) differ (. allow, X deny, ! differs)\n` +
      `${formatMatrix(observed, expect)}\n${list.join("\n")}`,
  );
}
