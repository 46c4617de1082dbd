import { afterEach, describe, expect, it } from '@jest/globals';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { connect } from 'node:net';
import { createInterface } from 'node:readline';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { ServerPool, type ServerPoolOptions, type PoolConn, type PooledConn } from '@pool/server';
import { dialPool, rawUpgrade } from '../../../tests/helpers/raw-http.js';
import { closed } from '../../../tests/helpers/streams.js';
import { activeHandles, handlesAbove } from '../../../tests/helpers/handles.js';
import { selfSignedCert } from '../../../tests/helpers/tls-cert.js';

let pool: ServerPool | undefined;
const clientConns: PooledConn[] = [];

async function startPool(options: ServerPoolOptions = {}): Promise<{ pool: ServerPool; url: string; port: number }> {
  pool = new ServerPool({ host: '127.0.0.1', ...options });
  await pool.ServerManager();
  const { port, family } = pool.address()!;
  const host = family === 'IPv6' ? '[::1]' : '127.0.0.1';
  return { pool, url: `${options.tls ? 'wss' : 'ws'}://${host}:${port}/`, port };
}

async function dial(url: string, options?: Parameters<typeof dialPool>[1]): Promise<PoolConn> {
  const conn = await dialPool(url, options);
  conn.on('error', () => {});
  clientConns.push(conn);
  return conn;
}

/** IncomingGet, with the handed-out end owned by the test (error listener, destroyed after). */
async function incoming(p: ServerPool, timeoutMs: number, options?: { signal?: AbortSignal }): Promise<{ id: string; conn: PooledConn }> {
  const handed = await p.IncomingGet(timeoutMs, options);
  handed.conn.on('error', () => {});
  clientConns.push(handed.conn);
  return handed;
}

/** Waits (bounded) until the pool holds `n` idle connections. */
async function idleCount(p: ServerPool, n: number): Promise<void> {
  for (let i = 0; i < 200 && p.Active() !== n; i++) await sleep(10);
  expect(p.Active()).toBe(n);
}

afterEach(async () => {
  for (const conn of clientConns.splice(0)) conn.destroy();
  await pool?.Close();
  pool = undefined;
});

describe('ServerPool: IDs', () => {
  it('gives each connection 8 lowercase hex characters, the same the client reads', async () => {
    const { pool, url } = await startPool({ tls: await selfSignedCert() });
    const seen: string[] = [];
    pool.on('connection', (id: string) => seen.push(id));
    const conns = await Promise.all([dial(url), dial(url), dial(url)]);
    for (const conn of conns) expect(conn.id).toMatch(/^[0-9a-f]{8}$/);
    expect(seen.sort()).toEqual(conns.map((conn) => conn.id).sort());
    const handed = await incoming(pool, 1_000);
    expect(conns.map((conn) => conn.id)).toContain(handed.id);
    expect(handed.conn.id).toBe(handed.id);
  });

  it('keeps IDs unique across 10,000 live connections', async () => {
    const { pool, url } = await startPool({ maxCap: 10_000 });
    const serverIds = new Set<string>();
    pool.on('connection', (id: string) => serverIds.add(id));
    // A child process holds the client ends: 20,000 sockets do not fit one process's fd limit.
    const fixture = fileURLToPath(new URL('../../../build/tests/fixtures/dial-many.js', import.meta.url));
    const child = spawn(process.execPath, [fixture, url, '10000', '64'], { stdio: ['pipe', 'pipe', 'inherit'] });
    try {
      const [line] = (await once(createInterface({ input: child.stdout! }), 'line')) as [string];
      const clientIds = JSON.parse(line) as string[];
      expect(clientIds).toHaveLength(10_000);
      expect(new Set(clientIds).size).toBe(10_000);
      expect(clientIds.every((id) => /^[0-9a-f]{8}$/.test(id))).toBe(true);
      expect(serverIds).toEqual(new Set(clientIds));
      expect(pool.Active()).toBe(10_000);
    } finally {
      child.stdin!.end();
      await once(child, 'exit');
    }
  }, 120_000);
});

describe('ServerPool: refusals are plain HTTP, before any WebSocket exists', () => {
  it.each<[string, ServerPoolOptions, Parameters<typeof rawUpgrade>[1], number, string]>([
    ['a peer outside the allowlist', { allow: ['10.0.0.0/8'] }, {}, 403, 'unauthorized'],
    ['a missing token', { token: 't0ken' }, {}, 401, 'unauthorized'],
    ['a wrong token', { token: 't0ken' }, { headers: { 'x-pool-token': 't0kem' } }, 401, 'unauthorized'],
    ['another path', {}, { path: '/admin' }, 404, 'not found'],
    ['a plain HTTP request', {}, { upgrade: false }, 426, 'this endpoint speaks WebSocket only'],
    ['a plain HTTP request elsewhere', {}, { upgrade: false, path: '/x' }, 404, 'not found'],
  ])('%s is answered as plain HTTP', async (_label, options, request, status, body) => {
    const { pool, port } = await startPool(options);
    let created = 0;
    pool.on('connection', () => created++);
    const response = await rawUpgrade(port, request);
    expect(response.status).toBe(status);
    expect(response.body).toBe(body);
    expect(created).toBe(0);
    expect(pool.Active()).toBe(0);
  });

  it('answers 503 past maxCap, counting upgrades in flight', async () => {
    const { pool, url, port } = await startPool({ maxCap: 2 });
    const outcomes = await Promise.allSettled(Array.from({ length: 6 }, () => dial(url)));
    expect(outcomes.filter((o) => o.status === 'fulfilled')).toHaveLength(2);
    const rejected = outcomes.filter((o): o is PromiseRejectedResult => o.status === 'rejected');
    expect(rejected.map((o) => (o.reason as { code: string }).code)).toEqual(Array(4).fill('ERR_POOL_FULL'));
    expect(pool.Active()).toBe(2);
    expect(await rawUpgrade(port)).toMatchObject({ status: 503, body: 'pool full' });
    // Taking one frees a place.
    await incoming(pool, 1_000);
    await dial(url);
    expect(pool.Active()).toBe(2);
  });

  it('accepts the right token', async () => {
    const { pool, url } = await startPool({ token: 't0ken' });
    await dial(url, { headers: { 'x-pool-token': 't0ken' } });
    expect(pool.Active()).toBe(1);
  });

  it('never trusts X-Forwarded-For for the allowlist', async () => {
    const { port } = await startPool({ allow: ['203.0.113.7'] });
    const response = await rawUpgrade(port, { headers: { 'X-Forwarded-For': '203.0.113.7', 'X-Real-IP': '203.0.113.7' } });
    expect(response.status).toBe(403);
  });

  it('disconnects a client that sends its headers too slowly (slowloris) and still serves others', async () => {
    const { pool, url, port } = await startPool({ headersTimeout: 400 });
    const slow = connect(port, '127.0.0.1');
    slow.on('error', () => {});
    slow.write('GET / HTTP/1.1\r\nHost: x\r\n');
    const trickle = setInterval(() => slow.write('X-Slow: 1\r\n'), 100);
    const started = Date.now();
    await closed(slow);
    clearInterval(trickle);
    expect(Date.now() - started).toBeLessThan(400 + 1_000);
    await dial(url);
    expect(pool.Active()).toBe(1);
  });

  it('survives a malformed upgrade (bad key) and still serves', async () => {
    const { pool, url, port } = await startPool({ maxCap: 1 });
    const response = await rawUpgrade(port, { headers: { 'Sec-WebSocket-Version': '7' } });
    expect(response.status).toBe(400);
    await dial(url); // the refused upgrade did not hold the only place
    expect(pool.Active()).toBe(1);
  });
});

describe('ServerPool: allowlist against real peers', () => {
  it.each<[string, ServerPoolOptions, number | undefined, boolean]>([
    ['IPv4 address', { host: '127.0.0.1', allow: '127.0.0.1' }, undefined, true],
    ['IPv4 CIDR', { host: '127.0.0.1', allow: ['127.0.0.0/8'] }, undefined, true],
    ['IPv4 outside CIDR', { host: '127.0.0.1', allow: ['10.0.0.0/8'] }, undefined, false],
    ['npws clientIP', { host: '127.0.0.1', clientIP: '127.0.0.1' }, undefined, true],
    ['IPv6 address', { host: '::1', allow: ['::1'] }, 6, true],
    ['IPv6 CIDR', { host: '::1', allow: ['::/120'] }, 6, true],
    ['IPv6 outside CIDR', { host: '::1', allow: ['2001:db8::/32'] }, 6, false],
    ['IPv4-mapped peer on a dual-stack listener', { host: '::', allow: ['127.0.0.1'] }, 4, true],
  ])('%s', async (_label, options, family, allowed) => {
    pool = new ServerPool(options);
    await pool.ServerManager();
    const { port } = pool.address()!;
    const host = family === 6 ? '[::1]' : '127.0.0.1';
    const outcome = dial(`ws://${host}:${port}/`);
    if (allowed) {
      await outcome;
      expect(pool.Active()).toBe(1);
    } else {
      await expect(outcome).rejects.toMatchObject({ code: 'ERR_POOL_FORBIDDEN' });
      expect(pool.Active()).toBe(0);
    }
  });
});

describe('ServerPool: IncomingGet', () => {
  it('hands out a pooled connection whose bytes flow both ways', async () => {
    const { pool, url } = await startPool();
    const client = await dial(url);
    client.write('early bytes '); // sent before anyone claimed it: kept for the claimer
    await idleCount(pool, 1);
    const { conn } = await incoming(pool, 1_000);
    expect(pool.Active()).toBe(0);
    conn.write('pong');
    const [fromServer] = (await once(client, 'data')) as [Buffer];
    expect(fromServer.toString()).toBe('pong');
    client.end('more');
    const chunks: Buffer[] = [];
    for await (const chunk of conn) chunks.push(chunk as Buffer);
    expect(Buffer.concat(chunks).toString()).toBe('early bytes more');
  });

  it('resolves a waiting get from the arrival itself, before any timer could run', async () => {
    const { pool, url } = await startPool();
    const order: string[] = [];
    const get = incoming(pool, 5_000).then(({ id }) => order.push(`resolved ${id}`));
    pool.once('connection', (id: string) => setImmediate(() => order.push(`immediate after ${id}`)));
    await dial(url);
    await get;
    await sleep(5);
    expect(order[0]).toMatch(/^resolved /);
    expect(order[1]).toMatch(/^immediate after /);
  });

  it('serves waiters first come, first served', async () => {
    const { pool, url } = await startPool();
    const gets = [incoming(pool, 5_000), incoming(pool, 5_000), incoming(pool, 5_000)];
    const first = await dial(url);
    const second = await dial(url);
    const third = await dial(url);
    const handed = await Promise.all(gets);
    expect(handed.map((h) => h.id)).toEqual([first.id, second.id, third.id]);
  });

  it('hands out the longest-idle connection first', async () => {
    const { pool, url } = await startPool();
    const first = await dial(url);
    const second = await dial(url);
    await idleCount(pool, 2);
    expect((await incoming(pool, 100)).id).toBe(first.id);
    expect((await incoming(pool, 100)).id).toBe(second.id);
  });

  it('rejects with ERR_POOL_TIMEOUT, ERR_POOL_ABORTED and ERR_POOL_CLOSED', async () => {
    const { pool } = await startPool();
    const started = Date.now();
    await expect(incoming(pool, 100)).rejects.toMatchObject({ code: 'ERR_POOL_TIMEOUT' });
    expect(Date.now() - started).toBeGreaterThanOrEqual(95);

    const controller = new AbortController();
    const aborted = incoming(pool, 5_000, { signal: controller.signal });
    controller.abort();
    await expect(aborted).rejects.toMatchObject({ code: 'ERR_POOL_ABORTED' });
    await expect(incoming(pool, 5_000, { signal: AbortSignal.abort() })).rejects.toMatchObject({ code: 'ERR_POOL_ABORTED' });

    const waiting = incoming(pool, 5_000);
    await pool.Close();
    await expect(waiting).rejects.toMatchObject({ code: 'ERR_POOL_CLOSED' });
    await expect(incoming(pool, 5_000)).rejects.toMatchObject({ code: 'ERR_POOL_CLOSED' });
  });

  it.each([-1, Number.NaN, Infinity, '100'])('rejects timeout %p with ERR_INVALID_OPTION', async (timeout) => {
    const { pool } = await startPool();
    await expect(incoming(pool, timeout as number)).rejects.toMatchObject({ code: 'ERR_INVALID_OPTION' });
  });

  it('works before ServerManager(): the get waits for the pool to start', async () => {
    pool = new ServerPool({ host: '127.0.0.1' });
    const get = incoming(pool, 5_000);
    await pool.ServerManager();
    const client = await dial(`ws://127.0.0.1:${pool.address()!.port}/`);
    expect((await get).id).toBe(client.id);
  });

  it('never hands out a connection whose peer died while idle', async () => {
    const { pool, url } = await startPool();
    const doomed = await dial(url);
    const survivor = await dial(url);
    await idleCount(pool, 2);
    (doomed.webSocket as unknown as { _socket: { destroy(): void } })._socket.destroy();
    await idleCount(pool, 1);
    const handed = await incoming(pool, 1_000);
    expect(handed.id).toBe(survivor.id);
    expect(handed.conn.transportOpen).toBe(true);
    await expect(incoming(pool, 100)).rejects.toMatchObject({ code: 'ERR_POOL_TIMEOUT' });
  });

  it('counts a text message on an idle connection as an error without crashing', async () => {
    const { pool, url } = await startPool();
    const client = await dial(url);
    await idleCount(pool, 1);
    client.webSocket.send('hello');
    await idleCount(pool, 0);
    expect(pool.ErrorCount()).toBeGreaterThanOrEqual(1);
    pool.ResetError();
    expect(pool.ErrorCount()).toBe(0);
    pool.AddError();
    expect(pool.ErrorCount()).toBe(1);
  });
});

describe('ServerPool: keep-alive (docs/protocol.md, section 2)', () => {
  it('confirms keep-alive only to a client that offers it', async () => {
    const { port } = await startPool({ keepAlive: 1_000 });
    const offered = await rawUpgrade(port, { headers: { 'x-pool-keepalive': 'pong' } });
    expect(offered.status).toBe(101);
    expect(offered.headers).toMatch(/x-pool-keepalive: pong/i);
    const plain = await rawUpgrade(port);
    expect(plain.status).toBe(101);
    expect(plain.headers).not.toMatch(/x-pool-keepalive/i);
  });

  it('destroys a negotiated idle connection that stops answering pings, and spares a Go-style one', async () => {
    const { pool, url } = await startPool({ keepAlive: 100 });
    // Offers keep-alive, then never answers: a dead agent.
    const silent = await dial(url, { headers: { 'x-pool-keepalive': 'pong' }, autoPong: false });
    // No offer and no pongs: how a Go npws client's idle connection behaves.
    const goLike = await dial(url, { autoPong: false });
    await idleCount(pool, 2);
    const silentGone = closed(silent);
    await silentGone;
    await sleep(400);
    expect(pool.Active()).toBe(1);
    const { id } = await incoming(pool, 100);
    expect(id).toBe(goLike.id);
  });
});

describe('ServerPool: lifecycle', () => {
  it('Close() closes idle connections, not handed-out ones, and leaves no handle', async () => {
    await sleep(100); // let the previous test's sockets finish closing
    const baseline = activeHandles();
    const { pool, url } = await startPool({ keepAlive: 50 });
    const kept = await dial(url, { headers: { 'x-pool-keepalive': 'pong' } });
    const idle = await dial(url, { headers: { 'x-pool-keepalive': 'pong' } });
    await idleCount(pool, 2);
    const { conn } = await incoming(pool, 1_000);
    expect(conn.id).toBe(kept.id);
    const idleClosed = closed(idle.webSocket);
    let closeEvents = 0;
    pool.on('close', () => closeEvents++);
    await Promise.all([pool.Close(), pool.Close()]);
    await idleClosed;
    expect(closeEvents).toBe(1);
    expect(pool.Ready()).toBe(false);
    // The handed-out connection still works both ways.
    conn.write('still here');
    const [data] = (await once(kept, 'data')) as [Buffer];
    expect(data.toString()).toBe('still here');
    kept.destroy();
    conn.destroy();
    expect(await handlesAbove(baseline)).toEqual([]);
  });

  it('Close() also ends connections still sending their headers, and leaves no handle', async () => {
    await sleep(100);
    const baseline = activeHandles();
    const { pool, port } = await startPool({ headersTimeout: 60_000 });
    const slow = connect(port, '127.0.0.1');
    slow.on('error', () => {});
    slow.resume();
    slow.write('GET / HTTP/1.1\r\nHost: x\r\n');
    await new Promise((resolve) => slow.once('connect', resolve));
    await sleep(50);
    const started = Date.now();
    await pool.Close();
    await closed(slow);
    expect(Date.now() - started).toBeLessThan(1_000);
    expect(await handlesAbove(baseline)).toEqual([]);
  });

  it('Flush() closes idle connections only', async () => {
    const { pool, url } = await startPool();
    await dial(url);
    const flushed = await dial(url);
    await idleCount(pool, 2);
    const { conn } = await incoming(pool, 100);
    await pool.Flush();
    expect(pool.Active()).toBe(0);
    expect(conn.transportOpen).toBe(true);
    expect(flushed.transportOpen).toBe(false);
  });

  it('reports Ready, Capacity and the listening address', async () => {
    pool = new ServerPool({ host: '127.0.0.1', maxCap: 7 });
    expect(pool.Ready()).toBe(false);
    expect(pool.address()).toBeNull();
    await pool.ServerManager();
    expect(pool.Ready()).toBe(true);
    expect(pool.Capacity()).toBe(7);
    expect(pool.address()?.port).toBeGreaterThan(0);
  });

  it('rejects ServerManager() with the listen error (port in use)', async () => {
    const { port } = await startPool();
    const second = new ServerPool({ host: '127.0.0.1', port });
    await expect(second.ServerManager()).rejects.toMatchObject({ code: 'EADDRINUSE' });
    await second.Close();
  });

  it.each<[string, ServerPoolOptions]>([
    ['maxCap 0', { maxCap: 0 }],
    ['maxCap 1.5', { maxCap: 1.5 }],
    ['keepAlive -1', { keepAlive: -1 }],
    ['port 70000', { port: 70_000 }],
    ['a bad allow entry', { allow: ['10.0.0.0/40'] }],
  ])('rejects %s at construction with ERR_INVALID_OPTION', (_label, options) => {
    expect(() => new ServerPool(options)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_OPTION' }));
  });
});

describe('ServerPool: connections per client', () => {
  const EAST = 'east-secret-0123456789abcdef';
  const WEST = 'west-secret-0123456789abcdef';
  const as = (token: string): Parameters<typeof dialPool>[1] => ({ headers: { 'x-pool-token': token } });

  it('IncomingGet({ client }) takes only that client\'s connections, first in first out; the plain form takes the oldest of any', async () => {
    const { pool, url } = await startPool({ tokens: { east: EAST, west: WEST } });
    const west1 = await dial(url, as(WEST));
    const east1 = await dial(url, as(EAST));
    const east2 = await dial(url, as(EAST));
    await idleCount(pool, 3);
    expect([pool.Active('east'), pool.Active('west')]).toEqual([2, 1]);
    const fromEast = await pool.IncomingGet(1_000, { client: 'east' });
    clientConns.push(fromEast.conn);
    expect([fromEast.id, fromEast.client]).toEqual([east1.id, 'east']);
    const any = await incoming(pool, 1_000);
    expect(any.id).toBe(west1.id);
    // A get for a client with nothing idle waits for that client's next connection, not another's.
    const waiting = pool.IncomingGet(2_000, { client: 'west' });
    expect(pool.Waiting('west')).toBe(1);
    const east3 = await dial(url, as(EAST));
    await sleep(50);
    expect(pool.Active('east')).toBe(2);
    const west2 = await dial(url, as(WEST));
    const got = await waiting;
    clientConns.push(got.conn);
    expect(got.id).toBe(west2.id);
    expect([east2.id, east3.id]).toContain((await incoming(pool, 1_000)).id);
  });

  it('clientMaxCap bounds one client\'s idle connections with 503; another client is not held back', async () => {
    const { pool, port, url } = await startPool({ tokens: { east: EAST, west: WEST }, clientMaxCap: { east: 1 } });
    await dial(url, as(EAST));
    await idleCount(pool, 1);
    expect((await rawUpgrade(port, { headers: { 'x-pool-token': EAST } })).status).toBe(503);
    await dial(url, as(WEST));
    await dial(url, as(WEST));
    await idleCount(pool, 3);
  });

  it('bind decides the client before the upgrade, or refuses with the status it returns', async () => {
    const { pool, port, url } = await startPool({
      bind: (request, client) => (request.headers['x-session'] === 'good' ? `bound:${client}` : 401),
    });
    expect((await rawUpgrade(port, { headers: { 'x-session': 'bad' } })).status).toBe(401);
    await dial(url, { headers: { 'x-session': 'good' } });
    await idleCount(pool, 1);
    expect(pool.Active('bound:127.0.0.1')).toBe(1);
  });
});
