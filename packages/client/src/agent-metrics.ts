import type { Registry } from 'prom-client';
import type { MetricsOptions } from '@pool/shared';
import { publishStats, scrapedCounter, scrapedGauge } from '@pool/shared/internal';
import type { AgentStats } from './agent-stats.js';

function register(registry: Registry, sources: ReadonlyMap<string, () => AgentStats>): void {
  scrapedGauge(registry, 'pool_agent_udp_flows_open', 'UDP flows the agent carries now.', ['pool'], (gauge) => {
    for (const [pool, stats] of sources) gauge.set({ pool }, stats().flowsOpen);
  });
  scrapedCounter(registry, 'pool_agent_udp_flow_failures_total', 'UDP flows ended because their socket to the target could not be opened.', ['pool'], (counter) => {
    for (const [pool, stats] of sources) counter.inc({ pool }, stats().flowFailures);
  });
  scrapedCounter(
    registry,
    'pool_agent_udp_dropped_total',
    "Target replies to UDP users that the agent dropped, by reason (oversized: over the service's maximum; backpressure: the flow's queue or its connection's full).",
    ['pool', 'reason'],
    (counter) => {
      for (const [pool, stats] of sources) {
        for (const [reason, count] of Object.entries(stats().datagramsDropped)) counter.inc({ pool, reason }, count);
      }
    },
  );
}

/**
 * An agent's series beside its pool's (UDP flows open, flows that failed, replies
 * dropped by reason), labelled `pool` as the pool's. Returns the function that removes them.
 */
export function publishAgentMetrics(options: MetricsOptions, stats: () => AgentStats): () => void {
  return publishStats('agent', options, 'agent', stats, register);
}
