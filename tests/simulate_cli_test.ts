/**
 * `kube-netpol simulate` as a user runs it: a subprocess, its stdout JSON, its exit codes and
 * its error messages.
 */
import assert from "node:assert/strict";

const MAIN = new URL("../main.ts", import.meta.url).pathname;
const EXAMPLES = new URL("../examples", import.meta.url).pathname;

async function simulate(...args: string[]) {
  const out = await new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--frozen",
      "--allow-read",
      "--allow-env=LOG_TOKENS,LOG_STREAM",
      MAIN,
      "simulate",
      ...args,
    ],
    stdout: "piped",
    stderr: "piped",
  }).output();
  const dec = new TextDecoder();
  return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
}

Deno.test("simulate --output json: one element per probe, in order, with verdict and reason", async () => {
  const probes = await Deno.makeTempFile({ suffix: ".json" });
  await Deno.writeTextFile(
    probes,
    JSON.stringify([
      { from: "shop/frontend", to: "shop/backend", protocol: "TCP", port: 9000, note: "ignored" },
      { from: "shop/frontend", to: "shop/db", protocol: "TCP", port: 5432 },
      { from: "10.250.1.20", to: "shop/db", protocol: "TCP", port: 5432 },
      { from: "203.0.113.7", to: "shop/backend", protocol: "TCP", port: 9000 },
    ]),
  );
  const r = await simulate("--manifests", EXAMPLES, "--probes", probes, "--output", "json");
  assert.equal(r.code, 0, r.stderr);
  const results = JSON.parse(r.stdout);
  assert.deepEqual(
    results.map((x: { verdict: string }) => x.verdict),
    ["allow", "deny", "allow", "deny"],
  );
  assert.deepEqual(results[0].reason.ingress.reason, {
    kind: "allowed",
    pod: "shop/backend",
    policy: "shop/backend",
    rule: 0,
  });
  assert.equal(results[2].reason.srcPod, "shop/backend", "an IP a pod owns is that pod");
  assert.deepEqual(results[3].reason.egress.reason, { kind: "not-a-pod" });
  assert.equal(results[0].note, undefined, "unknown probe fields are not echoed");
  await Deno.remove(probes);
});

Deno.test("simulate --probe shorthand and --matrix print a table with reasons on request", async () => {
  const r = await simulate(
    "--manifests",
    EXAMPLES,
    "--probe",
    "shop/backend -> shop/db tcp/5432",
    "--matrix",
    "tcp/9000",
    "--output",
    "table",
    "--explain",
  );
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /TCP\/9000/);
  assert.match(
    r.stdout,
    /ALLOW shop\/backend -> shop\/db TCP\/5432: egress: allowed by shop\/backend rule 0/,
  );
  assert.match(r.stdout, /DENY {2}shop\/db -> shop\/backend TCP\/9000: .*isolated by/);
});

Deno.test("simulate reports every invalid object with file, object and field, and exits 1", async () => {
  const dir = await Deno.makeTempDir();
  await Deno.writeTextFile(
    `${dir}/bad.yaml`,
    `apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: { namespace: x, name: bad-cidr }
spec:
  podSelector: {}
  ingress: [{ from: [{ ipBlock: { cidr: 10.0.0.0/40 } }] }]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: { namespace: x, name: bad-port }
spec:
  podSelector: {}
  ingress: [{ ports: [{ port: 80, endPort: 70 }] }]
`,
  );
  const r = await simulate("--manifests", dir, "--probe", "1.2.3.4 -> 5.6.7.8 tcp/80");
  assert.equal(r.code, 1);
  assert.match(
    r.stderr,
    /bad\.yaml.*NetworkPolicy x\/bad-cidr: spec\.ingress\[0\]\.from\[0\]\.ipBlock\.cidr/,
  );
  assert.match(
    r.stderr,
    /bad\.yaml.*NetworkPolicy x\/bad-port: spec\.ingress\[0\]\.ports\[0\]\.endPort/,
  );
  await Deno.remove(dir, { recursive: true });
});

Deno.test("simulate: unknown flags and unknown pods are usage errors with a hint", async () => {
  const r = await simulate("--manifests", EXAMPLES, "--matrx", "tcp/80");
  assert.equal(r.code, 2);
  assert.match(r.stderr, /unknown flag --matrx \(did you mean --matrix\?\)/);
  const p = await simulate("--manifests", EXAMPLES, "--probe", "shop/nope -> shop/db tcp/5432");
  assert.equal(p.code, 2);
  assert.match(p.stderr, /shop\/nope/);
});

Deno.test("simulate: the guardrail example names the Admin and Baseline tier rules that decide", async () => {
  const r = await simulate(
    "--manifests",
    EXAMPLES,
    "--probe",
    "monitoring/prometheus -> 169.254.169.254 tcp/80",
    "--probe",
    "shop/frontend -> monitoring/prometheus tcp/9090",
    "--output",
    "table",
    "--explain",
  );
  assert.equal(r.code, 0, r.stderr);
  assert.match(
    r.stdout,
    /DENY {2}monitoring\/prometheus -> 169\.254\.169\.254 TCP\/80: egress: monitoring\/prometheus denied by Admin ClusterNetworkPolicy\/no-cloud-metadata rule 'cloud-metadata'/,
  );
  assert.match(
    r.stdout,
    /ingress: monitoring\/prometheus denied by Baseline ClusterNetworkPolicy\/monitoring-closed-by-default rule 'everyone-else'/,
  );
});

Deno.test("simulate: a cluster policy rule failing closed is a warning on stderr, not a failure", async () => {
  const dir = await Deno.makeTempDir();
  await Deno.writeTextFile(
    `${dir}/cnp.yaml`,
    `apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: { name: newer }
spec:
  tier: Admin
  priority: 1
  subject: { namespaces: {} }
  egress: [{ name: audit, action: Audit, to: [{ namespaces: {} }] }]
`,
  );
  const r = await simulate(
    "--manifests",
    EXAMPLES,
    "--manifests",
    dir,
    "--probe",
    "shop/frontend -> shop/backend tcp/9000",
    "--output",
    "json",
  );
  assert.equal(r.code, 0, r.stderr);
  assert.match(
    r.stderr,
    /warning: .*cnp\.yaml: ClusterNetworkPolicy newer: spec\.egress\[0\]\.action: unknown action "Audit"/,
  );
  assert.equal(JSON.parse(r.stdout)[0].verdict, "deny", "the rule fails closed");
  await Deno.remove(dir, { recursive: true });
});
