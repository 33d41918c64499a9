/**
 * The one seam between the kind driver and the outside world: every docker, kind and kubectl
 * call goes through an Executor, so a test can replay a whole run against a fake and check the
 * exact commands and manifests, and `--dry-run` can print the plan without touching anything.
 */

export interface CommandResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface Executor {
  run(cmd: string[], opts?: { stdin?: string; timeoutMs?: number }): Promise<CommandResult>;
}

/** Runs commands for real, with a timeout (the whole e2e run must stay bounded). */
export const realExecutor: Executor = {
  async run(cmd, opts = {}) {
    const child = new Deno.Command(cmd[0]!, {
      args: cmd.slice(1),
      stdin: opts.stdin === undefined ? "null" : "piped",
      stdout: "piped",
      stderr: "piped",
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
      const out = await child.output();
      const dec = new TextDecoder();
      return { code: out.code, stdout: dec.decode(out.stdout), stderr: dec.decode(out.stderr) };
    } finally {
      clearTimeout(timer);
    }
  },
};

/**
 * Prints each command (and its stdin manifest) instead of running it, answering with what a
 * healthy cluster would say so the plan can be followed to the end.
 */
export function dryRunExecutor(print: (line: string) => void): Executor {
  return {
    run(cmd, opts = {}) {
      print(`$ ${cmd.map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a}'`)).join(" ")}`);
      if (opts.stdin !== undefined) {
        for (const line of opts.stdin.trimEnd().split("\n")) print(`    | ${line}`);
      }
      return Promise.resolve({ code: 0, stdout: "", stderr: "" });
    },
  };
}
