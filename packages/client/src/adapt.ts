/**
 * The npws adaptation rules, as pure functions. The manager applies
 * `nextInterval` before each fill round and `nextCapacity` after it.
 */

/** Step by which the interval moves, in ms (npws: 100 ms). */
export const INTERVAL_STEP_MS = 100;
/** Below this share of the capacity idle, the pool is running dry: refill sooner. */
export const LOW_WATER = 0.2;
/** Above this share, the pool is mostly unused: refill later. Also the success ratio that grows capacity. */
export const HIGH_WATER = 0.8;

export interface IntervalInput {
  /** Idle connections before the round. */
  idle: number;
  capacity: number;
  /** Current interval, in ms. */
  interval: number;
  minInterval: number;
  maxInterval: number;
}

/** idle < 20% of capacity: interval − 100 ms (not below min); idle > 80%: + 100 ms (not above max). */
export function nextInterval({ idle, capacity, interval, minInterval, maxInterval }: IntervalInput): number {
  const ratio = capacity > 0 ? idle / capacity : 0;
  if (ratio < LOW_WATER) return Math.max(minInterval, interval - INTERVAL_STEP_MS);
  if (ratio > HIGH_WATER) return Math.min(maxInterval, interval + INTERVAL_STEP_MS);
  return interval;
}

export interface CapacityInput {
  /** Dials that produced a pooled connection in the round. */
  successes: number;
  /** Dials started in the round (0: the pool was already full; capacity stays). */
  attempts: number;
  capacity: number;
  minCap: number;
  maxCap: number;
}

/** Success ratio < 20%: capacity − 1 (not below min); > 80%: + 1 (not above max). */
export function nextCapacity({ successes, attempts, capacity, minCap, maxCap }: CapacityInput): number {
  if (attempts === 0) return capacity;
  const ratio = successes / attempts;
  if (ratio < LOW_WATER) return Math.max(minCap, capacity - 1);
  if (ratio > HIGH_WATER) return Math.min(maxCap, capacity + 1);
  return capacity;
}

/**
 * Where we part from npws: after a round in which every dial failed (the relay
 * is down or refusing), the interval doubles, up to `maxInterval`, instead of
 * shrinking towards the minimum and hammering a relay that is already down.
 */
export function outageInterval(interval: number, minInterval: number, maxInterval: number): number {
  return Math.min(maxInterval, Math.max(minInterval, interval * 2, INTERVAL_STEP_MS));
}

export interface BurstInput {
  /** Capacity that demand raised the pool to (0: none). */
  burst: number;
  /** Idle connections before the round. */
  idle: number;
  /** The round's target: the larger of the npws capacity and `burst`. */
  capacity: number;
}

/**
 * What is left of a burst's capacity after a fill round: it falls by one
 * per round in which the pool stayed more than 80% idle (the state in which
 * npws lengthens its interval), so a pool raised by demand returns to its npws
 * capacity once the demand is gone, and keeps it while the demand lasts.
 */
export function nextBurst({ burst, idle, capacity }: BurstInput): number {
  if (burst === 0) return 0;
  return capacity > 0 && idle / capacity > HIGH_WATER ? burst - 1 : burst;
}
