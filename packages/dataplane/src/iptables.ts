/**
 * The data plane's iptables rules, as data: what they should be for a gateway bridge, what the host
 * has (parsed from iptables-save), and the iptables-restore --noflush input between the two. Rules
 * live in chains named after the prefix (see names.ts) so they can be found and removed whole. IPv6
 * egress uses the same rules and chain names in ip6tables (a separate rule set in the kernel).
 */

import type { ResolvedConfig } from './config.ts';
import { CommandFailedError, type DataplaneObject } from './errors.ts';
import { commandIn, runCommand, showCommand } from './iproute2.ts';
import { iptablesChains } from './names.ts';

/** Seconds iptables waits for the xtables lock. */
const IPTABLES_WAIT_S = 5;

/** Which rule set: iptables (IPv4) or ip6tables (IPv6). */
export type IptablesFamily = 4 | 6;

const TOOLS: Readonly<Record<IptablesFamily, { readonly save: string; readonly restore: string }>> = {
  4: { save: 'iptables-save', restore: 'iptables-restore' },
  6: { save: 'ip6tables-save', restore: 'ip6tables-restore' },
};

export interface IptablesRules {
  readonly filter: readonly string[];
  readonly nat: readonly string[];
}

/**
 * Our rules in `iptables -S` form: chain declarations, the chains' rules, then the jumps into them.
 * `subnet` is the bridge's IPv4 subnet for iptables or its IPv6 subnet for ip6tables.
 */
export function desiredIptablesRules(prefix: string, bridge: string, subnet: string): IptablesRules {
  const { forward, postrouting } = iptablesChains(prefix);
  return {
    filter: [
      `-N ${forward}`,
      `-A ${forward} -i ${bridge} -o ${bridge} -j DROP`,
      `-A ${forward} -i ${bridge} ! -o ${bridge} -j ACCEPT`,
      `-A ${forward} -o ${bridge} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT`,
      `-A FORWARD -j ${forward}`,
    ],
    nat: [`-N ${postrouting}`, `-A ${postrouting} -s ${subnet} ! -o ${bridge} -j MASQUERADE`, `-A POSTROUTING -j ${postrouting}`],
  };
}

/** From `iptables-save -t TABLE` output: our chains (as `-N`), their rules, and jumps into them. */
export function parseIptablesSave(text: string, chains: readonly string[]): string[] {
  const out: string[] = [];
  for (const line of text.split('\n')) {
    const decl = /^:(\S+) /.exec(line);
    if (decl && chains.includes(decl[1]!)) out.push(`-N ${decl[1]}`);
    const rule = /^-A (\S+) /.exec(line);
    if (!rule) continue;
    if (chains.includes(rule[1]!) || chains.some((c) => line.endsWith(` -j ${c}`))) out.push(line.trim());
  }
  // iptables-save lists declarations first and jumps where they sit in their parent chain.
  return [...out.filter((l) => l.startsWith('-N')), ...out.filter((l) => !l.startsWith('-N') && !isJump(l, chains)), ...out.filter((l) => isJump(l, chains))];
}

function isJump(line: string, chains: readonly string[]): boolean {
  const m = /^-A (\S+) /.exec(line);
  return !!m && !chains.includes(m[1]!) && chains.some((c) => line.endsWith(` -j ${c}`));
}

/**
 * `iptables-restore --noflush` input that turns `actual` into `desired` for one table, or undefined when
 * they match. Declaring our chain flushes it; its rules are then written whole. Jumps are inserted first
 * in their parent chain (ahead of a DROP policy's companions) and deduplicated.
 */
export function iptablesRestoreInput(table: 'filter' | 'nat', desired: readonly string[], actual: readonly string[]): string | undefined {
  if (desired.length === actual.length && desired.every((l, i) => l === actual[i])) return undefined;
  const lines = [`*${table}`];
  const chains = desired.filter((l) => l.startsWith('-N ')).map((l) => l.slice(3));
  for (const c of chains) lines.push(`:${c} - [0:0]`);
  for (const l of desired) if (!l.startsWith('-N ') && !isJump(l, chains)) lines.push(l);
  for (const jump of desired.filter((l) => isJump(l, chains))) {
    const count = actual.filter((l) => l === jump).length;
    if (count === 0) lines.push(jump.replace(/^-A (\S+) /, '-I $1 1 '));
    for (let i = 1; i < count; i++) lines.push(jump.replace(/^-A /, '-D '));
  }
  lines.push('COMMIT');
  return lines.join('\n') + '\n';
}

/** `iptables-restore --noflush` input removing our chains and jumps from one table, or undefined if none. */
export function iptablesRemovalInput(table: 'filter' | 'nat', actual: readonly string[], chains: readonly string[]): string | undefined {
  const jumps = actual.filter((l) => isJump(l, chains));
  const present = actual.filter((l) => l.startsWith('-N ')).map((l) => l.slice(3));
  if (jumps.length === 0 && present.length === 0) return undefined;
  const lines = [`*${table}`, ...jumps.map((j) => j.replace(/^-A /, '-D '))];
  for (const c of present) lines.push(`-F ${c}`, `-X ${c}`);
  lines.push('COMMIT');
  return lines.join('\n') + '\n';
}

async function iptablesSave(config: ResolvedConfig, table: 'filter' | 'nat', family: IptablesFamily, signal?: AbortSignal): Promise<string> {
  const cmd = commandIn(config.host, TOOLS[family].save, ['-t', table]);
  const r = await runCommand(cmd[0], cmd[1], signal ? { signal } : {});
  if (r.failure || r.code !== 0) {
    throw new CommandFailedError({ kind: 'host', netns: config.hostLabel }, showCommand(cmd), r.failure ?? r.stderr.trim());
  }
  return r.stdout;
}

/** Our iptables (or ip6tables) rules in the host namespace, per table. */
export async function readIptables(config: ResolvedConfig, signal?: AbortSignal, family: IptablesFamily = 4): Promise<IptablesRules> {
  const { forward, postrouting } = iptablesChains(config.prefix);
  const [filter, nat] = await Promise.all([iptablesSave(config, 'filter', family, signal), iptablesSave(config, 'nat', family, signal)]);
  return { filter: parseIptablesSave(filter, [forward]), nat: parseIptablesSave(nat, [postrouting]) };
}

/** Runs `iptables-restore --noflush` (or ip6tables-restore) with `input` in the host namespace. */
export async function iptablesRestore(config: ResolvedConfig, input: string, object: DataplaneObject, family: IptablesFamily = 4): Promise<void> {
  const cmd = commandIn(config.host, TOOLS[family].restore, ['-w', String(IPTABLES_WAIT_S), '--noflush']);
  const r = await runCommand(cmd[0], cmd[1], { input });
  if (r.failure || r.code !== 0) {
    throw new CommandFailedError(object, showCommand(cmd), `${r.failure ?? r.stderr.trim()} (input: ${input.trim().replace(/\n/g, ' | ')})`);
  }
}
