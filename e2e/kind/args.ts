/** The flags of `deno task e2e`; main.ts turns them into a run. */
import { parseArgs } from "node:util";
import type { IpFamily } from "./plan.ts";
import { UPSTREAM_NODES } from "./upstream.ts";
import { K8S_VERSION } from "./versions.ts";

export const USAGE = `Usage: deno task e2e [flags]

Runs every connectivity case of e2e/cases and e2e/cases/tiers on a kind cluster (needs
Docker, kind, kubectl; the tier cases install the network-policy-api CRDs while the agent
runs), then uninstalls kube-netpol and checks that no node keeps a rule.

  --ip-family ipv4|ipv6|dual   cluster IP family (default ipv4)
  --case NAME                  only this case (its name, or its file name without .yaml);
                               repeatable
  --image REF                  run this kube-netpol image instead of building the Dockerfile's
                               (loaded into kind when local Docker has it, else pulled)
  --e2e-test-binary PATH       also run the upstream Netpol suite with this e2e.test, and the
                               ginkgo next to it; the task may only start them from
                               .tools/k8s-test/ (${K8S_VERSION} kubernetes-test-linux-*.tar.gz)
  --ginkgo-nodes N             parallel ginkgo nodes for the upstream suite (default ${UPSTREAM_NODES})
  --ginkgo-skip REGEX          upstream specs to skip (default: none)
  --name NAME                  cluster name (default knp-e2e)
  --keep                       keep the cluster and the agent (no uninstall) at the end
  --dry-run                    print every command and manifest of the run; run nothing
  -h, --help                   this help`;

export class ArgsError extends Error {
  override name = "ArgsError";
}

export interface KindArgs {
  help: boolean;
  ipFamily: IpFamily;
  cases: string[];
  image?: string;
  e2eTestBinary?: string;
  ginkgoNodes: number;
  ginkgoSkip: string;
  name: string;
  keep: boolean;
  dryRun: boolean;
}

export function parseKindArgs(args: string[]): KindArgs {
  let values;
  try {
    ({ values } = parseArgs({
      args,
      strict: true,
      allowPositionals: false,
      options: {
        "ip-family": { type: "string", default: "ipv4" },
        case: { type: "string", multiple: true, default: [] },
        image: { type: "string" },
        "e2e-test-binary": { type: "string" },
        "ginkgo-nodes": { type: "string", default: String(UPSTREAM_NODES) },
        "ginkgo-skip": { type: "string", default: "" },
        name: { type: "string", default: "knp-e2e" },
        keep: { type: "boolean", default: false },
        "dry-run": { type: "boolean", default: false },
        help: { type: "boolean", short: "h", default: false },
      },
    }));
  } catch (e) {
    throw new ArgsError((e as Error).message);
  }
  const ipFamily = values["ip-family"];
  if (ipFamily !== "ipv4" && ipFamily !== "ipv6" && ipFamily !== "dual") {
    throw new ArgsError(`--ip-family must be ipv4, ipv6 or dual, not ${ipFamily}`);
  }
  const nodes = Number(values["ginkgo-nodes"]);
  if (!Number.isInteger(nodes) || nodes < 1) {
    throw new ArgsError(`--ginkgo-nodes must be a positive integer, not ${values["ginkgo-nodes"]}`);
  }
  // kind names clusters after DNS labels; its node containers are <name>-control-plane etc.
  if (!/^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$/.test(values.name)) {
    throw new ArgsError(`--name must be a DNS label of at most 32 characters, not ${values.name}`);
  }
  if (values.image !== undefined && !/^[\w./:@-]+$/.test(values.image)) {
    throw new ArgsError(`--image must be an image reference, not ${JSON.stringify(values.image)}`);
  }
  return {
    help: values.help,
    ipFamily,
    cases: values.case,
    image: values.image,
    e2eTestBinary: values["e2e-test-binary"],
    ginkgoNodes: nodes,
    ginkgoSkip: values["ginkgo-skip"],
    name: values.name,
    keep: values.keep,
    dryRun: values["dry-run"],
  };
}
