import { describe, expect, it } from '@jest/globals';
import { nextCapacity, nextInterval, outageInterval } from '../src/adapt.js';

const bounds = { minInterval: 500, maxInterval: 5_000 };

describe('nextInterval (npws rule: idle share of capacity)', () => {
  it.each<[string, number, number, number, number]>([
    // label, idle, capacity, interval, expected
    ['empty pool: refill sooner', 0, 10, 1_000, 900],
    ['just under 20%', 1, 10, 1_000, 900],
    ['exactly 20%: unchanged', 2, 10, 1_000, 1_000],
    ['between the marks: unchanged', 5, 10, 1_000, 1_000],
    ['exactly 80%: unchanged', 8, 10, 1_000, 1_000],
    ['just over 80%', 9, 10, 1_000, 1_100],
    ['full pool: refill later', 10, 10, 1_000, 1_100],
    ['clamped at the minimum', 0, 10, 550, 500],
    ['already at the minimum', 0, 10, 500, 500],
    ['clamped at the maximum', 10, 10, 4_950, 5_000],
    ['already at the maximum', 10, 10, 5_000, 5_000],
    ['zero capacity counts as empty', 0, 0, 1_000, 900],
  ])('%s (idle %i of %i at %i ms -> %i ms)', (_label, idle, capacity, interval, expected) => {
    expect(nextInterval({ idle, capacity, interval, ...bounds })).toBe(expected);
  });
});

describe('nextCapacity (npws rule: success ratio of the round)', () => {
  const caps = { minCap: 2, maxCap: 8 };
  it.each<[string, number, number, number, number]>([
    // label, successes, attempts, capacity, expected
    ['no attempts: unchanged', 0, 0, 5, 5],
    ['all failed: shrink', 0, 5, 5, 4],
    ['just under 20%', 1, 6, 5, 4],
    ['exactly 20%: unchanged', 1, 5, 5, 5],
    ['middle: unchanged', 1, 2, 5, 5],
    ['exactly 80%: unchanged', 4, 5, 5, 5],
    ['just over 80%', 5, 6, 5, 6],
    ['all succeeded: grow', 5, 5, 5, 6],
    ['clamped at minCap', 0, 3, 2, 2],
    ['clamped at maxCap', 3, 3, 8, 8],
  ])('%s (%i of %i at capacity %i -> %i)', (_label, successes, attempts, capacity, expected) => {
    expect(nextCapacity({ successes, attempts, capacity, ...caps })).toBe(expected);
  });
});

describe('outageInterval (where we part from npws)', () => {
  it.each<[number, number]>([
    [500, 1_000],
    [1_000, 2_000],
    [3_000, 5_000],
    [5_000, 5_000],
  ])('doubles %i ms to %i ms, capped at the maximum', (interval, expected) => {
    expect(outageInterval(interval, bounds.minInterval, bounds.maxInterval)).toBe(expected);
  });

  it('grows from a zero interval instead of staying at zero', () => {
    expect(outageInterval(0, 0, 5_000)).toBe(100);
  });
});
