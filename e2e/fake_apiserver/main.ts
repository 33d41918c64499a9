/**
 * The fake API server (tests/fake_apiserver.ts) as its own process, so it can run inside a lab's
 * node netns beside the agent. Prints `ready <kubeconfig path>` once listening (with `--in-cluster`:
 * HTTPS with the test certificate, a token required, and `ready-in-cluster <port> <dir>` naming a
 * service-account directory with the CA and token a pod would get), then takes one
 * JSON command per stdin line and answers `ok` (or `error <message>`) per line:
 *   {"op":"apply","kind":"pods","object":{...}}   {"op":"delete","kind":..,"namespace":..,"name":..}
 *   {"op":"cut"}   (drop every watch connection abruptly)
 *   {"op":"install","kind":"clusternetworkpolicies"}   {"op":"uninstall","kind":..}   (a CRD)
 */
import { FakeApiServer, type FakeKind } from "./server.ts";

const TLS_DIR = new URL("../../tests/fixtures/tls/", import.meta.url).pathname;
const inCluster = Deno.args.includes("--in-cluster");
const server = new FakeApiServer(
  inCluster
    ? {
      tls: {
        cert: await Deno.readTextFile(`${TLS_DIR}server.crt`),
        key: await Deno.readTextFile(`${TLS_DIR}server.key`),
      },
    }
    : {},
);
const dir = await Deno.makeTempDir({ prefix: "knp-fakeapi-" });
const enc = new TextEncoder();
const say = (line: string) => Deno.stdout.writeSync(enc.encode(`${line}\n`));
if (inCluster) {
  await Deno.copyFile(`${TLS_DIR}ca.crt`, `${dir}/ca.crt`);
  await Deno.writeTextFile(`${dir}/token`, "fake-service-account-token\n");
  server.requiredToken = "fake-service-account-token";
  say(`ready-in-cluster ${server.port} ${dir}`);
} else {
  say(`ready ${await server.writeKubeconfig(dir)}`);
}

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
