/**
 * The one place where rule backends run external programs (nft, iptables-restore, ipset).
 *
 * Backends take a `CommandRunner` instead of calling Deno.Command, so the probe logic and the exact
 * text they feed the tools can be checked in unit tests without root, and lab tests can run the
 * same backend inside a network namespace (`ip netns exec <ns>` in front of every command).
 */

export interface CommandResult {
  code: number;
  stdout: string;
  stderr: string;
}

export interface CommandRunner {
  /** Run `cmd args...`, feeding `stdin` when given; never throws for a non-zero exit. */
  run(cmd: string, args: string[], stdin?: string): Promise<CommandResult>;
}

/** A command that exited non-zero where success was required. */
export class CommandError extends Error {
  constructor(
    readonly cmd: string,
    readonly args: string[],
    readonly result: CommandResult,
  ) {
    super(
      `${cmd} ${args.join(" ")} exited ${result.code}: ${result.stderr.trim() || "(no stderr)"}`,
    );
    this.name = "CommandError";
  }
}

const decoder = new TextDecoder();
const encoder = new TextEncoder();

/** Runs programs on this machine. A program that is not installed reports code 127, like a shell. */
export const denoCommandRunner: CommandRunner = {
  async run(cmd, args, stdin) {
    let child: Deno.ChildProcess;
    try {
      child = new Deno.Command(cmd, {
        args,
        stdin: stdin === undefined ? "null" : "piped",
        stdout: "piped",
        stderr: "piped",
      }).spawn();
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) {
        return { code: 127, stdout: "", stderr: `${cmd}: not found` };
      }
      throw e;
    }
    if (stdin !== undefined) {
      const writer = child.stdin.getWriter();
      try {
        await writer.write(encoder.encode(stdin));
        await writer.close();
      } catch {
        // The program exited without reading all input; its exit code tells what went wrong.
      }
    }
    const out = await child.output();
    return {
      code: out.code,
      stdout: decoder.decode(out.stdout),
      stderr: decoder.decode(out.stderr),
    };
  },
};

/** Run and require exit code 0; returns stdout. */
export async function runChecked(
  runner: CommandRunner,
  cmd: string,
  args: string[],
  stdin?: string,
): Promise<string> {
  const result = await runner.run(cmd, args, stdin);
  if (result.code !== 0) throw new CommandError(cmd, args, result);
  return result.stdout;
}
