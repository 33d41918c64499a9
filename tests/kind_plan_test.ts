/**
 * `deno task e2e`'s flags and case selection: an unknown case is an error listing the cases (it
 * used to match nothing and pass), a case can be named by its file, and per-family planning of
 * ipBlock cases on IPv6 and dual-stack clusters.
 */
import assert from "node:assert/strict";
import { type ConnectivityCase, loadCases } from "../e2e/cases/format.ts";
import { ArgsError, parseKindArgs } from "../e2e/kind/args.ts";
import {
  clusterPoliciesFor,
  planCase,
  PlanError,
  policiesFor,
  selectCases,
} from "../e2e/kind/plan.ts";
import { NETWORK_POLICY_API_CRDS } from "../e2e/kind/versions.ts";
import { API_KINDS, POLICY_GROUP } from "../src/k8s/kinds.ts";

const root = new URL("../", import.meta.url).pathname;
const cases = await loadCases(`${root}e2e/cases`);
const byName = (n: string) => cases.find((c) => c.name === n)!;

Deno.test("e2e --case: by name or by file name; unknown names are an error listing the cases", () => {
  assert.deepEqual(selectCases(cases, []).length, cases.length);
  assert.deepEqual(selectCases(cases, ["no-policies"]).map((c) => c.name), ["no-policies"]);
  assert.deepEqual(selectCases(cases, ["01-no-policies", "sctp-port"]).map((c) => c.name), [
    "no-policies",
    "sctp-port",
  ]);
  assert.throws(
    () => selectCases(cases, ["no-policies", "01-no-polices"]),
    (e) =>
      e instanceof PlanError && /unknown case 01-no-polices/.test(e.message) &&
      cases.every((c) => e.message.includes(`\n  ${c.name}`)),
  );
});

Deno.test("e2e flags: defaults, and clear errors for bad values", () => {
  const d = parseKindArgs([]);
  assert.deepEqual(
    [d.ipFamily, d.cases, d.image, d.e2eTestBinary, d.ginkgoNodes, d.name, d.keep, d.dryRun],
    ["ipv4", [], undefined, undefined, 25, "knp-e2e", false, false],
  );
  const o = parseKindArgs([
    "--ip-family",
    "dual",
    "--case",
    "a",
    "--case",
    "b",
    "--image",
    "ghcr.io/me/kube-netpol:v1",
    "--e2e-test-binary",
    ".tools/k8s-test/e2e.test",
    "--ginkgo-nodes",
    "8",
    "--dry-run",
  ]);
  assert.deepEqual(
    [o.ipFamily, o.cases, o.image, o.e2eTestBinary, o.ginkgoNodes, o.dryRun],
    ["dual", ["a", "b"], "ghcr.io/me/kube-netpol:v1", ".tools/k8s-test/e2e.test", 8, true],
  );
  for (
    const [args, msg] of [
      [["--ip-family", "ipv5"], /ipv4, ipv6 or dual/],
      [["--ginkgo-nodes", "0"], /positive integer/],
      [["--name", "Bad_Name"], /DNS label/],
      [["--image", "x\nimage: evil"], /image reference/],
      [["--cases", "a"], /cases/],
      [["extra"], /extra|positional/i],
    ] as const
  ) {
    assert.throws(
      () => parseKindArgs([...args]),
      (e) => e instanceof ArgsError && msg.test(e.message),
    );
  }
});

Deno.test("e2e plan: cases without ipBlocks run in every family of the run", () => {
  for (const n of ["deny-all-ingress-x", "named-port", "sctp-port"]) {
    assert.deepEqual(planCase(byName(n), [4, 6]), { resolveIn: 4, probeIn: [4, 6], skipped: [] });
    assert.deepEqual(planCase(byName(n), [6]), { resolveIn: 6, probeIn: [6], skipped: [] });
  }
});

Deno.test("e2e plan: pod-address ipBlocks run in one family, literal ranges in their own", () => {
  const podIps = byName("ipblock-pod-ips");
  assert.deepEqual(planCase(podIps, [4]), { resolveIn: 4, probeIn: [4], skipped: [] });
  assert.deepEqual(planCase(podIps, [6]), { resolveIn: 6, probeIn: [6], skipped: [] });
  assert.deepEqual(planCase(podIps, [4, 6]), {
    resolveIn: 4,
    probeIn: [4],
    skipped: ["IPv6: ipBlocks name pod addresses, filled in IPv4"],
  });
  const except = byName("ipblock-except");
  assert.deepEqual(planCase(except, [4]).probeIn, [4]);
  assert.deepEqual(planCase(except, [6]), {
    resolveIn: 6,
    probeIn: [],
    skipped: ["IPv6: ipBlock 0.0.0.0/0 is an IPv4 range"],
  });
  const v6only: ConnectivityCase = {
    ...except,
    policies: [{
      ...except.policies[0]!,
      spec: { ...except.policies[0]!.spec, ingress: [{ from: [{ ipBlock: { cidr: "::/0" } }] }] },
    }],
  };
  assert.deepEqual(planCase(v6only, [4, 6]), {
    resolveIn: 6,
    probeIn: [6],
    skipped: ["IPv4: ipBlock ::/0 is an IPv6 range"],
  });
});

Deno.test("e2e plan: a pod's /32 is that pod's single address in either family", () => {
  const ipOf = (
    pod: string,
    f: 4 | 6,
  ) => (f === 4 ? `10.0.0.${pod.length}` : `fd00::${pod.length}`);
  const cidrs = (f: 4 | 6) =>
    policiesFor(byName("ipblock-pod-ips"), f, ipOf)[0]!.spec.ingress!.flatMap((r) =>
      r.from!.map((p) => p.ipBlock!.cidr)
    );
  assert.deepEqual(cidrs(4), ["10.0.0.3/32", "10.0.0.3/32"]);
  assert.deepEqual(cidrs(6), ["fd00::3/128", "fd00::3/128"]);
  // The case file itself is not changed.
  assert.match(JSON.stringify(byName("ipblock-pod-ips").policies), /\{\{ip y\/a\}\}\/32/);
});

const tierCases = await loadCases(`${root}e2e/cases/tiers`);
const tier = (n: string) => tierCases.find((c) => c.name === n)!;

Deno.test("e2e plan: cluster policy networks cover the families they list", () => {
  // 0.0.0.0/0 and ::/0 in one peer: both families.
  assert.deepEqual(planCase(tier("conformance-admin-egress-cidr"), [4, 6]), {
    resolveIn: 4,
    probeIn: [4, 6],
    skipped: [],
  });
  // 0.0.0.0/0 alone: IPv4 only, and it says why.
  assert.deepEqual(planCase(tier("tier-egress-networks-cover-pods"), [4, 6]), {
    resolveIn: 4,
    probeIn: [4],
    skipped: ["IPv6: networks 0.0.0.0/0 is an IPv4 range"],
  });
  assert.deepEqual(planCase(tier("tier-egress-networks-cover-pods"), [6]).probeIn, []);
  // Pod addresses: one family, /32 -> /128 in IPv6.
  const podIps = tier("conformance-admin-egress-cidr-pod-ips");
  assert.deepEqual(planCase(podIps, [4, 6]), {
    resolveIn: 4,
    probeIn: [4],
    skipped: ["IPv6: networks name pod addresses, filled in IPv4"],
  });
  const ipOf = (
    pod: string,
    f: 4 | 6,
  ) => (f === 4 ? `10.0.0.${pod.length}` : `fd00::${pod.length}`);
  const networks = clusterPoliciesFor(podIps, 6, ipOf).flatMap((p) =>
    (p.spec.egress ?? []).flatMap((r) => r.to.flatMap((peer) => peer.networks ?? []))
  );
  assert.ok(networks.includes("fd00::3/128"), JSON.stringify(networks));
  // Cases without address peers run everywhere.
  assert.deepEqual(planCase(tier("tier-egress-nodes-peers"), [4, 6]).probeIn, [4, 6]);
});

Deno.test("e2e CRDs: the three kinds the agent watches, at pinned commits, experimental channel", () => {
  const watched = API_KINDS.filter((k) => k.path.includes(`/${POLICY_GROUP}/`)).map((k) =>
    `${k.label}.${POLICY_GROUP}`
  );
  assert.deepEqual(NETWORK_POLICY_API_CRDS.map((c) => c.name), watched);
  for (const c of NETWORK_POLICY_API_CRDS) {
    assert.match(
      c.url,
      /^https:\/\/raw\.githubusercontent\.com\/kubernetes-sigs\/network-policy-api\/[0-9a-f]{40}\/config\/crd\/experimental\/policy\.networking\.k8s\.io_[a-z]+\.yaml$/,
    );
    assert.ok(c.url.endsWith(`_${c.name.split(".")[0]}.yaml`));
  }
});
