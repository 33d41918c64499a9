/**
 * Error text for logs and /readyz. Deno's fetch reports every connection problem as "fetch
 * failed" and puts the reason in `cause` (e.g. "client error (Connect): invalid peer certificate:
 * UnknownIssuer" when the API server's certificate does not match the configured CA), so the whole
 * cause chain is what a user needs to see.
 */
export function describeError(e: unknown): string {
  const parts: string[] = [];
  let current: unknown = e;
  for (let depth = 0; current !== undefined && current !== null && depth < 8; depth++) {
    const message = current instanceof Error ? current.message : String(current);
    // A wrapper that already quotes its cause adds nothing by repeating it.
    if (message && !parts.some((p) => p.includes(message))) parts.push(message);
    current = current instanceof Error ? current.cause : undefined;
  }
  return parts.join(": ") || "unknown error";
}
