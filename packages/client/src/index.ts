export { ClientPool, type ClientPoolOptions, type ClientPoolStats, type ClientPoolSettings } from './client-pool.js';
export { nextCapacity, nextInterval, outageInterval, type CapacityInput, type IntervalInput } from './adapt.js';
export { resolveRelayTarget, type TlsMode, type RelayTarget } from './server-address.js';
export * from '@pool/shared';
export { Agent, parseHostPort, type AgentOptions, type AgentStats } from './agent.js';
