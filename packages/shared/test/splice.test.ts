import { afterEach, describe, expect, it } from '@jest/globals';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { connect, createServer, type AddressInfo, type Server, type Socket } from 'node:net';
import { PassThrough } from 'node:stream';
import { NO_EXTENSIONS, splice, type Extensions, type SpliceResult } from '@pool/shared';
import { connPair, type ConnPair } from '../../../tests/helpers/ws-pair.js';
import { closed, hashUntilEnd } from '../../../tests/helpers/streams.js';
import { sha256 } from '../../../tests/helpers/tunnel.js';

// A whole tunnel in one process: user socket -> (relay) splice -> pooled
// connection over a real WebSocket -> (agent) splice -> target socket.

const servers: Server[] = [];
let pair: ConnPair | undefined;

afterEach(async () => {
  await pair?.close();
  pair = undefined;
  for (const server of servers.splice(0)) server.close();
});

/** Two ends of one TCP connection on loopback, both allowing half-open. */
async function socketPair(): Promise<[Socket, Socket]> {
  const server = createServer({ allowHalfOpen: true });
  servers.push(server);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const accepted = once(server, 'connection') as Promise<[Socket]>;
  const client = connect({ port: (server.address() as AddressInfo).port, host: '127.0.0.1', allowHalfOpen: true });
  const [serverSide] = await accepted;
  await once(client, 'connect');
  for (const socket of [client, serverSide]) socket.on('error', () => {});
  return [client, serverSide];
}

interface Tunnel {
  user: Socket;
  target: Socket;
  /** What the tunnel itself holds: the relay's and the agent's sockets and both ends of the pooled connection. */
  parts: Array<{ closed: boolean }>;
  ended: Promise<[SpliceResult, SpliceResult]>;
}

/**
 * Builds a tunnel between a user and a target that behave as most peers do:
 * each ends its side once it has read the other's end-of-stream.
 */
async function tunnel(extensions: Extensions, options: { politeUser?: boolean; politeTarget?: boolean } = {}): Promise<Tunnel> {
  pair = await connPair({ tls: false, extensions });
  const [user, relaySide] = await socketPair();
  const [agentSide, target] = await socketPair();
  const ended = Promise.all([splice(relaySide, pair.server), splice(pair.client, agentSide)]);
  if (options.politeUser !== false) user.once('end', () => user.end());
  if (options.politeTarget !== false) target.once('end', () => target.end());
  return { user, target, parts: [relaySide, pair.server, pair.client, agentSide], ended };
}

/** Resolves once both splices have finished and every part of the tunnel has closed; returns how many are left open (0). */
async function leftOpen(tunnel: Tunnel, peers: Socket[] = [tunnel.user, tunnel.target]): Promise<number> {
  await tunnel.ended;
  const all = [...tunnel.parts, ...peers];
  await Promise.all(all.filter((part) => !part.closed).map((part) => closed(part as unknown as NodeJS.EventEmitter)));
  return all.filter((part) => !part.closed).length;
}

const REQUEST = Buffer.from('GET / HTTP/1.0\r\n\r\n');
const REPLY = randomBytes(256 * 1024);

describe.each([
  ['with half-close negotiated', { keepAlive: false, halfClose: true }],
  ['with a Go npws peer (no extension)', NO_EXTENSIONS],
])('splice, a whole tunnel %s', (_label, extensions) => {
  it('target ends first (HTTP/1.0, Connection: close): the user gets every byte and EOF, and everything closes', async () => {
    const t = await tunnel(extensions);
    t.target.once('data', () => t.target.end(REPLY));
    t.target.resume();
    t.user.write(REQUEST);
    const reply = await hashUntilEnd(t.user);
    expect(reply.sha256).toBe(sha256(REPLY));
    t.user.end();
    expect(await leftOpen(t)).toBe(0);
    const [relay, agent] = await t.ended;
    expect(relay.error).toBeUndefined();
    expect(agent.error).toBeUndefined();
  });

  it('target ends first and the user never ends: the tunnel still finishes', async () => {
    const t = await tunnel(extensions, { politeUser: false });
    t.target.once('data', () => t.target.end(REPLY));
    t.target.resume();
    t.user.write(REQUEST);
    t.user.resume();
    await once(t.user, 'end');
    if (extensions.halfClose) {
      // Half-close keeps the user's direction open: what it sends still arrives, until it ends.
      const more = once(t.target, 'data');
      t.user.write('more');
      expect(String((await more)[0])).toBe('more');
      t.user.end();
      expect(await leftOpen(t)).toBe(0);
    } else {
      // Without half-close nothing can reach the target any more: the relay ends the user and lets go after LINGER_MS.
      expect(await leftOpen(t, [t.target])).toBe(0);
    }
  });

  it('user ends after the reply: the target sees EOF, and everything closes', async () => {
    const t = await tunnel(extensions);
    t.target.on('data', (data: Buffer) => {
      if (data.includes('\n\r\n')) t.target.write(REPLY);
    });
    t.target.once('end', () => t.target.end());
    t.user.write(REQUEST);
    let got = 0;
    await new Promise<void>((resolve) =>
      t.user.on('data', (data: Buffer) => {
        got += data.length;
        if (got === REPLY.length) resolve();
      }),
    );
    t.user.end();
    expect(await leftOpen(t)).toBe(0);
  });

  it.each([
    ['user', 'before the reply'],
    ['user', 'after the reply'],
    ['target', 'before the reply'],
    ['target', 'after the reply'],
  ])('%s destroys %s: the other end learns it, and everything closes', async (who, when) => {
    const t = await tunnel(extensions);
    t.target.on('data', () => {
      if (when === 'after the reply') t.target.write(REPLY);
    });
    t.user.write(REQUEST);
    if (when === 'after the reply') {
      let got = 0;
      await new Promise<void>((resolve) =>
        t.user.on('data', (data: Buffer) => {
          got += data.length;
          if (got === REPLY.length) resolve();
        }),
      );
    } else {
      await once(t.target, 'data');
    }
    (who === 'user' ? t.user : t.target).destroy();
    expect(await leftOpen(t)).toBe(0);
  });

  it.each(['user', 'target'])('%s resets (RST) mid-stream: the reset reaches the other end, and everything closes', async (who) => {
    const t = await tunnel(extensions);
    t.target.on('data', () => t.target.write(REPLY));
    t.user.write(REQUEST);
    await once(t.user, 'data');
    const other = who === 'user' ? t.target : t.user;
    (who === 'user' ? t.user : t.target).resetAndDestroy();
    await closed(other);
    expect(await leftOpen(t)).toBe(0);
    const [relay, agent] = await t.ended;
    expect(relay.error ?? agent.error).toBeDefined();
  });
});

describe('splice with half-close negotiated', () => {
  const extensions = { keepAlive: false, halfClose: true };

  it('user half-closes after its request (nc -N): the reply of 65,536 bytes arrives whole, then EOF', async () => {
    const t = await tunnel(extensions, { politeTarget: false });
    const request = hashUntilEnd(t.target);
    t.user.end(REQUEST);
    expect((await request).bytes).toBe(REQUEST.length);
    t.target.end(REPLY.subarray(0, 65_536));
    const reply = await hashUntilEnd(t.user);
    expect(reply.bytes).toBe(65_536);
    expect(await leftOpen(t)).toBe(0);
  });

  it('target half-closes first: the user\'s later bytes all reach the target', async () => {
    const t = await tunnel(extensions, { politeUser: false });
    t.target.end('banner');
    const banner = await hashUntilEnd(t.user);
    expect(banner.bytes).toBe(6);
    const later = randomBytes(1024 * 1024);
    const received = hashUntilEnd(t.target);
    t.user.end(later);
    expect((await received).sha256).toBe(sha256(later));
    expect(await leftOpen(t)).toBe(0);
  });
});

describe('splice edge cases', () => {
  it('carries an end-of-stream that came before the splice, and resolves for a side already closed', async () => {
    const a = new PassThrough();
    a.end('early');
    await new Promise((resolve) => a.once('finish', resolve));
    a.resume();
    await once(a, 'end');
    const b = new PassThrough();
    const result = splice(a, b);
    const got: Buffer[] = [];
    b.on('data', (chunk: Buffer) => got.push(chunk));
    await once(b, 'end');
    b.destroy();
    expect((await result).error).toBeUndefined();
  });

  it('reports the first error and destroys the other side', async () => {
    const [user, relaySide] = await socketPair();
    const [agentSide, target] = await socketPair();
    const result = splice(relaySide, agentSide);
    user.resetAndDestroy();
    const { error } = await result;
    expect(error).toMatchObject({ code: 'ECONNRESET' });
    expect(agentSide.destroyed).toBe(true);
    await once(target, 'end');
  });
});
