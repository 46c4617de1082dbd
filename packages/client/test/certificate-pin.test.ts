import { describe, expect, it } from '@jest/globals';
import { X509Certificate } from 'node:crypto';
import { once } from 'node:events';
import type { AddressInfo } from 'node:net';
import { createServer } from 'node:tls';
import { ServerPool, generateDevCertificate } from '@pool/server';
import { ClientPool } from '@pool/client';
import { parseFingerprint } from '@pool/shared/internal';
import { certificateHint } from '../src/certificate-pin.js';
import { resolveRelayTarget } from '../src/server-address.js';

const HEX = 'ab'.repeat(32);
const COLONS = 'AB:'.repeat(31) + 'AB';

async function until(condition: () => boolean, what: string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!condition()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

describe('parseFingerprint', () => {
  it.each([
    [COLONS, COLONS],
    [HEX, COLONS],
    [HEX.toUpperCase(), COLONS],
    [`sha256:${HEX}`, COLONS],
    [` ${COLONS.toLowerCase()} `, COLONS],
  ])('reads %s', (text, expected) => {
    expect(parseFingerprint(text)).toBe(expected);
  });

  it.each(['', 'AB:CD', HEX.slice(2), `${HEX}ab`, 'zz'.repeat(32), 'AB:'.repeat(19) + 'AB'])('refuses %j', (text) => {
    expect(parseFingerprint(text)).toBeUndefined();
  });
});

describe('tls.fingerprint', () => {
  it('is validated with the rest of the TLS options', () => {
    expect(() => resolveRelayTarget('relay:1', { fingerprint: 'AB:CD' })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_OPTION' }));
    expect(() => resolveRelayTarget('relay:1', { fingerprint: HEX, ca: 'x' })).toThrow(/no ca with tls\.fingerprint/);
    expect(resolveRelayTarget('relay:1', { fingerprint: HEX })).toMatchObject({ fingerprint: COLONS, tls: { minVersion: 'TLSv1.3' } });
    expect(resolveRelayTarget('relay:1', 'verified').fingerprint).toBeUndefined();
  });

  it('admits the pinned certificate whatever names it carries: the pool fills, with session resumption, and hands out connections', async () => {
    const { cert, key, fingerprint } = await generateDevCertificate(['relay.pool.test']);
    const relay = new ServerPool({ host: '127.0.0.1', port: 0, tls: { cert, key } });
    await relay.ServerManager();
    const agent = new ClientPool({ server: `127.0.0.1:${relay.address()!.port}`, tls: { fingerprint }, minCap: 4, maxCap: 4 });
    try {
      agent.ClientManager();
      await until(() => agent.Active() === 4 && relay.Active() === 4, 'four pinned connections');
      const { id, conn } = await relay.IncomingGet(5_000);
      const agentEnd = await agent.OutgoingGet(id, 5_000);
      expect(agentEnd.getPeerCertificate()?.fingerprint256).toBe(fingerprint);
      conn.end('pinned');
      let received = '';
      for await (const chunk of agentEnd) received += chunk;
      expect(received).toBe('pinned');
      expect(agent.stats().dialFailures).toBe(0);
      agentEnd.end();
      let echoed = '';
      for await (const chunk of conn) echoed += chunk;
      expect(echoed).toBe('');
    } finally {
      await agent.Close();
      await relay.Close();
    }
  });

  it('refuses another certificate before the upgrade request, so the token never leaves', async () => {
    const { cert, key, fingerprint } = await generateDevCertificate(['localhost']);
    let decrypted = 0;
    let connections = 0;
    const server = createServer({ cert, key }, (socket) => {
      socket.on('data', (data: Buffer) => (decrypted += data.length));
      socket.on('error', () => {});
    });
    server.on('connection', () => connections++);
    server.on('tlsClientError', () => {});
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    const errors: Array<{ code?: string; message: string }> = [];
    const agent = new ClientPool({ server: `127.0.0.1:${(server.address() as AddressInfo).port}`, tls: { fingerprint: HEX }, token: 'never-sent', minCap: 2, maxCap: 2 });
    agent.on('error', (error: Error & { code?: string }) => errors.push(error));
    try {
      agent.ClientManager();
      await until(() => connections >= 2 && errors.length >= 2, 'two refused handshakes');
      await new Promise((resolve) => setTimeout(resolve, 100));
      expect(decrypted).toBe(0);
      expect(errors[0]).toMatchObject({ code: 'ERR_TLS_CERT_PIN' });
      expect(errors[0]!.message).toContain(new X509Certificate(cert).fingerprint256);
      expect(errors[0]!.message).toContain(COLONS);
      expect(fingerprint).not.toBe(COLONS);
    } finally {
      await agent.Close();
      server.close();
    }
  });
});

describe('certificateHint', () => {
  it('points at the pinning flags for an untrusted certificate, at the pin for a mismatch, and says nothing otherwise', () => {
    expect(certificateHint('DEPTH_ZERO_SELF_SIGNED_CERT')).toMatch(/--tls-fingerprint.*--tls-ca/);
    // A name the certificate does not list is not cured by trusting it with --tls-ca.
    expect(certificateHint('ERR_TLS_CERT_ALTNAME_INVALID')).toMatch(/not made for the host name.*--tls-fingerprint/);
    expect(certificateHint('ERR_TLS_CERT_ALTNAME_INVALID')).not.toMatch(/--tls-ca/);
    expect(certificateHint('ERR_TLS_CERT_PIN')).toMatch(/not the pinned one/);
    expect(certificateHint('ECONNREFUSED')).toBe('');
    expect(certificateHint(undefined)).toBe('');
  });
});
