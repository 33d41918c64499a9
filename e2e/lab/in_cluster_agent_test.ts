/**
 * The agent configured as in a pod, which is how the image runs (root): no kubeconfig, the API
 * server's address in its environment, the service account's CA and token where Kubernetes mounts
 * them (a mount namespace of the agent's own), the fake API server over HTTPS requiring that
 * token. Policies created through the API then decide real connections. This is the path that
 * loads client-node's informer without its KubeConfig (src/k8s/api_client.ts).
 */
import assert from "node:assert/strict";
import { LabAgent } from "./agent.ts";
import { startFakeApiProcess } from "../fake_apiserver/process.ts";
import { clusterObjects, defaultPlan, networkPolicy as policy } from "./cluster.ts";
import { eventually, labTest } from "./harness.ts";
import { probeMatrix, verdictMatrix } from "./probe.ts";
import { startServers } from "./servers.ts";
import { cleanupStaleLabs, createLab, listNetns } from "./topology.ts";

Deno.test(
  "in a pod: the agent reads its service account and enforces API policies",
  labTest,
  async () => {
    await cleanupStaleLabs("knpic");
    const plan = defaultPlan();
    plan.pods = plan.pods.filter((p) => ["x/a", "x/b"].includes(`${p.namespace}/${p.name}`));
    plan.namespaces = plan.namespaces.filter((n) => n.name === "x");
    const lab = await createLab({ prefix: "knpic", pods: plan.pods });
    let agent: LabAgent | undefined;
    try {
      await startServers(lab, { ports: [80] });
      const api = await startFakeApiProcess(
        (cmd) => lab.spawn(lab.nodeNetns, cmd, { stdin: "piped", stdout: "piped" }),
        { inCluster: true },
      );
      const send = api.send;
      for (const o of clusterObjects(plan, lab)) {
        await send({ op: "apply", kind: o.kind === "Pod" ? "pods" : "namespaces", object: o });
      }
      await send({
        op: "apply",
        kind: "networkpolicies",
        object: policy("x", "b-in", {
          podSelector: { matchLabels: { pod: "b" } },
          policyTypes: ["Ingress"],
        }),
      });

      agent = await LabAgent.start(lab, {
        nodeName: plan.nodeName,
        ...api.access,
      });
      assert.match(agent.logs(), /watching the API server.*in-cluster/);
      await agent.waitEnforced(["x/b-in"]);

      const verdict = async () =>
        verdictMatrix(await probeMatrix(lab, [{ from: "x/a", to: "x/b" }], "TCP", 80)).get("x/a")!
          .get("x/b")!;
      assert.equal(await verdict(), "deny", `x/a -> x/b denied by x/b-in\n${agent.logs()}`);
      await send({
        op: "apply",
        kind: "networkpolicies",
        object: policy("x", "b-in", {
          podSelector: { matchLabels: { pod: "b" } },
          ingress: [{ from: [{ podSelector: { matchLabels: { pod: "a" } } }] }],
        }),
      });
      await eventually(
        "x/a -> x/b allowed after the policy changed through the API",
        verdict,
        (v) => v === "allow",
        15_000,
      );
      await api.stop();
    } finally {
      await agent?.kill("SIGTERM");
      await lab.destroy();
    }
    assert.deepEqual(await listNetns("knpic"), []);
  },
);
