/** Human-readable explanations of decisions, shared by `simulate` and the verdict logs. */
import type { Decision, DirectionReason, DirectionResult, TierRuleRef } from "./types.ts";

export function explainDirection(direction: "egress" | "ingress", r: DirectionResult): string {
  return `${direction}: ${describeReason(r.reason)}`;
}

/**
 * "Admin ClusterNetworkPolicy/x rule 'name'", or "... rule 2" (its index) when the rule is unnamed.
 * Single quotes, so text logs (which quote values with double quotes) need no escaping.
 */
export function describeTierRule(ref: TierRuleRef): string {
  const rule = typeof ref.rule === "string" ? `'${ref.rule}'` : String(ref.rule);
  return `${ref.tier} ${ref.policy} rule ${rule}`;
}

export function describeReason(reason: DirectionReason): string {
  const passed = "passed" in reason && reason.passed?.length
    ? `passed by ${reason.passed.map(describeTierRule).join(", then ")}; then `
    : "";
  return passed + describeOwnReason(reason);
}

function describeOwnReason(reason: DirectionReason): string {
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
    case "tier-accepted":
      return `accepted by ${describeTierRule(reason.by)}`;
    case "tier-denied":
      return `${reason.pod} denied by ${describeTierRule(reason.by)}`;
    case "default-allowed":
      return `${reason.pod}: no rule of ${
        reason.consulted.join(", ")
      } matched and no NetworkPolicy isolates it (allowed by default)`;
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
