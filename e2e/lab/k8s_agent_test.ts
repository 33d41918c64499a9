/**
 * The agent end to end against the Kubernetes list/watch protocol, with real packets: the fake
 * API server runs in the lab's node netns beside the real agent (`run --kubeconfig`); objects
 * change through the API, arrive through the informers, and connections between lab pods change
 * verdict. Also: an abruptly cut watch (the agent must recover), a malformed policy (reported,
 * the others kept), and the network-policy-api CRDs: absent at the start (the agent is ready and
 * enforces NetworkPolicy without them), installed while it runs (an Admin tier policy then reaches
 * real packets). Skipped when not root.
 */
import assert from "node:assert/strict";
import { LabAgent } from "./agent.ts";
import { startFakeApiProcess } from "../fake_apiserver/process.ts";
import { clusterObjects, defaultPlan, networkPolicy as policy } from "./cluster.ts";
import { probeMatrix, verdictMatrix } from "./probe.ts";
import { startServers } from "./servers.ts";
import { cleanupStaleLabs, createLab } from "./topology.ts";

Deno.test({
  name: "agent on the Kubernetes protocol: API changes reach real packets, cut watches recover",
  ignore: Deno.uid() !== 0,
  sanitizeOps: false,
  sanitizeResources: false,
  fn: async (t) => {
    await cleanupStaleLabs("knpk8s");
    const plan = defaultPlan();
    plan.pods = plan.pods.filter((p) => ["x/a", "x/b", "y/a"].includes(`${p.namespace}/${p.name}`));
    plan.namespaces = plan.namespaces.filter((n) => n.name !== "z");
    const lab = await createLab({ prefix: "knpk8s", pods: plan.pods });
    let agent: LabAgent | undefined;
    try {
      await startServers(lab, { ports: [80] });
      // The fake API server, in the node netns so the agent reaches it on 127.0.0.1.
      const api = await startFakeApiProcess((cmd) =>
        lab.spawn(lab.nodeNetns, cmd, { stdin: "piped", stdout: "piped" })
      );
      const send = api.send;
      for (const o of clusterObjects(plan, lab)) {
        await send({ op: "apply", kind: o.kind === "Pod" ? "pods" : "namespaces", object: o });
      }
      // The fake serves no network-policy-api CRD yet: ready all the same. A short recheck
      // interval (default 30 s) keeps the CRD step below quick.
      agent = await LabAgent.start(lab, {
        nodeName: plan.nodeName,
        ...api.access,
        extraArgs: ["--crd-recheck-interval=1s"],
      });

      /** Probe until from -> to (TCP 80) shows `want`; returns the ms it took. */
      const waitVerdict = async (from: string, to: string, want: "allow" | "deny") => {
        const start = Date.now();
        let seen = "";
        while (Date.now() - start < 15_000) {
          const m = verdictMatrix(
            await probeMatrix(lab, [{ from, to }], "TCP", 80, { timeoutMs: 500 }),
          );
          seen = m.get(from)!.get(to)!;
          if (seen === want) return Date.now() - start;
          await new Promise((r) => setTimeout(r, 100));
        }
        throw new Error(
          `${from} -> ${to}: still ${seen} after 15 s, want ${want}\n${agent!.logs()}`,
        );
      };
      const timings: Record<string, number> = {};

      await t.step("a policy created through the API denies on the wire", async () => {
        assert.ok(await waitVerdict("x/a", "x/b", "allow") < 1000, "open before any policy");
        await send({
          op: "apply",
          kind: "networkpolicies",
          object: policy("x", "b-in", {
            podSelector: { matchLabels: { pod: "b" } },
            policyTypes: ["Ingress"],
          }),
        });
        timings.create = await waitVerdict("x/a", "x/b", "deny");
      });
      await t.step("a modified policy allows pod=a only", async () => {
        await send({
          op: "apply",
          kind: "networkpolicies",
          object: policy("x", "b-in", {
            podSelector: { matchLabels: { pod: "b" } },
            ingress: [{ from: [{ podSelector: { matchLabels: { pod: "a" } } }] }],
          }),
        });
        timings.modify = await waitVerdict("x/a", "x/b", "allow");
        await waitVerdict("y/a", "x/b", "deny");
      });
      await t.step("a relabelled client pod loses access (pod MODIFIED event)", async () => {
        const xa = clusterObjects(plan, lab).find((o) =>
          o.kind === "Pod" && o.metadata.namespace === "x" && o.metadata.name === "a"
        )!;
        await send({
          op: "apply",
          kind: "pods",
          object: { ...xa, metadata: { ...xa.metadata, labels: { pod: "other" } } },
        });
        timings.relabel = await waitVerdict("x/a", "x/b", "deny");
      });
      await t.step("after an abrupt watch cut, a deletion still arrives", async () => {
        await send({ op: "cut" });
        await send({ op: "delete", kind: "networkpolicies", namespace: "x", name: "b-in" });
        timings.afterCut = await waitVerdict("x/a", "x/b", "allow");
      });
      await t.step(
        "a malformed policy is reported; a valid one beside it is enforced",
        async () => {
          await send({
            op: "apply",
            kind: "networkpolicies",
            object: policy("y", "broken", {
              podSelector: {},
              ingress: [{ from: [{ ipBlock: { cidr: "10.0.0.0/99" } }] }],
            }),
          });
          await send({
            op: "apply",
            kind: "networkpolicies",
            object: policy("y", "a-in", { podSelector: { matchLabels: { pod: "a" } } }),
          });
          await waitVerdict("x/a", "y/a", "deny");
          assert.match(
            agent!.logs(),
            /invalid object skipped.*NetworkPolicy y\/broken: spec\.ingress\[0\]\.from\[0\]\.ipBlock\.cidr/,
          );
          const d = await agent!.debugPolicies();
          assert.deepEqual(d.policies, ["y/a-in"]);
        },
      );
      await t.step(
        "a ClusterNetworkPolicy CRD installed while the agent runs: its Admin Deny is enforced",
        async () => {
          assert.match(
            (await agent!.get("/readyz?verbose")).body,
            /clusternetworkpolicies not served/,
          );
          await send({ op: "install", kind: "clusternetworkpolicies" });
          await send({
            op: "apply",
            kind: "clusternetworkpolicies",
            object: {
              apiVersion: "policy.networking.k8s.io/v1alpha2",
              kind: "ClusterNetworkPolicy",
              metadata: { name: "x-closed-to-y" },
              spec: {
                tier: "Admin",
                priority: 1,
                subject: { namespaces: { matchLabels: { ns: "x" } } },
                ingress: [{
                  name: "not-from-y",
                  action: "Deny",
                  from: [{ namespaces: { matchLabels: { ns: "y" } } }],
                }],
              },
            },
          });
          timings.crdInstalled = await waitVerdict("y/a", "x/a", "deny");
          await waitVerdict("x/b", "x/a", "allow");
          assert.match(agent!.logs(), /serves this kind now/);
          await send({ op: "uninstall", kind: "clusternetworkpolicies" });
          timings.crdRemoved = await waitVerdict("y/a", "x/a", "allow");
        },
      );
      console.log(
        `API event -> enforced on the wire (ms, probe included): ${JSON.stringify(timings)}`,
      );
      await api.stop();
    } finally {
      await agent?.kill("SIGTERM").catch(() => {});
      await lab.destroy();
    }
  },
});
