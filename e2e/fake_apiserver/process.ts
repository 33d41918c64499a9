/**
 * The fake API server as a child process (main.ts), as the lab tests and the memory benchmark run
 * it: in a lab node's netns beside the agent, driven over its stdin/stdout, one JSON command per
 * line answered by `ok` (or `error <message>`).
 */
const FAKE_API_MAIN = new URL("./main.ts", import.meta.url).pathname;

export interface FakeApiProcess {
  /** How an agent reaches it (LabAgentOptions' fields): a kubeconfig, or as a pod would. */
  access: {
    kubeconfig?: string;
    inCluster?: { host: string; port: number; serviceAccountDir: string };
  };
  /** One command; throws unless the server answered `ok`. */
  send(cmd: unknown): Promise<void>;
  /** Many commands, pipelined (written in chunks, then every answer read). */
  sendAll(cmds: unknown[]): Promise<void>;
  stop(): Promise<void>;
}

/**
 * Starts main.ts through `spawn` (e.g. `lab.spawn` into a netns, with stdin and stdout piped) and
 * waits until it listens. `inCluster`: HTTPS with the test certificate and a service account
 * (main.ts `--in-cluster`).
 */
export async function startFakeApiProcess(
  spawn: (cmd: string[]) => Deno.ChildProcess,
  opts: { inCluster?: boolean } = {},
): Promise<FakeApiProcess> {
  const child = spawn([
    Deno.execPath(),
    "run",
    "--frozen",
    "-A",
    FAKE_API_MAIN,
    ...(opts.inCluster ? ["--in-cluster"] : []),
  ]);
  const lines = child.stdout.pipeThrough(new TextDecoderStream()).getReader();
  let pending = "";
  const nextLine = async (): Promise<string> => {
    while (!pending.includes("\n")) {
      const { value, done } = await lines.read();
      if (done) throw new Error("fake API server exited");
      pending += value;
    }
    const i = pending.indexOf("\n");
    const line = pending.slice(0, i);
    pending = pending.slice(i + 1);
    return line;
  };
  const expectOk = async () => {
    const answer = await nextLine();
    if (answer !== "ok") throw new Error(`fake API server: ${answer}`);
  };
  const writer = child.stdin.getWriter();
  const enc = new TextEncoder();
  const stop = async () => {
    await writer.close().catch(() => {});
    try {
      child.kill("SIGKILL");
    } catch { /* gone */ }
    await child.status;
  };

  const ready = (await nextLine().catch(async (e) => {
    await stop();
    throw e;
  })).split(" ");
  if (ready[0] !== (opts.inCluster ? "ready-in-cluster" : "ready")) {
    await stop();
    throw new Error(`fake API server: ${ready.join(" ")}`);
  }
  return {
    access: opts.inCluster
      ? { inCluster: { host: "127.0.0.1", port: Number(ready[1]), serviceAccountDir: ready[2]! } }
      : { kubeconfig: ready[1]! },
    async send(cmd) {
      await writer.write(enc.encode(JSON.stringify(cmd) + "\n"));
      await expectOk();
    },
    async sendAll(cmds) {
      const reading = (async () => {
        for (let i = 0; i < cmds.length; i++) await expectOk();
      })();
      for (let i = 0; i < cmds.length; i += 500) {
        const chunk = cmds.slice(i, i + 500).map((c) => JSON.stringify(c) + "\n").join("");
        await writer.write(enc.encode(chunk));
      }
      await reading;
    },
    stop,
  };
}
