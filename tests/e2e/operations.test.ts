import { afterEach, describe, expect, it } from '@jest/globals';
import { createServer, type Server } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { Registry } from 'prom-client';
import { ClientPool, type ClientPoolOptions } from '@pool/client';
import { ServerPool, type PoolConn, type PooledConn, type ServerPoolOptions } from '@pool/server';
import { rawUpgrade } from '../helpers/raw-http.js';
import { hashExactly, writeRandom } from '../helpers/streams.js';
import { closeServer, listenWs } from '../helpers/ws-pair.js';

// Operating a running pool pair: metrics after scripted traffic, the
// connection tracker, per-client events, live reconfiguration and drain.
// Real ServerPool and ClientPool on loopback, talking real WebSockets.

const pools: Array<ServerPool | ClientPool> = [];
const conns: PooledConn[] = [];
const servers: Server[] = [];

afterEach(async () => {
  for (const conn of conns.splice(0)) conn.destroy();
  await Promise.all(pools.splice(0).map((pool) => pool.Close()));
  for (const server of servers.splice(0)) server.close();
});

async function relayPool(options: ServerPoolOptions = {}): Promise<{ relay: ServerPool; url: string; port: number }> {
  const relay = new ServerPool({ host: '127.0.0.1', ...options });
  relay.on('error', () => {});
  pools.push(relay);
  await relay.ServerManager();
  const { port } = relay.address()!;
  return { relay, url: `ws://127.0.0.1:${port}/`, port };
}

function agentPool(options: ClientPoolOptions): ClientPool {
  const agent = new ClientPool({ minInterval: 20, maxInterval: 200, dialRetries: 0, ...options });
  agent.on('error', () => {});
  pools.push(agent);
  agent.ClientManager();
  return agent;
}

/** Polls (bounded: 5 s) until `predicate` holds; fails the test with `what` otherwise. */
async function until(what: string, predicate: () => boolean): Promise<void> {
  for (let i = 0; i < 500 && !predicate(); i++) await sleep(10);
  if (!predicate()) throw new Error(`timed out waiting for ${what}`);
}

/** Both ends of one tunnel: the relay hands a connection out, the agent claims it by ID. */
async function lease(relay: ServerPool, agent: ClientPool): Promise<{ relayEnd: PooledConn; agentEnd: PooledConn }> {
  const { id, conn: relayEnd } = await relay.IncomingGet(2_000);
  const agentEnd = await agent.OutgoingGet(id, 2_000);
  for (const conn of [relayEnd, agentEnd]) {
    conn.on('error', () => {});
    conns.push(conn);
  }
  return { relayEnd, agentEnd };
}

/** Echoes `bytes` random bytes across a tunnel, relay end to agent end and back; true when intact. */
async function echo(relayEnd: PooledConn, agentEnd: PooledConn, bytes: number): Promise<boolean> {
  const onData = (data: Buffer): void => void agentEnd.write(data);
  agentEnd.on('data', onData);
  const [sent, back] = await Promise.all([writeRandom(relayEnd, bytes, 4 * 1024, false), hashExactly(relayEnd, bytes)]);
  agentEnd.removeListener('data', onData);
  return sent === back;
}

async function metric(registry: Registry, name: string, labels: Record<string, string>): Promise<number | undefined> {
  const values = (await registry.getSingleMetric(name)!.get()).values;
  const match = values.find((value) => Object.entries(labels).every(([key, label]) => String(value.labels[key]) === label));
  return match?.value;
}

describe('Prometheus metrics', () => {
  it('count what scripted traffic did, on both pools, in one injected registry', async () => {
    const registry = new Registry();
    const { relay, url } = await relayPool({ maxCap: 4, token: 's3cret', metrics: { registry } });
    const agent = agentPool({ server: url, minCap: 4, maxCap: 4, token: 's3cret', metrics: { registry } });
    await until('4 idle on both sides', () => relay.Active() === 4 && agent.Active() === 4);

    // Refusals, one of each reason.
    const { port } = relay.address()!;
    expect((await rawUpgrade(port, { path: '/elsewhere' })).status).toBe(404);
    expect((await rawUpgrade(port, { headers: { 'x-pool-token': 'wrong' } })).status).toBe(401);
    expect((await rawUpgrade(port, { headers: { 'x-pool-token': 's3cret' } })).status).toBe(503);
    relay.reconfigure({ allow: '10.0.0.0/8' });
    expect((await rawUpgrade(port, { headers: { 'x-pool-token': 's3cret' } })).status).toBe(403);
    expect(() => relay.reconfigure({ allow: [] })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_OPTION' }));
    relay.reconfigure({ allow: undefined });

    // Three tunnels: 3,000 bytes each from the relay end, echoed back by the agent end.
    const tunnels = [];
    for (let i = 0; i < 3; i++) {
      const tunnel = await lease(relay, agent);
      expect(await echo(tunnel.relayEnd, tunnel.agentEnd, 3_000)).toBe(true);
      tunnels.push(tunnel);
    }
    // A get that times out, and one for a malformed ID.
    await expect(agent.OutgoingGet('00000000', 30)).rejects.toMatchObject({ code: 'ERR_POOL_TIMEOUT' });
    await expect(agent.OutgoingGet('nope', 30)).rejects.toMatchObject({ code: 'ERR_INVALID_ID' });

    const relayLabels = { pool: 'relay' };
    const agentLabels = { pool: 'agent' };
    for (const reason of ['404', '401', '503', '403']) {
      expect(await metric(registry, 'pool_upgrades_rejected_total', { ...relayLabels, reason })).toBe(1);
    }
    expect(await metric(registry, 'pool_gets_total', { ...relayLabels, outcome: 'success' })).toBe(3);
    expect(await metric(registry, 'pool_gets_total', { ...agentLabels, outcome: 'success' })).toBe(3);
    expect(await metric(registry, 'pool_gets_total', { ...agentLabels, outcome: 'ERR_POOL_TIMEOUT' })).toBe(1);
    expect(await metric(registry, 'pool_gets_total', { ...agentLabels, outcome: 'ERR_INVALID_ID' })).toBe(1);
    expect(await metric(registry, 'pool_get_wait_seconds', { ...agentLabels, le: '+Inf' })).toBe(3);
    expect(await metric(registry, 'pool_leased_bytes_total', { ...relayLabels, direction: 'sent' })).toBe(9_000);
    expect(await metric(registry, 'pool_leased_bytes_total', { ...relayLabels, direction: 'received' })).toBe(9_000);
    expect(await metric(registry, 'pool_leased_bytes_total', { ...agentLabels, direction: 'received' })).toBe(9_000);
    expect(await metric(registry, 'pool_connections', { ...relayLabels, state: 'leased' })).toBe(3);
    expect(await metric(registry, 'pool_connections', { ...agentLabels, state: 'leased' })).toBe(3);
    expect(await metric(registry, 'pool_capacity', relayLabels)).toBe(4);
    expect(await metric(registry, 'pool_capacity', agentLabels)).toBe(agent.Capacity());
    expect(await metric(registry, 'pool_interval_seconds', agentLabels)).toBe(agent.Interval() / 1000);
    expect(await metric(registry, 'pool_clients', relayLabels)).toBe(1);

    // Every dial the agent completed is a handshake the relay completed, and the other way round.
    await until('the agent to refill', () => agent.Active() === 4 && relay.Active() === 4);
    const dials = await metric(registry, 'pool_dials_total', { ...agentLabels, outcome: 'success' });
    expect(dials).toBe(7);
    expect(await metric(registry, 'pool_handshakes_total', { ...agentLabels, outcome: 'success' })).toBe(dials);
    expect(await metric(registry, 'pool_handshakes_total', { ...relayLabels, outcome: 'success' })).toBe(dials);
    expect(await metric(registry, 'pool_websockets', relayLabels)).toBe(7);

    // Closed leases leave the gauges; their bytes stay counted.
    for (const { relayEnd } of tunnels) relayEnd.destroy();
    await until('the leases to close', () => relay.Leased() === 0 && agent.Leased() === 0);
    expect(await metric(registry, 'pool_connections', { ...relayLabels, state: 'leased' })).toBe(0);
    expect(await metric(registry, 'pool_leased_bytes_total', { ...relayLabels, direction: 'sent' })).toBe(9_000);
  });

  it('count failed dials and handshakes by outcome', async () => {
    const registry = new Registry();
    const refused = createServer();
    await new Promise<void>((resolve) => refused.listen(0, '127.0.0.1', resolve));
    const refusedPort = (refused.address() as { port: number }).port;
    refused.close(); // nothing listens there now: ECONNREFUSED
    const silentTcp = createServer((socket) => socket.on('error', () => {}));
    servers.push(silentTcp);
    await new Promise<void>((resolve) => silentTcp.listen(0, '127.0.0.1', resolve));
    const silentWs = await listenWs(false); // upgrades, then never sends an ID

    const outcomes = [
      { url: `ws://127.0.0.1:${refusedPort}/`, name: 'refused', metric: 'pool_dials_total', outcome: 'ECONNREFUSED' },
      { url: `ws://127.0.0.1:${(silentTcp.address() as { port: number }).port}/`, name: 'silent-tcp', metric: 'pool_dials_total', outcome: 'ERR_HANDSHAKE_TIMEOUT' },
      { url: silentWs.url, name: 'silent-ws', metric: 'pool_handshakes_total', outcome: 'ERR_HANDSHAKE_TIMEOUT' },
    ];
    try {
      for (const { url, name } of outcomes) {
        agentPool({ server: url, minCap: 1, maxCap: 1, handshakeTimeout: 200, metrics: { registry, name } });
      }
      for (const { name, metric: family, outcome } of outcomes) {
        let count: number | undefined;
        await until(`${name}: ${outcome}`, () => {
          void metric(registry, family, { pool: name, outcome }).then((value) => (count = value));
          return (count ?? 0) >= 1;
        });
      }
      expect(await metric(registry, 'pool_dials_total', { pool: 'silent-ws', outcome: 'success' })).toBeGreaterThanOrEqual(1);
      expect(await metric(registry, 'pool_dials_total', { pool: 'refused', outcome: 'success' })).toBeUndefined();
    } finally {
      await Promise.all(pools.splice(0).map((pool) => pool.Close()));
      silentWs.wss.close();
      await closeServer(silentWs.server);
    }
  });

  it('keep pools apart by name, refuse a name in use, and free it on Close()', async () => {
    const registry = new Registry();
    const { url } = await relayPool({ metrics: { registry } });
    expect(() => new ServerPool({ metrics: { registry } })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_OPTION' }));
    const first = agentPool({ server: url, metrics: { registry, name: 'edge' } });
    await first.Close();
    const second = agentPool({ server: url, minCap: 2, maxCap: 2, metrics: { registry, name: 'edge' } });
    expect(await metric(registry, 'pool_capacity', { pool: 'edge' })).toBe(second.Capacity());
    expect((await registry.getSingleMetric('pool_capacity')!.get()).values.filter((v) => v.labels.pool === 'edge')).toHaveLength(1);
  });
});

describe('connection tracker on live pools', () => {
  it('follows one connection through every transition on both sides, and keeps none after Close()', async () => {
    const { relay, url } = await relayPool();
    const agent = agentPool({ server: url, minCap: 1, maxCap: 1 });
    await until('one idle on both sides', () => relay.tracker.stats().byState.idle === 1 && agent.tracker.stats().byState.idle === 1);
    expect(agent.tracker.stats()).toMatchObject({ closed: 0, reconciled: 0, byState: { dialing: 0, handshaking: 0, idle: 1, leased: 0 } });
    expect(Object.keys(relay.tracker.stats().byAddress)).toEqual([`127.0.0.1:${relay.address()!.port}`]);
    expect(Object.keys(agent.tracker.stats().byAddress)).toEqual([`127.0.0.1:${relay.address()!.port}`]);

    const { relayEnd, agentEnd } = await lease(relay, agent);
    expect(relay.tracker.stats().byState).toMatchObject({ idle: 0, leased: 1 });
    expect(agent.tracker.stats().byState).toMatchObject({ leased: 1 });
    expect(agent.tracker.lifecycleOf((agentEnd as PoolConn).webSocket)?.state).toBe('leased');

    await sleep(30);
    // Half-close is negotiated: the agent's end closes its direction once it has read the relay's end-of-stream.
    agentEnd.resume();
    relayEnd.end();
    await until('the lease to close on both sides', () => relay.Leased() === 0 && agent.Leased() === 0);
    for (const pool of [relay, agent]) {
      const stats = pool.tracker.stats();
      expect(stats.leaseMs.count).toBe(1);
      expect(stats.leaseMs.p50).toBeGreaterThanOrEqual(25);
      expect(stats.reconciled).toBe(0);
    }
    expect(agent.tracker.lifecycleOf((agentEnd as PoolConn).webSocket)).toBeUndefined();
    await until('a refill', () => agent.Active() === 1);
    await Promise.all([relay.Close(), agent.Close()]);
    await until('nothing open on either tracker', () => relay.tracker.stats().open === 0 && agent.tracker.stats().open === 0);
    expect(agent.tracker.report()).toMatch(/^open=0 .* reconciled=0/);
  });

  it('shows a dial stuck before the upgrade as dialing, and one stuck before its ID as handshaking', async () => {
    const silentTcp = createServer((socket) => socket.on('error', () => {}));
    servers.push(silentTcp);
    await new Promise<void>((resolve) => silentTcp.listen(0, '127.0.0.1', resolve));
    const silentWs = await listenWs(false);
    try {
      const dialing = agentPool({ server: `ws://127.0.0.1:${(silentTcp.address() as { port: number }).port}/`, handshakeTimeout: 2_000 });
      const handshaking = agentPool({ server: silentWs.url, handshakeTimeout: 2_000 });
      await until('dialing', () => dialing.tracker.stats().byState.dialing === 1);
      await until('handshaking', () => handshaking.tracker.stats().byState.handshaking === 1);
      await Promise.all([dialing.Close(), handshaking.Close()]);
      expect(dialing.tracker.stats().open).toBe(0);
      expect(handshaking.tracker.stats().open).toBe(0);
    } finally {
      silentWs.wss.close();
      await closeServer(silentWs.server);
    }
  });
});

describe('clients on the relay', () => {
  it("emits clientUp once per client and clientDown once, after the last of its connections, leased ones included", async () => {
    const { relay, url } = await relayPool({ tokens: { east: 'e-secret', west: 'w-secret' } });
    const events: string[] = [];
    relay.on('clientUp', (client: string) => events.push(`up ${client}`));
    relay.on('clientDown', (client: string) => events.push(`down ${client}`));
    const east = agentPool({ server: url, minCap: 3, maxCap: 3, token: 'e-secret' });
    await until('east pooled', () => east.Active() === 3);
    expect(events).toEqual(['up east']);
    const { agentEnd } = await lease(relay, east);
    const west = agentPool({ server: url, minCap: 2, maxCap: 2, token: 'w-secret' });
    await until('west pooled', () => west.Active() === 2);
    expect(events).toEqual(['up east', 'up west']);
    expect(relay.Clients()).toBe(2);

    await east.Close(); // its idle connections close; the leased one stays open
    await until('east idle gone', () => relay.Active() === 2);
    await sleep(50);
    expect(events).toEqual(['up east', 'up west']);
    agentEnd.destroy();
    await until('east down', () => events.length === 3);
    await sleep(50);
    expect(events).toEqual(['up east', 'up west', 'down east']);
    await west.Close();
    await until('west down', () => events.length === 4);
    expect(events).toEqual(['up east', 'up west', 'down east', 'down west']);
    expect(relay.Clients()).toBe(0);
  });

  it('knows clients by IP without named tokens', async () => {
    const { relay, url } = await relayPool();
    const up = new Promise<string>((resolve) => relay.once('clientUp', resolve));
    agentPool({ server: url, minCap: 2, maxCap: 2 });
    expect(await up).toBe('127.0.0.1');
  });
});

describe('live reconfiguration', () => {
  it('resizes both pools up and down while tunnels carry traffic, and drops none of them', async () => {
    const { relay, url, port } = await relayPool({ maxCap: 50 });
    const agent = agentPool({ server: url, minCap: 2, maxCap: 2 });
    await until('2 idle', () => agent.Active() === 2);
    let intact = 0;
    let failed = 0;
    const traffic = (async () => {
      for (let i = 0; i < 40; i++) {
        const { relayEnd, agentEnd } = await lease(relay, agent);
        if (await echo(relayEnd, agentEnd, 32 * 1024)) intact++;
        else failed++;
        relayEnd.end();
      }
    })();
    // Held open across every change: must survive all of them.
    const held = await lease(relay, agent);

    agent.reconfigure({ minCap: 12, maxCap: 12, keepAlive: 100 });
    expect(agent.Capacity()).toBe(12);
    await until('the agent to grow to 12', () => agent.Active() >= 10);
    relay.reconfigure({ maxCap: 8, keepAlive: 100 });
    expect(relay.Capacity()).toBe(8);
    // It holds 10 or more: over the new cap it admits nothing (and closes none of them).
    expect((await rawUpgrade(port)).status).toBe(503);
    await sleep(300); // three keep-alive periods: leased connections are not swept
    agent.reconfigure({ minCap: 1, maxCap: 1 });
    expect(agent.Capacity()).toBe(1);
    await traffic;

    expect({ intact, failed }).toEqual({ intact: 40, failed: 0 });
    expect(await echo(held.relayEnd, held.agentEnd, 64 * 1024)).toBe(true);
    // Lowered capacity: the next rounds add nothing while the pool holds more than one.
    const dials = agent.stats().dials;
    await sleep(300);
    expect(agent.stats().dials).toBe(dials);
  });

  it('rejects an invalid change with ERR_INVALID_OPTION and keeps the old settings', async () => {
    const { relay, url } = await relayPool({ maxCap: 5 });
    const agent = agentPool({ server: url, minCap: 2, maxCap: 3 });
    expect(() => agent.reconfigure({ minCap: 10 })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_OPTION' }));
    expect(() => agent.reconfigure({ minInterval: -1 })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_OPTION' }));
    expect(() => relay.reconfigure({ allow: ['10.0.0.0/8', 'not-an-ip'] })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_OPTION' }));
    expect(() => relay.reconfigure({ maxCap: 0 })).toThrow(expect.objectContaining({ code: 'ERR_INVALID_OPTION' }));
    expect(relay.Capacity()).toBe(5);
    // The old allowlist (everyone) still holds, and the agent still fills to its old bounds.
    await until('the agent to fill', () => agent.Active() >= 2);
    expect(agent.Capacity()).toBeLessThanOrEqual(3);
    agent.reconfigure({ maxCap: 4 }); // minCap 2 from before still applies
    expect(agent.Capacity()).toBeGreaterThanOrEqual(2);
  });
});

describe('drain', () => {
  it('relay: refuses new work, waits for a leased connection, completes, and starts again', async () => {
    const { relay, url, port } = await relayPool();
    const agent = agentPool({ server: url, minCap: 2, maxCap: 2 });
    await until('2 idle', () => relay.Active() === 2);
    const { relayEnd, agentEnd } = await lease(relay, agent);

    let drained: { destroyed: number } | undefined;
    const drain = relay.Drain(5_000).then((result) => (drained = result));
    await expect(relay.IncomingGet(1_000)).rejects.toMatchObject({ code: 'ERR_POOL_DRAINING' });
    expect((await rawUpgrade(port)).status).toBe(503);
    await until('idle closed', () => relay.Active() === 0);
    await sleep(200);
    expect(drained).toBeUndefined(); // still waiting for the lease
    expect(await echo(relayEnd, agentEnd, 16 * 1024)).toBe(true);

    relayEnd.end();
    await drain;
    expect(drained).toEqual({ destroyed: 0 });
    expect(relay.Ready()).toBe(false);

    await relay.ServerManager();
    expect(relay.Ready()).toBe(true);
    const again = await lease(relay, agent);
    expect(await echo(again.relayEnd, again.agentEnd, 1024)).toBe(true);
  });

  it('relay: destroys the leases still open at the deadline', async () => {
    const { relay, url } = await relayPool();
    const agent = agentPool({ server: url, minCap: 1, maxCap: 1 });
    const { agentEnd } = await lease(relay, agent);
    const agentClosed = new Promise((resolve) => agentEnd.once('close', resolve));
    expect(await relay.Drain(100)).toEqual({ destroyed: 1 });
    await agentClosed;
  });

  it('agent: stops dialling, rejects gets, waits for a leased connection, completes, and starts again', async () => {
    const { relay, url } = await relayPool();
    const agent = agentPool({ server: url, minCap: 3, maxCap: 3 });
    await until('3 idle', () => agent.Active() === 3);
    const { relayEnd, agentEnd } = await lease(relay, agent);

    let drained: { destroyed: number } | undefined;
    const drain = agent.Drain(5_000).then((result) => (drained = result));
    await expect(agent.OutgoingGet('00000001', 1_000)).rejects.toMatchObject({ code: 'ERR_POOL_DRAINING' });
    await until('idle closed', () => agent.Active() === 0);
    const dials = agent.stats().dials;
    await sleep(200);
    expect(agent.stats().dials).toBe(dials);
    expect(drained).toBeUndefined();
    expect(agent.Ready()).toBe(false);
    expect(await echo(relayEnd, agentEnd, 16 * 1024)).toBe(true);

    agentEnd.end();
    await drain;
    expect(drained).toEqual({ destroyed: 0 });
    agent.ClientManager();
    await until('the agent to refill', () => agent.Active() === 3);
    expect(agent.Ready()).toBe(true);
  });
});
