import { afterEach, describe, expect, it } from '@jest/globals';
import { createHash, randomBytes } from 'node:crypto';
import { createServer as createHttpServer } from 'node:http';
import { connect, createServer, type Server } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { request } from 'undici';
import { AGENT_BIN, CliProcess, RELAY_BIN, startAgent, startRelay } from '../helpers/processes.js';
import { rawUpgrade } from '../helpers/raw-http.js';
import { closed } from '../helpers/streams.js';
import { TargetServers, echoServer, echoThrough, sha256 } from '../helpers/tunnel.js';

// End to end: the real pool-relay and pool-agent CLIs as processes, TLS between
// them (the relay's generated self-signed certificate), users and targets here.

const processes: CliProcess[] = [];
const targets = new TargetServers();

afterEach(async () => {
  await Promise.all(processes.splice(0).map((p) => p.stop('SIGKILL')));
  targets.closeAll();
});

async function tunnel(targetServer: Server, relayArgs: string[] = [], agentArgs: string[] = []) {
  const target = await targets.listen(targetServer);
  const { relay, port, publicPort } = await startRelay(relayArgs);
  processes.push(relay);
  const agent = await startAgent(port, target, agentArgs);
  processes.push(agent);
  return { relay, agent, port, publicPort, target };
}


describe('pool-relay + pool-agent, end to end', () => {
  it('carries HTTP requests made with undici', async () => {
    const service = createHttpServer((req, res) => res.end(`you asked for ${req.url}`));
    const { publicPort } = await tunnel(service);
    for (let i = 0; i < 20; i++) {
      const response = await request(`http://127.0.0.1:${publicPort}/thing/${i}`, { reset: i % 2 === 0 });
      expect(response.statusCode).toBe(200);
      expect(await response.body.text()).toBe(`you asked for /thing/${i}`);
    }
  });

  it('carries 256 concurrent connections, each with its bytes intact both ways', async () => {
    const { publicPort } = await tunnel(echoServer(), ['--max-cap', '400'], ['--min-cap', '64', '--max-cap', '300']);
    const payloads = Array.from({ length: 256 }, () => randomBytes(1 + Math.floor(Math.random() * 256 * 1024)));
    const echoed = await Promise.all(payloads.map((payload) => echoThrough(publicPort, payload)));
    expect(echoed).toEqual(payloads.map(sha256));
  }, 60_000);

  it('moves 100 MiB through one tunnel intact', async () => {
    const total = 100 * 1024 * 1024;
    const sink = createServer((socket) => {
      const hash = createHash('sha256');
      let received = 0;
      socket.on('error', () => {});
      socket.on('data', (data: Buffer) => {
        hash.update(data);
        received += data.length;
        if (received === total) socket.end(hash.digest('hex'));
      });
    });
    const { publicPort } = await tunnel(sink);
    const user = connect(publicPort, '127.0.0.1');
    const sent = createHash('sha256');
    const block = randomBytes(1024 * 1024);
    const reply = new Promise<string>((resolve, reject) => {
      let text = '';
      user.on('data', (data: Buffer) => (text += data.toString()));
      user.on('end', () => resolve(text));
      user.on('error', reject);
    });
    for (let i = 0; i < 100; i++) {
      const chunk = Buffer.from(block);
      chunk.writeUInt32BE(i, 0);
      sent.update(chunk);
      if (!user.write(chunk)) await new Promise((resolve) => user.once('drain', resolve));
    }
    expect(await reply).toBe(sent.digest('hex'));
  }, 60_000);

  it('closes the user connection within 1 s when the target is down', async () => {
    // Port 1: nothing listens there. (A freed ephemeral port can be reused at once by another listener.)
    const target = '127.0.0.1:1';
    const { relay, port, publicPort } = await startRelay();
    processes.push(relay);
    processes.push(await startAgent(port, target));
    const user = connect(publicPort, '127.0.0.1');
    user.on('error', () => {});
    await new Promise((resolve) => user.once('connect', resolve));
    const started = Date.now();
    user.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
    await closed(user);
    expect(Date.now() - started).toBeLessThan(1_000);
  });

  it('serves again after the agent is killed and restarted, without touching the relay', async () => {
    const service = createHttpServer((_req, res) => res.end('ok'));
    const { agent, port, publicPort, target } = await tunnel(service);
    const get = async (): Promise<string> => (await request(`http://127.0.0.1:${publicPort}/`, { reset: true })).body.text();
    expect(await get()).toBe('ok');
    await agent.stop('SIGKILL');
    const restarted = await startAgent(port, target);
    processes.push(restarted);
    // Until the relay has dropped the dead agent's pooled connections a request may fail; bounded.
    let recovered = false;
    for (let attempt = 0; attempt < 50 && !recovered; attempt++) {
      recovered = await get().then((text) => text === 'ok', () => false);
      if (!recovered) await sleep(100);
    }
    expect(recovered).toBe(true);
    const results = await Promise.all(Array.from({ length: 20 }, () => get()));
    expect(results).toEqual(Array(20).fill('ok'));
  }, 30_000);

  it('reconnects by itself after the relay restarts', async () => {
    const service = createHttpServer((_req, res) => res.end('ok'));
    const { relay, agent, port, publicPort } = await tunnel(service);
    const get = async (): Promise<string> => (await request(`http://127.0.0.1:${publicPort}/`, { reset: true })).body.text();
    expect(await get()).toBe('ok');
    expect(await relay.stop('SIGTERM')).toBe(0);
    await agent.waitFor(/control disconnected/, 5_000, true);
    await sleep(1_000);
    const { relay: again } = await startRelay(['--port', String(port), '--public-port', String(publicPort)]);
    processes.push(again);
    await again.waitFor(/agent connected/, 10_000, true);
    let served = false;
    for (let attempt = 0; attempt < 50 && !served; attempt++) {
      served = await get().then((text) => text === 'ok', () => false);
      if (!served) await sleep(100);
    }
    expect(served).toBe(true);
  }, 30_000);

  it('prints --help and refuses bad flags with a clear message', async () => {
    const help = new CliProcess(RELAY_BIN, ['--help']);
    expect(await help.exited).toBe(0);
    expect(help.lines.join('\n')).toMatch(/--public-port <v>.*POOL_PUBLIC_PORT/);
    const bad = new CliProcess(AGENT_BIN, ['--server', 'relay:1']);
    expect(await bad.exited).toBe(2);
    expect(bad.lines.join('\n')).toMatch(/--server, and --target or at least one --service, are required/);
  });
});

describe('operating the CLIs', () => {
  /** Scrapes a CLI's /metrics with undici and returns the sample lines. */
  async function scrape(port: number): Promise<string[]> {
    const response = await request(`http://127.0.0.1:${port}/metrics`);
    expect(response.statusCode).toBe(200);
    expect(response.headers['content-type']).toMatch(/^text\/plain/);
    return (await response.body.text()).split('\n').filter((line) => line && !line.startsWith('#'));
  }

  const sample = (lines: string[], series: string): number | undefined => {
    const line = lines.find((candidate) => candidate.startsWith(`${series} `));
    return line === undefined ? undefined : Number(line.slice(series.length + 1));
  };

  it('serve Prometheus metrics that match the traffic sent through the tunnel', async () => {
    const { relay, agent, port, publicPort } = await tunnel(
      echoServer(),
      // Plain ws between them, so that a raw upgrade request can be refused too.
      ['--plain', '--metrics-port', '0', '--token', 's3cret-0123456789abcdef'],
      ['--tls', 'off', '--metrics-port', '0', '--token', 's3cret-0123456789abcdef', '--min-cap', '4', '--max-cap', '4'],
    );
    const relayMetrics = Number((await relay.waitFor(/metrics-port=(\d+)/, 5_000, true))[1]);
    const agentMetrics = Number((await agent.waitFor(/metrics-port=(\d+)/, 5_000, true))[1]);
    const payloads = Array.from({ length: 5 }, (_, i) => randomBytes(10_000 * (i + 1)));
    for (const payload of payloads) expect(await echoThrough(publicPort, payload)).toBe(sha256(payload));
    const total = payloads.reduce((sum, payload) => sum + payload.length, 0);
    expect((await rawUpgrade(port, { headers: { 'x-pool-token': 'wrong' } })).status).toBe(401);

    let relayLines: string[] = [];
    for (let i = 0; i < 50; i++) {
      relayLines = await scrape(relayMetrics);
      if (sample(relayLines, 'pool_leased_bytes_total{pool="relay",direction="sent"}') === total) break;
      await sleep(50);
    }
    expect(sample(relayLines, 'pool_gets_total{pool="relay",outcome="success"}')).toBe(5);
    expect(sample(relayLines, 'pool_leased_bytes_total{pool="relay",direction="received"}')).toBe(total);
    expect(sample(relayLines, 'pool_leased_bytes_total{pool="relay",direction="sent"}')).toBe(total);
    expect(sample(relayLines, 'pool_upgrades_rejected_total{pool="relay",reason="401"}')).toBe(1);
    expect(sample(relayLines, 'pool_clients{pool="relay"}')).toBe(1);
    const agentLines = await scrape(agentMetrics);
    expect(sample(agentLines, 'pool_gets_total{pool="agent",outcome="success"}')).toBe(5);
    expect(sample(agentLines, 'pool_capacity{pool="agent"}')).toBe(4);
    expect(sample(agentLines, 'pool_dials_total{pool="agent",outcome="success"}')).toBeGreaterThanOrEqual(4);
    expect((await request(`http://127.0.0.1:${relayMetrics}/other`)).statusCode).toBe(404);
  }, 30_000);

  it('drain on SIGTERM: an open tunnel keeps working until it ends, then the relay exits 0', async () => {
    const { relay, publicPort } = await tunnel(echoServer(), ['--drain-timeout', '10000']);
    const user = connect(publicPort, '127.0.0.1');
    user.on('error', () => {});
    const echoed = (text: string): Promise<void> =>
      new Promise((resolve) => {
        let seen = '';
        const onData = (data: Buffer): void => {
          seen += data.toString();
          if (seen === text) {
            user.removeListener('data', onData);
            resolve();
          }
        };
        user.on('data', onData);
        user.write(text);
      });
    await echoed('before');
    relay.child.kill('SIGTERM');
    await relay.waitFor(/pool draining/, 5_000, true);
    await sleep(300);
    expect(relay.child.exitCode).toBeNull();
    await echoed('during the drain');
    const refused = connect(publicPort, '127.0.0.1');
    expect((await new Promise<Error>((resolve) => refused.once('error', resolve))).message).toMatch(/ECONNREFUSED/);
    user.end();
    expect(await relay.exited).toBe(0);
    expect(relay.lines.join('\n')).toMatch(/"msg":"pool drained".*"destroyed":0/);
  }, 30_000);
});

