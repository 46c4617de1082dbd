// ESM mode (run with --experimental-vm-modules, see package.json "test"):
// our packages are ESM and p-retry@7 is ESM-only, so running jest natively in
// ESM avoids a second module system in tests. ts-jest only transpiles
// (isolatedModules); `tsc -b` does the type checking before jest starts.
export default {
  testEnvironment: 'node',
  extensionsToTreatAsEsm: ['.ts'],
  moduleNameMapper: {
    '^@pool/(shared|server|client)$': '<rootDir>/packages/$1/src/index.ts',
    '^@pool/shared/internal$': '<rootDir>/packages/shared/src/internal.ts',
    '^@pool/shared/cli$': '<rootDir>/packages/shared/src/cli/index.ts',
    '^(\\.{1,2}/.*)\\.js$': '$1',
  },
  transform: {
    '^.+\\.ts$': ['ts-jest', { useESM: true, tsconfig: '<rootDir>/tsconfig.base.json' }],
  },
  testMatch: ['<rootDir>/packages/*/test/**/*.test.ts', '<rootDir>/tests/**/*.test.ts'],
  testTimeout: 30_000,
  // Once, after every test had passed, Node 20 spun at 100% CPU in its exit
  // cleanup (FreeEnvironment -> CleanupHandles, seen with perf) and never
  // exited. Exiting explicitly skips that path. Leaks are still caught: the
  // tests assert on handles and timers themselves (tests/reliability/churn).
  forceExit: true,
};
