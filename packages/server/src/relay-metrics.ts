import { Counter, Gauge, type Registry } from 'prom-client';
import type { MetricsOptions } from '@pool/shared';
import { publishStats } from '@pool/shared/internal';
import type { RelayStats } from './relay.js';

/** Registers the relay's series in `registry` once; each reads every relay registered there at scrape time. */
function register(registry: Registry, sources: ReadonlyMap<string, () => RelayStats>): void {
  const registers = [registry];
  const each = (read: (pool: string, stats: RelayStats) => void): void => {
    for (const [pool, stats] of sources) read(pool, stats());
  };
  new Gauge({
    name: 'pool_relay_agent_connected',
    help: 'Whether each agent holds its control channel (1) or not (0).',
    labelNames: ['pool', 'agent'],
    registers,
    collect() {
      this.reset();
      each((pool, stats) => {
        for (const [agent, state] of Object.entries(stats.agents)) this.set({ pool, agent }, state.connected ? 1 : 0);
      });
    },
  });
  new Gauge({
    name: 'pool_relay_agent_connections',
    help: "Each agent's idle pooled connections, and users waiting for one.",
    labelNames: ['pool', 'agent', 'state'],
    registers,
    collect() {
      this.reset();
      each((pool, stats) => {
        for (const [agent, state] of Object.entries(stats.agents)) {
          this.set({ pool, agent, state: 'idle' }, state.idle);
          this.set({ pool, agent, state: 'waiting' }, state.waiting);
        }
      });
    },
  });
  new Gauge({
    name: 'pool_relay_tunnels_open',
    help: 'Tunnels open now, by service.',
    labelNames: ['pool', 'service', 'agent'],
    registers,
    collect() {
      this.reset();
      each((pool, stats) => {
        for (const [service, state] of Object.entries(stats.services)) this.set({ pool, service, agent: state.agent }, state.open);
      });
    },
  });
  new Counter({
    name: 'pool_relay_tunnels_total',
    help: 'Users accepted on each service, tunnels finished, and those that failed.',
    labelNames: ['pool', 'service', 'agent', 'outcome'],
    registers,
    collect() {
      this.reset();
      each((pool, stats) => {
        for (const [service, state] of Object.entries(stats.services)) {
          this.inc({ pool, service, agent: state.agent, outcome: 'accepted' }, state.accepted);
          this.inc({ pool, service, agent: state.agent, outcome: 'finished' }, state.finished);
          this.inc({ pool, service, agent: state.agent, outcome: 'failed' }, state.failed);
        }
      });
    },
  });
  new Gauge({
    name: 'pool_relay_udp_flows_open',
    help: 'UDP flows open now (one per user address and port), by service.',
    labelNames: ['pool', 'service', 'agent'],
    registers,
    collect() {
      this.reset();
      each((pool, stats) => {
        for (const [service, state] of Object.entries(stats.services)) if (state.udp) this.set({ pool, service, agent: state.agent }, state.open);
      });
    },
  });
  for (const [what, help] of [
    ['datagrams', 'UDP datagrams from users (into the tunnel) and to users, by service.'],
    ['bytes', 'UDP payload bytes from users (into the tunnel) and to users, by service.'],
  ] as const) {
    new Counter({
      name: `pool_relay_udp_${what}_total`,
      help,
      labelNames: ['pool', 'service', 'agent', 'direction'],
      registers,
      collect() {
        this.reset();
        each((pool, stats) => {
          for (const [service, state] of Object.entries(stats.services)) {
            if (!state.udp) continue;
            this.inc({ pool, service, agent: state.agent, direction: 'from_users' }, state.udp[what].fromUsers);
            this.inc({ pool, service, agent: state.agent, direction: 'to_users' }, state.udp[what].toUsers);
          }
        });
      },
    });
  }
  new Counter({
    name: 'pool_relay_udp_dropped_total',
    help: 'UDP datagrams dropped, by service and reason (oversized, flowLimit, queueFull, backpressure, noConnection, sendFailed).',
    labelNames: ['pool', 'service', 'agent', 'reason'],
    registers,
    collect() {
      this.reset();
      each((pool, stats) => {
        for (const [service, state] of Object.entries(stats.services)) {
          for (const [reason, count] of Object.entries(state.udp?.dropped ?? {})) this.inc({ pool, service, agent: state.agent, reason }, count);
        }
      });
    },
  });
}

/**
 * A relay's series beside its pool's: per agent (connected, idle, waiting)
 * and per service (open tunnels; users accepted, tunnels finished and
 * failed), labelled `pool` as the pool's. Returns the function that removes them.
 */
export function publishRelayMetrics(options: MetricsOptions, stats: () => RelayStats): () => void {
  return publishStats('relay', options, 'relay', stats, register);
}
