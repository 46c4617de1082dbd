export { ServerPool, DEFAULT_BACKLOG, type ServerPoolOptions, type ServerPoolSettings, type IncomingConnection, type IncomingGetOptions } from './pool/server-pool.js';
export { selectAlpn, type TransportChoice } from './pool/alpn.js';
export type { PoolRequest } from './pool/admission.js';
export type { ClientGroup } from './pool/client-groups.js';
export { Relay, type RelayOptions, type RelayReload } from './relay/relay.js';
export { parseRelayConfig, ConfigError, type RelayConfig, type AgentConfig, type ServiceConfig, type UdpOptions } from './relay/relay-config.js';
export type { RelayStats, ServiceStats, UdpStats, UdpDropReason } from './relay/stats.js';
export { generateDevCertificate, keptCertificate, LOOPBACK_NAMES, type DevCertificate } from '@pool/shared/internal';
export * from '@pool/shared';
