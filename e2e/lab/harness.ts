/**
 * The scaffolding the agent lab tests share, so each test file holds only its own steps and
 * assertions: the Deno.test options, a lab with its manifest directory (created, filled, torn
 * down, and its namespaces proven gone), the real agent on it (started, awaited until it enforces
 * the expected policies, its log printed when the test fails, stopped), live policy changes, and
 * bounded polling.
 *
 *   await withLabAgent({ prefix: "knpfoo", policies: [denyX] }, async ({ lab, agent, dir }) => {
 *     assertMatrix("denied", await probeMatrix(lab, pairs, "TCP", 80), () => "deny");
 *     assert.ok(await agent.metric("kube_netpol_verdicts_total", { verdict: "deny" }) > 0);
 *   });
 */
import assert from "node:assert/strict";
import type { NetworkPolicy } from "../../src/policy/types.ts";
import { LabAgent, type LabAgentOptions, ManifestDir } from "./agent.ts";
import {
  clusterObjects,
  defaultPlan,
  type LabClusterPlan,
  labLayout,
  servePorts,
} from "./cluster.ts";
import { startServers } from "./servers.ts";
import { cleanupStaleLabs, createLab, type Lab, listNetns } from "./topology.ts";

/** The options of every lab test: `Deno.test(name, labTest, fn)`. */
export const labTest = {
  // Namespaces, veths and netfilter need root; elsewhere the lab tests are listed as ignored.
  ignore: Deno.uid() !== 0,
  // Child processes (pod servers, the agent, peers) outlive single steps by design; the lab's
  // destroy() ends them, after the sanitizers would have looked.
  sanitizeOps: false,
  sanitizeResources: false,
} satisfies Partial<Deno.TestDefinition>;

/**
 * A plan of its own for a test about a few pods: `names` in namespace `ns` on the one node, at
 * 10.244.1.11, .12, ... in order, labelled `pod: <name>`, each naming port 80 (TCP and UDP).
 */
export function namespacePlan(ns: string, names: string[]): LabClusterPlan {
  return {
    nodeName: "lab-node",
    namespaces: [{ name: ns, labels: { "kubernetes.io/metadata.name": ns } }],
    pods: names.map((name, i) => ({
      namespace: ns,
      name,
      ip: `10.244.1.${11 + i}`,
      labels: { pod: name },
      ports: servePorts([80]),
    })),
  };
}

export interface LabSetup {
  /** The suite's netns prefix ("knplab"); labs of dead runs under it are removed first. */
  prefix: string;
  /** Default: the case model on one node (`defaultPlan()`); the agent runs as its `nodeName`. */
  plan?: LabClusterPlan;
  /** Give pods IPv6 addresses too. */
  ipv6?: boolean;
  /** A server in every pod on these ports (default 80 and 81); false: no servers. */
  servers?: readonly number[] | false;
  /** The policies in the manifest directory at the start (default none). */
  policies?: NetworkPolicy[];
}

export interface LabContext {
  lab: Lab;
  plan: LabClusterPlan;
  /** Holds the plan's Namespaces and Pods (model.yaml) and `policies` (policies.yaml). */
  dir: ManifestDir;
}

/**
 * A lab for `setup` with its servers and manifest directory. Whatever `fn` does, the directory is
 * removed and the lab destroyed afterwards, and then none of the lab's namespaces may be left.
 */
export async function withLab<T>(
  setup: LabSetup,
  fn: (ctx: LabContext) => Promise<T>,
): Promise<T> {
  await cleanupStaleLabs(setup.prefix);
  const plan = setup.plan ?? defaultPlan();
  const lab = await createLab({ prefix: setup.prefix, ...labLayout(plan), ipv6: setup.ipv6 });
  let dir: ManifestDir | undefined;
  let result: T;
  try {
    if (setup.servers !== false) {
      await startServers(lab, setup.servers ? { ports: setup.servers } : {});
    }
    dir = await ManifestDir.create();
    await dir.writeModel(clusterObjects(plan, lab));
    await dir.writePolicies(setup.policies ?? []);
    result = await fn({ lab, plan, dir });
  } finally {
    await dir?.remove();
    await lab.destroy();
  }
  assert.deepEqual(await listNetns(lab.prefix), [], "lab namespaces left behind");
  return result;
}

/**
 * Start the real agent on `lab`, wait until it enforces exactly `enforced` ("namespace/name"),
 * and run `fn` with it. When anything fails its log is printed (its own account of what it did is
 * the first thing to read); it is stopped (SIGTERM) in any case.
 */
export async function withAgent<T>(
  lab: Lab,
  options: LabAgentOptions,
  enforced: string[],
  fn: (agent: LabAgent) => Promise<T>,
): Promise<T> {
  const agent = await LabAgent.start(lab, options);
  try {
    await agent.waitEnforced(enforced);
    return await fn(agent);
  } catch (e) {
    console.error(`--- agent log (tail) ---\n${agent.logs()}`);
    throw e;
  } finally {
    await agent.kill("SIGTERM");
  }
}

export interface LabAgentSetup extends LabSetup {
  /** LabAgent options besides the node (the plan's) and the manifest directory (the lab's). */
  agent?: Omit<LabAgentOptions, "nodeName" | "manifestsDir">;
  /** The policies to wait for ("namespace/name"); default those of `policies`. */
  enforced?: string[];
  /** Runs once the manifests are written, before the agent starts (e.g. a rule of the node's). */
  beforeAgent?: (ctx: LabContext) => Promise<void>;
}

export interface LabAgentContext extends LabContext {
  agent: LabAgent;
}

/** `withLab` plus `withAgent`: the real agent watching the lab's manifest directory. */
export function withLabAgent<T>(
  setup: LabAgentSetup,
  fn: (ctx: LabAgentContext) => Promise<T>,
): Promise<T> {
  return withLab(setup, async (ctx) => {
    await setup.beforeAgent?.(ctx);
    const options = { ...setup.agent, nodeName: ctx.plan.nodeName, manifestsDir: ctx.dir.path };
    const enforced = setup.enforced ?? (setup.policies ?? []).map(policyKey);
    return await withAgent(ctx.lab, options, enforced, (agent) => fn({ ...ctx, agent }));
  });
}

/** "namespace/name", as the agent reports enforced policies. */
export function policyKey(np: NetworkPolicy): string {
  return `${np.metadata.namespace}/${np.metadata.name}`;
}

/** Apply `policies` live (the policy file rewritten) and wait until the agent enforces them. */
export async function applyPolicies(
  { agent, dir }: { agent: LabAgent; dir: ManifestDir },
  policies: NetworkPolicy[],
): Promise<void> {
  await dir.writePolicies(policies);
  await agent.waitEnforced(policies.map(policyKey));
}

/**
 * Read `fn` every `everyMs` until `cond` holds or `timeoutMs` has passed (at least once); the
 * last reading either way, for the caller to assert on.
 */
export async function pollUntil<T>(
  fn: () => Promise<T>,
  cond: (v: T) => boolean,
  timeoutMs: number,
  everyMs = 100,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (cond(v) || Date.now() > deadline) return v;
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

/** `pollUntil` that throws, naming `what`, when `cond` never held; the reading that met it. */
export async function eventually<T>(
  what: string,
  fn: () => Promise<T>,
  cond: (v: T) => boolean,
  timeoutMs: number,
  everyMs = 100,
): Promise<T> {
  const v = await pollUntil(fn, cond, timeoutMs, everyMs);
  if (!cond(v)) throw new Error(`timed out after ${timeoutMs} ms: ${what}`);
  return v;
}
