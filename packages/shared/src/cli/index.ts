// Support for the pool-relay and pool-agent commands. Not a public API.
export { parseCommandLine, wasGiven, numberFlag, runUntilSignal, envNameOf, createLineLogger, serveMetrics, CliOperations, OPERATION_FLAGS, MS_RANGE, PORT_RANGE, type FlagSpec, type FlagValues } from './command-line.js';
export { readPemFile } from './pem-file.js';
