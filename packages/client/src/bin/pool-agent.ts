#!/usr/bin/env node
import { CliOperations, MS_RANGE, readPemFile, OPERATION_FLAGS, numberFlag, parseCommandLine, runUntilSignal } from '@pool/shared/cli';
import { Agent } from '../agent.js';
import { resolveRelayTarget, type TlsMode } from '../server-address.js';
import { keptCertificate, parseFingerprint } from '@pool/shared/internal';

const COMMAND = 'pool-agent';

/** --tls, --tls-ca and --tls-fingerprint as one TLS mode; the last two pin a certificate, so they stand alone. */
function tlsOf(caFile: string | undefined, fingerprint: string | undefined, mode: string | undefined): TlsMode | undefined {
  if (caFile !== undefined && fingerprint !== undefined) throw new Error('--tls-ca and --tls-fingerprint exclude each other: pin the certificate one way');
  const pinFlag = caFile !== undefined ? '--tls-ca' : fingerprint !== undefined ? '--tls-fingerprint' : undefined;
  if (pinFlag && mode !== undefined && mode !== 'verified' && mode !== '2') throw new Error(`${pinFlag} and --tls ${mode} exclude each other`);
  if (caFile !== undefined) return { ca: readPemFile(caFile, '--tls-ca', 'CERTIFICATE') };
  if (fingerprint !== undefined) {
    if (parseFingerprint(fingerprint) === undefined) {
      throw new Error(`--tls-fingerprint ${JSON.stringify(fingerprint)}: expected the SHA-256 fingerprint pool-relay prints (32 bytes as AB:CD:…, or 64 hex digits)`);
    }
    return { fingerprint };
  }
  return mode as TlsMode | undefined;
}

/** --transport as the pool's option; over plain ws:// only WebSocket exists, and auto means that. */
function transportFlag(value: string, plain: boolean): 'auto' | 'tls' | 'websocket' {
  const transport = value === 'wss' ? 'websocket' : value;
  if (transport !== 'auto' && transport !== 'tls' && transport !== 'websocket') throw new Error(`--transport ${JSON.stringify(value)}: expected auto, tls or wss`);
  if (plain && transport === 'tls') throw new Error('--transport tls needs TLS, and the relay is reached over plain ws://');
  return plain ? 'websocket' : transport;
}

async function main(): Promise<void> {
  const flags = parseCommandLine(
    COMMAND,
    'The private half of a tunnel: keeps pooled connections to the relay at --server and connects each\ntunnel the relay opens to --target.',
    {
      server: {
        type: 'string',
        multiple: true,
        description: 'a relay, host:port or ws(s)://host:port (required; give several to serve through each, with a pool and a control channel per relay)',
      },
      target: { type: 'string', description: "the local service, host:port: the relay's service `default` (this, or --service); reached over UDP when the relay's service is UDP" },
      service: { type: 'string', multiple: true, description: 'a service this agent serves, name=host:port (TCP, or UDP when the relay says so)' },
      name: { type: 'string', description: "this agent's name in the relay's configuration (checked against its token)" },
      tls: { type: 'string', description: 'verified | insecure (self-signed relay) | off (default: verified; off for a ws:// server)' },
      'tls-ca': { type: 'string', description: 'PEM file of the CA (or self-signed cert) to trust instead of the system CAs' },
      'tls-fingerprint': { type: 'string', description: "SHA-256 fingerprint of the relay's certificate, as pool-relay prints it: only that certificate is accepted" },
      transport: { type: 'string', description: 'how pooled connections travel: auto (raw TLS when the relay takes it, else WebSocket) | tls (raw TLS, ALPN pool/1) | wss (WebSocket, for npws relays and HTTP proxies)', default: 'auto' },
      token: { type: 'string', description: 'shared secret the relay expects' },
      'key-dir': { type: 'string', description: "keep this agent's key and certificate here (agent.key, agent.crt; made on the first start) and present them to the relay, which pins the fingerprint printed at start" },
      'min-cap': { type: 'string', description: 'pool capacity floor: idle connections kept for a burst of new users', default: '128', range: [1, 1_000_000] },
      'max-cap': { type: 'string', description: 'pool capacity ceiling (a burst of demand raises the capacity up to it)', default: '256', range: [1, 1_000_000] },
      'min-interval': { type: 'string', description: 'shortest pause between fill rounds, ms', default: '100', range: MS_RANGE },
      'max-interval': { type: 'string', description: 'longest pause between fill rounds, ms', default: '5000', range: MS_RANGE },
      'keep-alive': { type: 'string', description: 'keep-alive period, ms', default: '30000', range: MS_RANGE },
      'status-interval': { type: 'string', description: 'status line period, ms (0: off)', default: '10000', range: MS_RANGE },
      ...OPERATION_FLAGS,
    },
  );
  if (!flags) return;
  const services = Object.fromEntries(
    (flags.service as string[]).map((entry) => {
      const [name, target] = entry.split(/=(.*)/s, 2) as [string, string | undefined];
      if (!target) throw new Error(`--service ${JSON.stringify(entry)}: expected name=host:port`);
      return [name, target];
    }),
  );
  const servers = flags.server as string[];
  if (servers.length === 0 || (!flags.target && Object.keys(services).length === 0)) throw new Error('--server, and --target or at least one --service, are required (see --help)');
  // The same relay twice (`a:1` and `wss://a:1/`) would be two agents with one token: the second would wait on standby.
  const urls = servers.map((server) => resolveRelayTarget(server, undefined).url);
  if (new Set(urls).size < urls.length) throw new Error(`--server ${servers.join(' ')}: a relay is given twice`);
  const pinFlag = flags['tls-ca'] !== undefined ? '--tls-ca' : flags['tls-fingerprint'] !== undefined ? '--tls-fingerprint' : undefined;
  const plain = servers.find((server) => /^ws:\/\//i.test(server));
  if (pinFlag && plain !== undefined) throw new Error(`${pinFlag} needs TLS, and --server ${plain} is plain ws://: give host:port or wss://`);
  const tls = tlsOf(flags['tls-ca'] as string | undefined, flags['tls-fingerprint'] as string | undefined, flags.tls as string | undefined);
  const transport = transportFlag(String(flags.transport), plain !== undefined || tls === 'off' || tls === '0');
  const keyDir = flags['key-dir'] === undefined ? undefined : String(flags['key-dir']);
  if (keyDir !== undefined && (tls === 'off' || tls === '0' || plain !== undefined)) throw new Error('--key-dir needs TLS: the key is proven in the TLS handshake, and plain ws:// has none');
  const identity = keyDir === undefined ? undefined : await keptCertificate(keyDir, [], 'agent');
  if (identity) {
    process.stdout.write(
      `${COMMAND} key ${identity.created ? 'made and kept' : 'kept'} in ${identity.certFile}: the relay pins it with fingerprint ${identity.fingerprint} ` +
        `(agents.${flags.name === undefined ? 'NAME' : String(flags.name)}.fingerprint in its config, or --agent-fingerprint)\n`,
    );
  }
  const operations = new CliOperations(flags);
  // One agent per relay: a pool, a control channel and a back-off of its own, so that one relay down changes nothing for the others.
  const agents = servers.map((server) => {
    const agent = new Agent({
      server,
      target: flags.target === undefined ? undefined : String(flags.target),
      services,
      name: flags.name === undefined ? undefined : String(flags.name),
      tls,
      transport,
      token: flags.token === undefined ? undefined : String(flags.token),
      ...(identity && { identity: { cert: identity.cert, key: identity.key } }),
      minCap: numberFlag(flags, 'min-cap'),
      maxCap: numberFlag(flags, 'max-cap'),
      minInterval: numberFlag(flags, 'min-interval'),
      maxInterval: numberFlag(flags, 'max-interval'),
      keepAlive: numberFlag(flags, 'keep-alive'),
      // Several relays: each one's series carry its address as their `pool` label.
      metrics: operations.metrics && { ...operations.metrics, ...(servers.length > 1 && { name: server }) },
      logger: operations.logger,
    });
    agent.on('control', (up: boolean) => process.stdout.write(`${COMMAND} control ${up ? 'connected' : 'disconnected'} relay=${server}\n`));
    return { server, agent };
  });
  const metricsPort = await operations.serveMetrics();
  for (const { agent } of agents) agent.start();
  const serving = [...(flags.target === undefined ? [] : [`default=${String(flags.target)}`]), ...Object.entries(services).map(([name, target]) => `${name}=${target}`)];
  // Signals are handled from before the line that announces the start: whoever reads it may signal at once.
  runUntilSignal(
    COMMAND,
    () =>
      operations.shutDown({
        drain: (timeoutMs) => Promise.all(agents.map(({ agent }) => agent.drain(timeoutMs))),
        close: async () => {
          await Promise.all(agents.map(({ agent }) => agent.close()));
        },
      }),
    () =>
      agents.map(({ server, agent }) => {
        const s = agent.stats();
        return `relay=${server} control=${s.control} transport=${s.transport === 'websocket' ? 'wss' : s.transport} idle=${s.idle} capacity=${s.capacity} interval=${s.interval}ms open=${s.open} orders=${s.orders} finished=${s.finished} dials=${s.dials} demands=${s.demands} demand-dials=${s.demandDials} rounds=${s.rounds} top-ups=${s.topUps} claim-failures=${s.claimFailures} target-failures=${s.targetFailures} flows=${s.flowsOpen} flow-failures=${s.flowFailures} udp-dropped=${s.datagramsDropped.oversized + s.datagramsDropped.backpressure} errors=${agent.ErrorCount()}`;
      }),
    numberFlag(flags, 'status-interval'),
  );
  // A reload signal (systemctl reload, a terminal closing) must not kill the agent.
  process.on('SIGHUP', () => operations.logger.warn({}, 'SIGHUP: the agent has nothing to reload; flags change at a restart'));
  process.stdout.write(`${COMMAND} started server=${servers.join(',')} services=${serving.join(',')}${metricsPort}\n`);
}

main().catch((error: unknown) => {
  process.stderr.write(`${COMMAND}: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(2);
});
