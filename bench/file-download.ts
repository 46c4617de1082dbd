import type { ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { get } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import WebSocket from 'ws';
import { ROOT, RoleProcess, median, spawnUntil } from './lib.js';
import { pipeFor } from './roles.js';

export interface FileDownloadResult {
  bytes: number;
  /** Medians over the rounds, in MB/s. */
  directMBps: number;
  tunnelMBps: number;
  /** The same bytes sent by a bare wss client to a bare wss server (masked, as from agent to relay). */
  rawLegMBps: number;
}

/** Sends `bytes` in 64 KiB messages from a bare wss client to an `upload-server`; MB/s until the server has them all. */
async function rawLeg(bytes: number): Promise<number> {
  const server = new RoleProcess('upload-server', { total: bytes });
  try {
    const { port } = await server.next<{ type: 'ready'; port: number }>('ready');
    const ws = new WebSocket(`wss://127.0.0.1:${port}/`, { perMessageDeflate: false, rejectUnauthorized: false });
    await new Promise((resolve, reject) => {
      ws.once('open', resolve);
      ws.once('error', reject);
    });
    const started = performance.now();
    const pipe = pipeFor('ws-send', ws);
    const chunk = Buffer.alloc(64 * 1024, 0x61);
    let sent = 0;
    const pump = (): void => {
      while (sent < bytes) {
        const piece = chunk.subarray(0, Math.min(chunk.length, bytes - sent));
        sent += piece.length;
        if (!pipe.write(piece)) return pipe.onDrain(pump);
      }
    };
    pump();
    await server.next('received');
    ws.terminate();
    return bytes / 1e6 / ((performance.now() - started) / 1000);
  } finally {
    server.kill();
  }
}

/** GETs `/file` from 127.0.0.1:`port`, discarding the body; MB/s over the whole response. */
function download(port: number, expected: number): Promise<number> {
  return new Promise((resolve, reject) => {
    const started = performance.now();
    get({ host: '127.0.0.1', port, path: '/file' }, (response) => {
      let received = 0;
      response.on('data', (chunk: Buffer) => {
        received += chunk.length;
      });
      response.on('error', reject);
      response.on('end', () => {
        if (received !== expected) reject(new Error(`received ${received} of ${expected} bytes`));
        else resolve(expected / 1e6 / ((performance.now() - started) / 1000));
      });
    }).on('error', reject);
  });
}

/**
 * 6b. A file download from `python3 -m http.server` (its own process), the
 * relay and the agent in front of it: `bytes` straight from the server,
 * through the tunnel, and over one bare wss leg in the tunnel's direction
 * (client to server), interleaved, `rounds` times. Undefined when there is no
 * python3 to serve it.
 */
export async function fileDownload(bytes: number, rounds: number): Promise<FileDownloadResult | undefined> {
  const directory = mkdtempSync(join(tmpdir(), 'pool-bench-'));
  writeFileSync(join(directory, 'file'), Buffer.alloc(bytes, 0x61));
  const started: ChildProcess[] = [];
  try {
    // Quiet: it logs every request on stderr.
    const server = await spawnUntil(['-u', '-m', 'http.server', '0', '--bind', '127.0.0.1', '--directory', directory], /port (\d+)/, { command: 'python3', quiet: true }).catch(() => undefined);
    if (server === undefined) return undefined;
    started.push(server.child);
    const targetPort = Number(server.match[1]);
    const relay = await spawnUntil(
      [`${ROOT}packages/server/dist/bin/pool-relay.js`, '--host', '127.0.0.1', '--public-host', '127.0.0.1', '--port', '0', '--public-port', '0', '--status-interval', '0', '--log-level', 'warn'],
      / ready port=(\d+) public-port=(\d+)/,
    );
    started.push(relay.child);
    const [port, publicPort] = [Number(relay.match[1]), Number(relay.match[2])];
    const agent = await spawnUntil(
      [`${ROOT}packages/client/dist/bin/pool-agent.js`, '--server', `127.0.0.1:${port}`, '--target', `127.0.0.1:${targetPort}`, '--tls', 'insecure', '--status-interval', '0', '--log-level', 'warn'],
      /control connected/,
    );
    started.push(agent.child);
    const direct: number[] = [];
    const tunnel: number[] = [];
    const raw: number[] = [];
    for (let round = 0; round < rounds; round++) {
      direct.push(await download(targetPort, bytes));
      tunnel.push(await download(publicPort, bytes));
      raw.push(await rawLeg(bytes));
      console.log(`  file round ${round + 1}: direct ${direct.at(-1)!.toFixed(0)} MB/s, tunnel ${tunnel.at(-1)!.toFixed(0)} MB/s, raw wss leg ${raw.at(-1)!.toFixed(0)} MB/s`);
    }
    return { bytes, directMBps: median(direct), tunnelMBps: median(tunnel), rawLegMBps: median(raw) };
  } finally {
    for (const child of started) child.kill('SIGKILL');
    rmSync(directory, { recursive: true, force: true });
  }
}
