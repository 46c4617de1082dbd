export { ClientPool, type ClientPoolOptions, type ClientPoolStats, type ClientPoolSettings } from './client-pool.js';
export type { TlsMode, RelayTlsOptions, AgentIdentityOptions } from './server-address.js';
export { Agent, type AgentOptions, type AgentStats } from './agent.js';
export * from '@pool/shared';
