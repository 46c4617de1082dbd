import { afterEach, describe, expect, it } from '@jest/globals';
import { createHash, randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { createServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { WebSocketServer } from 'ws';
import { ClientPool, type ClientPoolOptions, type PooledConn } from '@pool/client';
import { ServerPool, idToBytes, type ServerPoolOptions } from '@pool/server';
import { selfSignedCert } from '../../../tests/helpers/tls-cert.js';
import { hashStream, nextEvent } from '../../../tests/helpers/streams.js';
import { activeHandles, handlesAbove } from '../../../tests/helpers/handles.js';
import { closeServer } from '../../../tests/helpers/ws-pair.js';

const relays: ServerPool[] = [];
const agents: ClientPool[] = [];
const leased: PooledConn[] = [];

async function startRelay(options: ServerPoolOptions = {}): Promise<{ relay: ServerPool; port: number }> {
  const relay = new ServerPool({ host: '127.0.0.1', ...options });
  relays.push(relay);
  await relay.ServerManager();
  return { relay, port: relay.address()!.port };
}

function startAgent(options: ClientPoolOptions): ClientPool {
  const agent = new ClientPool({ minInterval: 50, maxInterval: 500, ...options });
  agents.push(agent);
  agent.ClientManager();
  return agent;
}

/** Waits (bounded, 5 s) until `condition` holds. */
async function until(condition: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 500 && !condition(); i++) await sleep(10);
  if (!condition()) throw new Error(`timed out waiting for ${what}`);
}

/** Claims both ends of one pooled connection, as the relay and agent of a tunnel would. */
async function claimPair(relay: ServerPool, agent: ClientPool): Promise<{ relayEnd: PooledConn; agentEnd: PooledConn }> {
  const { id, conn: relayEnd } = await relay.IncomingGet(5_000);
  const agentEnd = await agent.OutgoingGet(id, 5_000);
  for (const end of [relayEnd, agentEnd]) {
    end.on('error', () => {});
    leased.push(end);
  }
  return { relayEnd, agentEnd };
}

/** A tunnel's use of a pooled connection, shortened: the relay hands it out, the agent claims it, both close it. */
async function takeAndClose(relay: ServerPool, agent: ClientPool): Promise<void> {
  const { relayEnd, agentEnd } = await claimPair(relay, agent);
  relayEnd.destroy();
  agentEnd.destroy();
}

afterEach(async () => {
  for (const conn of leased.splice(0)) conn.destroy();
  await Promise.all(agents.splice(0).map((agent) => agent.Close()));
  await Promise.all(relays.splice(0).map((relay) => relay.Close()));
});

describe.each([
  ['plain ws', false],
  ['TLS (self-signed, insecure mode)', true],
])('ClientPool over %s', (_label, tls) => {
  async function pair(): Promise<{ relay: ServerPool; agent: ClientPool }> {
    const { relay, port } = await startRelay(tls ? { tls: await selfSignedCert() } : {});
    const agent = startAgent({ server: `127.0.0.1:${port}`, tls: tls ? 'insecure' : 'off', minCap: 3, maxCap: 3 });
    return { relay, agent };
  }

  it('fills the pool to minCap', async () => {
    const { relay, agent } = await pair();
    await until(() => agent.Active() === 3, 'three idle connections');
    expect(relay.Active()).toBe(3);
    expect(agent.Capacity()).toBe(3);
    expect(agent.Ready()).toBe(true);
  });

  it('IncomingGet + OutgoingGet(id) yield the two ends of one connection: small and large, both ways', async () => {
    const { relay, agent } = await pair();
    const { relayEnd, agentEnd } = await claimPair(relay, agent);
    expect(agentEnd.id).toBe(relayEnd.id);
    expect(agentEnd.encrypted).toBe(tls);

    relayEnd.write('hi');
    const [small] = (await once(agentEnd, 'data')) as [Buffer];
    expect(small.toString()).toBe('hi');

    const up = randomBytes(8 * 1024 * 1024);
    const down = randomBytes(3 * 1024 * 1024 + 7);
    const sha = (data: Buffer): string => createHash('sha256').update(data).digest('hex');
    const [atRelay, atAgent] = await Promise.all([hashStream(relayEnd), hashStream(agentEnd), agentEnd.end(up), relayEnd.write(down)]);
    expect(atRelay).toEqual({ sha256: sha(up), bytes: up.length });
    // The relay's writes before the agent's end-of-stream all arrived.
    expect(atAgent).toEqual({ sha256: sha(down), bytes: down.length });
  });
});

describe('ClientPool: OutgoingGet', () => {
  it('resolves a get issued before its ID reached the agent, the moment it arrives', async () => {
    const { relay, port } = await startRelay();
    const agent = startAgent({ server: `127.0.0.1:${port}`, tls: 'off', minCap: 1, maxCap: 1 });
    // 'connection' fires as the relay sends the ID: the agent cannot have read it yet.
    const [id] = (await nextEvent(relay, 'connection')) as [string];
    expect(agent.Active()).toBe(0);
    const conn = await agent.OutgoingGet(id, 5_000);
    leased.push(conn);
    expect(conn.id).toBe(id);
    expect(agent.Active()).toBe(0);
  });

  it('keeps bytes the relay sent before the agent claimed the connection', async () => {
    const { relay, port } = await startRelay();
    const agent = startAgent({ server: `127.0.0.1:${port}`, tls: 'off', minCap: 1, maxCap: 1 });
    const { id, conn } = await relay.IncomingGet(5_000);
    conn.on('error', () => {});
    leased.push(conn);
    conn.write('sent before the claim');
    await sleep(100);
    const claimed = await agent.OutgoingGet(id, 5_000);
    leased.push(claimed);
    const [data] = (await once(claimed, 'data')) as [Buffer];
    expect(data.toString()).toBe('sent before the claim');
  });

  it.each(['A1B2C3D4', 'a1b2c3', '', 'zzzzzzzz'])('rejects the malformed ID %p at once with ERR_INVALID_ID', async (id) => {
    const agent = new ClientPool({ server: '127.0.0.1:1', tls: 'off' });
    agents.push(agent);
    await expect(agent.OutgoingGet(id, 10_000)).rejects.toMatchObject({ code: 'ERR_INVALID_ID' });
  });

  it('rejects with ERR_POOL_TIMEOUT, ERR_POOL_ABORTED and, on Close(), ERR_POOL_CLOSED', async () => {
    const agent = new ClientPool({ server: '127.0.0.1:1', tls: 'off' });
    agents.push(agent);
    await expect(agent.OutgoingGet('0badc0de', 50)).rejects.toMatchObject({ code: 'ERR_POOL_TIMEOUT' });
    const controller = new AbortController();
    const aborted = agent.OutgoingGet('0badc0de', 10_000, { signal: controller.signal });
    controller.abort();
    await expect(aborted).rejects.toMatchObject({ code: 'ERR_POOL_ABORTED' });
    const waiting = [agent.OutgoingGet('0badc0de', 10_000), agent.OutgoingGet('0badc0df', 10_000)];
    await agent.Close();
    for (const get of waiting) await expect(get).rejects.toMatchObject({ code: 'ERR_POOL_CLOSED' });
    await expect(agent.OutgoingGet('0badc0de', 10)).rejects.toMatchObject({ code: 'ERR_POOL_CLOSED' });
  });
});

describe('ClientPool: TLS modes', () => {
  it('verified mode refuses a self-signed relay; insecure mode and a pinned CA accept it', async () => {
    const cert = await selfSignedCert();
    const { relay, port } = await startRelay({ tls: cert });
    const verified = startAgent({ server: `127.0.0.1:${port}`, minCap: 1, maxCap: 1 });
    const errors: Error[] = [];
    verified.on('error', (error: Error) => errors.push(error));
    await until(() => errors.length > 0, 'a refused dial');
    expect((errors[0] as NodeJS.ErrnoException).code).toBe('DEPTH_ZERO_SELF_SIGNED_CERT');
    expect(verified.Active()).toBe(0);
    expect(verified.ErrorCount()).toBeGreaterThan(0);

    const insecure = startAgent({ server: `127.0.0.1:${port}`, tls: '1', minCap: 1, maxCap: 1 });
    const pinned = startAgent({ server: `localhost:${port}`, tls: { ca: cert.cert }, minCap: 1, maxCap: 1 });
    await until(() => insecure.Active() === 1 && pinned.Active() === 1, 'insecure and pinned agents to connect');
    expect(relay.Active()).toBe(2);
    expect(verified.Active()).toBe(0);
  });
});

describe('ClientPool: TLS session resumption', () => {
  it.each([
    [true, 'resumes the relay\'s TLS session on later dials'],
    [false, 'does a full handshake every time when tlsSessionReuse is false'],
  ])('%p: %s', async (reuse) => {
    const { relay, port } = await startRelay({ tls: await selfSignedCert() });
    const agent = startAgent({ server: `127.0.0.1:${port}`, tls: 'insecure', minCap: 1, maxCap: 1, tlsSessionReuse: reuse });
    const resumed: boolean[] = [];
    for (let i = 0; i < 4; i++) {
      const { agentEnd } = await claimPair(relay, agent);
      resumed.push(agentEnd.isSessionReused());
      expect(agentEnd.getProtocol()).toBe('TLSv1.3');
    }
    // The very first dial has no ticket yet; by the last one a ticket has arrived.
    expect(resumed[0]).toBe(false);
    expect(resumed.at(-1)).toBe(reuse);
  });
});

describe('ClientPool: manager', () => {
  it('grows capacity while dials succeed and shrinks it while they fail', async () => {
    const { relay, port } = await startRelay();
    const agent = startAgent({ server: `127.0.0.1:${port}`, tls: 'off', minCap: 2, maxCap: 6 });
    // Sustained demand: take connections as they come.
    for (let i = 0; i < 6; i++) await claimPair(relay, agent);
    await until(() => agent.Capacity() === 6, 'capacity to reach maxCap');
    await relay.Close();
    await until(() => agent.Capacity() === 2, 'capacity to fall back to minCap');
  });

  it('backs off while the relay is down, bounds its dials, and refills by itself when it returns', async () => {
    const { relay, port } = await startRelay();
    const agent = startAgent({ server: `127.0.0.1:${port}`, tls: 'off', minCap: 4, maxCap: 4, maxInterval: 800 });
    await until(() => agent.Active() === 4, 'the pool to fill');
    await relay.Close();
    await until(() => agent.Active() === 0, 'the relay to close the idle connections');
    const before = agent.stats().dials;
    const outageMs = 3_000;
    await sleep(outageMs);
    const dialsDuringOutage = agent.stats().dials - before;
    expect(agent.Interval()).toBe(800);
    // npws shrinks to minInterval (50 ms here) and redials all 4 each round: ~240 dials.
    // One probe per round with 2 retries, on a doubling interval: a handful.
    expect(dialsDuringOutage).toBeGreaterThan(0);
    expect(dialsDuringOutage).toBeLessThanOrEqual(20);

    const back = new ServerPool({ host: '127.0.0.1', port });
    relays.push(back);
    await back.ServerManager();
    const restarted = Date.now();
    await until(() => agent.Active() === 4, 'the pool to refill');
    expect(Date.now() - restarted).toBeLessThan(800 + 2_000);
  });

  it('Flush() closes idle connections and the manager refills them', async () => {
    const { port } = await startRelay();
    const agent = startAgent({ server: `127.0.0.1:${port}`, tls: 'off', minCap: 2, maxCap: 2 });
    await until(() => agent.Active() === 2, 'the pool to fill');
    const connected: string[] = [];
    agent.on('connection', (id: string) => connected.push(id));
    await agent.Flush();
    await until(() => agent.Active() === 2, 'the pool to refill');
    expect(connected.length).toBeGreaterThanOrEqual(2);
  });

  it('Close() closes idle connections, keeps handed-out ones, and leaves no handle', async () => {
    await sleep(100);
    const baseline = activeHandles();
    const { relay, port } = await startRelay({ keepAlive: 50 });
    const agent = startAgent({ server: `127.0.0.1:${port}`, tls: 'off', minCap: 3, maxCap: 3, keepAlive: 50 });
    await until(() => agent.Active() === 3, 'the pool to fill');
    const { relayEnd, agentEnd } = await claimPair(relay, agent);
    await Promise.all([agent.Close(), agent.Close()]);
    expect(agent.Ready()).toBe(false);
    expect(agent.Active()).toBe(0);
    agentEnd.write('after close');
    const [data] = (await once(relayEnd, 'data')) as [Buffer];
    expect(data.toString()).toBe('after close');
    relayEnd.destroy();
    agentEnd.destroy();
    await relay.Close();
    expect(await handlesAbove(baseline)).toEqual([]);
  });
});

describe('ClientPool: demand (dialNow)', () => {
  it('50 gets waiting at once with minCap 1 and a slow interval: all served, dialled in one go rather than one per round', async () => {
    const { relay, port } = await startRelay();
    const agent = startAgent({ server: `127.0.0.1:${port}`, tls: 'off', minCap: 1, maxCap: 64, minInterval: 5_000, maxInterval: 5_000 });
    await until(() => agent.Active() === 1 && relay.Active() === 1, 'the first fill round');
    const roundsBefore = agent.stats().rounds;
    // What a relay does with the pool's demand: pass the waiting count to the agent.
    const waitingSeen: number[] = [];
    relay.on('waiting', (waiting: number) => {
      waitingSeen.push(waiting);
      agent.dialNow(relay.Waiting());
    });
    const started = Date.now();
    const gets = await Promise.all(Array.from({ length: 50 }, () => relay.IncomingGet(4_000)));
    const elapsed = Date.now() - started;
    for (const { conn } of gets) leased.push(conn.on('error', () => {}));
    expect(new Set(gets.map((get) => get.id)).size).toBe(50);
    expect(waitingSeen.at(-1)).toBe(49);
    // One round at most could have run in that time; the demand did the rest, at once.
    expect(agent.stats().rounds - roundsBefore).toBeLessThanOrEqual(1);
    expect(agent.stats().demandDials).toBeGreaterThanOrEqual(49);
    expect(elapsed).toBeLessThan(4_000);
    // The capacity remembers the burst.
    expect(agent.Capacity()).toBeGreaterThanOrEqual(49);
  });

  it('after a burst, fill rounds and demand together stop at maxCap: a relay with the same maxCap never answers 503', async () => {
    const { relay, port } = await startRelay({ maxCap: 16 });
    // Fewer dials at once than maxCap: a fill round then outlives the burst it started in.
    const agent = startAgent({ server: `127.0.0.1:${port}`, tls: 'off', minCap: 1, maxCap: 16, minInterval: 20, maxInterval: 20, dialConcurrency: 4 });
    const refusals: string[] = [];
    agent.on('error', (error: Error & { code?: string }) => refusals.push(error.code ?? error.message));
    await until(() => agent.Active() === 1 && relay.Active() === 1, 'the first fill round');
    relay.on('waiting', () => agent.dialNow(relay.Waiting()));
    await Promise.all(Array.from({ length: 80 }, () => takeAndClose(relay, agent)));
    await until(() => relay.Active() === 16 && agent.Active() === 16, 'the pool to hold maxCap again');
    // Several more fill rounds with the pool full.
    const rounds = agent.stats().rounds;
    await until(() => agent.stats().rounds >= rounds + 5, 'five more rounds');
    expect(refusals).toEqual([]);
    expect(relay.Active()).toBe(16);
  });

  it('a burst served partly from the idle pool: capacity covers all of it, replacing what was taken adapts nothing, and the next such burst finds every connection waiting', async () => {
    const { relay, port } = await startRelay({ maxCap: 64 });
    // Rounds 2 s apart: between them, only top-ups and demand dial.
    const agent = startAgent({ server: `127.0.0.1:${port}`, tls: 'off', minCap: 10, maxCap: 64, minInterval: 2_000, maxInterval: 5_000 });
    await until(() => agent.Active() === 10 && relay.Active() === 10, 'the first fill round');
    // As a Relay passes it on: once per turn of the event loop, after the orders for the users the idle pool served.
    relay.on('waiting', () => setImmediate(() => agent.dialNow(relay.Waiting())));
    const burst = (users: number): Promise<void[]> => Promise.all(Array.from({ length: users }, () => takeAndClose(relay, agent)));
    const interval = agent.Interval();
    const rounds = agent.stats().rounds;
    // 10 users take the idle connections, 30 wait: the burst is 40, not the 30 that waited.
    await burst(40);
    expect(agent.Capacity()).toBeGreaterThanOrEqual(40);
    await until(() => relay.Active() >= 40, 'the pool to be topped up to the burst');
    const demandDials = agent.stats().demandDials;
    await burst(40);
    expect(agent.stats().demandDials).toBe(demandDials);
    expect(agent.stats().topUps).toBeGreaterThan(0);
    // Eighty connections taken ran no round (at most the one the 2 s interval brings), so the interval
    // and the burst are where they were; top-ups replaced what was taken.
    expect(agent.stats().rounds - rounds).toBeLessThanOrEqual(1);
    expect(agent.Interval()).toBeLessThanOrEqual(interval + 100);
    expect(agent.Capacity()).toBeGreaterThanOrEqual(39);
  });

  it('a relay whose maxCap is below the agent\'s: once a top-up is refused, connections taken before the next round cost it no dial', async () => {
    const { relay, port } = await startRelay({ maxCap: 4 });
    const agent = startAgent({ server: `127.0.0.1:${port}`, tls: 'off', minCap: 8, maxCap: 8, minInterval: 3_000, maxInterval: 3_000 });
    agent.on('error', () => {});
    // The first round: 4 connections, and 503s for the rest.
    await until(() => agent.stats().rounds === 1 && relay.Active() === 4 && agent.Active() === 4, 'the first round to end');
    const rounds = agent.stats().rounds;
    // The first take is replaced by a top-up, whose dials past the relay's maxCap are refused.
    const failuresBefore = agent.stats().dialFailures;
    await takeAndClose(relay, agent);
    await until(() => relay.Active() === 4 && agent.stats().dialFailures > failuresBefore, 'the top-up and its refusals');
    await sleep(150);
    const refused = agent.stats().dialFailures;
    // The next takes, before the next round, cost the relay no dial.
    for (let taken = 1; taken < 4; taken++) {
      await takeAndClose(relay, agent);
      // Time for a top-up, were there one, to run its course.
      await sleep(150);
    }
    expect(agent.stats().dialFailures).toBe(refused);
    expect(agent.stats().topUps).toBe(1);
    expect(agent.stats().rounds).toBe(rounds);
  });

  it('bounds demand by maxCap, decays the burst while the pool stays idle, and leaves the npws capacity alone', async () => {
    const { port } = await startRelay();
    const agent = startAgent({ server: `127.0.0.1:${port}`, tls: 'off', minCap: 1, maxCap: 8, minInterval: 20, maxInterval: 40 });
    await until(() => agent.Active() >= 1, 'the first fill round');
    agent.dialNow(20);
    expect(agent.Capacity()).toBe(8);
    expect(agent.stats().burst).toBe(8);
    await until(() => agent.Active() >= 8, 'the demand to be dialled');
    expect(agent.Active()).toBe(8);
    // Nobody takes them: the pool stays idle, and the burst decays round by round.
    await until(() => agent.stats().burst === 0, 'the burst to decay');
    expect(agent.Capacity()).toBeLessThanOrEqual(8);
    expect(() => agent.dialNow(-1)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_OPTION' }));
    expect(() => agent.dialNow(1.5)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_OPTION' }));
  });

  it('a demand dial that succeeds during an outage ends the back-off: the pool refills at once', async () => {
    const { relay, port } = await startRelay();
    const agent = startAgent({ server: `127.0.0.1:${port}`, tls: 'off', minCap: 4, maxCap: 4, minInterval: 50, maxInterval: 10_000 });
    await until(() => agent.Active() === 4, 'the pool to fill');
    await relay.Close();
    await until(() => agent.Interval() >= 1_600, 'the outage back-off to lengthen the interval');
    const back = new ServerPool({ host: '127.0.0.1', port });
    relays.push(back);
    await back.ServerManager();
    const restarted = Date.now();
    agent.dialNow(1);
    await until(() => agent.Active() === 4, 'the pool to refill');
    expect(Date.now() - restarted).toBeLessThan(1_000);
    expect(agent.Interval()).toBeLessThanOrEqual(150);
  });
});

describe('ClientPool: keep-alive (docs/protocol.md, section 2)', () => {
  /** A relay that sends IDs like ours but never answers pings; optionally confirms keep-alive anyway. */
  async function silentRelay(confirm: boolean): Promise<{ port: number; close(): Promise<void> }> {
    const server = createServer(await selfSignedCert());
    const wss = new WebSocketServer({ server, autoPong: false, perMessageDeflate: false });
    if (confirm) wss.on('headers', (headers) => headers.push('x-pool-keepalive: pong'));
    let next = 1;
    wss.on('connection', (ws) => {
      ws.on('error', () => {});
      ws.send(idToBytes((next++).toString(16).padStart(8, '0')));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    return {
      port: (server.address() as AddressInfo).port,
      async close() {
        // Upgraded sockets are invisible to closeAllConnections(): end them ourselves.
        for (const ws of wss.clients) ws.terminate();
        await closeServer(server);
      },
    };
  }

  it('destroys idle connections that miss pongs when the relay confirmed keep-alive', async () => {
    const relay = await silentRelay(true);
    try {
      const agent = startAgent({ server: `127.0.0.1:${relay.port}`, tls: 'insecure', minCap: 1, maxCap: 1, keepAlive: 100 });
      const [first] = (await nextEvent(agent, 'connection')) as [string];
      await until(() => agent.Active() === 1, 'the first connection to idle');
      // Within two periods (plus a refill) the silent connection is replaced.
      const [second] = (await nextEvent(agent, 'connection')) as [string];
      expect(second).not.toBe(first);
      expect(agent.ErrorCount()).toBeGreaterThan(0);
    } finally {
      await relay.close();
    }
  });

  it('keeps idle connections to a relay that did not confirm keep-alive (a Go npws relay)', async () => {
    const relay = await silentRelay(false);
    try {
      const agent = startAgent({ server: `127.0.0.1:${relay.port}`, tls: 'insecure', minCap: 1, maxCap: 1, keepAlive: 100 });
      const [first] = (await nextEvent(agent, 'connection')) as [string];
      await sleep(500);
      expect(agent.Active()).toBe(1);
      const conn = await agent.OutgoingGet(first, 100);
      leased.push(conn);
      expect(conn.transportOpen).toBe(true);
    } finally {
      await relay.close();
    }
  });
});
