import { describe, expect, it } from '@jest/globals';
import { resolveRelayTarget } from '../src/server-address.js';

describe('resolveRelayTarget', () => {
  it.each<[string, Parameters<typeof resolveRelayTarget>[1], string, boolean | undefined]>([
    // server, tls, url, rejectUnauthorized (undefined: verified; null-ish url check only)
    ['relay.example.com:8443', undefined, 'wss://relay.example.com:8443/', undefined],
    ['relay.example.com:8443', 'verified', 'wss://relay.example.com:8443/', undefined],
    ['relay.example.com:8443', '2', 'wss://relay.example.com:8443/', undefined],
    ['relay.example.com:8443', 'insecure', 'wss://relay.example.com:8443/', false],
    ['relay.example.com:8443', '1', 'wss://relay.example.com:8443/', false],
    ['[2001:db8::1]:8443', 'insecure', 'wss://[2001:db8::1]:8443/', false],
    ['wss://relay.example.com', undefined, 'wss://relay.example.com/', undefined],
    ['wss://relay.example.com:9443/ignored/path', 'insecure', 'wss://relay.example.com:9443/', false],
  ])('%s with tls %p is %s', (server, tls, url, rejectUnauthorized) => {
    const target = resolveRelayTarget(server, tls);
    expect(target.url).toBe(url);
    expect(target.tls?.minVersion).toBe('TLSv1.3');
    expect(target.tls?.rejectUnauthorized).toBe(rejectUnauthorized);
  });

  it.each<[string, Parameters<typeof resolveRelayTarget>[1]]>([
    ['127.0.0.1:8080', 'off'],
    ['127.0.0.1:8080', '0'],
    ['ws://127.0.0.1:8080', undefined],
    ['ws://127.0.0.1:8080', 'off'],
  ])('%s with tls %p is plain ws://', (server, tls) => {
    const target = resolveRelayTarget(server, tls);
    expect(target.url).toBe('ws://127.0.0.1:8080/');
    expect(target.tls).toBeUndefined();
  });

  it('passes tls.ConnectionOptions through, with TLS 1.3 as the floor', () => {
    const target = resolveRelayTarget('relay:1', { ca: 'PEM', servername: 'relay.internal', minVersion: 'TLSv1.2' });
    expect(target.tls).toEqual({ ca: 'PEM', servername: 'relay.internal', minVersion: 'TLSv1.3' });
  });

  it.each<[string, Parameters<typeof resolveRelayTarget>[1]]>([
    ['relay.example.com', undefined], // no port
    ['', undefined],
    ['http://relay:1', undefined],
    ['ws://relay:1', 'verified'],
    ['wss://relay:1', 'off'],
    ['relay:1', 'strict' as '0'],
    ['relay:99999', undefined],
  ])('rejects server %p with tls %p as ERR_INVALID_OPTION', (server, tls) => {
    expect(() => resolveRelayTarget(server, tls)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_OPTION' }));
  });
});
