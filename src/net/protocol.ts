/**
 * Transport protocols as policies name them and as packets carry them: the one definition shared
 * by the packet parser, the policy engine and everything that reports verdicts.
 */

/** The protocols a NetworkPolicy port (and a cluster policy's protocols) can name. */
export type Protocol = "TCP" | "UDP" | "SCTP";
export const PROTOCOLS: readonly Protocol[] = ["TCP", "UDP", "SCTP"];

/**
 * Transport protocol of a connection. Policies name ports only for TCP, UDP and SCTP; any other
 * protocol (ICMP, ...) is matched only by rules that name no ports.
 */
export type ConnectionProtocol = Protocol | "ICMP" | "ICMPv6" | "OTHER";
