import { describe, expect, it } from '@jest/globals';
import type { ConnectionState } from '@pool/shared';
import { ConnectionTracker, percentile } from '@pool/shared/internal';

/** A tracker on a clock the test moves by hand. */
function trackerAt(start = 1_000): { tracker: ConnectionTracker; advance: (ms: number) => void } {
  let now = start;
  return { tracker: new ConnectionTracker({ now: () => now }), advance: (ms) => (now += ms) };
}

describe('ConnectionTracker: the expected lifecycle', () => {
  it("follows an agent's connection through every state, counting each", () => {
    const { tracker } = trackerAt();
    const conn = {};
    const steps: Array<[ConnectionState, Record<string, number>]> = [
      ['dialing', { dialing: 1, handshaking: 0, idle: 0, leased: 0 }],
      ['handshaking', { dialing: 0, handshaking: 1, idle: 0, leased: 0 }],
      ['idle', { dialing: 0, handshaking: 0, idle: 1, leased: 0 }],
      ['leased', { dialing: 0, handshaking: 0, idle: 0, leased: 1 }],
    ];
    for (const [state, byState] of steps) {
      expect(tracker.transition(conn, state, 'relay:443')).toBe(true);
      expect(tracker.lifecycleOf(conn)).toMatchObject({ state, address: 'relay:443' });
      expect(tracker.stats().byState).toEqual(byState);
    }
    expect(tracker.transition(conn, 'closed')).toBe(true);
    expect(tracker.lifecycleOf(conn)).toBeUndefined();
    expect(tracker.stats()).toMatchObject({ open: 0, closed: 1, peak: 1, reconciled: 0 });
  });

  it("takes a relay's connection from handshaking straight to leased (a get was waiting)", () => {
    const { tracker } = trackerAt();
    const conn = {};
    expect(tracker.transition(conn, 'handshaking')).toBe(true);
    expect(tracker.transition(conn, 'leased')).toBe(true);
    expect(tracker.transition(conn, 'closed')).toBe(true);
    expect(tracker.stats().reconciled).toBe(0);
  });

  it('stamps each state with the wall-clock time it was entered', () => {
    const { tracker, advance } = trackerAt();
    const conn = {};
    tracker.transition(conn, 'dialing');
    advance(5_000);
    const before = Date.now();
    tracker.transition(conn, 'handshaking');
    const { since } = tracker.lifecycleOf(conn)!;
    expect(since).toBeGreaterThanOrEqual(before - 1);
    expect(since).toBeLessThanOrEqual(Date.now() + 1);
  });
});

describe('ConnectionTracker: transitions out of order', () => {
  const cases: Array<{ name: string; order: ConnectionState[]; final: ConnectionState | undefined }> = [
    { name: 'a first sighting in idle', order: ['idle'], final: 'idle' },
    { name: 'a first sighting in leased', order: ['leased'], final: 'leased' },
    { name: 'a close of a connection never seen', order: ['closed'], final: undefined },
    { name: 'back from leased to idle', order: ['handshaking', 'idle', 'leased', 'idle'], final: 'idle' },
    { name: 'dialing straight to idle', order: ['dialing', 'idle'], final: 'idle' },
    { name: 'the same state twice', order: ['dialing', 'dialing'], final: 'dialing' },
    { name: 'a second close', order: ['handshaking', 'closed', 'closed'], final: undefined },
  ];

  it.each(cases)('reconciles $name: one count, the newer state wins, nothing dangles', ({ order, final }) => {
    const { tracker } = trackerAt();
    const conn = {};
    const results = order.map((state) => tracker.transition(conn, state));
    expect(results.filter((expected) => !expected)).toHaveLength(1);
    expect(results.at(-1)).toBe(false);
    const stats = tracker.stats();
    expect(stats.reconciled).toBe(1);
    expect(tracker.lifecycleOf(conn)?.state).toBe(final);
    expect(stats.open).toBe(final === undefined ? 0 : 1);
    const counted = Object.values(stats.byState).reduce((sum, n) => sum + n, 0);
    expect(counted).toBe(stats.open);
  });

  it('never throws and balances its counts over many random orders', () => {
    const { tracker } = trackerAt();
    const states: ConnectionState[] = ['dialing', 'handshaking', 'idle', 'leased', 'closed'];
    const conns = Array.from({ length: 50 }, () => ({}));
    let seed = 7;
    const random = (n: number): number => (seed = (seed * 1_103_515_245 + 12_345) % 2 ** 31) % n;
    for (let i = 0; i < 5_000; i++) tracker.transition(conns[random(conns.length)]!, states[random(states.length)]!);
    for (const conn of conns) tracker.transition(conn, 'closed');
    const stats = tracker.stats();
    expect(stats.open).toBe(0);
    expect(stats.byState).toEqual({ dialing: 0, handshaking: 0, idle: 0, leased: 0 });
    expect(stats.byAddress['']!.open).toBe(0);
    expect(stats.reconciled).toBeGreaterThan(0);
    expect(tracker.counts()).toEqual({ byState: stats.byState, reconciled: stats.reconciled });
  });
});

describe('ConnectionTracker: statistics', () => {
  it('keeps peak concurrency overall and per address', () => {
    const { tracker } = trackerAt();
    const a = [{}, {}, {}];
    const b = [{}];
    for (const conn of a) tracker.transition(conn, 'handshaking', '127.0.0.1:10101');
    for (const conn of b) tracker.transition(conn, 'dialing', 'relay:443');
    tracker.transition(a[0]!, 'closed');
    tracker.transition(a[1]!, 'closed');
    const stats = tracker.stats();
    expect(stats.peak).toBe(4);
    expect(stats.open).toBe(2);
    expect(stats.byAddress).toEqual({ '127.0.0.1:10101': { open: 1, peak: 3 }, 'relay:443': { open: 1, peak: 1 } });
  });

  it('measures lease durations from leased to closed, as p50 and p99', () => {
    const { tracker, advance } = trackerAt();
    for (let ms = 1; ms <= 100; ms++) {
      const conn = {};
      tracker.transition(conn, 'handshaking');
      advance(1_000); // time spent before the lease does not count
      tracker.transition(conn, 'leased');
      advance(ms);
      tracker.transition(conn, 'closed');
    }
    expect(tracker.stats().leaseMs).toEqual({ count: 100, p50: 51, p99: 100 });
  });

  it('takes lease percentiles over the latest leaseSamples leases only', () => {
    let now = 0;
    const tracker = new ConnectionTracker({ leaseSamples: 4, now: () => now });
    for (const ms of [1_000, 1_000, 1_000, 1_000, 5, 5, 5, 5]) {
      const conn = {};
      tracker.transition(conn, 'leased');
      now += ms;
      tracker.transition(conn, 'closed');
    }
    expect(tracker.stats().leaseMs).toEqual({ count: 8, p50: 5, p99: 5 });
  });

  it('reports on one line, for a periodic log', () => {
    const { tracker } = trackerAt();
    tracker.transition({}, 'idle', 'relay:443');
    const line = tracker.report();
    expect(line).not.toContain('\n');
    expect(line).toMatch(/^open=1 \(dialing=0 handshaking=0 idle=1 leased=0\) peak=1 closed=0 lease_p50=0\.0ms lease_p99=0\.0ms reconciled=1 \[relay:443 open=1 peak=1\]$/);
  });
});

describe('percentile', () => {
  it.each([
    [[], 0.5, 0],
    [[3], 0.99, 3],
    [[1, 2, 3, 4], 0.5, 3],
    [[1, 2, 3, 4], 0, 1],
    [[1, 2, 3, 4], 1, 4],
  ])('of %j at %d is %d', (sorted, q, expected) => {
    expect(percentile(sorted, q)).toBe(expected);
  });
});
