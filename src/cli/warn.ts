/**
 * Warnings the report commands print on stderr when they skip something
 * damaged in the state folder (a torn journal line, a state file of the
 * wrong shape, a garbage agent.json): each once, with the file and line.
 */
import { describeDamage, type OnDamage } from '../stateDir.js';
import type { IO } from './io.js';

export function damageWarner(io: IO, command: string): OnDamage {
  const said = new Set<string>();
  return (d) => {
    const text = describeDamage(d);
    const key = `${d.file}:${d.line ?? ''}`;
    if (said.has(key)) return;
    said.add(key);
    io.stderr(`relink ${command}: warning: ${text}\n`);
  };
}
