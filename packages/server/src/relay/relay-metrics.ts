import type { Registry } from 'prom-client';
import type { MetricsOptions } from '@pool/shared';
import { publishStats, scrapedCounter, scrapedGauge } from '@pool/shared/internal';
import type { RelayStats, ServiceStats } from './stats.js';

/** Registers the relay's series in `registry` once; each reads every relay registered there at scrape time. */
function register(registry: Registry, sources: ReadonlyMap<string, () => RelayStats>): void {
  const each = (read: (pool: string, stats: RelayStats) => void): void => {
    for (const [pool, stats] of sources) read(pool, stats());
  };
  const eachService = (read: (pool: string, service: string, state: RelayStats['services'][string]) => void): void =>
    each((pool, stats) => {
      for (const [service, state] of Object.entries(stats.services)) read(pool, service, state);
    });
  scrapedGauge(registry, 'pool_relay_agent_connected', 'Whether each agent holds its control channel (1) or not (0).', ['pool', 'agent'], (gauge) =>
    each((pool, stats) => {
      for (const [agent, state] of Object.entries(stats.agents)) gauge.set({ pool, agent }, state.connected ? 1 : 0);
    }),
  );
  scrapedGauge(registry, 'pool_relay_agent_connections', "Each agent's idle pooled connections, and users waiting for one.", ['pool', 'agent', 'state'], (gauge) =>
    each((pool, stats) => {
      for (const [agent, state] of Object.entries(stats.agents)) {
        gauge.set({ pool, agent, state: 'idle' }, state.idle);
        gauge.set({ pool, agent, state: 'waiting' }, state.waiting);
      }
    }),
  );
  scrapedGauge(registry, 'pool_relay_tunnels_open', 'Tunnels open now, by service.', ['pool', 'service', 'agent'], (gauge) =>
    eachService((pool, service, state) => gauge.set({ pool, service, agent: state.agent }, state.open)),
  );
  scrapedCounter(registry, 'pool_relay_tunnels_total', 'Users accepted on each service, tunnels finished, and those that failed.', ['pool', 'service', 'agent', 'outcome'], (counter) =>
    eachService((pool, service, state) => {
      counter.inc({ pool, service, agent: state.agent, outcome: 'accepted' }, state.accepted);
      counter.inc({ pool, service, agent: state.agent, outcome: 'finished' }, state.finished);
      counter.inc({ pool, service, agent: state.agent, outcome: 'failed' }, state.failed);
    }),
  );
  for (const [name, help, valueOf] of [
    ['pool_relay_udp_flows_open', 'UDP flows open now (one per user address and port), by service.', (state: ServiceStats) => state.open],
    ['pool_relay_udp_carriers', 'Pooled connections carrying UDP flows now, by service.', (state: ServiceStats) => state.udp?.carriers ?? 0],
  ] as const) {
    scrapedGauge(registry, name, help, ['pool', 'service', 'agent'], (gauge) =>
      eachService((pool, service, state) => {
        if (state.udp) gauge.set({ pool, service, agent: state.agent }, valueOf(state));
      }),
    );
  }
  scrapedCounter(registry, 'pool_relay_udp_flows_evicted_total', 'UDP flows closed to make room for a new one (the table full, or their address at its share), by service.', ['pool', 'service', 'agent'], (counter) =>
    eachService((pool, service, state) => {
      if (state.udp) counter.inc({ pool, service, agent: state.agent }, state.udp.flowsEvicted);
    }),
  );
  for (const [what, help] of [
    ['datagrams', 'UDP datagrams from users (into the tunnel) and to users, by service.'],
    ['bytes', 'UDP payload bytes from users (into the tunnel) and to users, by service.'],
  ] as const) {
    scrapedCounter(registry, `pool_relay_udp_${what}_total`, help, ['pool', 'service', 'agent', 'direction'], (counter) =>
      eachService((pool, service, state) => {
        if (!state.udp) return;
        counter.inc({ pool, service, agent: state.agent, direction: 'from_users' }, state.udp[what].fromUsers);
        counter.inc({ pool, service, agent: state.agent, direction: 'to_users' }, state.udp[what].toUsers);
      }),
    );
  }
  for (const [name, help, countsOf] of [
    [
      'pool_relay_users_refused_total',
      'TCP users closed at once: too many were waiting for a pooled connection, in all (serviceFull) or from their address (sourceFull), or their address had its most tunnels open (sourceTunnels).',
      (state: ServiceStats) => state.refused,
    ],
    [
      'pool_relay_udp_dropped_total',
      'UDP datagrams dropped, by service and reason (oversized, queueFull, backpressure, noConnection, sendFailed, replyBudget).',
      (state: ServiceStats) => state.udp?.dropped,
    ],
  ] as const) {
    scrapedCounter(registry, name, help, ['pool', 'service', 'agent', 'reason'], (counter) =>
      eachService((pool, service, state) => {
        for (const [reason, count] of Object.entries(countsOf(state) ?? {})) counter.inc({ pool, service, agent: state.agent, reason }, count);
      }),
    );
  }
}

/**
 * A relay's series beside its pool's: per agent (connected, idle, waiting)
 * and per service (open tunnels; users accepted, tunnels finished and
 * failed), labelled `pool` as the pool's. Returns the function that removes them.
 */
export function publishRelayMetrics(options: MetricsOptions, stats: () => RelayStats): () => void {
  return publishStats('relay', options, 'relay', stats, register);
}
