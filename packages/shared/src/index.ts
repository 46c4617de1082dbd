// The application-facing surface shared by @pool/server and @pool/client:
// typed errors, connection IDs, the PoolConn stream and what describes it.
// Pool mechanics live behind `@pool/shared/internal`, CLI support behind
// `@pool/shared/cli`; neither is part of the public API.
export * from './core/errors.js';
export { ID_BYTES, isValidId, parseId, idToBytes, generateId } from './wire/id.js';
export { NO_EXTENSIONS, type Extensions } from './wire/extensions.js';
export { PoolConn, type PoolConnOptions } from './wire/pool-conn.js';
export type { PooledConn, TransportName } from './transport/pooled-conn.js';
export { sendId, receiveId } from './wire/handshake.js';
export { splice, type SpliceResult } from './pool/splice.js';
export type { GetOptions } from './pool/pending-get.js';
export type { DrainResult } from './pool/leased-connections.js';
export type { ConnectionTracker, ConnectionState, TrackerStats, Lifecycle, AddressOccupancy } from './observability/connection-tracker.js';
export type { MetricsOptions } from './observability/metrics.js';
export { silentLogger, type Logger } from './observability/logger.js';
