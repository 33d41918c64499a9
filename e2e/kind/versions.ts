/**
 * Every image and version the kind e2e pins, with where each was proven. Change them together
 * with the sources named here: a kind node image only works with the kind release it was built
 * for, and the kindnet image decides whether anything besides kube-netpol enforces policies.
 */

/**
 * kubernetes-sigs/kube-network-policies runs its kind e2e with `K8S_VERSION: "v1.33.1"` and
 * `KIND_VERSION: "v0.29.0"` (.github/workflows/e2e.yml, commit 5f81cc3 of its main branch,
 * versions set in its commit ce33abb "bump kind versions"). kind v0.29.0's release notes list
 * this digest for v1.33.1; kind asks for images to be pinned by digest.
 */
export const KIND_VERSION = "v0.29.0";
export const KIND_NODE_IMAGE =
  "kindest/node:v1.33.1@sha256:050072256b9a903bd914c0b2866828150cb229cea0efe5892e2b644d5dd3b34f";
/** The e2e.test/ginkgo release that matches the node image (kubernetes-test-linux-*.tar.gz). */
export const K8S_VERSION = "v1.33.1";

/**
 * kindnet's own NetworkPolicy enforcement arrived with kind's PR #3612 (merged July 2024). The
 * same workflow (and its hack/ci/e2e.sh) swaps kind's kindnet for this earlier build "to stop
 * kindnet of applying network policies": `kubectl -n kube-system set image ds kindnet
 * kindnet-cni=docker.io/kindest/kindnetd:v20230809-80a64d96`. The driver checks the DaemonSet
 * really runs it before anything else happens.
 */
export const KINDNET_WITHOUT_POLICY = "docker.io/kindest/kindnetd:v20230809-80a64d96";

/**
 * agnhost, the upstream e2e test image. 2.60 is the first release whose `porter` serves UDP
 * (kubernetes/kubernetes#135911, promoted in kubernetes/k8s.io#8938); the upstream Netpol suite
 * has run one `porter` container per pod since kubernetes/kubernetes#136474.
 */
export const AGNHOST_IMAGE = "registry.k8s.io/e2e-test-images/agnhost:2.63.0";

/**
 * The network-policy-api CRDs (kubernetes-sigs/network-policy-api), applied from GitHub at pinned
 * commits. No release carries both APIs the agent reads: v0.2.0 (tag on commit a17adec, April
 * 2026) ships ClusterNetworkPolicy v1alpha2 only, and the v0.1.x line AdminNetworkPolicy and
 * BaselineAdminNetworkPolicy v1alpha1 only (v0.1.8, tag on commit 5a62954, December 2025, the
 * last). They are different resources of one group, so both install side by side. The
 * experimental channel: the tier cases use `nodes` peers (and the ANP `namedPort`), which the
 * standard channel's schemas of these releases leave out.
 */
export const NETWORK_POLICY_API_CRDS: readonly { name: string; url: string }[] = [
  {
    name: "clusternetworkpolicies.policy.networking.k8s.io",
    commit: "a17adecd0316b8ff1c3f83939ec0441d68cd6cce", // v0.2.0
  },
  {
    name: "adminnetworkpolicies.policy.networking.k8s.io",
    commit: "5a62954284765fb16f2e601f11907ca0b839b89f", // v0.1.8
  },
  {
    name: "baselineadminnetworkpolicies.policy.networking.k8s.io",
    commit: "5a62954284765fb16f2e601f11907ca0b839b89f", // v0.1.8
  },
].map(({ name, commit }) => ({
  name,
  url: `https://raw.githubusercontent.com/kubernetes-sigs/network-policy-api/${commit}/config/` +
    `crd/experimental/policy.networking.k8s.io_${name.split(".")[0]}.yaml`,
}));
