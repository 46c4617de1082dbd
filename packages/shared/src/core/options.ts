import { InvalidOptionError } from './errors.js';

/**
 * Validates a duration in milliseconds: a finite number within [min, max].
 * Throws `InvalidOptionError` (`ERR_INVALID_OPTION`) naming the option.
 */
export function checkMs(name: string, value: unknown, min = 0, max = 2 ** 31 - 1): number {
  if (typeof value !== 'number' || !Number.isFinite(value) || value < min || value > max) {
    throw new InvalidOptionError(name, value, `a number of milliseconds from ${min} to ${max}`);
  }
  return value;
}

/** Validates an integer within [min, max]. */
export function checkInt(name: string, value: unknown, min: number, max = Number.MAX_SAFE_INTEGER): number {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw new InvalidOptionError(name, value, `an integer from ${min} to ${max}`);
  }
  return value;
}

/** Validates that `low <= high` for a pair of already-checked bounds. */
export function checkOrdered(lowName: string, low: number, highName: string, high: number): void {
  if (low > high) throw new InvalidOptionError(lowName, low, `at most ${highName} (${high})`);
}
