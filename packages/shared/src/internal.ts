// What @pool/server and @pool/client share beyond the public surface: the
// pool mechanics, the wire details behind them and the control channel.
// Not a public API; it changes with the packages that use it.
export * from './index.js';
export { checkMs, checkInt, checkOrdered } from './core/options.js';
export * from './wire/protocol.js';
export { offerHeaders, negotiated, confirmHeaderLines } from './wire/extensions.js';
export { rawSocketOf, CLOSE_TARGET_UNREACHABLE } from './wire/pool-conn.js';
export { sendIdFrame, receiveIdle, upgradeRejection, readUpgradeRejection } from './wire/handshake.js';
export * from './wire/control.js';
export {
  DATAGRAM_HEADER_BYTES,
  MAX_DATAGRAM_BYTES,
  FLOW_END_LENGTH,
  MAX_FLOW_NUMBER,
  FLOW_QUEUE_LIMIT_BYTES,
  CARRIER_QUEUE_LIMIT_BYTES,
  frameDatagrams,
  readDatagrams,
  DatagramReader,
  FlowWriter,
  type FlowFrame,
  type ReadFrame,
  type DatagramSink,
} from './wire/datagram.js';
export { IdleSocket } from './pool/idle-socket.js';
export type { IdleConnection, IdleConnectionOwner } from './transport/pooled-conn.js';
export { POOL_ALPN, MAX_PREFACE_BYTES, encodePreface, parsePreface, encodeAnswer, parseAnswer, takeLine, type RawAnswer } from './transport/raw/preface.js';
export { readLine } from './transport/raw/read-line.js';
export { RAW_EXTENSIONS, RawIdleSocket, adoptRawConn, type RawPoolConn } from './transport/raw/raw-conn.js';
export { IdleConnections } from './pool/idle-connections.js';
export { KeepAliveSweeper, livenessAction, SWEEPS_PER_PERIOD, PING_AFTER_PERIODS, DEAD_AFTER_PERIODS, type LivenessAction, type Pingable } from './pool/keep-alive.js';
export { PendingGet } from './pool/pending-get.js';
export { LeasedConnections, drainPool, type LeasedBytes, type Drainable } from './pool/leased-connections.js';
export { listen } from './pool/listen.js';
export { ErrorCountingEmitter } from './observability/error-counting-emitter.js';
export { ConnectionTracker, percentile, type OpenState, type ConnectionTrackerOptions } from './observability/connection-tracker.js';
export { PoolMetrics, outcomeOf, type MetricsSource } from './observability/metrics.js';
export { publishStats } from './observability/published-stats.js';
export { scrapedCounter, scrapedGauge } from './observability/scraped.js';
export { generateDevCertificate, keptCertificate, parseFingerprint, LOOPBACK_NAMES, type DevCertificate } from './tls/certificates.js';
