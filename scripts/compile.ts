/**
 * `deno task compile [--target T] [--output PATH] [--print]`: the agent as one binary, with the
 * permissions of src/cli/permissions.ts for the target's architecture baked in. The Dockerfile
 * runs this with `--target $TARGETARCH`, so every image architecture is built by the same code.
 *
 * T: amd64 | arm64 (Docker's names), x86_64 | aarch64, or the full Deno target triple; default:
 * this machine. `--print` shows the `deno compile` command instead of running it (deno compile
 * downloads the target's runtime).
 */
import { parseArgs } from "node:util";
import { type Arch, ARCHES, hostArch } from "../ffi/library.ts";
import { agentDenoFlags, imagePermissions } from "../src/cli/permissions.ts";

const ROOT = new URL("../", import.meta.url).pathname;

/** Deno's target triple per architecture. */
export const DENO_TARGETS: Record<Arch, string> = {
  x86_64: "x86_64-unknown-linux-gnu",
  aarch64: "aarch64-unknown-linux-gnu",
};

const DOCKER_ARCH: Record<Arch, string> = { x86_64: "amd64", aarch64: "arm64" };

/** The architecture a --target names, in any of its spellings. */
export function targetArch(name: string): Arch {
  for (const arch of ARCHES) {
    if (name === arch || name === DENO_TARGETS[arch] || name === DOCKER_ARCH[arch]) return arch;
  }
  const known = ARCHES.flatMap((a) => [DOCKER_ARCH[a], a, DENO_TARGETS[a]]);
  throw new Error(`unsupported target ${JSON.stringify(name)} (one of: ${known.join(", ")})`);
}

/** The `deno compile` arguments for one architecture (paths relative to the repository root). */
export function compileArgs(arch: Arch, output: string): string[] {
  return [
    "compile",
    "--frozen",
    "--target",
    DENO_TARGETS[arch],
    "--output",
    output,
    // The verdict loop runs in a Worker, which compile only embeds when --include names it.
    "--include",
    "src/verdict/verdict_worker.ts",
    ...agentDenoFlags(imagePermissions(arch)),
    "main.ts",
  ];
}

if (import.meta.main) {
  const { values } = parseArgs({
    args: Deno.args,
    options: {
      target: { type: "string" },
      output: { type: "string", default: "bin/kube-netpol" },
      print: { type: "boolean", default: false },
    },
  });
  let args: string[];
  try {
    args = compileArgs(values.target ? targetArch(values.target) : hostArch(), values.output);
  } catch (e) {
    console.error(`compile: ${(e as Error).message}`);
    Deno.exit(2);
  }
  if (values.print) {
    console.log(["deno", ...args].join(" "));
    Deno.exit(0);
  }
  const { code } = await new Deno.Command(Deno.execPath(), { args, cwd: ROOT }).spawn().status;
  Deno.exit(code);
}
