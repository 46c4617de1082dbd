import { appendFileSync, mkdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const FIGURES = fileURLToPath(new URL('../../build/reliability-figures.jsonl', import.meta.url));

/**
 * Records a measured figure for the reliability report: appended as one JSON
 * line to build/reliability-figures.jsonl and printed, so a run shows them.
 */
export function recordFigure(suite: string, name: string, value: number | string, unit = ''): void {
  mkdirSync(fileURLToPath(new URL('../../build/', import.meta.url)), { recursive: true });
  appendFileSync(FIGURES, `${JSON.stringify({ at: new Date().toISOString(), suite, name, value, unit })}\n`);
  process.stderr.write(`FIGURE ${suite} / ${name}: ${value}${unit ? ` ${unit}` : ''}\n`);
}
