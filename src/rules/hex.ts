/** Marks are 32-bit; rendered the way iptables-save prints them (`0x100000`). */
export function hex(n: number): string {
  return "0x" + (n >>> 0).toString(16);
}
