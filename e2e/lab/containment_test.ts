/**
 * Containment (root): under the agent's exact permission list, once the verdict Worker has
 * started, the main thread can load no library (not libc, not libnetfilter_queue, whose handle
 * would reach libc's system()), write no file, run nothing but the rule tools, read nothing but
 * what the run needs, and cannot get FFI back; the Worker still uses FFI (it binds the queue and
 * reads /proc). That the Worker still judges packets under this list is what lab_test.ts and
 * verdict_loop_test.ts prove: they run the agent and the loop with it.
 *
 *   deno test --frozen -A e2e/lab/containment_test.ts
 */
import assert from "node:assert/strict";
import { defaultPlan } from "./cluster.ts";
import { type LabSetup, labTest, withLab } from "./harness.ts";
import { agentDenoFlags } from "../../src/cli/permissions.ts";
import { runPermissionsHere } from "../../src/cli/run_permissions.ts";

const PREFIX = "knpcont";
const PROBE = new URL("./containment_probe.ts", import.meta.url).pathname;
const REPO_ROOT = new URL("../../", import.meta.url).pathname;

/** A node netns alone (no pods) and a manifest directory for the permission list. */
const SETUP: LabSetup = { prefix: PREFIX, plan: { ...defaultPlan(), pods: [] }, servers: false };

Deno.test(
  "lab: the agent's main thread holds no FFI, the verdict Worker does",
  labTest,
  () =>
    withLab(SETUP, async ({ lab, dir }) => {
      // The list `deno task agent --manifests DIR` and the lab's agent run with.
      const flags = agentDenoFlags(runPermissionsHere({
        manifests: [dir.path],
        metricsAddress: "127.0.0.1:9080",
      }, REPO_ROOT));
      const child = lab.spawn(lab.nodeNetns, [
        Deno.execPath(),
        "run",
        "--frozen",
        ...flags,
        PROBE,
        "4343",
      ], { stdout: "piped", stderr: "piped", cwd: REPO_ROOT });
      let timer: ReturnType<typeof setTimeout> | undefined;
      const out = await Promise.race([
        child.output(),
        new Promise<never>((_, reject) =>
          timer = setTimeout(() => reject(new Error("probe did not finish in 30 s")), 30_000)
        ),
      ]).finally(() => clearTimeout(timer));
      const stdout = new TextDecoder().decode(out.stdout);
      const stderr = new TextDecoder().decode(out.stderr);
      assert.equal(out.code, 0, `probe failed:\n${stdout}\n${stderr}`);
      const r = JSON.parse(stdout.trim().split("\n").pop()!);

      // Control: the list grants FFI to the process, and getpid() resolved through the
      // libnetfilter_queue handle is libc's: FFI scoped to "safe" libraries reaches libc anyway.
      assert.equal(r.before.libc.pid, r.pid);
      assert.equal(r.before.nfq.pid, r.pid, "a libnetfilter_queue handle resolves libc symbols");

      assert.deepEqual(r.after, {
        dlopenLibcSoname: "NotCapable",
        dlopenLibcPath: "NotCapable",
        dlopenNfqPath: "NotCapable",
        requestFfi: "denied",
        dlopenAfterRequest: "NotCapable",
        writeTmp: "NotCapable",
        runShell: "NotCapable",
        runBinSh: "NotCapable",
        readShadow: "NotCapable",
        readProc: "NotCapable",
        connectElsewhere: "NotCapable",
        runRuleTool: "ok",
        readOwnSource: "ok",
        workerWithFfi: "NotCapable",
      });

      // The Worker kept FFI: it bound the queue and read /proc (process metrics, queue counters).
      const w = r.workerReadings;
      assert.ok(
        w.process_resident_memory_bytes > 1 << 20,
        `RSS ${w.process_resident_memory_bytes}`,
      );
      assert.ok(w.process_cpu_seconds_total > 0, `CPU ${w.process_cpu_seconds_total}`);
      assert.ok(w.process_open_fds > 0, `open fds ${w.process_open_fds}`);
      assert.ok(w.process_max_fds >= w.process_open_fds, `max fds ${w.process_max_fds}`);
      const now = Date.now() / 1000;
      assert.ok(
        Math.abs(w.process_start_time_seconds - now) < 120,
        `start time ${w.process_start_time_seconds} vs now ${now}`,
      );
      assert.ok(w.nfqueue_packet_id >= 0, "the queue's kernel counters, read by the Worker");
    }),
);
