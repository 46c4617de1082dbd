import { Counter, Gauge, type Registry } from 'prom-client';
import type { MetricsOptions } from '@pool/shared';
import { publishStats } from '@pool/shared/internal';
import type { AgentStats } from './agent.js';

function register(registry: Registry, sources: ReadonlyMap<string, () => AgentStats>): void {
  const registers = [registry];
  new Gauge({
    name: 'pool_agent_udp_flows_open',
    help: 'UDP flows the agent carries now.',
    labelNames: ['pool'],
    registers,
    collect() {
      this.reset();
      for (const [pool, stats] of sources) this.set({ pool }, stats().flowsOpen);
    },
  });
  new Counter({
    name: 'pool_agent_udp_dropped_total',
    help: "Target replies to UDP users that the agent dropped, by reason (oversized: over the flow's maximum; backpressure: the flow's connection backed up).",
    labelNames: ['pool', 'reason'],
    registers,
    collect() {
      this.reset();
      for (const [pool, stats] of sources) {
        for (const [reason, count] of Object.entries(stats().datagramsDropped)) this.inc({ pool, reason }, count);
      }
    },
  });
}

/**
 * An agent's series beside its pool's (UDP flows open, replies dropped by
 * reason), labelled `pool` as the pool's. Returns the function that removes them.
 */
export function publishAgentMetrics(options: MetricsOptions, stats: () => AgentStats): () => void {
  return publishStats('agent', options, 'agent', stats, register);
}
