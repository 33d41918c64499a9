/** Human-readable explanations of decisions, shared by `simulate` and the verdict logs. */
import type { Decision, DirectionReason, DirectionResult } from "./types.ts";

export function explainDirection(direction: "egress" | "ingress", r: DirectionResult): string {
  return `${direction}: ${describeReason(r.reason)}`;
}

export function describeReason(reason: DirectionReason): string {
  switch (reason.kind) {
    case "not-judged":
      return "not judged here";
    case "not-a-pod":
      return "not a pod (no policy of its own)";
    case "not-isolated":
      return `${reason.pod} is not isolated`;
    case "from-own-node":
      return `from ${reason.pod}'s own node (always allowed)`;
    case "allowed":
      return `allowed by ${reason.policy} rule ${reason.rule}`;
    case "denied":
      return `${reason.pod} isolated by ${reason.isolatedBy.join(", ")}; no rule matched`;
  }
}

/** One line: the deciding side first (the denying one for a deny). */
export function explainDecision(d: Decision): string {
  const sides: ["egress" | "ingress", DirectionResult][] = [["egress", d.egress], [
    "ingress",
    d.ingress,
  ]];
  if (d.verdict === "deny") {
    return sides.filter(([, r]) => r.verdict === "deny").map(([dir, r]) => explainDirection(dir, r))
      .join("; ");
  }
  return sides.map(([dir, r]) => explainDirection(dir, r)).join("; ");
}
