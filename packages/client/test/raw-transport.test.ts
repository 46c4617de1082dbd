import { afterEach, describe, expect, it } from '@jest/globals';
import { once } from 'node:events';
import { connect as connectTls, type TLSSocket } from 'node:tls';
import { setTimeout as sleep } from 'node:timers/promises';
import WebSocket from 'ws';
import { ClientPool, type ClientPoolOptions, type PooledConn } from '@pool/client';
import { ServerPool, type ServerPoolOptions } from '@pool/server';
import { selfSignedCert } from '../../../tests/helpers/tls-cert.js';
import { closed } from '../../../tests/helpers/streams.js';

const TOKEN = 'raw-transport-token';
const relays: ServerPool[] = [];
const agents: ClientPool[] = [];
const conns: PooledConn[] = [];
const sockets: TLSSocket[] = [];

async function startRelay(options: ServerPoolOptions = {}): Promise<{ relay: ServerPool; port: number }> {
  const relay = new ServerPool({ host: '127.0.0.1', tls: await selfSignedCert(), token: TOKEN, ...options });
  relay.on('error', () => {});
  relays.push(relay);
  await relay.ServerManager();
  return { relay, port: relay.address()!.port };
}

function startAgent(port: number, options: Partial<ClientPoolOptions> = {}): ClientPool {
  const agent = new ClientPool({ server: `127.0.0.1:${port}`, tls: 'insecure', token: TOKEN, minCap: 1, maxCap: 1, minInterval: 50, maxInterval: 200, ...options });
  agent.on('error', () => {});
  agents.push(agent);
  agent.ClientManager();
  return agent;
}

/** Both ends of one pooled connection. */
async function pair(relay: ServerPool, agent: ClientPool): Promise<{ relayEnd: PooledConn; agentEnd: PooledConn }> {
  const { id, conn: relayEnd } = await relay.IncomingGet(5_000);
  const agentEnd = await agent.OutgoingGet(id, 5_000);
  for (const end of [relayEnd, agentEnd]) {
    end.on('error', () => {});
    conns.push(end);
  }
  return { relayEnd, agentEnd };
}

function readAll(stream: PooledConn): Promise<string> {
  return new Promise((resolve, reject) => {
    let text = '';
    stream.setEncoding('utf8');
    stream.on('data', (chunk: string) => (text += chunk));
    stream.once('end', () => resolve(text));
    stream.once('error', reject);
  });
}

/** A raw TLS connection to the relay offering `pool/1`, as an agent of another implementation would open it. */
async function rawDial(port: number): Promise<TLSSocket> {
  const socket = connectTls({ host: '127.0.0.1', port, rejectUnauthorized: false, ALPNProtocols: ['pool/1'] });
  socket.on('error', () => {});
  sockets.push(socket);
  await once(socket, 'secureConnect');
  return socket;
}

function firstLine(socket: TLSSocket): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    let text = '';
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      text += chunk;
      if (text.includes('\n')) resolve(JSON.parse(text.slice(0, text.indexOf('\n'))) as Record<string, unknown>);
    });
    socket.once('close', () => reject(new Error(`closed after ${JSON.stringify(text)}`)));
  });
}

afterEach(async () => {
  for (const conn of conns.splice(0)) conn.destroy();
  for (const socket of sockets.splice(0)) socket.destroy();
  await Promise.all(agents.splice(0).map((agent) => agent.Close()));
  await Promise.all(relays.splice(0).map((relay) => relay.Close()));
});

describe('the raw TLS transport (ALPN pool/1)', () => {
  it('is what an agent in auto and a relay with TLS choose, and the handed-out ends are the TLS sockets themselves', async () => {
    const { relay, port } = await startRelay();
    const agent = startAgent(port);
    const { relayEnd, agentEnd } = await pair(relay, agent);
    expect(agent.Transport()).toBe('tls');
    expect([relayEnd.transport, agentEnd.transport]).toEqual(['tls', 'tls']);
    expect(relayEnd.transportSocket).toBe(relayEnd);
    expect(relayEnd.encrypted).toBe(true);
    expect(relayEnd.getProtocol()).toBe('TLSv1.3');
    expect(relay.Transports()).toMatchObject({ tls: expect.any(Number), websocket: 0 });
    expect(relay.Transports().tls).toBeGreaterThanOrEqual(1);
    expect(relayEnd.extensions).toEqual({ keepAlive: false, halfClose: true });
  });

  it('carries bytes the relay wrote before the agent claimed the connection, first and once', async () => {
    const { relay, port } = await startRelay();
    const agent = startAgent(port);
    const { id, conn: relayEnd } = await relay.IncomingGet(5_000);
    relayEnd.on('error', () => {});
    conns.push(relayEnd);
    relayEnd.write('early-1,');
    relayEnd.write('early-2,');
    await sleep(100);
    const agentEnd = await agent.OutgoingGet(id, 5_000);
    conns.push(agentEnd);
    const received = readAll(agentEnd);
    relayEnd.end('after the claim');
    expect(await received).toBe('early-1,early-2,after the claim');
  });

  it.each<[string, 'relayEnd' | 'agentEnd', 'relayEnd' | 'agentEnd']>([
    ['the relay', 'relayEnd', 'agentEnd'],
    ['the agent', 'agentEnd', 'relayEnd'],
  ])('half-closes: after %s ends, the other direction still carries bytes to its end', async (_label, first, second) => {
    const { relay, port } = await startRelay();
    const ends = await pair(relay, startAgent(port));
    for (const end of Object.values(ends)) end.allowHalfOpen = true;
    const firstReceives = readAll(ends[first]);
    const secondReceives = readAll(ends[second]);
    ends[first].end('request');
    expect(await secondReceives).toBe('request');
    ends[second].write('reply after the end, ');
    ends[second].end('and its own end');
    expect(await firstReceives).toBe('reply after the end, and its own end');
    await Promise.all([closed(ends[first]), closed(ends[second])]);
    expect(relay.Leased()).toBe(0);
  });

  it('tells the relay a refused target as a reset, not as an end', async () => {
    const { relay, port } = await startRelay();
    const { relayEnd, agentEnd } = await pair(relay, startAgent(port));
    const failed = once(relayEnd, 'error');
    agentEnd.refuseTarget('target unreachable');
    const [error] = (await failed) as [NodeJS.ErrnoException];
    expect(error.code).toBe('ECONNRESET');
  });

  it('refuses a wrong token with 401 and its reason in the answer, and the dial fails with ERR_POOL_UNAUTHORIZED', async () => {
    const { relay, port } = await startRelay();
    const agent = startAgent(port, { token: 'not-the-relay-token' });
    const [error] = (await once(agent, 'error')) as [Error & { code: string }];
    expect(error.code).toBe('ERR_POOL_UNAUTHORIZED');
    expect(relay.Active()).toBe(0);
    expect(relay.Transports().tls).toBe(0);
  });

  it('checks the allowlist before reading a preface', async () => {
    const { port } = await startRelay({ allow: '10.0.0.0/8' });
    const socket = await rawDial(port);
    expect(await firstLine(socket)).toMatchObject({ v: 1, status: 403 });
  });

  it.each([
    ['a preface that is not JSON', 'GET / HTTP/1.1\r\n\r\n\n', 400],
    ['a preface without the token', '{"v":1,"headers":{}}\n', 401],
  ])('answers %s with a status and closes', async (_label, preface, status) => {
    const { relay, port } = await startRelay();
    const socket = await rawDial(port);
    const answer = firstLine(socket);
    socket.write(preface);
    expect(await answer).toMatchObject({ v: 1, status });
    await closed(socket);
    expect(relay.Active()).toBe(0);
  });

  it('closes a connection that sends no preface within headersTimeout, and it never counts as pooled', async () => {
    const { relay, port } = await startRelay({ headersTimeout: 200 });
    const socket = await rawDial(port);
    await closed(socket);
    expect(relay.Active()).toBe(0);
    expect(relay.tracker.stats().byState).toMatchObject({ handshaking: 0, idle: 0 });
  });

  it('a relay restricted to WebSocket leaves an agent in auto on WebSocket, and one restricted to tls fails with ERR_TRANSPORT_UNAVAILABLE', async () => {
    const { relay, port } = await startRelay({ transport: 'websocket' });
    const auto = startAgent(port);
    const { relayEnd } = await pair(relay, auto);
    expect(relayEnd.transport).toBe('websocket');
    expect(auto.Transport()).toBe('websocket');
    const tlsOnly = startAgent(port, { transport: 'tls' });
    const [error] = (await once(tlsOnly, 'error')) as [Error & { code: string }];
    expect(error.code).toBe('ERR_TRANSPORT_UNAVAILABLE');
  });

  it('a relay restricted to tls refuses a WebSocket upgrade with 426, and an agent in auto uses raw TLS', async () => {
    const { relay, port } = await startRelay({ transport: 'tls' });
    const ws = new WebSocket(`wss://127.0.0.1:${port}/`, { rejectUnauthorized: false, headers: { 'x-pool-token': TOKEN } });
    ws.on('error', () => {});
    const [, response] = (await once(ws, 'unexpected-response')) as [unknown, { statusCode: number; resume(): void }];
    response.resume();
    expect(response.statusCode).toBe(426);
    const { relayEnd } = await pair(relay, startAgent(port));
    expect(relayEnd.transport).toBe('tls');
  });

  it('refuses a raw transport without TLS: ERR_INVALID_OPTION on either side', () => {
    expect(() => new ServerPool({ transport: 'tls' })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_OPTION' }));
    expect(() => new ClientPool({ server: 'ws://127.0.0.1:1', transport: 'tls' })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_OPTION' }));
  });

  it('DestroyUnwatched ends every raw connection of a client, idle and handed out, on either side', async () => {
    const { relay, port } = await startRelay();
    const agent = startAgent(port, { minCap: 3, maxCap: 3 });
    const { relayEnd, agentEnd } = await pair(relay, agent);
    for (let i = 0; i < 100 && relay.Active() < 2; i++) await sleep(20);
    expect(relay.Active()).toBeGreaterThanOrEqual(2);
    const agentEndClosed = closed(agentEnd);
    expect(relay.DestroyUnwatched('127.0.0.1')).toBeGreaterThanOrEqual(3);
    await Promise.all([closed(relayEnd), agentEndClosed]);
    expect(relay.Leased()).toBe(0);
    expect(agent.DestroyUnwatched()).toBeGreaterThanOrEqual(0);
  });
});
