/**
 * The one seam between the kind driver and the outside world: every docker, kind, kubectl and
 * ginkgo call, and the one host setting it may touch (a sysctl), go through an Executor, so a
 * test can replay a whole run against a fake and check the exact commands and manifests, and
 * `--dry-run` can print the plan without touching anything.
 */

export interface CommandResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface RunOptions {
  stdin?: string;
  timeoutMs?: number;
  /** Added to the inherited environment. */
  env?: Record<string, string>;
  /** Let the command write to our stdout/stderr (long runs the user should watch). */
  inheritOutput?: boolean;
}

export interface Executor {
  run(cmd: string[], opts?: RunOptions): Promise<CommandResult>;
  /** Reads a host sysctl (e.g. net.ipv6.conf.all.forwarding); with `value`, writes it first. */
  sysctl(key: string, value?: string): Promise<string>;
}

const sysctlPath = (key: string) => `/proc/sys/${key.replaceAll(".", "/")}`;

/** Runs commands for real, with a timeout (the whole e2e run must stay bounded). */
export const realExecutor: Executor = {
  async run(cmd, opts = {}) {
    const output = opts.inheritOutput ? "inherit" : "piped";
    const child = new Deno.Command(cmd[0]!, {
      args: cmd.slice(1),
      env: opts.env,
      stdin: opts.stdin === undefined ? "null" : "piped",
      stdout: output,
      stderr: output,
    }).spawn();
    if (opts.stdin !== undefined) {
      const w = child.stdin.getWriter();
      await w.write(new TextEncoder().encode(opts.stdin));
      await w.close();
    }
    const timer = setTimeout(() => {
      try {
        child.kill("SIGKILL");
      } catch { /* already exited */ }
    }, opts.timeoutMs ?? 300_000);
    try {
      if (opts.inheritOutput) return { code: (await child.status).code, stdout: "", stderr: "" };
      const out = await child.output();
      const dec = new TextDecoder();
      return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
    } finally {
      clearTimeout(timer);
    }
  },
  async sysctl(key, value) {
    if (value !== undefined) await Deno.writeTextFile(sysctlPath(key), value);
    return (await Deno.readTextFile(sysctlPath(key))).trim();
  },
};

const quote = (a: string) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replaceAll("'", "'\\''")}'`);

/**
 * Prints each command (and its stdin manifest) instead of running it, answering every command
 * with success and empty output, and every sysctl read with "0", so the plan can be followed to
 * the end, including the steps only a real answer would skip.
 */
export function dryRunExecutor(print: (line: string) => void): Executor {
  return {
    run(cmd, opts = {}) {
      const env = Object.entries(opts.env ?? {}).map(([k, v]) => `${k}=${quote(v)} `).join("");
      print(`$ ${env}${cmd.map(quote).join(" ")}`);
      if (opts.stdin !== undefined) {
        for (const line of opts.stdin.trimEnd().split("\n")) print(`    | ${line}`);
      }
      return Promise.resolve({ code: 0, stdout: "", stderr: "" });
    },
    sysctl(key, value) {
      print(value === undefined ? `$ sysctl -n ${key}` : `$ sysctl -w ${key}=${value}`);
      return Promise.resolve(value ?? "0");
    },
  };
}
