#!/usr/bin/env node
import { X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { CliOperations, MS_RANGE, readPemFile, OPERATION_FLAGS, PORT_RANGE, numberFlag, parseCommandLine, runUntilSignal, wasGiven } from '@pool/shared/cli';
import { LOOPBACK_NAMES, generateDevCertificate, keptCertificate, parseFingerprint } from '@pool/shared/internal';
import { Relay } from '../relay/relay.js';
import { MIN_TOKEN_LENGTH, parseRelayConfig, type RelayConfig } from '../relay/relay-config.js';
import type { ServiceStats, UdpStats } from '../relay/stats.js';

const COMMAND = 'pool-relay';

/** Whom a certificate is for and how agents trust it: by a CA, or by pinning the fingerprint printed here. */
function certificateSummary(pem: string | Buffer): string {
  const certificate = new X509Certificate(pem);
  const names = certificate.subjectAltName ?? certificate.subject;
  return `for ${names}, SHA-256 fingerprint ${certificate.fingerprint256}: agents verify it against their CAs (or --tls-ca), or pin it with --tls-fingerprint ${certificate.fingerprint256}`;
}

async function main(): Promise<void> {
  const flags = parseCommandLine(
    COMMAND,
    'The public half of a tunnel: agents keep pooled connections to --port; users connect to --public-port\nand are tunnelled to the agent\'s target.',
    {
      host: { type: 'string', description: 'interface for agents (pool + control)', default: '::' },
      port: { type: 'string', description: 'port for agents', default: '10101', range: PORT_RANGE },
      'public-host': { type: 'string', description: 'interface for users', default: '::' },
      'public-port': { type: 'string', description: 'port for users', default: '10080', range: PORT_RANGE },
      udp: { type: 'boolean', description: 'the public port is UDP: each user address and port is a flow; flows share a few pooled connections' },
      'udp-idle-timeout': { type: 'string', description: 'with --udp: a flow silent both ways for this long is closed on both ends, ms', default: '60000', range: [1, MS_RANGE[1]], requires: 'udp' },
      'udp-max-flows': { type: 'string', description: 'with --udp: most flows open at once (a new one closes the least recently active)', default: '1024', range: [1, 1_000_000], requires: 'udp' },
      'udp-max-flows-per-source': { type: 'string', description: "with --udp: most flows of one address (its new one closes its own least recently active; default: a sixteenth of --udp-max-flows; each flow is a socket on the agent's host)", range: [1, 1_000_000], requires: 'udp' },
      'udp-reply-ratio': { type: 'string', description: 'with --udp: a flow sends its user at most this many times the bytes it received, plus 4 KiB (0: no limit)', default: '10', range: [0, 1_000_000], requires: 'udp' },
      'udp-max-datagram': { type: 'string', description: 'with --udp: largest datagram carried, bytes (larger ones are dropped, never split)', default: '65507', range: [1, 65_507], requires: 'udp' },
      config: { type: 'string', description: 'YAML (or JSON) file of agents and services; SIGHUP reloads it (see docs/operating.md)' },
      'tls-cert': { type: 'string', description: 'PEM certificate file (without it and --plain: a generated self-signed one)' },
      'tls-key': { type: 'string', description: 'PEM private key file' },
      'tls-name': { type: 'string', description: 'without --tls-cert: the names (hosts, IPs) the generated certificate is for, comma-separated', default: LOOPBACK_NAMES.join(',') },
      'tls-dir': { type: 'string', description: 'without --tls-cert: keep the generated certificate here (relay.crt, relay.key) and reuse it across restarts, for agents to pin' },
      plain: { type: 'boolean', description: 'plain ws:// for agents (development only)' },
      transport: { type: 'string', description: "how agents' pooled connections may travel: auto (raw TLS for agents that offer ALPN pool/1, WebSocket for the others) | tls (raw TLS only) | wss (WebSocket only)", default: 'auto' },
      allow: { type: 'string', description: 'comma-separated agent IPs / CIDR ranges (default: any)' },
      token: { type: 'string', description: 'shared secret agents must present' },
      'agent-fingerprint': { type: 'string', description: "SHA-256 fingerprint of the agent's key, as pool-agent --key-dir prints it: a connection without that key gets nothing, token or not (with --config: agents.NAME.fingerprint)" },
      'max-cap': { type: 'string', description: 'most idle pooled connections, all agents together (users waiting for one add room)', default: '1024', range: [1, 1_000_000] },
      'keep-alive': { type: 'string', description: 'keep-alive period, ms', default: '30000', range: MS_RANGE },
      'max-waiting': { type: 'string', description: 'most users of one TCP service waiting for a pooled connection at once (more are closed at once, counted)', default: '1024', range: [1, 1_000_000] },
      'max-waiting-per-source': { type: 'string', description: 'of those, most from one address (default: --max-waiting; on a full list another address takes the place of the newest user of the one holding the most)', range: [1, 1_000_000] },
      'max-tunnels-per-source': { type: 'string', description: 'most tunnels of one TCP service open at once from one address, waiting users included (more are closed at once, counted; 0: no limit)', default: '0', range: [0, 1_000_000] },
      'get-timeout': { type: 'string', description: 'how long a user waits for a pooled connection, ms', default: '5000', range: MS_RANGE },
      backlog: { type: 'string', description: 'connections each listener queues before they are accepted (a burst), capped by net.core.somaxconn', default: '2048', range: [1, 65_535] },
      'headers-timeout': { type: 'string', description: 'time an agent has for its TLS handshake, and again for its request headers, ms', default: '10000', range: [1, MS_RANGE[1]] },
      'max-payload': { type: 'string', description: 'largest WebSocket message accepted, bytes', default: String(16 * 1024 * 1024), range: [1, 2 ** 31 - 1] },
      'status-interval': { type: 'string', description: 'status line period, ms (0: off)', default: '10000', range: MS_RANGE },
      ...OPERATION_FLAGS,
    },
  );
  if (!flags) return;
  // An allowlist that was given but holds nothing must not quietly admit everyone.
  const allow = flags.allow === undefined ? undefined : String(flags.allow).split(',').map((entry) => entry.trim()).filter(Boolean);
  if (allow?.length === 0) throw new Error(`--allow ${JSON.stringify(flags.allow)}: an empty allowlist; give IPs or CIDR ranges, or leave --allow out to admit everyone`);
  if (flags.plain && (flags['tls-cert'] || flags['tls-key'])) throw new Error('--plain and --tls-cert/--tls-key exclude each other');
  const transport = flags.transport === 'wss' ? 'websocket' : String(flags.transport);
  if (transport !== 'auto' && transport !== 'tls' && transport !== 'websocket') throw new Error(`--transport ${JSON.stringify(flags.transport)}: expected auto, tls or wss`);
  if (flags.plain && wasGiven(flags, 'transport') && transport !== 'websocket') throw new Error(`--transport ${String(flags.transport)} needs TLS, and --plain has none`);
  const configFile = flags.config === undefined ? undefined : String(flags.config);
  if (configFile !== undefined && flags.udp) throw new Error(`--udp: with --config, each service says its protocol in ${configFile}`);
  const readConfig = (): RelayConfig => parseRelayConfig(readFileSync(configFile!, 'utf8'), configFile!);
  const config = configFile === undefined ? undefined : readConfig();
  if (config && flags.token !== undefined) throw new Error(`--token: with --config, each agent has its own token in ${configFile}`);
  // A flag the file also sets would be ignored in silence: refused instead, so the file is the one truth.
  const setTwice = (
    [
      ['port', config?.listen && 'listen'],
      ['host', config?.listen && 'listen'],
      ['public-port', config && 'services[].public'],
      ['public-host', config && 'services[].public'],
      ['tls-cert', config?.tls && 'tls.cert'],
      ['tls-key', config?.tls && 'tls.key'],
    ] as const
  ).filter(([flag, inFile]) => inFile && wasGiven(flags, flag));
  if (setTwice.length > 0) throw new Error(`${setTwice.map(([flag, inFile]) => `--${flag} (${configFile} sets ${inFile})`).join(', ')}: set each in one place`);
  if (flags.token !== undefined && String(flags.token).length < MIN_TOKEN_LENGTH) {
    throw new Error(`--token: a token is at least ${MIN_TOKEN_LENGTH} characters (a random one: openssl rand -hex 24)`);
  }
  if (config && flags['agent-fingerprint'] !== undefined) throw new Error(`--agent-fingerprint: with --config, each agent has its own fingerprint in ${configFile}`);
  const agentFingerprint = flags['agent-fingerprint'] === undefined ? undefined : parseFingerprint(String(flags['agent-fingerprint']));
  if (flags['agent-fingerprint'] !== undefined && agentFingerprint === undefined) {
    throw new Error(`--agent-fingerprint ${JSON.stringify(flags['agent-fingerprint'])}: expected the SHA-256 fingerprint pool-agent printed (32 bytes as AB:CD:…, or 64 hex digits)`);
  }
  if (agentFingerprint !== undefined && flags.plain) throw new Error('--agent-fingerprint needs TLS (not --plain): the agent proves its key in the TLS handshake');
  let tls: { cert: string | Buffer; key: string | Buffer; fingerprint?: string } | undefined;
  const certFiles = config?.tls ?? (flags['tls-cert'] || flags['tls-key'] ? { cert: flags['tls-cert'], key: flags['tls-key'] } : undefined);
  if (certFiles) {
    if (!certFiles.cert || !certFiles.key) throw new Error('--tls-cert and --tls-key go together');
    const where = (name: 'cert' | 'key'): string => (config?.tls ? `${configFile}: tls.${name}` : `--tls-${name}`);
    for (const flag of ['tls-dir', 'tls-name'] as const) {
      if (wasGiven(flags, flag)) throw new Error(`--${flag} is for a certificate the relay makes; with ${config?.tls ? `tls in ${configFile}` : '--tls-cert'} it would be ignored`);
    }
    tls = { cert: readPemFile(String(certFiles.cert), where('cert'), 'CERTIFICATE'), key: readPemFile(String(certFiles.key), where('key'), 'PRIVATE KEY') };
    process.stdout.write(`${COMMAND} using the certificate in ${String(certFiles.cert)}: ${certificateSummary(tls.cert)}\n`);
  } else if (!flags.plain) {
    const names = String(flags['tls-name']).split(',').map((name) => name.trim()).filter(Boolean);
    if (names.length === 0) throw new Error('--tls-name: give at least one host name or IP');
    const dir = flags['tls-dir'] === undefined ? undefined : String(flags['tls-dir']);
    if (dir === undefined) {
      tls = await generateDevCertificate(names);
      process.stdout.write(
        `${COMMAND} using a self-signed certificate made for this run, for ${names.join(',')}: ` +
          `agents pin it with --tls-fingerprint ${tls.fingerprint} (it changes at every start; keep one with --tls-dir)\n`,
      );
    } else {
      const kept = await keptCertificate(dir, names);
      tls = kept;
      process.stdout.write(
        `${COMMAND} using the self-signed certificate ${kept.created ? 'made and kept' : 'kept'} in ${kept.certFile}, for ${names.join(',')}: ` +
          `agents pin it with --tls-fingerprint ${kept.fingerprint}, or with --tls-ca and a copy of ${kept.certFile}\n`,
      );
    }
  } else if (flags['tls-dir'] !== undefined) {
    throw new Error('--plain and --tls-dir exclude each other');
  }
  const operations = new CliOperations(flags);
  const relay = new Relay({
    host: config?.listen ? config.listen.host : String(flags.host),
    port: config?.listen ? config.listen.port : numberFlag(flags, 'port'),
    ...(config && { agents: config.agents, services: config.services }),
    publicHost: String(flags['public-host']),
    publicPort: numberFlag(flags, 'public-port'),
    ...(flags.udp === true && {
      publicProtocol: 'udp' as const,
      udp: {
        idleTimeout: numberFlag(flags, 'udp-idle-timeout'),
        maxFlows: numberFlag(flags, 'udp-max-flows'),
        ...(flags['udp-max-flows-per-source'] !== undefined && { maxFlowsPerSource: numberFlag(flags, 'udp-max-flows-per-source') }),
        maxDatagram: numberFlag(flags, 'udp-max-datagram'),
        replyRatio: numberFlag(flags, 'udp-reply-ratio'),
      },
    }),
    tls: tls && { cert: tls.cert, key: tls.key },
    transport: tls ? transport : 'websocket',
    allow,
    token: flags.token === undefined ? undefined : String(flags.token),
    agentFingerprint,
    maxCap: numberFlag(flags, 'max-cap'),
    keepAlive: numberFlag(flags, 'keep-alive'),
    getTimeout: numberFlag(flags, 'get-timeout'),
    maxWaiting: numberFlag(flags, 'max-waiting'),
    ...(flags['max-waiting-per-source'] !== undefined && { maxWaitingPerSource: numberFlag(flags, 'max-waiting-per-source') }),
    maxTunnelsPerSource: numberFlag(flags, 'max-tunnels-per-source'),
    backlog: numberFlag(flags, 'backlog'),
    headersTimeout: numberFlag(flags, 'headers-timeout'),
    maxPayload: numberFlag(flags, 'max-payload'),
    metrics: operations.metrics,
    logger: operations.logger,
  });
  relay.on('agent', (up: boolean, name: string) => process.stdout.write(`${COMMAND} agent ${name} ${up ? 'connected' : 'disconnected'}\n`));
  // First: a metrics port in use stops the relay before it listens for anyone.
  // Health checks for a load balancer in front of several relays: GET /health/NAME is 200 while service NAME can serve users.
  const metricsPort = await operations.serveMetrics((path) => {
    if (path === '/health') return { status: 200, body: 'ok' };
    const name = /^\/health\/([A-Za-z0-9._-]{1,63})$/.exec(path)?.[1];
    if (name === undefined) return undefined;
    const ready = relay.serviceReady(name);
    if (ready === undefined) return { status: 404, body: `no service ${name}` };
    return ready ? { status: 200, body: `${name}: up` } : { status: 503, body: `${name}: no agent serving it` };
  });
  await relay.start();
  // Once it runs: a relay that fails to start says only why.
  if (allow === undefined && flags.token === undefined && config === undefined) {
    operations.logger.warn({}, 'neither --token nor --allow: any client that reaches this port can become the agent');
  }
  // Signals are handled from before the line that announces readiness: whoever reads it may signal at once.
  runUntilSignal(
    COMMAND,
    () => operations.shutDown(relay),
    () => {
      const s = relay.stats();
      const udp = Object.values(s.services).filter((service) => service.udp !== undefined);
      const busy = Object.values(s.services).reduce((sum, service) => sum + Object.values(service.refused ?? {}).reduce((a, b) => a + b, 0), 0);
      const udpSum = (of: (udp: UdpStats, service: ServiceStats) => number): number => udp.reduce((sum, service) => sum + of(service.udp!, service), 0);
      const flows =
        udp.length === 0
          ? ''
          : ` flows=${udpSum((_udp, service) => service.open)} flows-evicted=${udpSum((u) => u.flowsEvicted)} carriers=${udpSum((u) => u.carriers)} udp-dropped=${udpSum((u) => Object.values(u.dropped).reduce((a, b) => a + b, 0))}`;
      const { websocket, tls: raw } = relay.pool.Transports();
      return `agent=${s.agentConnected ? 'up' : 'down'} pooled-tls=${raw} pooled-wss=${websocket} idle=${s.idle}/${relay.pool.Capacity()} open=${s.open} waiting=${s.waiting} accepted=${s.accepted} finished=${s.finished} failed=${s.failed} no-connection=${s.noConnection} no-agent=${s.noAgent} departed=${s.departed} refused-busy=${busy} claim-retries=${s.claimRetries} lost-orders=${s.lostOrders} replaced=${s.controlReplaced} refused=${s.controlRefused} conflicts=${s.controlConflicts} agents-up=${Object.entries(s.agents).filter(([, agent]) => agent.connected).map(([name]) => name).join(',') || '-'} errors=${relay.ErrorCount()}${flows}`;
    },
    numberFlag(flags, 'status-interval'),
  );
  // Before the ready line, like the others: a SIGHUP sent as soon as it is read must find its handler, not kill.
  if (configFile !== undefined) {
    let running = config!;
    process.on('SIGHUP', () => {
      let next: RelayConfig;
      let tlsNext: { cert: Buffer; key: Buffer } | undefined;
      try {
        next = readConfig();
        // Read again at every reload: a renewed certificate at the same paths is taken without a restart.
        if (next.tls !== undefined) {
          if (tls === undefined) throw new Error(`${configFile}: tls: this relay runs without TLS (--plain); it takes TLS at a restart`);
          tlsNext = {
            cert: readPemFile(next.tls.cert, `${configFile}: tls.cert`, 'CERTIFICATE'),
            key: readPemFile(next.tls.key, `${configFile}: tls.key`, 'PRIVATE KEY'),
          };
        }
      } catch (error) {
        operations.logger.error({ err: error }, `configuration not reloaded (${(error as Error).message}); the running one stays`);
        return;
      }
      relay.reload({ agents: next.agents, services: next.services, tls: tlsNext }).then(
        ({ notListening }) => {
          for (const error of notListening) operations.logger.error({ err: error }, `${error.message}: that service is left out until a reload binds it`);
          const restartOnly = [
            ['listen', JSON.stringify(next.listen) !== JSON.stringify(running.listen)],
            ['tls', running.tls !== undefined && next.tls === undefined],
          ] as const;
          for (const [key, changed] of restartOnly) {
            if (changed) operations.logger.warn({ key }, `${key} changed in ${configFile}: it takes effect at the next restart; the rest is applied`);
          }
          if (tlsNext !== undefined) process.stdout.write(`${COMMAND} using the certificate in ${next.tls!.cert}: ${certificateSummary(tlsNext.cert)}\n`);
          running = next;
          const reloaded = Object.entries(relay.address().publicPorts).map(([name, servicePort]) => `${name}:${servicePort}`).join(',');
          process.stdout.write(`${COMMAND} reloaded services=${reloaded}\n`);
        },
        (error: unknown) => operations.logger.error({ err: error }, `configuration not reloaded (${error instanceof Error ? error.message : String(error)}); the running one stays`),
      );
    });
  } else {
    process.on('SIGHUP', () => operations.logger.warn({}, 'SIGHUP: nothing to reload without --config; flags change at a restart'));
  }
  const { port, publicPort, publicPorts } = relay.address();
  const services = Object.entries(publicPorts).map(([name, servicePort]) => `${name}:${servicePort}`).join(',');
  process.stdout.write(`${COMMAND} ready port=${port} public-port=${publicPort} services=${services} tls=${tls ? 'on' : 'off'}${metricsPort}\n`);
}

main().catch((error: unknown) => {
  process.stderr.write(`${COMMAND}: ${error instanceof Error ? error.message : String(error)}\n`);
  process.exit(2);
});
