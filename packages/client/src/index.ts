export { ClientPool, type ClientPoolOptions, type ClientPoolStats, type ClientPoolSettings } from './client-pool.js';
export type { TlsMode, RelayTlsOptions, AgentIdentityOptions } from './server-address.js';
export { Agent, type AgentOptions } from './agent.js';
export type { AgentStats } from './agent-stats.js';
export * from '@pool/shared';
