export { ServerPool, type ServerPoolOptions, type ServerPoolSettings, type IncomingConnection } from './server-pool.js';
export { ClientGroups, type ClientGroup } from './client-groups.js';
export { admit, type AdmissionPolicy, type AdmissionDecision } from './admission.js';
export { parseAllowlist, normalizeAddress, type Allowlist } from './allowlist.js';
export { tokensEqual, parseTokens, matchToken, type TokenEntry } from './token.js';
export * from '@pool/shared';
export { Relay, type RelayOptions, type RelayStats } from './relay.js';
export { generateDevCertificate } from './dev-cert.js';
