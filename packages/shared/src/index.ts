export * from './errors.js';
export { ID_BYTES, isValidId, parseId, idToBytes, generateId } from './id.js';
export { checkMs, checkInt, checkOrdered } from './options.js';
export * from './protocol.js';
export { PoolConn, type PoolConnOptions } from './pool-conn.js';
export { sendId, receiveId, upgradeRejection } from './handshake.js';
export { KeepAliveSweeper } from './keep-alive.js';
export { PendingGet, type GetOptions } from './pending-get.js';
export { IdleConnections } from './idle-connections.js';
