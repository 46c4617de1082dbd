import { createHash, timingSafeEqual } from 'node:crypto';
import { InvalidOptionError } from '@pool/shared';

/** One accepted token: its secret's sha256, and the client it names (none for a shared `token`). */
export interface TokenEntry {
  readonly client: string | undefined;
  readonly digest: Buffer;
}

const digestOf = (value: string): Buffer => createHash('sha256').update(value).digest();

/**
 * Compares a presented token with the expected one in constant time. Both are
 * hashed first so that neither the comparison nor an early length mismatch
 * tells an attacker how much of the token they got right.
 */
export function tokensEqual(expected: string, presented: string | string[] | undefined): boolean {
  if (typeof presented !== 'string') return false;
  return timingSafeEqual(digestOf(expected), digestOf(presented));
}

/**
 * The tokens a relay accepts: a shared `token`, and named ones (`client name →
 * secret`) that also say which client connected. Undefined when neither is
 * given (no authentication). Throws `ERR_INVALID_OPTION` for an empty secret
 * or name, or one secret under two names (which client would it be?).
 */
export function parseTokens(token: string | undefined, tokens: Readonly<Record<string, string>> | undefined): readonly TokenEntry[] | undefined {
  const entries: Array<[string | undefined, unknown]> = [...Object.entries(tokens ?? {})];
  if (token !== undefined) entries.push([undefined, token]);
  if (entries.length === 0) return undefined;
  const seen = new Set<string>();
  return entries.map(([client, secret]) => {
    if (typeof secret !== 'string' || secret === '') throw new InvalidOptionError(client === undefined ? 'token' : `tokens.${client}`, secret, 'a non-empty string');
    if (client === '') throw new InvalidOptionError('tokens', client, 'non-empty client names');
    if (seen.has(secret)) throw new InvalidOptionError('tokens', '<secret>', 'a distinct secret for each client');
    seen.add(secret);
    return { client, digest: digestOf(secret) };
  });
}

/** The entry whose secret was presented, or undefined. Every entry is compared, in constant time each. */
export function matchToken(entries: readonly TokenEntry[], presented: string | string[] | undefined): TokenEntry | undefined {
  if (typeof presented !== 'string') return undefined;
  const digest = digestOf(presented);
  let match: TokenEntry | undefined;
  for (const entry of entries) if (timingSafeEqual(entry.digest, digest)) match ??= entry;
  return match;
}
