/** The case format: what a case author gets told when a case file is wrong. */
import assert from "node:assert/strict";
import { parseCase, parseMatrix, resolvePlaceholders } from "../e2e/cases/format.ts";
import { MODEL_PODS } from "../e2e/cases/model.ts";
import type { NetworkPolicy } from "../src/policy/types.ts";

const header = `from\\to ${MODEL_PODS.join(" ")}`;
const row = (from: string, cells: (to: string) => string) =>
  `${from} ${MODEL_PODS.map((to) => (to === from ? "-" : cells(to))).join(" ")}`;
const all = (cell: string) => [header, ...MODEL_PODS.map((f) => row(f, () => cell))].join("\n");

Deno.test("a matrix reads allow, deny and self cells", () => {
  const m = parseMatrix(all("X"), "t");
  assert.equal(m.get("x/a")!.get("y/b"), "deny");
  assert.equal(m.get("x/a")!.get("x/a"), "allow", "a pod reaching itself is not policed");
});

Deno.test("matrix mistakes name the case, the row and the cell", () => {
  assert.throws(
    () => parseMatrix(all(".").replace("x/b x/c", "x/c x/b"), "f.yaml"),
    /f\.yaml: columns must be/,
  );
  assert.throws(() => parseMatrix(all(".").replace(/\n[^\n]*$/, ""), "f.yaml"), /rows must be/);
  assert.throws(
    () =>
      parseMatrix(
        all(".").replace("y/a - ", "y/a . ").replace(/^(y\/a .*) \.$/m, "$1 ?"),
        "f.yaml",
      ),
    /not \. or X|itself/,
  );
});

Deno.test("a case file: ports share a matrix; missing parts are named", () => {
  const c = parseCase(
    `name: t\npolicies: []\nexpect:\n  - ports: [TCP/80, UDP/81]\n    matrix: |\n${
      all(".").split("\n").map((l) => `      ${l}`).join("\n")
    }\n`,
    "t.yaml",
  );
  assert.deepEqual(c.expect.map((e) => `${e.protocol}/${e.port}`), ["TCP/80", "UDP/81"]);
  assert.throws(() => parseCase("policies: []", "u.yaml"), /u\.yaml: name is required/);
  assert.throws(() => parseCase("name: u\nexpect: []", "u.yaml"), /expect must list/);
  assert.throws(
    () => parseCase(`name: u\nexpect:\n  - ports: [TCP80]\n    matrix: "x"`, "u.yaml"),
    /TCP80/,
  );
});

Deno.test("placeholders resolve to each driver's pod IPs", () => {
  const np = {
    metadata: { namespace: "x", name: "p" },
    spec: {
      podSelector: {},
      ingress: [{ from: [{ ipBlock: { cidr: "{{ip y/a}}/32", except: [] } }] }],
    },
  } as NetworkPolicy;
  const [out] = resolvePlaceholders(
    [np],
    (ns, pod) => (ns === "y" && pod === "a" ? "10.1.2.3" : "?"),
  );
  assert.equal(out!.spec.ingress![0]!.from![0]!.ipBlock!.cidr, "10.1.2.3/32");
  assert.equal(np.spec.ingress![0]!.from![0]!.ipBlock!.cidr, "{{ip y/a}}/32", "input untouched");
});

Deno.test("a case may hold cluster-scoped policies and probes to the node; mistakes are named", () => {
  const matrix = all(".").split("\n").map((l) => `      ${l}`).join("\n");
  const text = (extra: string) =>
    `name: t\n${extra}\nexpect:\n  - ports: [TCP/80]\n    matrix: |\n${matrix}\n`;
  const c = parseCase(
    text(`clusterPolicies:
  - { kind: ClusterNetworkPolicy, metadata: { name: a }, spec: {} }
  - { kind: BaselineAdminNetworkPolicy, metadata: { name: default }, spec: {} }
probes:
  - { from: x/a, to: node, ports: [TCP/80, UDP/81], expect: deny }`),
    "t.yaml",
  );
  assert.deepEqual(c.policies, []);
  assert.deepEqual(c.clusterPolicies.map((p) => p.kind), [
    "ClusterNetworkPolicy",
    "BaselineAdminNetworkPolicy",
  ]);
  assert.deepEqual(c.probes, [
    { from: "x/a", to: "node", protocol: "TCP", port: 80, expect: "deny" },
    { from: "x/a", to: "node", protocol: "UDP", port: 81, expect: "deny" },
  ]);
  assert.deepEqual(parseCase(text(""), "t.yaml").clusterPolicies, []);
  assert.throws(
    () =>
      parseCase(
        text("clusterPolicies:\n  - { kind: NetworkPolicy, metadata: { name: a } }"),
        "t.yaml",
      ),
    /t\.yaml: clusterPolicies\[0\]: kind must be one of ClusterNetworkPolicy/,
  );
  assert.throws(
    () =>
      parseCase(
        text(
          "clusterPolicies:\n  - { kind: AdminNetworkPolicy, metadata: { name: a, namespace: x } }",
        ),
        "t.yaml",
      ),
    /cluster-scoped; remove metadata\.namespace/,
  );
  assert.throws(
    () =>
      parseCase(
        text("probes:\n  - { from: x/a, to: w/q, ports: [TCP/80], expect: deny }"),
        "t.yaml",
      ),
    /probes\[0\]\.to: must be a model pod or "node"/,
  );
  assert.throws(
    () =>
      parseCase(
        text("probes:\n  - { from: x/a, to: node, ports: [TCP/80], expect: maybe }"),
        "t.yaml",
      ),
    /probes\[0\]\.expect: must be allow or deny/,
  );
});
