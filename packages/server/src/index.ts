export { ServerPool, type ServerPoolOptions, type IncomingConnection } from './server-pool.js';
export { parseAllowlist, normalizeAddress, type Allowlist } from './allowlist.js';
export { tokensEqual } from './token.js';
export * from '@pool/shared';
export { Relay, type RelayOptions, type RelayStats } from './relay.js';
export { generateDevCertificate } from './dev-cert.js';
