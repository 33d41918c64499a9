/**
 * The fake API server (tests/fake_apiserver.ts) as its own process, so it can run inside a lab's
 * node netns beside the agent. Prints `ready <kubeconfig path>` once listening, then takes one
 * JSON command per stdin line and answers `ok` (or `error <message>`) per line:
 *   {"op":"apply","kind":"pods","object":{...}}   {"op":"delete","kind":..,"namespace":..,"name":..}
 *   {"op":"cut"}   (drop every watch connection abruptly)
 *   {"op":"install","kind":"clusternetworkpolicies"}   {"op":"uninstall","kind":..}   (a CRD)
 */
import { FakeApiServer, type FakeKind } from "./server.ts";

const server = new FakeApiServer();
const dir = await Deno.makeTempDir({ prefix: "knp-fakeapi-" });
const kubeconfig = await server.writeKubeconfig(dir);
const enc = new TextEncoder();
const say = (line: string) => Deno.stdout.writeSync(enc.encode(`${line}\n`));
say(`ready ${kubeconfig}`);

let buf = "";
for await (const chunk of Deno.stdin.readable.pipeThrough(new TextDecoderStream())) {
  buf += chunk;
  let nl;
  while ((nl = buf.indexOf("\n")) >= 0) {
    const line = buf.slice(0, nl).trim();
    buf = buf.slice(nl + 1);
    if (!line) continue;
    try {
      const cmd = JSON.parse(line);
      if (cmd.op === "apply") server.apply(cmd.kind as FakeKind, cmd.object);
      else if (cmd.op === "delete") server.delete(cmd.kind as FakeKind, cmd.namespace, cmd.name);
      else if (cmd.op === "cut") server.cutWatches();
      else if (cmd.op === "install") server.installKind(cmd.kind as FakeKind);
      else if (cmd.op === "uninstall") server.uninstallKind(cmd.kind as FakeKind);
      else throw new Error(`unknown op ${cmd.op}`);
      say("ok");
    } catch (e) {
      say(`error ${(e as Error).message}`);
    }
  }
}
await server.close();
await Deno.remove(dir, { recursive: true }).catch(() => {});
