#!/usr/bin/env node
import { readFileSync } from 'node:fs';
import { CliOperations, OPERATION_FLAGS, numberFlag, parseCommandLine, runUntilSignal } from '@pool/shared';
import { generateDevCertificate } from '../dev-cert.js';
import { Relay } from '../relay.js';

const COMMAND = 'pool-relay';

async function main(): Promise<void> {
  const flags = parseCommandLine(
    COMMAND,
    'The public half of a tunnel: agents keep pooled connections to --port; users connect to --public-port\nand are tunnelled to the agent\'s target.',
    {
      host: { type: 'string', description: 'interface for agents (pool + control)', default: '::' },
      port: { type: 'string', description: 'port for agents', default: '10101' },
      'public-host': { type: 'string', description: 'interface for users', default: '::' },
      'public-port': { type: 'string', description: 'port for users', default: '10080' },
      'tls-cert': { type: 'string', description: 'PEM certificate file (without it and --plain: a generated self-signed one)' },
      'tls-key': { type: 'string', description: 'PEM private key file' },
      plain: { type: 'boolean', description: 'plain ws:// for agents (development only)' },
      allow: { type: 'string', description: 'comma-separated agent IPs / CIDR ranges (default: any)' },
      token: { type: 'string', description: 'shared secret agents must present' },
      'max-cap': { type: 'string', description: 'most idle pooled connections (users waiting for one add room)', default: '256' },
      'keep-alive': { type: 'string', description: 'keep-alive period, ms', default: '30000' },
      'get-timeout': { type: 'string', description: 'how long a user waits for a pooled connection, ms', default: '5000' },
      'headers-timeout': { type: 'string', description: 'time an agent has for its TLS handshake, and again for its request headers, ms', default: '10000' },
      'max-payload': { type: 'string', description: 'largest WebSocket message accepted, bytes', default: String(16 * 1024 * 1024) },
      'status-interval': { type: 'string', description: 'status line period, ms (0: off)', default: '10000' },
      ...OPERATION_FLAGS,
    },
  );
  if (!flags) return;
  let tls: { cert: string | Buffer; key: string | Buffer } | undefined;
  if (flags['tls-cert'] || flags['tls-key']) {
    if (!flags['tls-cert'] || !flags['tls-key']) throw new Error('--tls-cert and --tls-key go together');
    tls = { cert: readFileSync(String(flags['tls-cert'])), key: readFileSync(String(flags['tls-key'])) };
  } else if (!flags.plain) {
    const dev = await generateDevCertificate();
    tls = dev;
    process.stdout.write(`${COMMAND} using a generated self-signed certificate (sha256 ${dev.fingerprint}); agents need --tls insecure\n`);
  }
  const operations = new CliOperations(flags);
  const relay = new Relay({
    host: String(flags.host),
    port: numberFlag(flags, 'port'),
    publicHost: String(flags['public-host']),
    publicPort: numberFlag(flags, 'public-port'),
    tls,
    allow: flags.allow ? String(flags.allow).split(',') : undefined,
    token: flags.token === undefined ? undefined : String(flags.token),
    maxCap: numberFlag(flags, 'max-cap'),
    keepAlive: numberFlag(flags, 'keep-alive'),
    getTimeout: numberFlag(flags, 'get-timeout'),
    headersTimeout: numberFlag(flags, 'headers-timeout'),
    maxPayload: numberFlag(flags, 'max-payload'),
    metrics: operations.metrics,
    logger: operations.logger,
  });
  relay.on('agent', (up: boolean) => process.stdout.write(`${COMMAND} agent ${up ? 'connected' : 'disconnected'}\n`));
  await relay.start();
  const metricsPort = await operations.serveMetrics();
  const { port, publicPort } = relay.address();
  process.stdout.write(`${COMMAND} ready port=${port} public-port=${publicPort} tls=${tls ? 'on' : 'off'}${metricsPort}\n`);
  runUntilSignal(
    COMMAND,
    () => operations.shutDown(relay),
    () => {
      const s = relay.stats();
      return `agent=${s.agentConnected ? 'up' : 'down'} idle=${s.idle}/${relay.pool.Capacity()} open=${s.open} waiting=${s.waiting} accepted=${s.accepted} finished=${s.finished} failed=${s.failed} no-connection=${s.noConnection} no-agent=${s.noAgent} departed=${s.departed} claim-retries=${s.claimRetries} errors=${relay.ErrorCount()}`;
    },
    numberFlag(flags, 'status-interval'),
  );
}

main().catch((error: unknown) => {
  process.stderr.write(`${COMMAND}: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(2);
});
