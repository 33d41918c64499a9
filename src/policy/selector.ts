/**
 * Label selectors compiled once into a matcher. matchLabels and every matchExpression are ANDed;
 * an empty selector matches everything (as `podSelector: {}` does in the API).
 */
import type { LabelSelector } from "./types.ts";
import { Interned } from "./intern.ts";

export type Labels = ReadonlyMap<string, string>;

type Requirement =
  | { op: "In"; key: string; values: ReadonlySet<string> }
  | { op: "NotIn"; key: string; values: ReadonlySet<string> }
  | { op: "Exists"; key: string }
  | { op: "DoesNotExist"; key: string };

export class Selector {
  private constructor(private readonly requirements: readonly Requirement[]) {}

  static readonly everything = new Selector([]);

  matches(labels: Labels): boolean {
    for (const r of this.requirements) {
      const value = labels.get(r.key);
      switch (r.op) {
        case "In":
          if (value === undefined || !r.values.has(value)) return false;
          break;
        case "NotIn":
          // A pod without the key is "not in" any set of values (API semantics).
          if (value !== undefined && r.values.has(value)) return false;
          break;
        case "Exists":
          if (value === undefined) return false;
          break;
        case "DoesNotExist":
          if (value !== undefined) return false;
          break;
      }
    }
    return true;
  }

  /**
   * Compile a selector. Problems are appended to `problems` as [field path, message] and the
   * result is null when any was found, so a half-understood selector never matches anything.
   */
  static compile(
    sel: LabelSelector | null | undefined,
    path: string,
    problems: [string, string][],
  ): Selector | null {
    if (sel === null || sel === undefined) return Selector.everything;
    if (typeof sel !== "object" || Array.isArray(sel)) {
      problems.push([path, "must be an object"]);
      return null;
    }
    // Policies repeat the same selectors: one compiled instance each (only valid ones are kept).
    const key = JSON.stringify(sel);
    const known = compiled.lookup(key);
    if (known) return known;
    const before = problems.length;
    const reqs: Requirement[] = [];
    const ml = sel.matchLabels;
    if (ml !== undefined && ml !== null) {
      if (typeof ml !== "object" || Array.isArray(ml)) {
        problems.push([`${path}.matchLabels`, "must be a map of strings"]);
      } else {
        for (const [key, value] of Object.entries(ml)) {
          if (typeof value !== "string") {
            problems.push([`${path}.matchLabels.${key}`, "value must be a string"]);
          } else {
            reqs.push({ op: "In", key, values: new Set([value]) });
          }
        }
      }
    }
    const exprs = sel.matchExpressions;
    if (exprs !== undefined && exprs !== null) {
      if (!Array.isArray(exprs)) {
        problems.push([`${path}.matchExpressions`, "must be a list"]);
      } else {
        exprs.forEach((e, i) => {
          const p = `${path}.matchExpressions[${i}]`;
          if (!e || typeof e.key !== "string" || e.key === "") {
            problems.push([`${p}.key`, "is required"]);
            return;
          }
          const values = e.values ?? [];
          if (!Array.isArray(values) || values.some((v) => typeof v !== "string")) {
            problems.push([`${p}.values`, "must be a list of strings"]);
            return;
          }
          switch (e.operator) {
            case "In":
            case "NotIn":
              if (values.length === 0) {
                problems.push([`${p}.values`, `must be non-empty for operator ${e.operator}`]);
                return;
              }
              reqs.push({ op: e.operator, key: e.key, values: new Set(values) });
              return;
            case "Exists":
            case "DoesNotExist":
              if (values.length !== 0) {
                problems.push([`${p}.values`, `must be empty for operator ${e.operator}`]);
                return;
              }
              reqs.push({ op: e.operator, key: e.key });
              return;
            default:
              problems.push([
                `${p}.operator`,
                `unknown operator ${
                  JSON.stringify(e.operator)
                } (want In, NotIn, Exists, DoesNotExist)`,
              ]);
          }
        });
      }
    }
    return problems.length > before ? null : compiled.put(key, new Selector(reqs));
  }
}

const compiled = new Interned<Selector>();

/**
 * Labels of an object as a Map (immune to keys like "constructor" on plain objects). A value that
 * is not a string (YAML reads `version: 1.0` as a number) is left out and reported in `problems`
 * as [field, message]: the API server would have rejected it, and guessing its text is unsafe.
 */
export function toLabels(
  labels: Record<string, string> | undefined | null,
  problems?: [string, string][],
): Map<string, string> {
  const m = new Map<string, string>();
  if (labels && typeof labels === "object") {
    for (const [k, v] of Object.entries(labels)) {
      if (typeof v === "string") m.set(k, v);
      else {
        problems?.push([
          `metadata.labels.${k}`,
          `must be a string, not ${JSON.stringify(v)} (quote it in YAML)`,
        ]);
      }
    }
  }
  return m;
}
