export { ServerPool, DEFAULT_BACKLOG, type ServerPoolOptions, type ServerPoolSettings, type IncomingConnection, type IncomingGetOptions } from './server-pool.js';
export type { ClientGroup } from './client-groups.js';
export { Relay, type RelayOptions, type RelayReload, type RelayStats } from './relay.js';
export { parseRelayConfig, ConfigError, type RelayConfig, type AgentConfig, type ServiceConfig } from './relay-config.js';
export type { ServiceStats } from './public-service.js';
export type { UdpOptions, UdpStats, UdpDropReason } from './udp-service.js';
export { generateDevCertificate, keptCertificate, LOOPBACK_NAMES, type DevCertificate } from '@pool/shared/internal';
export * from '@pool/shared';
