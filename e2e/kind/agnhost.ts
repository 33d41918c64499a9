/**
 * What the kind driver asks of agnhost: the server every model pod runs and the probe a client
 * pod execs. Both follow agnhost's own source (kubernetes/kubernetes test/images/agnhost/):
 *
 * - `porter` (porter/porter.go) takes no arguments; for each environment variable
 *   SERVE_PORT_<n> (TCP), SERVE_UDP_PORT_<n> or SERVE_SCTP_PORT_<n> it listens on the
 *   wildcard address of port n (both families) and answers with the variable's value.
 * - `connect <host:port>` (connect/connect.go) has exactly the flags --timeout (a Go duration),
 *   --protocol (tcp|udp|sctp), --udp-data and --sctp-data; it exits 0 on a connection (for UDP
 *   and SCTP: after a reply) and 1 otherwise.
 *
 * The upstream Netpol suite (test/e2e/network/netpol) starts its servers the same way since
 * kubernetes/kubernetes#136474 and probes with the same connect command (kubemanager.go).
 * tests/kind_agnhost_test.ts pins these renderings to those facts.
 */
import type { Protocol } from "../../src/net/protocol.ts";
import { portName } from "../cases/model.ts";
import { AGNHOST_IMAGE } from "./versions.ts";

/** The one container of every model pod; probes exec into it. */
export const SERVER_CONTAINER = "server";

const ENV_PREFIX: Record<Protocol, string> = {
  TCP: "SERVE_PORT_",
  UDP: "SERVE_UDP_PORT_",
  SCTP: "SERVE_SCTP_PORT_",
};

export interface ServedPort {
  port: number;
  protocol: Protocol;
}

/** One `agnhost porter` serving every port and protocol of the model pod. */
export function serverContainer(serve: readonly ServedPort[]) {
  return {
    name: SERVER_CONTAINER,
    image: AGNHOST_IMAGE,
    imagePullPolicy: "IfNotPresent",
    command: ["/agnhost", "porter"],
    env: serve.map((s) => ({ name: `${ENV_PREFIX[s.protocol]}${s.port}`, value: "ok" })),
    ports: serve.map((s) => ({
      name: portName(s.port, s.protocol),
      containerPort: s.port,
      protocol: s.protocol,
    })),
  };
}

/** host:port as Go's net.JoinHostPort writes it (IPv6 literals in brackets). */
export function joinHostPort(host: string, port: number, family: 4 | 6): string {
  return family === 6 ? `[${host}]:${port}` : `${host}:${port}`;
}

/** The command a client pod runs to try one connection. */
export function connectCommand(
  host: string,
  family: 4 | 6,
  port: number,
  protocol: Protocol,
  timeoutSeconds: number,
): string[] {
  return [
    "/agnhost",
    "connect",
    joinHostPort(host, port, family),
    `--timeout=${timeoutSeconds}s`,
    `--protocol=${protocol.toLowerCase()}`,
  ];
}
