import { afterEach, describe, expect, it } from '@jest/globals';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { WebSocketServer, type WebSocket } from 'ws';
import { Agent } from '@pool/client';
import { parseHostPort } from '../src/agent.js';
import { closeServer } from '../../../tests/helpers/ws-pair.js';

describe('parseHostPort', () => {
  it.each([
    ['127.0.0.1:80', { host: '127.0.0.1', port: 80 }],
    ['localhost:65535', { host: 'localhost', port: 65_535 }],
    ['[::1]:8080', { host: '::1', port: 8080 }],
  ])('parses %s', (text, expected) => {
    expect(parseHostPort('target', text)).toEqual(expected);
  });

  it.each(['127.0.0.1', ':80', '::1:80', 'host:0', 'host:65536', 'host:http'])('rejects %p with ERR_INVALID_OPTION', (text) => {
    expect(() => parseHostPort('target', text)).toThrow(expect.objectContaining({ code: 'ERR_INVALID_OPTION' }));
  });
});

describe('Agent control channel against a hostile relay', () => {
  let server: Server | undefined;
  let agent: Agent | undefined;

  afterEach(async () => {
    await agent?.close();
    if (server) await closeServer(server);
    agent = server = undefined;
  });

  it('reports malformed orders as errors, never crashes, and stays connected', async () => {
    server = createServer();
    const wss = new WebSocketServer({ server });
    const controls: WebSocket[] = [];
    wss.on('connection', (ws, request) => {
      ws.on('error', () => {});
      if (request.url === '/control') controls.push(ws);
      else ws.terminate(); // no pool connections from this relay
    });
    await new Promise<void>((resolve) => server!.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as AddressInfo;
    agent = new Agent({ server: `ws://127.0.0.1:${port}`, target: '127.0.0.1:9', minInterval: 1_000, maxInterval: 2_000 });
    const errors: Array<{ code?: string }> = [];
    agent.on('error', (error: { code?: string }) => errors.push(error));
    agent.start();
    for (let i = 0; i < 100 && controls.length === 0; i++) await sleep(10);
    const control = controls[0]!;
    for (const garbage of ['{', '[]', '{"v":9,"type":"connect","id":"a1b2c3d4"}', '{"v":1,"type":"connect","id":"nothex!!"}']) {
      control.send(garbage);
    }
    control.send(Buffer.from([1, 2, 3]));
    // A well-formed order for a connection the agent never got: a claim failure after claimTimeout, not a crash.
    control.send('{"v":1,"type":"connect","id":"0badc0de"}');
    for (let i = 0; i < 100 && agent.stats().orders < 1; i++) await sleep(10);
    expect(errors.filter((e) => e.code === 'ERR_CONTROL_MESSAGE')).toHaveLength(5);
    expect(agent.stats().controlConnects).toBe(1);
    expect(agent.stats().orders).toBe(1);
  });
});
