import { createHash, timingSafeEqual } from 'node:crypto';

/**
 * Compares a presented token with the expected one in constant time. Both are
 * hashed first so that neither the comparison nor an early length mismatch
 * tells an attacker how much of the token they got right.
 */
export function tokensEqual(expected: string, presented: string | string[] | undefined): boolean {
  if (typeof presented !== 'string') return false;
  const digest = (value: string): Buffer => createHash('sha256').update(value).digest();
  return timingSafeEqual(digest(expected), digest(presented));
}
