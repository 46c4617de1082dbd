#!/usr/bin/env node
import { readFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { Registry } from 'prom-client';
import { createLineLogger, numberFlag, parseCommandLine, runUntilSignal, serveMetrics } from '@pool/shared';
import { Agent } from '../agent.js';
import type { TlsMode } from '../server-address.js';

const COMMAND = 'pool-agent';

async function main(): Promise<void> {
  const flags = parseCommandLine(
    COMMAND,
    'The private half of a tunnel: keeps pooled connections to the relay at --server and connects each\ntunnel the relay opens to --target.',
    {
      server: { type: 'string', description: 'the relay, host:port or ws(s)://host:port (required)' },
      target: { type: 'string', description: 'the local service, host:port (required)' },
      tls: { type: 'string', description: 'verified | insecure (self-signed relay) | off', default: 'verified' },
      'tls-ca': { type: 'string', description: 'PEM file of the CA (or self-signed cert) to trust instead of the system CAs' },
      token: { type: 'string', description: 'shared secret the relay expects' },
      'min-cap': { type: 'string', description: 'pool capacity floor', default: '4' },
      'max-cap': { type: 'string', description: 'pool capacity ceiling', default: '64' },
      'min-interval': { type: 'string', description: 'shortest pause between fill rounds, ms', default: '100' },
      'max-interval': { type: 'string', description: 'longest pause between fill rounds, ms', default: '5000' },
      'keep-alive': { type: 'string', description: 'keep-alive period, ms', default: '30000' },
      'status-interval': { type: 'string', description: 'status line period, ms (0: off)', default: '10000' },
      'drain-timeout': { type: 'string', description: 'on SIGTERM/SIGINT, how long open tunnels get to finish, ms', default: '10000' },
      'metrics-port': { type: 'string', description: 'serve Prometheus metrics on GET /metrics at this port (default: off)' },
      'metrics-host': { type: 'string', description: 'interface for the metrics port', default: '127.0.0.1' },
      'log-level': { type: 'string', description: 'JSON log lines on stderr: off | error | warn | info | debug', default: 'info' },
    },
  );
  if (!flags) return;
  if (!flags.server || !flags.target) throw new Error('--server and --target are required (see --help)');
  const tls: TlsMode = flags['tls-ca'] ? { ca: readFileSync(String(flags['tls-ca'])) } : (String(flags.tls) as TlsMode);
  const logger = createLineLogger(String(flags['log-level']), (line) => process.stderr.write(line));
  const registry = flags['metrics-port'] === undefined ? undefined : new Registry();
  const drainTimeout = numberFlag(flags, 'drain-timeout');
  const agent = new Agent({
    server: String(flags.server),
    target: String(flags.target),
    tls,
    token: flags.token === undefined ? undefined : String(flags.token),
    minCap: numberFlag(flags, 'min-cap'),
    maxCap: numberFlag(flags, 'max-cap'),
    minInterval: numberFlag(flags, 'min-interval'),
    maxInterval: numberFlag(flags, 'max-interval'),
    keepAlive: numberFlag(flags, 'keep-alive'),
    metrics: registry && { registry },
    logger,
  });
  agent.on('control', (up: boolean) => process.stdout.write(`${COMMAND} control ${up ? 'connected' : 'disconnected'}\n`));
  const metricsServer =
    registry &&
    (await serveMetrics(registry, String(flags['metrics-host']), numberFlag(flags, 'metrics-port'), (error) =>
      logger.error({ err: error }, 'metrics server failed'),
    ));
  agent.start();
  const metricsPort = metricsServer ? ` metrics-port=${(metricsServer.address() as AddressInfo).port}` : '';
  process.stdout.write(`${COMMAND} started server=${String(flags.server)} target=${String(flags.target)}${metricsPort}\n`);
  runUntilSignal(
    COMMAND,
    async () => {
      await agent.drain(drainTimeout);
      await agent.close();
      metricsServer?.close();
    },
    () => {
      const s = agent.stats();
      return `idle=${s.idle} capacity=${s.capacity} interval=${s.interval}ms open=${s.open} orders=${s.orders} dials=${s.dials} claim-failures=${s.claimFailures} target-failures=${s.targetFailures} errors=${agent.ErrorCount()}`;
    },
    numberFlag(flags, 'status-interval'),
  );
}

main().catch((error: unknown) => {
  process.stderr.write(`${COMMAND}: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(2);
});
