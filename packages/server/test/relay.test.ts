import { afterEach, describe, expect, it } from '@jest/globals';
import { randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { connect, type Socket } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import WebSocket from 'ws';
import { Relay, type RelayOptions } from '@pool/server';
import { type Extensions, type PoolConn } from '@pool/shared';
import { offerHeaders, type ControlMessage } from '@pool/shared/internal';
import { dialPool } from '../../../tests/helpers/raw-http.js';
import { freePorts } from '../../../tests/helpers/ports.js';
import { hashUntilEnd, nextEvent } from '../../../tests/helpers/streams.js';

// The relay against a scripted agent: a raw control channel and pooled
// connections dialled by hand, so that each test decides what the agent does.

const HALF_CLOSE: Extensions = { keepAlive: false, halfClose: true };
const relays: Relay[] = [];
const sockets: Array<{ destroy(): void }> = [];

afterEach(async () => {
  for (const socket of sockets.splice(0)) socket.destroy();
  await Promise.all(relays.splice(0).map((relay) => relay.close()));
});

async function startRelay(options: RelayOptions = {}): Promise<{ relay: Relay; port: number; publicPort: number }> {
  const relay = new Relay({ host: '127.0.0.1', publicHost: '127.0.0.1', ...options });
  relays.push(relay);
  await relay.start();
  return { relay, ...relay.address() };
}

/**
 * A control channel as an agent opens one; `orders` collects what the relay
 * sends on it after the session, whose secret `session` holds.
 */
async function scriptedAgent(port: number, features = 'claimed,demand,session', agentId = randomUUID()): Promise<{ control: WebSocket; orders: ControlMessage[]; session: string }> {
  const control = new WebSocket(`ws://127.0.0.1:${port}/control`, {
    headers: { 'x-pool-agent-id': agentId, 'x-pool-control-features': features },
  });
  const orders: ControlMessage[] = [];
  const session = new Promise<string>((resolve) => {
    control.on('message', (data: Buffer) => {
      const message = JSON.parse(data.toString()) as ControlMessage;
      if (message.type === 'session') resolve(message.secret);
      else orders.push(message);
    });
  });
  control.on('error', () => {});
  sockets.push({ destroy: () => control.terminate() });
  await once(control, 'open');
  return { control, orders, session: await session };
}

async function pooled(port: number, session: string): Promise<PoolConn> {
  // Half-close offered, as our agents do (the relay confirms it), and the session that binds the connection.
  const headers = { ...offerHeaders(HALF_CLOSE), 'x-pool-session': session };
  const conn = await dialPool(`ws://127.0.0.1:${port}/`, { headers, extensions: HALF_CLOSE });
  conn.on('error', () => {});
  sockets.push(conn);
  return conn;
}

async function user(publicPort: number): Promise<Socket> {
  const socket = connect({ port: publicPort, host: '127.0.0.1', allowHalfOpen: true });
  socket.on('error', () => {});
  sockets.push(socket);
  await once(socket, 'connect');
  return socket;
}

/** The next chunk `stream` emits, as text. */
async function nextData(stream: NodeJS.EventEmitter): Promise<string> {
  const [data] = (await once(stream, 'data')) as [Buffer];
  return data.toString();
}

/** Waits (bounded, 5 s) until `condition` holds. */
async function until(condition: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 1_000 && !condition(); i++) await sleep(5);
  if (!condition()) throw new Error(`timed out waiting for ${what}`);
}

describe('Relay: users waiting for a pooled connection', () => {
  it.each([
    ['closes', (socket: Socket) => socket.destroy()],
    ['resets', (socket: Socket) => socket.resetAndDestroy()],
    ['sends FIN before any byte', (socket: Socket) => socket.end()],
  ])('a queued user who %s is dropped at once, not at getTimeout, and no pooled connection is spent on it', async (_how, leave) => {
    // A get timeout far beyond `until`'s 5 s: a user noticed only when it expires would fail the wait below.
    const { relay, port, publicPort } = await startRelay({ getTimeout: 60_000 });
    const { orders, session } = await scriptedAgent(port);
    const socket = await user(publicPort);
    await until(() => relay.stats().waiting === 1, 'the user to queue');
    await until(() => orders.some((order) => order.type === 'demand'), 'the demand to reach the agent');
    expect(orders).toContainEqual({ v: 1, type: 'demand', waiting: 1 });
    leave(socket);
    await until(() => relay.stats().departed === 1, 'the relay to notice');
    expect(relay.stats().waiting).toBe(0);
    // A pooled connection that arrives now stays in the pool: nobody is ordered to claim it.
    await pooled(port, session);
    await until(() => relay.pool.Active() === 1, 'the connection to be pooled');
    await sleep(50);
    expect(relay.pool.Active()).toBe(1);
    expect(orders.filter((order) => order.type === 'connect')).toEqual([]);
  });

  it('a queued user who sends its request and half-closes stays queued, and is served with both', async () => {
    const { relay, port, publicPort } = await startRelay();
    const { control, orders, session } = await scriptedAgent(port);
    const socket = await user(publicPort);
    socket.end('request');
    await until(() => relay.stats().waiting === 1, 'the user to queue');
    await sleep(50);
    expect(relay.stats().departed).toBe(0);
    const conn = await pooled(port, session);
    await until(() => orders.some((order) => order.type === 'connect'), 'the connect order');
    control.send(JSON.stringify({ v: 1, type: 'claimed', id: conn.id }));
    conn.allowHalfOpen = true;
    const request = await hashUntilEnd(conn);
    expect(request.bytes).toBe('request'.length);
    conn.end('reply');
    const reply = await hashUntilEnd(socket);
    expect(reply.bytes).toBe('reply'.length);
    await until(() => relay.stats().finished === 1, 'the tunnel to finish');
    expect(relay.stats()).toMatchObject({ open: 0, failed: 0 });
  });
});

describe('Relay: connect orders', () => {
  it('retries with another connection when the agent does not claim within claimTimeout; the user loses no byte', async () => {
    const { relay, port, publicPort } = await startRelay({ claimTimeout: 200 });
    const { control, orders, session } = await scriptedAgent(port);
    const first = await pooled(port, session);
    const second = await pooled(port, session);
    await until(() => relay.pool.Active() === 2, 'two pooled connections');
    const firstClosed = nextEvent(first, 'close');
    const socket = await user(publicPort);
    socket.write('hello');
    await until(() => orders.filter((order) => order.type === 'connect').length === 2, 'a second order');
    const connects = orders.filter((order) => order.type === 'connect');
    expect(connects.map((order) => 'id' in order && order.id)).toEqual([first.id, second.id]);
    await firstClosed;
    expect(first.bytesRead).toBe(0);
    control.send(JSON.stringify({ v: 1, type: 'claimed', id: second.id }));
    expect(await nextData(second)).toBe('hello');
    expect(relay.stats().claimRetries).toBe(1);
  });

  it('a pooled connection reset while its order waits for the claim fails that order only: the relay survives and tries another', async () => {
    const { relay, port, publicPort } = await startRelay({ claimTimeout: 1_000 });
    const { control, orders, session } = await scriptedAgent(port);
    const doomed = await pooled(port, session);
    await until(() => relay.pool.Active() === 1, 'a pooled connection');
    const socket = await user(publicPort);
    socket.write('hello');
    await until(() => orders.some((order) => order.type === 'connect'), 'the connect order');
    // The transport breaks under the relay's end before the agent claims it (a 1006, an 'error' on that end).
    (doomed.webSocket as unknown as { _socket: Socket })._socket.resetAndDestroy();
    const second = await pooled(port, session);
    await until(() => orders.filter((order) => order.type === 'connect').length === 2, 'an order for the next connection');
    control.send(JSON.stringify({ v: 1, type: 'claimed', id: second.id }));
    expect(await nextData(second)).toBe('hello');
    expect(relay.stats().claimRetries).toBe(1);
  });

  it('an agent without the claimed feature is not timed: its order is spliced at once, as before', async () => {
    const { relay, port, publicPort } = await startRelay({ claimTimeout: 50 });
    const { orders, session } = await scriptedAgent(port, 'session');
    const conn = await pooled(port, session);
    await until(() => relay.pool.Active() === 1, 'a pooled connection');
    const socket = await user(publicPort);
    socket.write('hello');
    expect(await nextData(conn)).toBe('hello');
    await sleep(100);
    expect(relay.stats().claimRetries).toBe(0);
    expect(orders.filter((order) => order.type === 'demand')).toEqual([]);
  });

  it('a user waiting on an agent whose control channel drops is served when it comes back, within getTimeout', async () => {
    const { relay, port, publicPort } = await startRelay();
    const agentId = randomUUID();
    const first = await scriptedAgent(port, 'claimed,demand,session', agentId);
    const socket = await user(publicPort);
    socket.write('hello');
    await until(() => relay.stats().waiting === 1, 'the user to queue');
    first.control.terminate();
    await until(() => !relay.stats().agentConnected, 'the relay to see the agent go');
    await sleep(200);
    // The same agent process reconnects: the same session, so its connections are good.
    const again = await scriptedAgent(port, 'claimed,demand,session', agentId);
    expect(again.session).toBe(first.session);
    const conn = await pooled(port, again.session);
    await until(() => again.orders.some((order) => order.type === 'connect'), 'the connect order on the new channel');
    again.control.send(JSON.stringify({ v: 1, type: 'claimed', id: conn.id }));
    expect(await nextData(conn)).toBe('hello');
    expect(relay.stats().noAgent).toBe(0);
  });

  it('a user waiting on an agent that does not come back is refused at getTimeout, counted as no agent', async () => {
    const { relay, port, publicPort } = await startRelay({ getTimeout: 500 });
    const { control } = await scriptedAgent(port);
    const socket = await user(publicPort);
    await until(() => relay.stats().waiting === 1, 'the user to queue');
    const dropped = nextEvent(socket, 'end');
    const leftAt = performance.now();
    control.terminate();
    await dropped;
    expect(performance.now() - leftAt).toBeLessThan(1_000);
    expect(relay.stats().noAgent).toBe(1);
  });
});

describe('Relay: the user\'s first bytes travel with the order (agents with `early`)', () => {
  const EARLY = 'claimed,demand,session,early';

  /** A relay, a scripted agent with `early` and `count` pooled connections idle, and a user connected (who has sent nothing). */
  async function earlySetup(options: RelayOptions, count: number): Promise<Awaited<ReturnType<typeof scriptedAgent>> & { relay: Relay; port: number; conns: PoolConn[]; socket: Socket }> {
    const { relay, port, publicPort } = await startRelay(options);
    const agent = await scriptedAgent(port, EARLY);
    const conns: PoolConn[] = [];
    for (let i = 0; i < count; i++) conns.push(await pooled(port, agent.session));
    await until(() => relay.pool.Active() === count, `${count} pooled connections`);
    return { ...agent, relay, port, conns, socket: await user(publicPort) };
  }

  it('sends the user\'s bytes on the pooled connection right behind the order, before any claim, and splices once claimed', async () => {
    const { relay, control, orders, conns: [conn], socket } = await earlySetup({}, 1);
    socket.write('hello');
    // No claim yet: the bytes are there all the same.
    expect(await nextData(conn)).toBe('hello');
    expect(orders.filter((order) => order.type === 'connect')).toHaveLength(1);
    socket.write(' again');
    expect(await nextData(conn)).toBe(' again');
    control.send(JSON.stringify({ v: 1, type: 'claimed', id: conn.id }));
    conn.write('reply');
    expect(await nextData(socket)).toBe('reply');
    socket.write('!');
    expect(await nextData(conn)).toBe('!');
    expect(relay.stats()).toMatchObject({ claimRetries: 0, lostOrders: 0 });
  });

  it('a claim that does not come in time is cancelled; on `cancelled` another connection carries the same bytes, once', async () => {
    const { relay, control, orders, conns: [first, second], socket } = await earlySetup({ claimTimeout: 200 }, 2);
    const firstClosed = nextEvent(first, 'close');
    socket.write('hello');
    await until(() => orders.some((order) => order.type === 'cancel'), 'the cancel');
    expect(orders.find((order) => order.type === 'cancel')).toEqual({ v: 1, type: 'cancel', id: first.id });
    // Until the agent answers, nothing else is ordered: the bytes may be at a target.
    await sleep(100);
    expect(orders.filter((order) => order.type === 'connect')).toHaveLength(1);
    control.send(JSON.stringify({ v: 1, type: 'cancelled', id: first.id }));
    await until(() => orders.filter((order) => order.type === 'connect').length === 2, 'an order for the second connection');
    await firstClosed;
    expect(await nextData(second)).toBe('hello');
    control.send(JSON.stringify({ v: 1, type: 'claimed', id: second.id }));
    second.write('reply');
    expect(await nextData(socket)).toBe('reply');
    expect(relay.stats()).toMatchObject({ claimRetries: 1, lostOrders: 0 });
  });

  it('a claim that comes after the deadline but before the cancel is answered keeps the user on its connection', async () => {
    const { relay, control, orders, conns: [conn], socket } = await earlySetup({ claimTimeout: 200 }, 1);
    socket.write('hello');
    await until(() => orders.some((order) => order.type === 'cancel'), 'the cancel');
    // The agent had claimed it: the claim crosses the cancel.
    control.send(JSON.stringify({ v: 1, type: 'claimed', id: conn.id }));
    conn.write('reply');
    expect(await nextData(socket)).toBe('reply');
    expect(orders.filter((order) => order.type === 'connect')).toHaveLength(1);
    expect(relay.stats()).toMatchObject({ claimRetries: 0, lostOrders: 0 });
  });

  it('a pooled connection reset after the order is cancelled too, and retried only on `cancelled`', async () => {
    const { relay, port, control, orders, session, conns: [doomed], socket } = await earlySetup({ claimTimeout: 1_000 }, 1);
    socket.write('hello');
    await until(() => orders.some((order) => order.type === 'connect'), 'the connect order');
    (doomed.webSocket as unknown as { _socket: Socket })._socket.resetAndDestroy();
    await until(() => orders.some((order) => order.type === 'cancel'), 'the cancel');
    const second = await pooled(port, session);
    control.send(JSON.stringify({ v: 1, type: 'cancelled', id: doomed.id }));
    await until(() => orders.filter((order) => order.type === 'connect').length === 2, 'an order for the next connection');
    expect(await nextData(second)).toBe('hello');
    expect(relay.stats().claimRetries).toBe(1);
  });

  it.each([
    ['does not answer the cancel', (_control: WebSocket): void => {}],
    ['loses its control channel mid-order', (control: WebSocket): void => control.terminate()],
  ])('an agent that %s: the user is reset, counted, and no other connection gets its bytes', async (_label, misbehave) => {
    const { relay, control, orders, conns: [first, second], socket } = await earlySetup({ claimTimeout: 200, getTimeout: 3_000 }, 2);
    const dropped = nextEvent(socket, 'end');
    socket.write('hello');
    await until(() => orders.some((order) => order.type === 'connect'), 'the connect order');
    misbehave(control);
    await dropped;
    expect(relay.stats().lostOrders).toBe(1);
    expect(second.bytesRead).toBe(0);
    expect(first.bytesRead).toBe('hello'.length);
    expect(orders.filter((order) => order.type === 'connect')).toHaveLength(1);
  });
});

describe('Relay: agent keys, as options', () => {
  const PIN = 'ab'.repeat(32);
  const TLS = { cert: 'unused', key: 'unused' };

  it.each<[string, RelayOptions, string]>([
    ['a pin without TLS', { agentFingerprint: PIN }, 'agents.default.fingerprint'],
    ['a malformed pin', { tls: TLS, agentFingerprint: 'AB:CD' }, 'agents.default.fingerprint'],
    ['agentFingerprint beside agents', { tls: TLS, agentFingerprint: PIN, agents: { east: { token: 'east-secret-0123456789abcdef' } } }, 'agentFingerprint'],
  ])('refuses %s with ERR_INVALID_OPTION, before it holds anything', (_label, options, name) => {
    expect(() => new Relay(options)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_OPTION', message: expect.stringContaining(`invalid ${name}`) }));
  });

  it('a reload that pins a key on a relay without TLS changes nothing', async () => {
    const token = 'east-secret-0123456789abcdef';
    const { relay } = await startRelay({ agents: { east: { token } }, services: [{ name: 'web', agent: 'east', publicHost: '127.0.0.1', publicPort: 0 }] });
    await expect(relay.reload({ agents: { east: { token, fingerprint: PIN } }, services: [] })).rejects.toMatchObject({ code: 'ERR_INVALID_OPTION' });
    // The service and the agent are still there.
    expect(Object.keys(relay.address().publicPorts)).toEqual(['web']);
    expect(Object.keys(relay.stats().agents)).toEqual(['east']);
  });
});

describe('Relay: plain HTTP on the agents\' port', () => {
  it.each([
    ['/', 426, 'this endpoint speaks WebSocket only'],
    ['/control', 426, 'this endpoint speaks WebSocket only'],
    ['/foo', 404, 'not found'],
  ])('GET %s is answered %i with a text body, as docs/protocol.md says', async (path, status, body) => {
    const { port } = await startRelay();
    const response = await fetch(`http://127.0.0.1:${port}${path}`);
    expect(response.status).toBe(status);
    expect(await response.text()).toBe(body);
    if (status === 426) expect(response.headers.get('upgrade')).toBe('websocket');
  });
});

describe('Relay: reload', () => {
  it('two reloads at once run one after the other: the second finds the first applied, and neither fails', async () => {
    const [port] = await freePorts(1);
    const { relay } = await startRelay({ agents: { east: { token: 'east-token-0123456789abcdef' } }, services: [] });
    const next = { agents: { east: { token: 'east-token-0123456789abcdef' } }, services: [{ name: 'web', agent: 'east', publicHost: '127.0.0.1', publicPort: port! }] };
    const outcomes = await Promise.allSettled([relay.reload(next), relay.reload(next)]);
    expect(outcomes.map((outcome) => outcome.status)).toEqual(['fulfilled', 'fulfilled']);
    expect(relay.address().publicPorts).toEqual({ web: port });
  });
});
