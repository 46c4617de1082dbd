import { describe, expect, it } from '@jest/globals';
import { normalizeAddress, parseAllowlist } from '../src/pool/allowlist.js';
import { tokensEqual } from '../src/pool/token.js';

describe('parseAllowlist', () => {
  it.each([
    [undefined],
    [''],
    [[]],
    [['', '  ']],
  ])('allows everyone when given no entries (%p)', (entries) => {
    const list = parseAllowlist(entries as string | string[] | undefined);
    expect(list.allowsAll).toBe(true);
    expect(list.allows('198.51.100.1')).toBe(true);
  });

  it.each<[string[], string, boolean]>([
    [['203.0.113.7'], '203.0.113.7', true],
    [['203.0.113.7'], '203.0.113.8', false],
    [['203.0.113.7'], '::ffff:203.0.113.7', true],
    [['::ffff:203.0.113.7'], '203.0.113.7', true],
    [['10.0.0.0/8'], '10.255.1.2', true],
    [['10.0.0.0/8'], '11.0.0.1', false],
    [['10.0.0.0/8'], '::ffff:10.1.2.3', true],
    [['0.0.0.0/0'], '192.0.2.1', true],
    [['2001:db8::/32'], '2001:db8:1::5', true],
    [['::ffff:127.0.0.1/128'], '127.0.0.1', true],
    [['::ffff:10.0.0.0/104'], '10.9.8.7', true],
    [['::ffff:10.0.0.0/104'], '11.0.0.1', false],
    [['2001:db8::/32'], '2001:db9::5', false],
    [['2001:DB8::1'], '2001:db8::1', true],
    [['::1'], '::1', true],
    [['::1'], '127.0.0.1', false],
    [['127.0.0.1'], '::1', false],
    [['10.0.0.0/8', '2001:db8::/32', '192.0.2.9'], '192.0.2.9', true],
    [['10.0.0.0/8', '2001:db8::/32', '192.0.2.9'], '192.0.2.10', false],
  ])('%p allows %s: %p', (entries, peer, allowed) => {
    expect(parseAllowlist(entries).allows(peer)).toBe(allowed);
  });

  it('denies a peer with no address (a socket already gone)', () => {
    expect(parseAllowlist(['127.0.0.1']).allows(undefined)).toBe(false);
  });

  it.each(['300.1.1.1', '10.0.0.0/33', '2001:db8::/129', '10.0.0.0/8/1', 'example.com', '10.0.0.0/', '10.0.0.0/-1', '1.2.3.4/ 8'])(
    'rejects %p at construction with ERR_INVALID_OPTION',
    (entry) => {
      expect(() => parseAllowlist([entry])).toThrow(expect.objectContaining({ code: 'ERR_INVALID_OPTION' }));
    },
  );

  it('normalises IPv4-mapped IPv6 and case', () => {
    expect(normalizeAddress('::ffff:127.0.0.1')).toBe('127.0.0.1');
    expect(normalizeAddress('::FFFF:127.0.0.1')).toBe('127.0.0.1');
    expect(normalizeAddress('2001:DB8::1')).toBe('2001:db8::1');
  });
});

describe('tokensEqual', () => {
  it('accepts only the exact token', () => {
    expect(tokensEqual('s3cret', 's3cret')).toBe(true);
    expect(tokensEqual('s3cret', 's3cre')).toBe(false);
    expect(tokensEqual('s3cret', 's3cret ')).toBe(false);
    expect(tokensEqual('s3cret', '')).toBe(false);
    expect(tokensEqual('s3cret', undefined)).toBe(false);
    expect(tokensEqual('s3cret', ['s3cret', 's3cret'])).toBe(false);
  });
});
