import { setTimeout as sleep } from 'node:timers/promises';

/** Counts of the process's active handles by type (`TCPSocketWrap`, `Timeout`, …). */
export function activeHandles(): Map<string, number> {
  const counts = new Map<string, number>();
  for (const type of process.getActiveResourcesInfo()) counts.set(type, (counts.get(type) ?? 0) + 1);
  return counts;
}

/**
 * Waits (up to 2 s) for every handle type to be back at or below `baseline`,
 * and returns the types still above it: an empty list means nothing leaked.
 */
export async function handlesAbove(baseline: Map<string, number>): Promise<string[]> {
  let above: string[] = [];
  for (let i = 0; i < 40; i++) {
    above = [...activeHandles()].filter(([type, n]) => n > (baseline.get(type) ?? 0)).map(([type, n]) => `${type}×${n}`);
    if (above.length === 0) break;
    await sleep(50);
  }
  return above;
}
