/**
 * The upstream Kubernetes NetworkPolicy conformance tests (`Netpol`, [Feature:NetworkPolicy])
 * against the kind cluster, run the way kubernetes-sigs/kube-network-policies' CI runs them
 * (.github/workflows/e2e.yml, "Run tests"): ginkgo spreads the specs over parallel nodes and
 * hands everything after `--` to e2e.test:
 *
 *   KUBERNETES_CONFORMANCE_TEST=y ginkgo --nodes=25 --focus="Netpol" e2e.test -- \
 *     --kubeconfig=... --provider=local --dump-logs-on-failure=false --report-dir=... \
 *     --disable-log-dump=true
 *
 * Both binaries come from kubernetes-test-linux-<arch>.tar.gz of the release the node image runs
 * (versions.ts: K8S_VERSION); ginkgo is expected next to e2e.test, as in that tarball.
 */

export interface UpstreamRun {
  /** Path of e2e.test; ginkgo is taken from the same directory. */
  e2eTest: string;
  nodes: number;
  focus: string;
  /** Ginkgo skip regex; none when empty. */
  skip: string;
  kubeconfig: string;
  reportDir: string;
}

export const UPSTREAM_FOCUS = "Netpol";
export const UPSTREAM_NODES = 25;

export function ginkgoPath(e2eTest: string): string {
  const slash = e2eTest.lastIndexOf("/");
  return slash < 0 ? "ginkgo" : `${e2eTest.slice(0, slash + 1)}ginkgo`;
}

export function upstreamCommand(u: UpstreamRun): { cmd: string[]; env: Record<string, string> } {
  return {
    // Keeps the e2e framework from trying to set up a cloud provider.
    env: { KUBERNETES_CONFORMANCE_TEST: "y" },
    cmd: [
      ginkgoPath(u.e2eTest),
      `--nodes=${u.nodes}`,
      `--focus=${u.focus}`,
      ...(u.skip ? [`--skip=${u.skip}`] : []),
      u.e2eTest,
      "--",
      `--kubeconfig=${u.kubeconfig}`,
      "--provider=local",
      "--dump-logs-on-failure=false",
      `--report-dir=${u.reportDir}`,
      "--disable-log-dump=true",
    ],
  };
}
